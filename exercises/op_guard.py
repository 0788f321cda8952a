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
``MultiheadAttention``), read from torch's own operator registry and Python API, not from a hand list.
Both are needed: composite operators such as SDPA's math path decompose before the operator level sees
them (it sees only ``_safe_softmax``, which is no proof of SDPA where softmax itself is allowed), and the
Python level cannot see what runs inside a built-in or a backward pass.

With ``max_numel`` set, every operator output with more elements is recorded (views and reshapes too:
a flattened score matrix is still one). With ``span`` set (lessons 9-10: the tiled algorithm), every
output that holds more than one key block's worth of keys for a query row is recorded (``spans_keys``),
and the data may not leave torch (NumPy, Python lists, numbers one by one).

The student's code runs in the same process. Code that switches the monitor off (pops a mode, disables
torch functions or the Python dispatch key) is recorded as ``tampered`` (each level checks the other on
every event, and both are checked at the end); ``install_tripwires``, run before any student code, wraps
torch's switches for the modes (and its helpers for them, entered from student code), refuses threads
and processes while a call is watched (the modes are per thread), and adds an audit hook that keeps every
finding where Python code cannot erase it (``_audit_hook``). What an in-process monitor cannot guarantee
is written in docs/ARCHITECTURE.md ("No shortcuts").

This file is copied into the worker's sandbox (like ``program.py``): standard library and torch only.
"""

from __future__ import annotations

import functools
import sys
import threading
import types
from types import MappingProxyType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SOFTMAX, SDPA, MHA = "softmax", "scaled_dot_product_attention", "MultiheadAttention"

# The families come from torch itself, not from a hand list of names: every ``aten`` operator in torch's
# operator registry, and every name in torch's Python API (``torch``, ``torch.nn.functional``, ``Tensor``,
# ``nn``, ``torch.special``, ``torch.sparse``, ``torch._C._nn``), whose name contains one of these words.
# An operator a new torch version adds (a sparse or nested softmax, another SDPA kernel) is in its family
# without anyone listing it. The order matters: ``_native_multi_head_attention`` is MultiheadAttention.
PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("multi_head", "multihead", "transformer_encoder"), MHA),
    (("softmax", "softmin"), SOFTMAX),
    (("attention", "sdp"), SDPA),
)


def _family_by_pattern(name: str) -> str | None:
    lower = name.lower()
    return next((family for words, family in PATTERNS if any(word in lower for word in words)), None)


def _torch_names() -> set[str]:
    """Every ``aten`` operator's name (registry) and every callable name of torch's Python API."""
    names = {base_name(op) for op in torch._C._dispatch_get_all_op_names() if op.startswith("aten::")}
    for owner in (torch, torch.nn.functional, torch.Tensor, torch.nn, torch.special, torch.sparse, torch._C._nn,
                  torch._C._VariableFunctions):
        for name in dir(owner):
            helper = name.startswith("_get")  # ``F._get_softmax_dim`` picks a dimension, it computes nothing
            if not helper and _family_by_pattern(name) is not None and callable(getattr(owner, name, None)):
                names.add(name)
    return names


def base_name(name: str) -> str:
    """``aten::softmax.int`` -> ``softmax``; ``_softmax.default`` -> ``_softmax`` (namespace and overload go)."""
    return name.rsplit("::", 1)[-1].split(".", 1)[0]


# name -> family, read-only; built once when this file is imported (before any student code runs)
FAMILIES: MappingProxyType[str, str] = MappingProxyType(
    {name: family for name in _torch_names() if (family := _family_by_pattern(name)) is not None})

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


def N_(template: str) -> str:
    """Mark ``template`` as a message the grader translates once this monitor's report is back: the twin of
    ``exercises.i18n.N_`` (this file is copied into the worker alone, which has no catalogue); returns it."""
    return template


# Why the monitor counts as switched off (a report's ``tampered``), each written once: made here in English, given
# back in the student's language by ``exercises.rules.forbidden_message`` (``translate_made``, ``TAMPER_REASONS``).
NO_OPERATOR_LEVEL = N_("the operator-level monitor was not active during a call of torch's API")
NO_FUNCTION_LEVEL = N_("torch's Python API ran without the grader's function-level monitor")
THREAD_AT_START = N_("another thread of the code was running when the graded call started")
THREAD_AT_END = N_("another thread of the code was running at the end of the graded call")
CLOSED_EARLY = N_("the monitor was closed by the code before the end of the call")
MODES_GONE = N_("the monitor's modes were not in place at the end of the call")
OPENED_AGAIN = N_("the monitor was opened again by the code")
STARTED = N_("the code started a thread or a process ({name})")
CALLED = N_("the code called {name}")
CHANGED = N_("the code changed the monitor's {name}")
FORGED = N_("the code wrote to the monitor's record")
TAMPER_REASONS: tuple[str, ...] = (NO_OPERATOR_LEVEL, NO_FUNCTION_LEVEL, THREAD_AT_START, THREAD_AT_END, CLOSED_EARLY,
                                   MODES_GONE, OPENED_AGAIN, STARTED, CALLED, CHANGED, FORGED)
# A route to a family seen at the operator level (a report's ``used``; the Python API's routes are code, as is)
OPERATOR_ROUTE = N_("aten.{name} (an operator below the Python API)")
# An ``exported`` finding: numbers read out one by one past the budget (``Tensor.numpy`` and its kind are code, as is)
SCALARS_READ = N_("{count} numbers read out of tensors one by one (Tensor.{name})")


@functools.lru_cache(maxsize=4096)
def family_of(name: str) -> str | None:
    """The family of a function or operator name (see ``FAMILIES``), else None."""
    return FAMILIES.get(base_name(name))


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


# torch's own readers of the mode stacks, taken before the worker wraps them in tripwires (``SWITCHES``):
# the monitor reads the stacks on every event, and a student who reads them is reaching for the monitor
_GET_FUNCTION_AT, _LEN_FUNCTION = torch._C._get_function_stack_at, torch._C._len_torch_function_stack
_GET_DISPATCH_AT, _LEN_DISPATCH = torch._C._get_dispatch_stack_at, torch._C._len_torch_dispatch_stack


def _function_stack() -> list[Any]:
    return [_GET_FUNCTION_AT(i) for i in range(_LEN_FUNCTION())]


def _dispatch_stack() -> list[Any]:
    return [_GET_DISPATCH_AT(i) for i in range(_LEN_DISPATCH())]


def _same(modes: list[Any], expected: list[Any]) -> bool:
    return len(modes) == len(expected) and all(a is b for a, b in zip(modes, expected, strict=True))


def _python_key_excluded() -> bool:
    try:
        return bool(torch._C._dispatch_tls_is_dispatch_key_excluded(torch._C.DispatchKey.Python))
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch
        return False


# --- what the tiled algorithm may build (lessons 9-10's rule) -------------------------------------------------
# ``span`` (``exercises.rules.span_rule`` computes it from a case): n_q, n_k, block_q, block_k and the feature
# sizes d, d_v. The tiled algorithm never holds more than one key block's worth of keys for a query row: a
# floating-point operator output whose last two dimensions (where scores keep their keys: (.., q, k), or
# (.., k, q) transposed) include a size s, max(block_q, block_k) < s <= n_k, s != n_q, is a row of scores (or
# weights) over more keys than a block: the exact softmax of a whole row, one query at a time, builds one.
# Tensors that carry a feature dimension (d or d_v) among their last two are K, V, their transposes, their
# gradients: n_k rows of features, no scores; leading dimensions are batches (einsum folds them into bmm's).
# The rule is checked only where it is unambiguous (n_q != n_k: a query dimension is never taken for a key
# dimension); every item of lessons 9-10 has such cases.
# With ``span`` set the data may not leave torch either: the NumPy and Python-list detours (``EXPORTS``,
# called by the student's code) are refused, and single numbers read out of tensors (``SCALARS``) are counted:
# more than one per tile, query and key (``scalar_budget``) is the data read out number by number.
EXPORTS = frozenset({"numpy", "tolist", "__array__", "untyped_storage", "storage", "_typed_storage", "data_ptr",
                     "__dlpack__", "__reduce_ex__", "__getstate__"})
SCALARS = frozenset({"item", "__float__", "__int__", "__index__", "__complex__"})


def scalar_budget(span: dict[str, Any]) -> int:
    """How many numbers a call may read out of tensors one by one: one per tile (a test that skips a masked tile),
    per query and per key; the score matrix read out is more wherever a tile holds more than one score."""
    tiles = -(-span["n_q"] // span["block_q"]) * -(-span["n_k"] // span["block_k"])
    return tiles + span["n_q"] + span["n_k"]


def spans_keys(shape: tuple[int, ...], span: dict[str, Any]) -> bool:
    """Does a floating-point tensor of ``shape`` hold more than one key block's worth of keys per query row?"""
    if span["n_q"] == span["n_k"]:
        return False
    limit, last = max(span["block_q"], span["block_k"]), shape[-2:]
    if not any(limit < size <= span["n_k"] and size != span["n_q"] for size in last):
        return False
    return not any(size in span["features"] for size in last)


# Modules of the grader that run inside a graded call (stand-ins for dependencies read numbers out of tensors):
# their frames are not the student's. Identified by their globals dicts, which the student cannot become.
_TRUSTED: tuple[dict[str, Any], ...] = ()


def trust(*modules: Any) -> None:
    """Count code of these modules (and safetensors, which the stand-ins use) as the grader's, not the student's.
    Called by ``install_tripwires``, before any student code: afterwards the audit hook sees a change as tampering."""
    global _TRUSTED
    if _HOOKED:  # too late: the hook has taken its picture of this file
        return
    for module in [*modules, *(m for name, m in list(sys.modules.items()) if name.split(".")[0] == "safetensors")]:
        if module is not None and all(vars(module) is not known for known in _TRUSTED):
            _TRUSTED = (*_TRUSTED, vars(module))


# The worker's stand-ins for a dependency (answered by the grader when an item is graded again with the reference
# in place of a failed dependency) make tensors of their own: the arguments sent, the answer decoded. That is the
# grader's work, not the student's: the size and tiled rules do not measure it. Identified by their code objects,
# which the student cannot become; fixed, like ``_TRUSTED``, before the audit hook takes its picture.
_STAND_INS: tuple[Any, ...] = ()


def stand_ins(*functions: Any) -> None:
    """Count what runs inside ``functions`` (the worker's stand-ins) as the grader's work for the size and tiled
    rules (the forbidden families are still recorded). Like ``trust``, only before the audit hook is installed."""
    global _STAND_INS
    if _HOOKED:
        return
    _STAND_INS = (*_STAND_INS, *(fn.__code__ for fn in functions))


def _inside_stand_in() -> bool:
    """Is a stand-in's frame on the stack (the operator being run is part of answering a stand-in)?"""
    if not _STAND_INS:
        return False
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code in _STAND_INS:
            return True
        frame = frame.f_back
    return False


def _callers_globals() -> dict[str, Any]:
    """The globals of the nearest frame outside torch and this file: who called the torch function."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (frame.f_globals is globals() or name == "torch" or name.startswith("torch.")):
            return frame.f_globals
        frame = frame.f_back
    return {}


class _FunctionLevel(TorchFunctionMode):
    def __init__(self, guard: OpGuard):
        super().__init__()
        self.guard = guard

    def __torch_function__(self, func, types, args=(), kwargs=None):
        guard = self.guard
        name = getattr(func, "__name__", "") or ""
        family = family_of(name)
        if family is not None:  # posted every time: the record of what was seen is not the code's to edit
            guard.note_used(family, _route(func))
        if guard.span is not None and guard.depth == 0 and (name in EXPORTS or name in SCALARS):
            guard.note_export(name)
        # Inside the operator level's own handler its mode is popped (torch does that), and an operator
        # that torch runs from C++ there (the views a custom autograd.Function makes of its outputs)
        # comes back through this level: the operator level being off is then no tampering.
        if guard.in_operator == 0 and not guard.dispatch_active():
            guard.tamper(NO_OPERATOR_LEVEL)
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
        # only torch's own operators: a student's custom operator named ``softmax`` is their own code
        family = family_of(name) if getattr(func, "namespace", "aten") == "aten" else None
        if family is not None:
            guard.note_used(family, OPERATOR_ROUTE.format(name=name))
        if guard.depth == 0 and not guard.function_active():
            guard.tamper(NO_FUNCTION_LEVEL)
        guard.in_operator += 1  # also while this handler reads the outputs (Tensor.numel is a torch function)
        try:
            out = func(*args, **(kwargs or {}))
            if ((guard.max_numel is not None and guard.too_big is None) or (guard.span is not None
                                                                           and guard.wide is None)) \
                    and not _inside_stand_in():
                guard.measure(out, name, args)
        finally:
            guard.in_operator -= 1
        return out


# --- threads and processes: refused while a graded call runs ---------------------------------------------------
# The modes are per thread: a thread started by the graded call would run unwatched, and so would a child
# process. Every Python route to a new thread or process goes through one of these, wrapped by
# ``install_tripwires`` before any student code runs: while a guard is open they refuse (and it is recorded).
SPAWNERS: tuple[tuple[str, str], ...] = (
    ("_thread", "start_new_thread"), ("_thread", "start_new"), ("threading", "_start_new_thread"),
    ("os", "fork"), ("os", "forkpty"), ("os", "posix_spawn"), ("os", "posix_spawnp"), ("os", "system"),
    ("os", "execv"), ("os", "execve"), ("_posixsubprocess", "fork_exec"),
)
REFUSED = "starting a thread or a process is not allowed while a graded call runs"


def _other_threads(allowed: frozenset[int]) -> list[int]:
    """Python threads alive now, other than the calling one and ``allowed`` (a host's own, e.g. Jupyter's)."""
    me = threading.get_ident()
    return [ident for ident in sys._current_frames() if ident != me and ident not in allowed]


class OpGuard:
    """Watch a block of code: ``with OpGuard(max_numel=...) as guard: ...``; then read its findings.

    ``used``: family -> the first route seen to it; ``too_big``: (shape, numel, operator) of the first
    operator output larger than ``max_numel``; ``wide``: (shape, operator) of the first output that breaks
    the tiled algorithm's rule (``span``, see ``spans_keys``); ``exported``: the first detour of the data out
    of torch (``EXPORTS``), or the count of numbers read out when over the bound; ``tampered``: why the
    monitor was found switched off (a thread or process started, another thread alive, the modes popped).
    The block's own exceptions pass through; the monitor's stacks are left as they were before it.
    Every finding is also posted to the audit hook (``install_tripwires``), which keeps it where the code
    cannot erase it; ``report`` reads both.
    """

    def __init__(self, max_numel: int | None = None, span: dict[str, Any] | None = None,
                 allow: frozenset[int] = frozenset()):
        self.max_numel = max_numel
        self.allowed_threads = allow  # threads of the host that may be alive during a call: Jupyter's, in a kernel
        self.span = dict(span) if span is not None else None
        self.used: dict[str, str] = {}
        self.too_big: tuple[tuple[int, ...], int, str] | None = None
        self.wide: tuple[tuple[int, ...], str] | None = None
        self.exported: str | None = None
        self.scalars = 0
        self.tampered: str | None = None
        self.depth = 0
        self.in_operator = 0  # > 0 while the operator level runs an operator (see _FunctionLevel)
        self._function = _FunctionLevel(self)
        self._operator = _OperatorLevel(self)
        self._saved: tuple[list[Any], list[Any]] = ([], [])  # the mode stacks before the block
        self._state: tuple[Any, bool] | None = None  # torch functions' state, the Python key excluded?

    # --- findings, each also posted where the code cannot take it back ---------------------------------------
    def _post(self, kind: str, value: Any) -> None:
        sys.audit(_AUDIT_POST, self, kind, value)

    def tamper(self, why: str) -> None:
        """Record the first sign that the monitor was switched off or reached."""
        if self.tampered is None:
            self.tampered = why
            self._post("tampered", why)

    def note_used(self, family: str, route: str) -> None:
        """Record a family seen, with the route it was reached by (the first route is the one shown)."""
        self.used.setdefault(family, route)
        self._post("used", (family, route))

    def note_export(self, name: str) -> None:
        """A tensor's data leaving torch (``EXPORTS``, refused) or one number read out (``SCALARS``, counted), unless
        the grader's own code did it."""
        if any(g is _callers_globals() for g in _TRUSTED):
            return
        if name in EXPORTS:
            found = f"Tensor.{name}"
        else:
            self.scalars += 1
            if self.scalars <= scalar_budget(self.span):
                return
            found = SCALARS_READ.format(count=self.scalars, name=name)
        if self.exported is None:
            self.exported = found
            self._post("exported", found)
        if name in EXPORTS:
            raise RuntimeError(f"{found} is not allowed in this exercise: the data stays in torch tensors")

    def measure(self, out: Any, name: str, args: Any) -> None:
        """Record the first output above ``max_numel`` and the first that spans more keys than a block."""
        for leaf in torch.utils._pytree.tree_leaves(out):
            if not isinstance(leaf, torch.Tensor):
                continue
            if self.max_numel is not None and self.too_big is None and leaf.numel() > self.max_numel:
                self.too_big = (tuple(leaf.shape), leaf.numel(), f"aten.{name}")
                self._post("too_big", self.too_big)
            if (self.span is not None and self.wide is None and leaf.is_floating_point()
                    and spans_keys(tuple(leaf.shape), self.span) and _has_tensor(args) and not _is_mask(leaf)):
                self.wide = (tuple(leaf.shape), f"aten.{name}")
                self._post("wide", self.wide)

    # --- checks each level makes of the other ----------------------------------------------------
    def dispatch_active(self) -> bool:
        """The operator level is on its stack (anywhere: ``torch.device`` contexts go to the bottom) and the Python
        dispatch key is not excluded."""
        return (not _python_key_excluded()
                and any(_GET_DISPATCH_AT(i) is self._operator for i in range(_LEN_DISPATCH() - 1, -1, -1)))

    def function_active(self) -> bool:
        """The function level is on its stack (anywhere, as above) and torch functions are not disabled."""
        return (not torch._C._is_torch_function_all_disabled()
                and any(_GET_FUNCTION_AT(i) is self._function for i in range(_LEN_FUNCTION() - 1, -1, -1)))

    # --- the block ---------------------------------------------------------------------------------
    def __enter__(self) -> OpGuard:
        if _other_threads(self.allowed_threads):
            self.tamper(THREAD_AT_START)
        self._saved = (_function_stack(), _dispatch_stack())
        self._state = (torch._C._get_torch_function_state(), _python_key_excluded())
        self._function.__enter__()
        self._operator.__enter__()
        _OPEN.append(self)
        self._post(_OPENED, (self.max_numel, repr(self.span)))
        return self

    def intact(self) -> bool:
        """Both modes still where ``__enter__`` put them (modes the code pushed above them are harmless: they hand
        on to ours) and neither torch functions nor the Python dispatch key switched off."""
        return self.function_active() and self.dispatch_active()

    def __exit__(self, *exc: Any) -> None:
        self._post(_CLOSED, (self.max_numel, repr(self.span)))
        if self in _OPEN:
            _OPEN.remove(self)
        else:
            self.tamper(CLOSED_EARLY)
        if not self.intact():
            self.tamper(MODES_GONE)
        if _other_threads(self.allowed_threads):
            self.tamper(THREAD_AT_END)
        functions, dispatchers = self._saved
        exact = (_same(_function_stack(), [*functions, self._function])
                 and _same(_dispatch_stack(), [*dispatchers, self._operator]))
        if not exact or (torch._C._get_torch_function_state(), _python_key_excluded()) != self._state:
            # put the stacks and switches back as ``__enter__`` left them, whatever the code did (modes it left
            # behind go too), then leave normally
            torch._C._set_torch_function_state(self._state[0])
            torch._C._dispatch_tls_set_dispatch_key_excluded(torch._C.DispatchKey.Python, self._state[1])
            while _LEN_DISPATCH():
                torch._C._pop_torch_dispatch_stack(None)
            while _LEN_FUNCTION():
                torch._C._pop_torch_function_stack()
            for mode in [*functions, self._function]:
                torch._C._push_on_torch_function_stack(mode)
            for mode in [*dispatchers, self._operator]:
                torch._C._push_on_torch_dispatch_stack(mode)
        self._operator.__exit__(None, None, None)
        self._function.__exit__(None, None, None)

    # --- findings ----------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """What the block did, as JSON: ``used`` (family -> route), ``too_big``, ``wide``, ``exported``, ``tampered``.

        Read from the audit hook's record where it keeps one (the code cannot erase it), else from this object."""
        kept: list[tuple[str, Any]] = []
        sys.audit(_AUDIT_READ, self, kept)
        first: dict[str, Any] = {}
        used = dict(self.used)
        for kind, value in kept:
            if kind == "used":
                used.setdefault(value[0], value[1])
            else:
                first.setdefault(kind, value)
        too_big = first.get("too_big", self.too_big)
        wide = first.get("wide", self.wide)
        return {"used": used,
                "too_big": None if too_big is None else {"shape": list(too_big[0]), "numel": too_big[1],
                                                         "op": too_big[2]},
                "wide": None if wide is None else {"shape": list(wide[0]), "op": wide[1]},
                "exported": first.get("exported", self.exported),
                "tampered": first.get("tampered", self.tampered)}


def _is_mask(tensor: torch.Tensor) -> bool:
    """A floating-point mask (every value 0, 1 or infinite) holds no scores: a causal mask built whole is the
    size rule's business (``max_numel``), not the tiled algorithm's."""
    with torch.no_grad():
        values = tensor.detach()
        return bool(((values == 0) | (values == 1) | values.isinf()).all())


def _has_tensor(args: Any) -> bool:
    """Whether an operator had a tensor argument (factories such as ``arange`` or ``full`` carry no scores)."""
    return any(isinstance(leaf, torch.Tensor) for leaf in torch.utils._pytree.tree_leaves(args))


_AUDIT_POST, _AUDIT_READ, _AUDIT_ASK = "grader.op_guard.post", "grader.op_guard.read", "grader.op_guard.open?"
_OPENED, _CLOSED = "opened", "closed"


def _any_open() -> bool:
    """Is a guard open? The audit hook's answer where it is installed (the code cannot change it), else ``_OPEN``."""
    box: list[bool] = []
    sys.audit(_AUDIT_ASK, box)
    return box[0] if box else bool(_OPEN)


def _alert(why: str) -> None:
    """Record tampering in every open guard: in the audit hook's record, and in the innermost guard object."""
    sys.audit(_AUDIT_POST, None, "tampered", why)
    if _OPEN:
        _OPEN[-1].tamper(why)


# --- tripwires: torch's switches for the modes, called by code other than torch's own -----------------
# The two levels watch each other, but code that switches both off at once (``_DisableTorchDispatch`` around
# ``DisableTorchFunction``) or calls a kernel below the Python key (``OpOverload.redispatch``) leaves neither
# anything to see. The worker installs these wrappers before any student code runs; while a guard is open,
# a call to one of them by code other than torch's own is tampering, and so is torch's own helper for them
# (``torch.utils._python_dispatch._pop_mode``, ...) called by the student's code: the wrapper looks at
# where the chain of torch frames that reached it was entered from (``_entered_by_student``). Readers of the
# mode stacks are switches too: through them the code reaches the monitor's objects.
SWITCHES: tuple[tuple[str, str], ...] = (
    ("torch._C", "_DisableTorchDispatch"), ("torch._C", "DisableTorchFunction"),
    ("torch._C", "_ExcludeDispatchKeyGuard"),
    ("torch._C", "_pop_torch_function_stack"), ("torch._C", "_pop_torch_dispatch_stack"),
    ("torch._C", "_set_torch_function_state"), ("torch._C", "_unset_dispatch_mode"),
    ("torch._C", "_dispatch_tls_set_dispatch_key_excluded"), ("torch._ops.OpOverload", "redispatch"),
    ("torch._C", "_get_function_stack_at"), ("torch._C", "_get_dispatch_stack_at"),
    ("torch._C", "_get_dispatch_mode"),
)
# torch's Python helpers around the switches: entered directly from the student's code, they are tampering
HELPER_MODULES = ("torch.utils._python_dispatch", "torch.overrides", "torch._ops", "torch._C")
_OPEN: list[OpGuard] = []  # the guards open now, innermost last


def _is_torch(name: str) -> bool:
    return name == "torch" or name.startswith("torch.")


def _entered_by_student(depth: int = 2) -> bool:
    """Was this switch called by the student's code, directly or through torch's own helpers for the modes?"""
    frame = sys._getframe(depth)
    name = frame.f_globals.get("__name__", "")
    if frame.f_globals is globals():
        return False
    if not _is_torch(name):
        return True
    # a chain of torch frames (``with`` statements of torch's helpers pass through contextlib): where was it
    # entered, and by which torch function?
    entry = frame
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if _is_torch(name):
            entry = frame
        elif name != "contextlib":
            break
        frame = frame.f_back
    if frame is None or frame.f_globals is globals() or any(frame.f_globals is g for g in _TRUSTED):
        return False
    module = entry.f_globals.get("__name__", "")
    return module in HELPER_MODULES and "mode" in entry.f_code.co_name


def _tripwire(name: str, original: Any, check: Any, refuse: bool = False) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _any_open() and check():
            _alert((STARTED if refuse else CALLED).format(name=name))
            if refuse:
                raise RuntimeError(REFUSED)
        return original(*args, **kwargs)

    wrapper.__name__ = getattr(original, "__name__", name)
    wrapper.__qualname__ = getattr(original, "__qualname__", name)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    wrapper.__wrapped__ = original
    return wrapper


def _well_formed(kind: Any, value: Any) -> bool:
    """Is ``(kind, value)`` a post this file makes (``OpGuard._post``, ``_alert``): a known kind, its value of the
    shape the report reads, a reason or finding never empty?"""
    def text(x: Any) -> bool:
        return type(x) is str and x != ""

    def shape(x: Any) -> bool:
        return type(x) is tuple and all(type(n) is int for n in x)

    if type(kind) is not str:
        return False
    if kind in ("tampered", "exported"):
        return text(value)
    if kind == "used":
        return type(value) is tuple and len(value) == 2 and text(value[0]) and text(value[1])
    if kind == "too_big":
        return type(value) is tuple and len(value) == 3 and shape(value[0]) and type(value[1]) is int and text(value[2])
    if kind == "wide":
        return type(value) is tuple and len(value) == 2 and shape(value[0]) and text(value[1])
    if kind in (_OPENED, _CLOSED):
        return type(value) is tuple and len(value) == 2
    return False


def _always() -> bool:
    return True


def _audit_hook(strict: bool) -> Any:
    """The hook that keeps every guard's findings (``OpGuard._post``) where no Python code can reach them.

    An audit hook cannot be removed or listed, and its record is a local of this closure: the code can add to
    it (only to its own cost) but neither read another's nor erase anything. It knows which guards are open
    (a guard opened twice, or closed when it was not open, is tampering), answers ``_any_open`` for the
    tripwires, and while a guard is open refuses what would reach the monitor's objects or the record
    (``gc.get_objects`` and its kind, other threads' frames) and new native code (``ctypes`` loading a library
    or a symbol). ``strict`` (the worker): ``gc``'s walks over objects are refused at all times, as no exercise
    needs them. Every time a guard closes, the hook checks that this file's functions, tables and classes are
    the objects they were when it was installed: code that rebinds them is tampering."""
    record: dict[int, tuple[Any, list[tuple[str, Any]]]] = {}  # id(guard) -> (guard, findings)
    open_guards: dict[int, Any] = {}
    own = globals()
    guard_type = OpGuard
    sealed = (OpGuard, _FunctionLevel, _OperatorLevel)
    opened_again, closed_early, called, changed_text, forged = OPENED_AGAIN, CLOSED_EARLY, CALLED, CHANGED, FORGED
    well_formed = _well_formed  # the reasons, and the shape of a post, as they were when the hook was made
    # this file as imported (a kernel installs the hook at its first check, after the student's cells ran), and
    # the grader's trusted modules as they are now (``trust`` ran just before)
    module_then = {name: value for name, value in _PICTURE.items() if not name.startswith("__")}
    module_then["_TRUSTED"] = _TRUSTED
    module_then["_STAND_INS"] = _STAND_INS
    classes_then = [(cls, dict(vars(cls))) for cls in sealed]
    walks = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents"})
    refused = walks | {"sys._current_frames", "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle"}

    def changed() -> str | None:
        for name, value in module_then.items():
            if own.get(name) is not value:
                return changed_text.format(name=name)
        for cls, then in classes_then:
            now = vars(cls)
            if len(now) != len(then) or any(now.get(name) is not value for name, value in then.items()):
                return changed_text.format(name=cls.__name__)
        return None

    def note(guard: Any, kind: str, value: Any) -> None:
        entry = record.get(id(guard))
        if entry is None or entry[0] is not guard:  # a new guard (or a new one at a freed one's address)
            entry = record[id(guard)] = (guard, [])
        entry[1].append((kind, value))

    def post(guard: Any, kind: str, value: Any) -> None:
        if guard is None:  # a tripwire: every open guard
            for each in list(open_guards.values()):
                note(each, kind, value)
        elif kind == _OPENED:
            known = record.get(id(guard))
            if id(guard) in open_guards or (known is not None and known[0] is guard):
                note(guard, "tampered", opened_again)
            else:
                record[id(guard)] = (guard, [])
            open_guards[id(guard)] = guard
        elif kind == _CLOSED:
            if open_guards.pop(id(guard), None) is None:
                note(guard, "tampered", closed_early)
            why = changed()
            if why:
                note(guard, "tampered", why)
        else:
            note(guard, kind, value)

    def hook(event: str, args: tuple) -> None:
        if event == _AUDIT_POST:
            # ``sys.audit`` is open to any code: a post counts only when this file made it and it has the shape this
            # file gives it; anything else is the code writing to the record (an empty reason first, a None finding,
            # would hide the real one), itself tampering, and its content is dropped
            target_ok = len(args) == 3 and (type(args[0]) is guard_type
                                            or (args[0] is None and args[1] not in (_OPENED, _CLOSED)))
            if target_ok and well_formed(*args[1:]) and sys._getframe(1).f_globals is own:
                post(*args)
            else:
                post(None, "tampered", forged)
        elif event == _AUDIT_READ:
            if len(args) == 2 and type(args[0]) is guard_type and type(args[1]) is list:
                entry = record.get(id(args[0]))
                if entry is not None and entry[0] is args[0]:
                    args[1].extend(entry[1])
        elif event == _AUDIT_ASK:
            if len(args) == 1 and type(args[0]) is list:
                args[0].append(bool(open_guards))
        elif (event in refused and (open_guards or (strict and event in walks))
              and sys._getframe(1).f_globals is not own):
            post(None, "tampered", called.format(name=event))
            raise RuntimeError(f"{event} is not allowed while grading")
        elif event in ("object.__setattr__", "object.__delattr__") and args and (
                any(args[0] is c for c in sealed)
                or (type(args[0]) is types.FunctionType and args[0].__globals__ is own)):
            # a function of the monitor given other code (``__code__``) would see nothing; Python audits that, not
            # a class's attributes (those are compared at every close, see ``changed``)
            post(None, "tampered", changed_text.format(name=args[0].__name__))
            raise RuntimeError("the grader's monitor cannot be changed")
    return hook


_HOOKED: list[bool] = []


def install_tripwires(trusted: tuple[Any, ...] = (), strict: bool = False) -> Any:
    """Wrap ``SWITCHES`` and ``SPAWNERS``, trust the grader's ``trusted`` modules (``trust``) and add the audit hook
    (once per process: it cannot be removed; ``strict``: see ``_audit_hook``); returns a function that puts the
    wrapped originals back (for tests)."""
    import importlib

    trust(*trusted)
    undo = []
    for table, check, refuse in ((SWITCHES, _entered_by_student, False), (SPAWNERS, _always, True)):
        for owner_path, attr in table:
            try:
                owner = importlib.import_module(owner_path)
            except ImportError:
                module, _, name = owner_path.rpartition(".")
                owner = getattr(importlib.import_module(module), name)
            original = vars(owner).get(attr)
            if original is None or getattr(original, "__wrapped__", None) is not None:
                continue
            wrapper = _tripwire(attr, original, check, refuse)
            setattr(owner, attr, wrapper)
            undo.append((owner, attr, original))
            # modules that imported it by name (``from torch._C import _pop_torch_function_stack``) get it too
            for module in list(sys.modules.values()):
                namespace = getattr(module, "__dict__", None)
                if isinstance(namespace, dict) and namespace.get(attr) is original and module is not owner:
                    namespace[attr] = wrapper
                    undo.append((module, attr, original))
    if not _HOOKED:  # last: the hook's picture of this file includes the trusted modules
        sys.addaudithook(_audit_hook(strict))
        _HOOKED.append(True)

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


# The last statement: this file's names as imported, before any student code can have rebound one of them.
_PICTURE = MappingProxyType(dict(globals()))
