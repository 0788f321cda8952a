"""The operation monitor: what a graded call ran, seen at the Python API and at the operator level.

Every lesson's no-shortcut rule rests on this one mechanism, not on a list of Python names. While a
graded call runs, two of torch's own interposition points watch it:

- a ``TorchFunctionMode`` sees every call into torch's Python API, whatever name or namespace it is
  reached by: ``torch.softmax``, ``F.softmax`` (also through ``getattr``, ``F.__dict__``, ``importlib``),
  ``x.softmax``, ``nn.Softmax`` (it calls ``F.softmax``), ``F.multi_head_attention_forward`` (what
  ``nn.MultiheadAttention`` runs), ``torch._C._nn.scaled_dot_product_attention``, ``torch.ops.aten.*``;
- a ``TorchDispatchMode`` sees every operator below the Python API (``aten._softmax``,
  ``aten._safe_softmax``, ``aten._scaled_dot_product_flash_attention_for_cpu``, ...), the operators
  that autograd runs during a backward pass included, and every tensor they return.

Both levels are mapped to the same families (``FAMILIES``: ``softmax``, ``scaled_dot_product_attention``,
``MultiheadAttention``). Both are needed: composite operators such as SDPA's math path decompose before
the operator level sees them (it sees only ``_safe_softmax``, which is no proof of SDPA where softmax
itself is allowed), and the Python level cannot see what runs inside a built-in or a backward pass.

With ``max_numel`` set, every operator output with more elements is recorded (views and reshapes too:
a flattened score matrix is still one). The student's code runs in the same process; code that switches
the monitor off (pops a mode, disables torch functions or the Python dispatch key) is recorded as
``tampered`` (each level checks the other on every event, and both are checked at the end); the worker
also sets tripwires on torch's switches for both levels at once (``install_tripwires``).

This file is copied into the worker's sandbox (like ``program.py``): standard library and torch only.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SOFTMAX, SDPA, MHA = "softmax", "scaled_dot_product_attention", "MultiheadAttention"

# The one table: a name seen at either level (a Python function's ``__name__`` or an operator's name,
# namespace and overload stripped) -> its family. Names that start with a prefix of ``PREFIXES`` too.
FAMILIES: dict[str, str] = {
    **dict.fromkeys(("softmax", "log_softmax", "softmin", "_softmax", "_log_softmax", "_safe_softmax",
                     "_masked_softmax", "special_softmax", "special_log_softmax", "_softmax_backward_data",
                     "_log_softmax_backward_data", "_masked_softmax_backward"), SOFTMAX),
    **dict.fromkeys(("scaled_dot_product_attention", "_fused_sdp_choice"), SDPA),
    **dict.fromkeys(("MultiheadAttention", "multi_head_attention_forward", "_native_multi_head_attention",
                     "_transformer_encoder_layer_fwd"), MHA),
}
PREFIXES: tuple[tuple[str, str], ...] = (
    ("_scaled_dot_product_", SDPA),  # _attention_math, _flash_attention(_for_cpu), _efficient_attention, _cudnn_...
    ("_flash_attention_", SDPA),
    ("_efficient_attention_", SDPA),
    ("_cudnn_attention_", SDPA),
)

# Names of torch's switches for these modes: code that names them is suspect (``exercises.rules`` reads
# the answer cell for them; the monitor itself sees their effect at run time).
TAMPER_NAMES = frozenset({
    "_pop_torch_function_stack", "_pop_torch_dispatch_stack", "_set_torch_function_mode", "_set_dispatch_mode",
    "_unset_dispatch_mode", "_push_on_torch_function_stack", "_push_on_torch_dispatch_stack",
    "_disable_current_modes", "_pop_mode", "_pop_mode_temporarily", "DisableTorchFunction",
    "_DisableTorchDispatch", "_ExcludeDispatchKeyGuard", "_IncludeDispatchKeyGuard", "_set_torch_function_state",
    "_set_skip_next_torch_function", "_skip_one_hop_torch_function", "redispatch", "_dispatch_call_boxed",
    "_ForceDispatchKeyGuard", "_PreserveDispatchKeyGuard", "_RestorePythonTLSSnapshot",
})

TAMPERED = "the code switched off the grader's operation monitor"


def base_name(name: str) -> str:
    """``aten::softmax.int`` -> ``softmax``; ``_softmax.default`` -> ``_softmax`` (namespace and overload go)."""
    return name.rsplit("::", 1)[-1].split(".", 1)[0]


@functools.lru_cache(maxsize=4096)
def family_of(name: str) -> str | None:
    """The family of a function or operator name (see ``FAMILIES``), else None."""
    name = base_name(name)
    found = FAMILIES.get(name)
    if found is None:
        found = next((family for prefix, family in PREFIXES if name.startswith(prefix)), None)
    return found


def _route(func: Any) -> str:
    """A readable name for a callable: ``torch.softmax``, ``Tensor.softmax``, ``torch.ops.aten._softmax``."""
    name = getattr(func, "__name__", None) or type(func).__name__
    qual = getattr(func, "__qualname__", "") or ""
    module = getattr(func, "__module__", None) or ""
    if qual.startswith("TensorBase.") or qual.startswith("Tensor."):
        return f"Tensor.{name}"
    if qual.startswith("_VariableFunctionsClass."):
        return f"torch.{name}"
    if "::" in name or "pybind11" in qual or module.startswith("torch._ops") or module == "torch.ops.aten":
        return f"torch.ops.aten.{base_name(name)}"
    if module.startswith("torch._C._"):
        return f"{module}.{name}"
    return f"{module}.{name}" if module else name


def _function_stack() -> list[Any]:
    return [torch._C._get_function_stack_at(i) for i in range(torch._C._len_torch_function_stack())]


def _dispatch_stack() -> list[Any]:
    return [torch._C._get_dispatch_stack_at(i) for i in range(torch._C._len_torch_dispatch_stack())]


def _same(modes: list[Any], expected: list[Any]) -> bool:
    return len(modes) == len(expected) and all(a is b for a, b in zip(modes, expected, strict=True))


def _python_key_excluded() -> bool:
    try:
        return bool(torch._C._dispatch_tls_is_dispatch_key_excluded(torch._C.DispatchKey.Python))
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch
        return False


class _FunctionLevel(TorchFunctionMode):
    def __init__(self, guard: OpGuard):
        super().__init__()
        self.guard = guard

    def __torch_function__(self, func, types, args=(), kwargs=None):
        guard = self.guard
        family = family_of(getattr(func, "__name__", "") or "")
        if family is not None and family not in guard.used:
            guard.used[family] = _route(func)
        # Inside the operator level's own handler its mode is popped (torch does that), and an operator
        # that torch runs from C++ there (the views a custom autograd.Function makes of its outputs)
        # comes back through this level: the operator level being off is then no tampering.
        if guard.in_operator == 0 and not guard.dispatch_active():
            guard.tamper("the operator-level monitor was not active during a call of torch's API")
        guard.depth += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            guard.depth -= 1


class _OperatorLevel(TorchDispatchMode):
    def __init__(self, guard: OpGuard):
        super().__init__()
        self.guard = guard

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        guard = self.guard
        name = getattr(func, "_opname", None) or func.__name__
        family = family_of(name)
        if family is not None and family not in guard.used:
            guard.used[family] = f"aten.{name} (an operator below the Python API)"
        if guard.depth == 0 and not guard.function_active():
            guard.tamper("torch's Python API ran without the grader's function-level monitor")
        guard.in_operator += 1  # also while this handler reads the outputs (Tensor.numel is a torch function)
        try:
            out = func(*args, **(kwargs or {}))
            if guard.max_numel is not None and guard.too_big is None:
                for leaf in torch.utils._pytree.tree_leaves(out):
                    if isinstance(leaf, torch.Tensor) and leaf.numel() > guard.max_numel:
                        guard.too_big = (tuple(leaf.shape), leaf.numel(), f"aten.{name}")
                        break
        finally:
            guard.in_operator -= 1
        return out


class OpGuard:
    """Watch a block of code: ``with OpGuard(max_numel=...) as guard: ...``; then read its findings.

    ``used``: family -> the first route seen to it; ``too_big``: (shape, numel, operator) of the first
    operator output larger than ``max_numel``; ``tampered``: why the monitor was found switched off.
    The block's own exceptions pass through; the monitor's stacks are left as they were before it.
    """

    def __init__(self, max_numel: int | None = None):
        self.max_numel = max_numel
        self.used: dict[str, str] = {}
        self.too_big: tuple[tuple[int, ...], int, str] | None = None
        self.tampered: str | None = None
        self.depth = 0
        self.in_operator = 0  # > 0 while the operator level runs an operator (see _FunctionLevel)
        self._function = _FunctionLevel(self)
        self._operator = _OperatorLevel(self)
        self._saved: tuple[list[Any], list[Any]] = ([], [])  # the mode stacks before the block
        self._state: tuple[Any, bool] | None = None  # torch functions' state, the Python key excluded?

    # --- checks each level makes of the other ----------------------------------------------------
    def tamper(self, why: str) -> None:
        if self.tampered is None:
            self.tampered = why

    def dispatch_active(self) -> bool:
        """The operator level is on its stack (anywhere: ``torch.device`` contexts go to the bottom) and the Python
        dispatch key is not excluded."""
        return (not _python_key_excluded()
                and any(torch._C._get_dispatch_stack_at(i) is self._operator
                        for i in range(torch._C._len_torch_dispatch_stack() - 1, -1, -1)))

    def function_active(self) -> bool:
        """The function level is on its stack (anywhere, as above) and torch functions are not disabled."""
        return (not torch._C._is_torch_function_all_disabled()
                and any(torch._C._get_function_stack_at(i) is self._function
                        for i in range(torch._C._len_torch_function_stack() - 1, -1, -1)))

    # --- the block ---------------------------------------------------------------------------------
    def __enter__(self) -> OpGuard:
        self._saved = (_function_stack(), _dispatch_stack())
        self._state = (torch._C._get_torch_function_state(), _python_key_excluded())
        self._function.__enter__()
        self._operator.__enter__()
        _OPEN.append(self)
        return self

    def intact(self) -> bool:
        """Both modes still where ``__enter__`` put them (modes the code pushed above them are harmless: they hand
        on to ours) and neither torch functions nor the Python dispatch key switched off."""
        return self.function_active() and self.dispatch_active()

    def __exit__(self, *exc: Any) -> None:
        if self in _OPEN:
            _OPEN.remove(self)
        if not self.intact():
            self.tamper("the monitor's modes were not in place at the end of the call")
        functions, dispatchers = self._saved
        exact = (_same(_function_stack(), [*functions, self._function])
                 and _same(_dispatch_stack(), [*dispatchers, self._operator]))
        if not exact or (torch._C._get_torch_function_state(), _python_key_excluded()) != self._state:
            # put the stacks and switches back as ``__enter__`` left them, whatever the code did (modes it left
            # behind go too), then leave normally
            torch._C._set_torch_function_state(self._state[0])
            torch._C._dispatch_tls_set_dispatch_key_excluded(torch._C.DispatchKey.Python, self._state[1])
            while torch._C._len_torch_dispatch_stack():
                torch._C._pop_torch_dispatch_stack(None)
            while torch._C._len_torch_function_stack():
                torch._C._pop_torch_function_stack()
            for mode in [*functions, self._function]:
                torch._C._push_on_torch_function_stack(mode)
            for mode in [*dispatchers, self._operator]:
                torch._C._push_on_torch_dispatch_stack(mode)
        self._operator.__exit__(None, None, None)
        self._function.__exit__(None, None, None)

    # --- findings ----------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """What the block did, as JSON: ``used`` (family -> route), ``too_big``, ``tampered``."""
        big = None if self.too_big is None else {"shape": list(self.too_big[0]), "numel": self.too_big[1],
                                                  "op": self.too_big[2]}
        return {"used": dict(self.used), "too_big": big, "tampered": self.tampered}


# --- tripwires: torch's switches for the modes, called by code other than torch's own -----------------
# The two levels watch each other, but code that switches both off at once (``_DisableTorchDispatch`` around
# ``DisableTorchFunction``) or calls a kernel below the Python key (``OpOverload.redispatch``) leaves neither
# anything to see. The worker installs these wrappers before any student code runs; while a guard is open,
# a call to one of them from outside torch (and this file) is tampering. Torch's own uses (frames of
# ``torch.*`` modules) pass, and so does everything while no guard is open.
SWITCHES: tuple[tuple[str, str], ...] = (
    ("torch._C", "_DisableTorchDispatch"), ("torch._C", "DisableTorchFunction"),
    ("torch._C", "_ExcludeDispatchKeyGuard"),
    ("torch._C", "_pop_torch_function_stack"), ("torch._C", "_pop_torch_dispatch_stack"),
    ("torch._C", "_set_torch_function_state"), ("torch._C", "_unset_dispatch_mode"),
    ("torch._C", "_dispatch_tls_set_dispatch_key_excluded"), ("torch._ops.OpOverload", "redispatch"),
)
_OPEN: list[OpGuard] = []  # the guards open now, innermost last


def _outside_torch(depth: int = 2) -> bool:
    name = sys._getframe(depth).f_globals.get("__name__", "")
    return not (name == "torch" or name.startswith("torch.") or name == __name__)


def _tripwire(name: str, original: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _OPEN and _outside_torch():
            _OPEN[-1].tamper(f"the code called {name}")
        return original(*args, **kwargs)

    wrapper.__name__ = getattr(original, "__name__", name)
    wrapper.__qualname__ = getattr(original, "__qualname__", name)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    wrapper.__wrapped__ = original
    return wrapper


def install_tripwires() -> Any:
    """Wrap ``SWITCHES`` (see above); returns a function that puts the originals back (for tests)."""
    import importlib

    undo = []
    for owner_path, attr in SWITCHES:
        try:
            owner = importlib.import_module(owner_path)
        except ImportError:
            module, _, name = owner_path.rpartition(".")
            owner = getattr(importlib.import_module(module), name)
        original = vars(owner).get(attr)
        if original is None or getattr(original, "__wrapped__", None) is not None:
            continue
        setattr(owner, attr, _tripwire(attr, original))
        undo.append((owner, attr, original))

    def restore() -> None:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)
    return restore


def too_big_message(item: str, too_big: dict[str, Any], max_numel: int) -> str:
    """What a student reads when a call created a tensor larger than the case allows."""
    shape = "(" + ", ".join(str(s) for s in too_big["shape"]) + ")"
    return (f"`{item}` created a tensor of shape {shape} ({too_big['numel']} elements, more than the "
            f"{max_numel} this case allows, in {too_big['op']}): this lesson's functions must never build the "
            f"full (n_q, n_k) score matrix; work block by block")
