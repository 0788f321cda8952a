"""Interpreter for call programs: the one description of a graded call, run on either side.

A *program* is a JSON-able list of steps (see docs/ARCHITECTURE.md). The grader runs it against the
reference namespace (the ``solutions`` package) and the worker runs the very same program against
the student's namespace, so both sides make exactly the same calls on the same inputs.

This file is copied into the worker's sandbox next to ``main.py``: it must import nothing from this
repository, only the standard library and torch (matplotlib lazily, for figures).
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import torch

MAX_LABELS = 64
# Taken when this file is loaded, before any student code runs: what the serialiser calls a plain tensor does
# not change if the student rebinds ``torch.Tensor`` or ``torch.nn.Parameter``. A Parameter is torch's own
# tensor with ``requires_grad`` (it overrides nothing), so it counts as a tensor; any other subclass does not.
PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


class ProgramError(Exception):
    """A step could not be carried out for a reason the student can act on (e.g. missing name)."""


def _resolve_name(namespace: dict[str, Any], env: dict[str, Any], name: str) -> Any:
    if name.startswith("torch."):
        obj: Any = torch
        for part in name.split(".")[1:]:
            obj = getattr(obj, part)
        return obj
    if name in env:
        return env[name]
    if name in namespace:
        return namespace[name]
    raise ProgramError(f"`{name}` is not defined: run its answer cell and keep the name exactly `{name}`")


def _arg(spec: Any, inputs: dict[str, torch.Tensor], env: dict[str, Any], device: torch.device) -> Any:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"malformed argument {spec!r}")
    (kind, value), = spec.items()
    if kind == "tensor":
        return inputs[value].to(device)
    if kind == "var":
        return env[value]
    if kind == "lit":
        return value
    if kind == "device":
        return device
    raise ValueError(f"unknown argument kind {kind!r}")


def load_params(module: Any, params: dict[str, torch.Tensor]) -> None:
    """Copy ``params`` into ``module``'s parameters by name; a clear message when names or shapes differ."""
    if not isinstance(module, torch.nn.Module):
        raise ProgramError(f"expected an nn.Module, got {type(module).__name__}")
    own = dict(module.named_parameters())
    missing = sorted(set(params) - set(own))
    extra = sorted(set(own) - set(params))
    if missing or extra:
        parts = [f"expected parameters {sorted(params)}"]
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        raise ProgramError("parameter names differ from the specification: " + "; ".join(parts))
    with torch.no_grad():
        for name, value in params.items():
            target = own[name]
            if tuple(target.shape) != tuple(value.shape):
                raise ProgramError(
                    f"parameter `{name}` has shape {tuple(target.shape)}, expected {tuple(value.shape)}"
                )
            target.copy_(value.to(device=target.device, dtype=target.dtype))


def run_program(
    program: list[dict[str, Any]],
    namespace: dict[str, Any],
    inputs: dict[str, torch.Tensor],
    device: str,
    dtype: str | None,
) -> dict[str, Any]:
    """Run ``program`` against ``namespace``; return the raw values of its ``output`` steps by key."""
    dev = torch.device(device)
    env: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for step in program:
        op = step["op"]
        if op in ("call", "new"):
            target = _resolve_name(namespace, env, step["fn"] if op == "call" else step["cls"])
            if not callable(target):
                raise ProgramError(f"`{step.get('fn') or step.get('cls')}` is not callable")
            args = [_arg(a, inputs, env, dev) for a in step.get("args", [])]
            kwargs = {k: _arg(a, inputs, env, dev) for k, a in step.get("kwargs", {}).items()}
            value = target(*args, **kwargs)
            if op == "new":
                if not isinstance(value, torch.nn.Module):
                    raise ProgramError(f"`{step['cls']}(...)` did not create an nn.Module")
                value = value.to(dev) if dtype is None else value.to(device=dev, dtype=getattr(torch, dtype))
            env[step["out"]] = value
        elif op == "raises":
            target = _resolve_name(namespace, env, step["fn"])
            args = [_arg(a, inputs, env, dev) for a in step.get("args", [])]
            kwargs = {k: _arg(a, inputs, env, dev) for k, a in step.get("kwargs", {}).items()}
            try:
                target(*args, **kwargs)
                env[step["out"]] = ""
            except Exception as exc:  # noqa: BLE001 - the exception's type is the result
                env[step["out"]] = type(exc).__name__
        elif op == "freeze":
            module = env[step["obj"]]
            for name, param in module.named_parameters():
                if name in step["names"]:
                    param.requires_grad_(False)
        elif op == "load_params":
            load_params(env[step["obj"]], {k: inputs[v] for k, v in step["params"].items()})
        elif op == "mode":
            env[step["obj"]].train(bool(step["train"]))
        elif op == "seed":
            torch.manual_seed(int(step["value"]))
        elif op == "attr":
            # a variable, or a name the namespace defines (``FlashAttentionFunction.apply``)
            obj = _resolve_name(namespace, env, step["obj"])
            if not hasattr(obj, step["name"]):
                raise ProgramError(f"`{type(obj).__name__}` has no attribute `{step['name']}`")
            env[step["out"]] = getattr(obj, step["name"])
        elif op == "params":
            env[step["out"]] = {k: p.detach().clone() for k, p in env[step["obj"]].named_parameters()}
        elif op == "leaf":
            env[step["out"]] = inputs[step["tensor"]].to(dev).clone().requires_grad_(True)
        elif op == "backward":
            value = env[step["var"]]
            if isinstance(value, (tuple, list)) and value:
                value = value[0]  # (output, weights): the gradient of the output
            if not isinstance(value, torch.Tensor) or not value.requires_grad:
                raise ProgramError("the output does not depend differentiably on the inputs (no grad_fn): do not "
                                   "call .detach(), .item(), .numpy() or torch.no_grad() in forward")
            (value * inputs[step["weights"]].to(dev)).sum().backward()
        elif op == "grad":
            env[step["out"]] = env[step["var"]].grad
        elif op == "param_grads":
            env[step["out"]] = {k: p.grad for k, p in env[step["obj"]].named_parameters()}
        elif op == "output":
            outputs[step["key"]] = env[step["var"]]
        else:
            raise ValueError(f"unknown step {op!r}")
    return outputs


def _tick_labels_in_view(axis: Any) -> list[str]:
    """The labels of the axis's major ticks that lie inside its view, in order.

    What the figure shows: a locator may also place ticks outside the view (``matshow`` with
    ``set_xticklabels(['', *tokens])`` gets ticks at -1 and n, with empty labels), and listing those would
    make a figure that shows exactly the right labels look wrong.
    """
    axis.get_majorticklabels()  # brings the ticks up to date with the locator and formatter
    lo, hi = sorted(float(v) for v in axis.get_view_interval())
    slack = 1e-9 * max(1.0, hi - lo)
    labels = []
    for tick in axis.get_major_ticks():
        loc = tick.get_loc()
        shown = [label for label in (tick.label1, tick.label2) if label.get_visible()]  # bottom/left, top/right
        if loc is not None and lo - slack <= float(loc) <= hi + slack and shown:
            labels.append(shown[0].get_text())
    return labels[:MAX_LABELS]


def _figure_probe(fig: Any, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    axes = []
    for i, ax in enumerate(fig.get_axes()):
        images = []
        for j, artist in enumerate(list(ax.images) + list(ax.collections)):
            get_array = getattr(artist, "get_array", None)
            data = get_array() if get_array else None
            if data is None:
                continue
            try:
                arr = torch.as_tensor(data.__array__() if hasattr(data, "__array__") else data, dtype=torch.float64)
            except Exception:  # noqa: BLE001 - an exotic artist is simply not an image
                continue
            name = f"{key}.axes{i}.image{j}"
            tensors[name] = arr.contiguous()
            images.append(name)
        axes.append({
            "images": images,
            "xticklabels": _tick_labels_in_view(ax.xaxis),
            "yticklabels": _tick_labels_in_view(ax.yaxis),
            "xlabel": ax.get_xlabel()[:200],
            "ylabel": ax.get_ylabel()[:200],
            "title": ax.get_title()[:200],
        })
    meta[key] = {"pytype": "Figure", "axes": axes}


def compute_dtype(dtype: str | None, inputs: dict[str, torch.Tensor]) -> str:
    """The floating dtype a call computes in: its dtype variant, else its least precise floating input.

    Python numbers (a loss from ``loss.item()``, a list of them) leave a call as float64 whatever they
    were computed in; this name travels with them so that they are judged with the tolerance of the
    dtype that produced them, not float64's.
    """
    if dtype:
        return dtype
    floats = [t.dtype for t in inputs.values() if t.is_floating_point()]
    return str(max(floats, key=lambda d: torch.finfo(d).eps)).replace("torch.", "") if floats else "float64"


def is_number(value: Any) -> bool:
    """A real number that is not a bool and not a tensor: Python's ``int`` and ``float``, NumPy's scalars.

    By the ``numbers`` ABCs, which NumPy's scalar types register with and ``torch.Tensor`` does not:
    a 0-d tensor stays a tensor (``.item()`` makes it a number), a NumPy integer is a number.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, torch.Tensor))


def is_numpy_bool(value: Any) -> bool:
    """NumPy's bool scalar (``numpy.bool_``, named ``bool`` since NumPy 2): a truth value, not a number."""
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")


def serialise(value: Any, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any], depth: int = 0,
              computed_in: str = "float64") -> None:
    """Flatten ``value`` into plain CPU tensors plus JSON metadata (type, device, dtype) per key.

    Python floats and lists of numbers are carried as float64 tensors; their metadata records
    ``computed_in``, the dtype of the computation they came from (see ``compute_dtype``). Numbers of
    other types (``is_number``: NumPy scalars) are recorded as ``int`` or ``float``, their type as ``from``.
    """
    if depth > 3:
        meta[key] = {"pytype": type(value).__name__, "error": "nested too deeply"}
        return
    if isinstance(value, torch.Tensor):
        meta[key] = {
            "pytype": "Tensor" if type(value) in PLAIN_TENSOR_TYPES else f"Tensor subclass {type(value).__name__}",
            "device": str(value.device),
            "dtype": str(value.dtype).replace("torch.", ""),
            "shape": list(value.shape),
            "requires_grad": bool(value.requires_grad),
        }
        plain = torch.Tensor._make_subclass(torch.Tensor, value.detach()) if type(value) not in PLAIN_TENSOR_TYPES \
            else value.detach()
        try:
            tensors[key] = plain.to("cpu").contiguous().clone()
        except (NotImplementedError, RuntimeError) as exc:  # a tensor without data (device "meta"): say so, and
            meta[key]["unreadable"] = f"{type(exc).__name__}: {exc}"[:200]  # do not pass for the student's error
    elif value is None:
        meta[key] = {"pytype": "NoneType"}
    elif isinstance(value, str):
        meta[key] = {"pytype": "str", "value": value[:200]}
    elif isinstance(value, bool) or is_numpy_bool(value):
        meta[key] = {"pytype": "bool", **({} if type(value) is bool else {"from": "numpy.bool"})}
        tensors[key] = torch.tensor(bool(value))
    elif is_number(value) and isinstance(value, numbers.Integral):
        # NumPy integers count as ints: they are integers (numbers.Integral), equal to the Python int
        meta[key] = {"pytype": "int", **({} if type(value) is int else {"from": type(value).__name__[:40]})}
        tensors[key] = torch.tensor(operator.index(value), dtype=torch.int64)
    elif is_number(value):
        number = float(value)
        meta[key] = {"pytype": "float", "finite": math.isfinite(number), "computed_in": computed_in,
                     **({} if type(value) is float else {"from": type(value).__name__[:40]})}
        tensors[key] = torch.tensor(number, dtype=torch.float64)
    elif isinstance(value, (tuple, list)):
        # a namedtuple is a tuple (unpacking and indexing are the same): its kind is its base, its class ``from``
        kind = "tuple" if isinstance(value, tuple) else "list"
        meta[key] = {"pytype": kind, "length": len(value),
                     **({} if type(value) in (tuple, list) else {"from": type(value).__name__[:40]})}
        if value and all(is_number(v) for v in value):
            tensors[key] = torch.tensor([float(v) for v in value], dtype=torch.float64)
            meta[key]["numbers"] = True
            meta[key]["computed_in"] = computed_in
            return
        for i, item in enumerate(value[:16]):
            serialise(item, f"{key}.{i}", tensors, meta, depth + 1, computed_in)
    elif isinstance(value, dict):  # an OrderedDict (a state_dict) too
        meta[key] = {"pytype": "dict", "keys": [str(k) for k in list(value)[:64]]}
        for k, item in list(value.items())[:64]:
            serialise(item, f"{key}.{k}", tensors, meta, depth + 1, computed_in)
    elif type(value).__name__ == "Figure" and hasattr(value, "get_axes"):
        _figure_probe(value, key, tensors, meta)
    else:
        meta[key] = {"pytype": type(value).__name__}


def serialise_outputs(outputs: dict[str, Any], computed_in: str = "float64"
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Serialise every output of a program run: ``(tensors, metadata)``; ``computed_in``: see ``compute_dtype``."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for key, value in outputs.items():
        serialise(value, key, tensors, meta, computed_in=computed_in)
    return tensors, meta


def deserialise(meta: dict[str, Any], tensors: dict[str, torch.Tensor], key: str, device: torch.device) -> Any:
    """Inverse of ``serialise`` for what a reference oracle returns: tensors, numbers, tuples, lists, dicts."""
    info = meta[key]
    kind = info.get("pytype")
    if kind == "Tensor":
        return tensors[key].to(device)
    if kind in ("int", "float", "bool"):
        return tensors[key].item()
    if kind == "str":
        return info.get("value", "")
    if kind in ("tuple", "list"):
        if info.get("numbers"):
            values = tensors[key].tolist()
        else:
            values = [deserialise(meta, tensors, f"{key}.{i}", device) for i in range(info.get("length", 0))]
        return tuple(values) if kind == "tuple" else values
    if kind == "dict":
        return {k: deserialise(meta, tensors, f"{key}.{k}", device) for k in info.get("keys", [])}
    return None


def encode_arguments(args: tuple, kwargs: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Arguments as program ARGs: tensors go to ``tensors`` (CPU copies), the rest must be JSON literals."""
    def one(value: Any) -> dict[str, Any]:
        if isinstance(value, torch.Tensor):
            key = f"a{len(tensors)}"
            tensors[key] = value.detach().to("cpu").contiguous().clone()
            return {"tensor": key}
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"lit": value}
        if isinstance(value, (list, tuple)) and all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
            return {"lit": list(value)}
        raise ProgramError(f"the reference stand-in cannot take an argument of type {type(value).__name__}")
    return {"args": [one(a) for a in args], "kwargs": {k: one(v) for k, v in kwargs.items()}}
