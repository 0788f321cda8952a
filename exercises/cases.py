"""What every lesson builds its graded items from: ``Case``, ``Item``, call-program steps, shared invariants.

A case is a call program plus its input tensors (see docs/ARCHITECTURE.md); the reference side runs the
same program against the ``solutions`` package. The lessons (``exercises/lessons/``) build their items'
cases from these pieces; ``exercises.catalogue`` gathers the items. This module imports no lesson.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from exercises import op_guard
from exercises.compare import Outputs, value_mismatch
from exercises.i18n import tr
from exercises.tolerances import tolerance

Check = Callable[[Outputs, Outputs], "str | None"]

FLOAT_DTYPES = ("float64", "float32")
# Families of built-ins an item may forbid (``Item.forbidden``): the operation monitor (``exercises/op_guard.py``)
# maps every route to them (any namespace, Tensor methods, modules, operators below the Python API).
BUILTIN_SOFTMAX = (op_guard.SOFTMAX,)  # softmax, log_softmax, softmin, nn.Softmax, aten._softmax, _safe_softmax, ...
BUILTIN_SDPA = (op_guard.SDPA,)  # F.scaled_dot_product_attention, torch._C._nn..., aten._scaled_dot_product_*, ...
BUILTIN_MHA = (op_guard.MHA,)  # nn.MultiheadAttention, F.multi_head_attention_forward, aten._native_multi_head_...


@dataclass
class Case:
    """One graded call: its program, its inputs and how its outputs are judged."""

    name: str
    program: list[dict[str, Any]]
    inputs: dict[str, torch.Tensor]
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    compare: bool = True  # compare every output with the reference's; False: only ``checks`` judge
    tolerance_scale: float = 1.0  # > 1 where the inputs themselves carry rounding error (see lesson 1's input_rounding)
    # The most elements any tensor created while the call runs may have (lesson 8's "no (n_q, n_k)
    # score matrix" rule: n_q * n_k - 1 on cases where every legitimate tensor is smaller); None: no limit.
    # The operation monitor checks every operator's outputs, views included (``exercises/op_guard.py``).
    max_numel: int | None = None


@dataclass(frozen=True)
class Item:
    """A graded name: which notebook defines it and how to build its cases for one dtype."""

    name: str
    notebook: str
    build: Callable[[torch.Generator, torch.dtype | None], list[Case]]
    dtypes: tuple[str | None, ...] = FLOAT_DTYPES
    gpu_dtypes: tuple[str, ...] = ("bfloat16",)
    forbidden: tuple[str, ...] = ()  # families: BUILTIN_SOFTMAX, BUILTIN_SDPA, BUILTIN_MHA
    depends_on: tuple[str, ...] = ()

    def variants(self, device: str) -> tuple[str | None, ...]:
        """The dtype variants graded on ``device`` (bfloat16 only on a GPU, where it matters)."""
        extra = self.gpu_dtypes if device == "cuda" and self.dtypes == FLOAT_DTYPES else ()
        return tuple(self.dtypes) + tuple(extra)

    def share(self, points: float, device: str, devices: list[str]) -> float:
        """Points of one dtype variant on ``device``: split equally over devices, then over variants."""
        return points / len(devices) / len(self.variants(device))

    def cases(self, seed: int, dtype: str | None) -> list[Case]:
        """Build the cases for ``dtype`` from ``seed``: same seed, same inputs, on both sides."""
        mixed = zlib.crc32(f"{self.name}/{dtype}".encode()) ^ (seed & 0xFFFFFFFF)
        gen = torch.Generator().manual_seed(mixed)
        return self.build(gen, getattr(torch, dtype) if dtype else None)


def available_devices() -> list[str]:
    """The devices every check runs on: ``cpu``, and ``cuda`` where present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- program building blocks ------------------------------------------------------------------


def tensor_arg(key: str) -> dict[str, str]:
    """An argument: the case's input tensor ``key``."""
    return {"tensor": key}


def var_arg(name: str) -> dict[str, str]:
    """An argument: the program variable ``name`` (an earlier step's ``out``)."""
    return {"var": name}


def literal_arg(value: Any) -> dict[str, Any]:
    """An argument: a JSON value passed as it is."""
    return {"lit": value}


DEVICE_ARG = {"device": True}  # an argument: the device the case runs on
QUERY_KEY_DIMS = ("query", "key")  # names of the last two dimensions of an (n_q, n_k) output, for messages
QUERY_FEATURE_DIMS = ("query", "feature")  # and of an (n, d) output


def call(fn: str, *args: dict, out: str = "out", **kwargs: dict) -> list[dict[str, Any]]:
    """A program that calls ``fn`` and returns its result as output ``out``."""
    return [{"op": "call", "fn": fn, "args": list(args), "kwargs": kwargs, "out": "result"},
            {"op": "output", "key": out, "var": "result"}]


def rand(gen: torch.Generator, *shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """Standard normal values drawn in float64 then cast, so every dtype sees the same numbers."""
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def reference_params(cls_name: str, kwargs: dict[str, Any], gen: torch.Generator, dtype: torch.dtype,
                     prefix: str = "p.") -> dict[str, torch.Tensor]:
    """Random values for every parameter of the reference module, keyed ``prefix + name``."""
    import solutions

    module = getattr(solutions, cls_name)(**kwargs)
    return {prefix + name: rand(gen, *p.shape, dtype=dtype, scale=1 / math.sqrt(max(p.shape[-1], 1)))
            for name, p in module.named_parameters()}


def build_module(cls: str, kwargs: dict[str, Any], params: dict[str, torch.Tensor], var: str = "m",
                 train: bool = False, prefix: str = "p.") -> list[dict[str, Any]]:
    """Steps that construct ``cls(**kwargs)``, load ``params`` by name and set the mode."""
    return [
        {"op": "new", "cls": cls, "kwargs": {k: literal_arg(v) for k, v in kwargs.items()}, "out": var},
        {"op": "load_params", "obj": var, "params": {k[len(prefix):]: k for k in params if k.startswith(prefix)}},
        {"op": "mode", "obj": var, "train": train},
    ]


def forward(var: str, *args: dict, out: str) -> list[dict[str, Any]]:
    """Steps that call the module in variable ``var`` and return its result as output ``out``."""
    return [{"op": "call", "fn": var, "args": list(args), "out": "y_" + out},
            {"op": "output", "key": out, "var": "y_" + out}]


# --- invariants (issue: checks with their own messages) ---------------------------------------


def rows_sum_to_one(key: str, scale: float = 1.0) -> Check:
    def check(student: Outputs, reference: Outputs) -> str | None:
        w = student.tensor(key)
        if w is None or not w.is_floating_point() or w.shape != reference.tensors[key].shape:
            return None  # shape/type problems are reported by the comparison
        sums = w.double().sum(-1)
        worst = float((sums - 1).abs().max()) if sums.numel() else 0.0
        tol = (2e-2 if w.dtype in (torch.bfloat16, torch.float16) else 1e-4) * scale
        if not math.isfinite(worst) or worst > tol:
            return tr("rows of `{key}` must sum to 1 (a softmax over the keys): the worst row sums to 1 "
                      "{worst:+.3g}").format(key=key, worst=worst)
        return None
    return check


def prefix_unchanged(key_a: str, key_b: str, upto: int, what: str) -> Check:
    """Outputs for positions ``< upto`` must not change when tokens from ``upto`` on are perturbed."""
    def check(student: Outputs, reference: Outputs) -> str | None:
        a, b = student.tensor(key_a), student.tensor(key_b)
        if a is None or b is None or a.shape != b.shape or a.dim() < 2:
            return None
        if value_mismatch(key_a, b[..., :upto, :], a[..., :upto, :]) is not None:
            words = {"outputs": tr("outputs")}  # made here, in the language of the notebook being judged
            return tr("causal leak: changing tokens {upto}.. changed the {what} of earlier tokens; mask the scores of "
                      "later keys with -inf before the softmax").format(upto=upto, what=words.get(what, what))
        return None
    return check


def outputs_differ(key_a: str, key_b: str, message: str | Callable[[], str]) -> Check:
    """``message`` when the two outputs are equal; a callable makes it when the check runs (a case is built once,
    its message must be in the language of the notebook it judges)."""
    def check(student: Outputs, reference: Outputs) -> str | None:
        a, b = student.tensor(key_a), student.tensor(key_b)
        if a is None or b is None or a.shape != b.shape:
            return None
        if not torch.equal(a, b):
            return None
        return message() if callable(message) else message
    return check


def gradients_present(student: Outputs, reference: Outputs) -> str | None:
    missing = [k for k, m in student.meta.items() if k.startswith("grad") and m.get("pytype") == "NoneType"]
    if missing:
        return tr("no gradient reaches {names}: keep every step differentiable (no .detach(), .item(), .data, "
                  "torch.no_grad() or new tensors built from Python numbers in forward)").format(
            names=", ".join(missing[:4]))
    return None


def gradient_case(name: str, build_steps: list[dict[str, Any]], call_fn: str, arg_keys: list[str],
                  inputs: dict[str, torch.Tensor], out_shape: tuple[int, ...], gen: torch.Generator,
                  dtype: torch.dtype, params_of: str | None = None, extra_args: tuple = ()) -> Case:
    """Gradients of a weighted sum of the output with respect to inputs (and parameters) must match the reference's.

    ``call_fn`` must return one tensor; the weights of the sum are random, so every output entry counts.
    """
    inputs = {**inputs, "grad_weights": rand(gen, *out_shape, dtype=dtype)}
    steps = list(build_steps) + [{"op": "leaf", "tensor": k, "out": f"leaf_{k}"} for k in arg_keys]
    steps += [{"op": "call", "fn": call_fn, "args": [var_arg(f"leaf_{k}") for k in arg_keys] + list(extra_args),
               "out": "y"}]
    steps += [{"op": "backward", "var": "y", "weights": "grad_weights"}]
    for k in arg_keys:
        steps += [{"op": "grad", "var": f"leaf_{k}", "out": f"g_{k}"},
                  {"op": "output", "key": f"grad_{k}", "var": f"g_{k}"}]
    if params_of:
        steps += [{"op": "param_grads", "obj": params_of, "out": "gp"},
                  {"op": "output", "key": "grad_params", "var": "gp"}]
    return Case(name, steps, inputs, checks=(gradients_present,))


def permutation_case(name: str, build_steps: list[dict[str, Any]], fn: str, x: torch.Tensor, gen: torch.Generator,
                     inputs: dict[str, torch.Tensor] | None = None, take_first: bool = False) -> Case:
    """Without positions, attention is permutation-equivariant: permuting the tokens permutes the outputs."""
    n = x.shape[-2]
    perm = torch.randperm(n, generator=gen)
    program = list(build_steps) + [
        {"op": "call", "fn": fn, "args": [tensor_arg("x")], "out": "a"}, {"op": "output", "key": "out", "var": "a"},
        {"op": "call", "fn": fn, "args": [tensor_arg("x_perm")], "out": "b"},
        {"op": "output", "key": "out_perm", "var": "b"}]
    key = "out.0" if take_first else "out"
    key_perm = "out_perm.0" if take_first else "out_perm"

    def check(student: Outputs, reference: Outputs) -> str | None:
        a, b = student.tensor(key), student.tensor(key_perm)
        if a is None or b is None or a.shape != b.shape or a.dim() < 2:
            return None
        if value_mismatch(key, b, a[..., perm, :]) is not None:
            return tr("permuting the input tokens should permute the outputs the same way (attention has no notion "
                      "of position); your output mixes positions: check which dimension you transpose and reduce")
        return None
    return Case(name, program, {**(inputs or {}), "x": x, "x_perm": x[..., perm, :].clone()}, checks=(check,))


# --- modules: construction, leaks, gradients, dropout (lessons 3 to 5) ------------------------


def module_cases(cls: str, configs: list[tuple[str, dict[str, Any], tuple[int, ...]]],
                 gen: torch.Generator, dtype: torch.dtype, checks: Callable[[dict], tuple] = lambda cfg: ()):
    """One case per ``(name, kwargs, x_shape)``: ``cls(**kwargs)`` with random parameters, called on a random ``x``."""
    cases = []
    for name, kwargs, x_shape in configs:
        params = reference_params(cls, kwargs, gen, dtype)
        program = build_module(cls, kwargs, params) + forward("m", tensor_arg("x"), out="out")
        dims = {"out": ("batch",) * (len(x_shape) - 2) + QUERY_FEATURE_DIMS}
        cases.append(Case(name, program, {**params, "x": rand(gen, *x_shape, dtype=dtype)}, dims, checks(kwargs)))
    return cases


def module_invariants(cls: str, kwargs: dict[str, Any], gen, dtype, permutation: bool = False) -> list[Case]:
    """Gradients in float64 (inputs and parameters); permutation equivariance where there is no mask."""
    cases = []
    x_shape = (2, 5, kwargs["d_in"])
    if dtype == torch.float64:
        params = reference_params(cls, kwargs, gen, dtype)
        out_features = kwargs["d_out"] * (kwargs.get("num_heads", 1) if cls == "MultiHeadAttentionWrapper" else 1)
        cases.append(gradient_case("gradients", build_module(cls, kwargs, params), "m", ["x"],
                                   {**params, "x": rand(gen, *x_shape, dtype=dtype)}, (2, 5, out_features), gen,
                                   dtype, params_of="m"))
    if permutation:
        params = reference_params(cls, kwargs, gen, dtype)
        cases.append(permutation_case("permutation_equivariant", build_module(cls, kwargs, params), "m",
                                      rand(gen, *x_shape, dtype=dtype), gen, inputs=params))
    return cases


def causal_leak_case(cls: str, kwargs: dict[str, Any], gen, dtype, b: int, n: int, upto: int) -> Case:
    """The outputs of tokens ``< upto`` must not change when the tokens from ``upto`` on do."""
    params = reference_params(cls, kwargs, gen, dtype)
    x = rand(gen, b, n, kwargs["d_in"], dtype=dtype)
    x_future = x.clone()
    x_future[:, upto:] = rand(gen, b, n - upto, kwargs["d_in"], dtype=dtype)
    program = build_module(cls, kwargs, params) + forward("m", tensor_arg("x"), out="out") + \
        forward("m", tensor_arg("x_future"), out="out_future")
    return Case(f"no_causal_leak_n{n}", program, {**params, "x": x, "x_future": x_future},
                {"out": ("batch",) + QUERY_FEATURE_DIMS, "out_future": ("batch",) + QUERY_FEATURE_DIMS},
                (prefix_unchanged("out", "out_future", upto, "outputs"),))


DROPOUT_P = 0.5  # the train-mode cases' dropout rate: kept values are scaled by 1 / (1 - p) = 2


class _KeepMask(torch.nn.Module):
    """Stands in for ``nn.Dropout``: multiplies by a fixed keep-mask already scaled by ``1 / (1 - p)``."""

    def __init__(self, keep: torch.Tensor):
        super().__init__()
        self.keep = keep

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return weights * self.keep


def weight_dropout_outcomes(cls: str, kwargs: dict[str, Any], params: dict[str, torch.Tensor],
                            x: torch.Tensor, prefix: str = "p.") -> torch.Tensor:
    """Every output that dropping attention weights can give, in float64: ``(combinations, n, d_out)``.

    ``x`` is one sequence ``(1, n, d_in)``. The reference module runs once per combination of kept keys
    (per head), with its dropout replaced by that fixed keep-mask; query row ``i`` depends only on the
    keys ``j <= i``, so row ``i`` of the result, over all combinations, lists every possible row ``i``.
    """
    import solutions

    module = getattr(solutions, cls)(**kwargs).double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(params[prefix + name])
    n, heads = x.shape[-2], kwargs.get("num_heads", 1)
    bits = heads * n
    keep = (torch.arange(2**bits)[:, None] >> torch.arange(bits)) & 1  # (2**bits, h * n)
    keep = keep.to(torch.float64).view(-1, heads, 1, n) / (1 - kwargs["dropout"])  # key j of head h kept
    module.dropout = _KeepMask(keep if cls == "MultiHeadAttention" else keep[:, 0])
    with torch.no_grad():
        return module(x.double().expand(len(keep), -1, -1))


def dropped_attention_weights(cls: str, kwargs: dict[str, Any], params: dict[str, torch.Tensor],
                              x: torch.Tensor) -> Check:
    """In train() mode each output row must be one of those that dropping attention weights gives.

    Dropout on the output (or the context vectors, the values, the scores) gives rows that no choice of
    dropped weights explains. Judged only when the two passes differ and the eval() output is right
    (other checks report those).
    """
    outcomes: list[torch.Tensor] = []

    def check(student: Outputs, reference: Outputs) -> str | None:
        ev, ref_ev = student.tensor("eval_out"), reference.tensor("eval_out")
        runs = [student.tensor("train_a"), student.tensor("train_b")]
        if ev is None or ref_ev is None or any(t is None or t.shape != ref_ev.shape for t in runs):
            return None
        if torch.equal(runs[0], runs[1]) or value_mismatch("eval_out", ev, ref_ev) is not None:
            return None
        if not outcomes:
            outcomes.append(weight_dropout_outcomes(cls, kwargs, params, x))
        rtol, atol = tolerance(ref_ev.dtype)
        possible = outcomes[0]
        for key, run in zip(("train_a", "train_b"), runs, strict=True):
            got = run[0].double()  # (n, d_out)
            found = ((possible - got).abs() <= atol + rtol * possible.abs()).all(-1).any(0)  # (n,)
            if not bool(found.all()):
                row = int((~found).nonzero()[0, 0])
                return tr("in train() mode, row {row} of `{key}` is not what dropout on the attention weights "
                          "gives (the values weighted by the attention weights, some weights zeroed and the others "
                          "scaled by 1/(1-p)): apply self.dropout to the attention weights, after the softmax, "
                          "not to the output (nor to the context vectors, the values or the scores)").format(
                    row=row, key=key)
        return None
    return check


def dropout_case(cls: str, kwargs: dict[str, Any], gen, dtype) -> Case:
    """Training mode: dropout must act (two passes differ) on the attention weights (float32 and float64).

    The module's parameters come back as ``params`` (for the mistakes' predicates).
    """
    params = reference_params(cls, kwargs, gen, dtype)
    x = rand(gen, 1, 5, kwargs["d_in"], dtype=dtype)
    program = build_module(cls, kwargs, params) + [{"op": "params", "obj": "m", "out": "loaded"},
                                                   {"op": "output", "key": "params", "var": "loaded"}] + \
        forward("m", tensor_arg("x"), out="eval_out") + [{"op": "mode", "obj": "m", "train": True}] + \
        forward("m", tensor_arg("x"), out="train_a") + forward("m", tensor_arg("x"), out="train_b")
    def message() -> str:
        return tr("{cls} in train() mode with dropout={p} gave the same output twice: apply self.dropout to the "
                  "attention weights in forward").format(cls=cls, p=kwargs["dropout"])
    checks: tuple[Check, ...] = (outputs_differ("train_a", "train_b", message),)
    if dtype in (torch.float64, torch.float32):  # half precision: too coarse to tell the outcomes apart
        checks += (dropped_attention_weights(cls, kwargs, params, x),)
    return Case("dropout_in_train_mode", program, {**params, "x": x}, {"eval_out": ("batch",) + QUERY_FEATURE_DIMS},
                checks, compare=False)


def eval_matches(key: str) -> Check:
    """For cases judged only by checks: the eval-mode output must still equal the reference's."""
    def check(student: Outputs, reference: Outputs) -> str | None:
        actual = student.tensor(key)
        if actual is None or actual.shape != reference.tensors[key].shape:
            return tr("`{key}` missing or of the wrong shape in eval() mode").format(key=key)
        found = value_mismatch(key, actual, reference.tensors[key])
        return None if found is None else tr("in eval() mode dropout must be off: {problem}").format(
            problem=found.message)
    return check
