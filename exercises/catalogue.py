"""The catalogue of graded items: for each, how to build its cases on fresh random inputs.

One definition serves both graders: ``exercises.kernel.check`` (nbgrader's hidden tests, in the
student's kernel) and the pytest autograder (in an isolated worker). A case is a call program plus
its input tensors (see docs/ARCHITECTURE.md); the reference side runs the same program against the
``solutions`` package. Points are not here: they come from the nbgrader metadata in ``source/``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from exercises.compare import Outputs, number_dtype, value_mismatch
from exercises.tolerances import tolerance

Check = Callable[[Outputs, Outputs], "str | None"]

FLOAT_DTYPES = ("float64", "float32")
BUILTIN_SOFTMAX = ("torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax",
                   "torch.log_softmax", "torch.nn.functional.log_softmax", "torch.Tensor.log_softmax",
                   "torch.special.softmax")
BUILTIN_SDPA = ("torch.nn.functional.scaled_dot_product_attention",)
BUILTIN_MHA = ("torch.nn.MultiheadAttention", "torch.nn.functional.multi_head_attention_forward")


@dataclass
class Case:
    """One graded call: its program, its inputs and how its outputs are judged."""

    name: str
    program: list[dict[str, Any]]
    inputs: dict[str, torch.Tensor]
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    compare: bool = True  # compare every output with the reference's; False: only ``checks`` judge
    tolerance_scale: float = 1.0  # > 1 where the inputs themselves carry rounding error (see input_rounding)


@dataclass(frozen=True)
class Item:
    """A graded name: which notebook defines it and how to build its cases for one dtype."""

    name: str
    notebook: str
    build: Callable[[torch.Generator, torch.dtype | None], list[Case]]
    dtypes: tuple[str | None, ...] = FLOAT_DTYPES
    gpu_dtypes: tuple[str, ...] = ("bfloat16",)
    forbidden: tuple[str, ...] = ()
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


def T(key: str) -> dict[str, str]:
    return {"tensor": key}


def V(name: str) -> dict[str, str]:
    return {"var": name}


def L(value: Any) -> dict[str, Any]:
    return {"lit": value}


DEVICE = {"device": True}


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
        {"op": "new", "cls": cls, "kwargs": {k: L(v) for k, v in kwargs.items()}, "out": var},
        {"op": "load_params", "obj": var, "params": {k[len(prefix):]: k for k in params if k.startswith(prefix)}},
        {"op": "mode", "obj": var, "train": train},
    ]


def forward(var: str, *args: dict, out: str) -> list[dict[str, Any]]:
    return [{"op": "call", "fn": var, "args": list(args), "out": "y_" + out},
            {"op": "output", "key": out, "var": "y_" + out}]


# --- invariants (issue: checks with their own messages) ---------------------------------------


def input_rounding(x: torch.Tensor) -> float:
    """Tolerance scale for an ill-conditioned case: inputs so large that their own rounding shows.

    A softmax's inputs of magnitude ``m`` carry a rounding error of about ``m * eps``; a correct answer
    that takes another route (``exp(x - logsumexp(x))`` instead of subtracting the maximum) turns it
    into a relative error of the same size in every output. Float32 inputs of ~3000 give 3.6e-4,
    beyond the 1e-4 of the table. Only float32 and float64: in bfloat16 that error is e^(+-8), the
    route is wrong there, and the reference's (subtract the maximum, exactly) is the one to take.
    """
    if x.dtype not in (torch.float32, torch.float64):
        return 1.0
    finite = x[torch.isfinite(x)]
    magnitude = float(finite.abs().max()) if finite.numel() else 0.0
    return 1.0 + magnitude * torch.finfo(x.dtype).eps / tolerance(x.dtype)[0]


def rows_sum_to_one(key: str, scale: float = 1.0) -> Check:
    def check(student: Outputs, reference: Outputs) -> str | None:
        w = student.tensor(key)
        if w is None or not w.is_floating_point() or w.shape != reference.tensors[key].shape:
            return None  # shape/type problems are reported by the comparison
        sums = w.double().sum(-1)
        worst = float((sums - 1).abs().max()) if sums.numel() else 0.0
        tol = (2e-2 if w.dtype in (torch.bfloat16, torch.float16) else 1e-4) * scale
        if not math.isfinite(worst) or worst > tol:
            return f"rows of `{key}` must sum to 1 (a softmax over the keys): the worst row sums to 1 {worst:+.3g}"
        return None
    return check


def prefix_unchanged(key_a: str, key_b: str, upto: int, what: str) -> Check:
    """Outputs for positions ``< upto`` must not change when tokens from ``upto`` on are perturbed."""
    def check(student: Outputs, reference: Outputs) -> str | None:
        a, b = student.tensor(key_a), student.tensor(key_b)
        if a is None or b is None or a.shape != b.shape or a.dim() < 2:
            return None
        if value_mismatch(key_a, b[..., :upto, :], a[..., :upto, :]) is not None:
            return (f"causal leak: changing tokens {upto}.. changed the {what} of earlier tokens; "
                    "mask the scores of later keys with -inf before the softmax")
        return None
    return check


def outputs_differ(key_a: str, key_b: str, message: str) -> Check:
    def check(student: Outputs, reference: Outputs) -> str | None:
        a, b = student.tensor(key_a), student.tensor(key_b)
        if a is None or b is None or a.shape != b.shape:
            return None
        return message if torch.equal(a, b) else None
    return check


def gradients_present(student: Outputs, reference: Outputs) -> str | None:
    missing = [k for k, m in student.meta.items() if k.startswith("grad") and m.get("pytype") == "NoneType"]
    if missing:
        return (f"no gradient reaches {', '.join(missing[:4])}: keep every step differentiable (no .detach(), "
                ".item(), .data, torch.no_grad() or new tensors built from Python numbers in forward)")
    return None


def gradient_case(name: str, build_steps: list[dict[str, Any]], call_fn: str, arg_keys: list[str],
                  inputs: dict[str, torch.Tensor], out_shape: tuple[int, ...], gen: torch.Generator,
                  dtype: torch.dtype, params_of: str | None = None, extra_args: tuple = ()) -> Case:
    """Gradients of a weighted sum of the output with respect to inputs (and parameters) must match the reference's.

    ``call_fn`` must return one tensor; the weights of the sum are random, so every output entry counts.
    """
    inputs = {**inputs, "grad_weights": rand(gen, *out_shape, dtype=dtype)}
    steps = list(build_steps) + [{"op": "leaf", "tensor": k, "out": f"leaf_{k}"} for k in arg_keys]
    steps += [{"op": "call", "fn": call_fn, "args": [V(f"leaf_{k}") for k in arg_keys] + list(extra_args),
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
        {"op": "call", "fn": fn, "args": [T("x")], "out": "a"}, {"op": "output", "key": "out", "var": "a"},
        {"op": "call", "fn": fn, "args": [T("x_perm")], "out": "b"}, {"op": "output", "key": "out_perm", "var": "b"}]
    key = "out.0" if take_first else "out"
    key_perm = "out_perm.0" if take_first else "out_perm"

    def check(student: Outputs, reference: Outputs) -> str | None:
        a, b = student.tensor(key), student.tensor(key_perm)
        if a is None or b is None or a.shape != b.shape or a.dim() < 2:
            return None
        if value_mismatch(key, b, a[..., perm, :]) is not None:
            return ("permuting the input tokens should permute the outputs the same way (attention has no notion "
                    "of position); your output mixes positions: check which dimension you transpose and reduce")
        return None
    return Case(name, program, {**(inputs or {}), "x": x, "x_perm": x[..., perm, :].clone()}, checks=(check,))


# --- lesson 1 -----------------------------------------------------------------------------------
NB1 = "01_attention_scores.ipynb"
NB2 = "02_scaled_dot_product_attention.ipynb"
NB3 = "03_trainable_self_attention.ipynb"
NB4 = "04_causal_attention.ipynb"
NB5 = "05_multi_head_attention.ipynb"
NB6 = "06_training_self_attention.ipynb"
NB7 = "07_efficient_attention.ipynb"
QK = ("query", "key")
QF = ("query", "feature")


def _book(dtype: torch.dtype) -> torch.Tensor:
    import solutions

    return solutions.BOOK_INPUTS.to(dtype)


def _scores_loop(gen, dtype):
    shapes = [(1, 3), (5, 4), (7, 2)]
    cases = [Case("book_example", call("attention_scores_loop", T("x")), {"x": _book(dtype)}, {"out": QK})]
    for n, d in shapes:
        cases.append(Case(f"n{n}_d{d}", call("attention_scores_loop", T("x")), {"x": rand(gen, n, d, dtype=dtype)},
                          {"out": QK}))
    return cases


def _scores(gen, dtype):
    cases = [Case("book_example", call("attention_scores", T("x")), {"x": _book(dtype)}, {"out": QK})]
    for shape in [(2, 5, 4), (3, 2, 1, 6), (4, 3)]:
        cases.append(Case("x" + "x".join(map(str, shape)), call("attention_scores", T("x")),
                          {"x": rand(gen, *shape, dtype=dtype)}, {"out": ("batch",) * (len(shape) - 2) + QK}))
    return cases


def _softmax_cases(fn: str, large: bool) -> Callable:
    def build(gen, dtype):
        cases = [
            Case("rows_4x6", call(fn, T("x")), {"x": rand(gen, 4, 6, dtype=dtype, scale=2.0)}, {"out": QK},
                 (rows_sum_to_one("out"),)),
            Case("dim1_of_3d", call(fn, T("x"), dim=L(1)), {"x": rand(gen, 3, 4, 5, dtype=dtype)},
                 {"out": ("batch", "softmax dim", "column")}),
            Case("vector_dim0", call(fn, T("x"), dim=L(0)), {"x": rand(gen, 5, dtype=dtype)}, {"out": ("entry",)}),
        ]
        if large:
            # random rows of size ~1000, then one row of large positive and one of large negative values:
            # without the per-row maximum the first overflows (inf / inf) and the second underflows (0 / 0)
            fixed = torch.tensor([[1000.0, 999.0, 998.0, 997.0, 996.0],
                                  [-1000.0, -1001.0, -1002.0, -1003.0, -1004.0]], dtype=torch.float64).to(dtype)
            big = torch.cat([rand(gen, 3, 5, dtype=dtype) * 1000, fixed])
            scale = input_rounding(big)
            cases.append(Case("large_1000", call(fn, T("x")), {"x": big}, {"out": QK},
                              (rows_sum_to_one("out", scale),), tolerance_scale=scale))
            x = rand(gen, 4, 6, dtype=dtype)
            x[0, 2] = float("-inf")
            x[1, :5] = float("-inf")
            x[3, 0] = float("-inf")
            cases.append(Case("rows_with_minus_inf", call(fn, T("x")), {"x": x}, {"out": QK},
                              (rows_sum_to_one("out"),)))
            if dtype == torch.float64:
                cases.append(gradient_case("gradients", [], fn, ["x"], {"x": rand(gen, 4, 6, dtype=dtype)}, (4, 6),
                                           gen, dtype))
        return cases
    return build


def _context(gen, dtype):
    import solutions

    cases = []
    for shape in [(6, 3), (2, 5, 4), (1, 2)]:
        *batch, n, d = shape
        w = solutions.softmax_stable(rand(gen, *batch, n, n, dtype=torch.float64)).to(dtype)
        cases.append(Case("x" + "x".join(map(str, shape)), call("context_vectors", T("w"), T("x")),
                          {"w": w, "x": rand(gen, *shape, dtype=dtype)}, {"out": ("batch",) * len(batch) + QF}))
    return cases


def _simple(gen, dtype):
    dims = {"out.0": QF, "out.1": QK}
    cases = [Case("book_example", call("simple_self_attention", T("x")), {"x": _book(dtype)}, dims,
                  (rows_sum_to_one("out.1"),))]
    for shape in [(2, 5, 4), (1, 3)]:
        cases.append(Case("x" + "x".join(map(str, shape)), call("simple_self_attention", T("x")),
                          {"x": rand(gen, *shape, dtype=dtype)}, dims, (rows_sum_to_one("out.1"),)))
    cases.append(permutation_case("permutation_equivariant", [], "simple_self_attention", rand(gen, 7, 3, dtype=dtype),
                                  gen, take_first=True))
    return cases


# --- lesson 2 -----------------------------------------------------------------------------------


def _project(gen, dtype):
    cases = []
    for shape, dk, dv in [((6, 3), 2, 2), ((2, 5, 4), 3, 6), ((1, 8), 8, 1)]:
        d_in = shape[-1]
        inputs = {"x": rand(gen, *shape, dtype=dtype), "wq": rand(gen, d_in, dk, dtype=dtype),
                  "wk": rand(gen, d_in, dk, dtype=dtype), "wv": rand(gen, d_in, dv, dtype=dtype)}
        cases.append(Case(f"x{'x'.join(map(str, shape))}_dk{dk}_dv{dv}",
                          call("project_qkv", T("x"), T("wq"), T("wk"), T("wv")), inputs,
                          {f"out.{i}": QF for i in range(3)}))
    return cases


def _sdpa(gen, dtype):
    def sdpa_case(name, batch, nq, nk, dk, dv, mask=None):
        inputs = {"q": rand(gen, *batch, nq, dk, dtype=dtype), "k": rand(gen, *batch, nk, dk, dtype=dtype),
                  "v": rand(gen, *batch, nk, dv, dtype=dtype)}
        args = [T("q"), T("k"), T("v")]
        if mask is not None:
            inputs["mask"] = mask
            args.append(T("mask"))
        dims = {"out.0": ("batch",) * len(batch) + QF, "out.1": ("batch",) * len(batch) + QK}
        return Case(name, call("scaled_dot_product_attention", *args), inputs, dims, (rows_sum_to_one("out.1"),))

    random_mask = torch.rand(2, 5, 7, generator=gen) > 0.4
    random_mask[..., 0] = True  # every query keeps at least one key
    return [
        sdpa_case("no_mask", (), 6, 6, 4, 4),
        sdpa_case("nq_ne_nk_dk_ne_dv", (3,), 4, 9, 8, 5),
        sdpa_case("batched_heads", (2, 3), 5, 5, 16, 16),
        sdpa_case("random_mask", (2,), 5, 7, 4, 3, random_mask),
        sdpa_case("broadcast_mask", (2, 3), 4, 6, 8, 8, torch.rand(6, generator=gen) > -1),
        sdpa_case("causal_mask", (2,), 6, 6, 4, 4, torch.ones(6, 6, dtype=torch.bool).tril()),
        sdpa_case("single_token", (), 1, 1, 3, 2),
    ] + ([gradient_case("gradients", [], "scaled_dot_product_attention", ["q", "k", "v"],
                        {"q": rand(gen, 2, 4, 5, dtype=dtype), "k": rand(gen, 2, 6, 5, dtype=dtype),
                         "v": rand(gen, 2, 6, 3, dtype=dtype)}, (2, 4, 3), gen, dtype)]
         if dtype == torch.float64 else [])


# --- lesson 3 -----------------------------------------------------------------------------------


def _module_cases(cls: str, configs: list[tuple[str, dict[str, Any], tuple[int, ...]]],
                  gen: torch.Generator, dtype: torch.dtype, checks: Callable[[dict], tuple] = lambda cfg: ()):
    cases = []
    for name, kwargs, x_shape in configs:
        params = reference_params(cls, kwargs, gen, dtype)
        program = build_module(cls, kwargs, params) + forward("m", T("x"), out="out")
        dims = {"out": ("batch",) * (len(x_shape) - 2) + QF}
        cases.append(Case(name, program, {**params, "x": rand(gen, *x_shape, dtype=dtype)}, dims, checks(kwargs)))
    return cases


def _sa_v1(gen, dtype):
    return _module_cases("SelfAttention_v1", [
        ("book_3_to_2", {"d_in": 3, "d_out": 2}, (6, 3)),
        ("batched_4_to_5", {"d_in": 4, "d_out": 5}, (2, 7, 4)),
    ], gen, dtype)


def _sa_v2(gen, dtype):
    return _module_cases("SelfAttention_v2", [
        ("book_3_to_2", {"d_in": 3, "d_out": 2}, (6, 3)),
        ("batched_4_to_5", {"d_in": 4, "d_out": 5}, (2, 7, 4)),
        ("qkv_bias", {"d_in": 6, "d_out": 4, "qkv_bias": True}, (3, 5, 6)),
    ], gen, dtype) + _module_invariants("SelfAttention_v2", {"d_in": 4, "d_out": 3}, gen, dtype, permutation=True)


def _transfer(gen, dtype):
    cases = []
    # d_in == d_out: a copy without the transpose fits, so only the values show it
    for d_in, d_out, shape in [(3, 2, (6, 3)), (5, 4, (2, 4, 5)), (4, 4, (2, 5, 4))]:
        params = reference_params("SelfAttention_v2", {"d_in": d_in, "d_out": d_out}, gen, dtype)
        program = build_module("SelfAttention_v2", {"d_in": d_in, "d_out": d_out}, params, var="v2") + [
            {"op": "seed", "value": 1234},
            {"op": "new", "cls": "SelfAttention_v1", "kwargs": {"d_in": L(d_in), "d_out": L(d_out)}, "out": "v1"},
            {"op": "mode", "obj": "v1", "train": False},
            {"op": "call", "fn": "transfer_weights", "args": [V("v2"), V("v1")], "out": "ignored"},
            {"op": "params", "obj": "v1", "out": "v1_params"},
            {"op": "output", "key": "v1_params", "var": "v1_params"},
        ] + forward("v1", T("x"), out="v1_out")
        cases.append(Case(f"{d_in}_to_{d_out}", program, {**params, "x": rand(gen, *shape, dtype=dtype)},
                          {"v1_out": QF}))
    return cases


# --- lesson 4 -----------------------------------------------------------------------------------


def _causal_mask(gen, dtype):
    return [Case(f"n{n}", call("causal_mask", L(n), device=DEVICE), {}, {"out": QK}) for n in (1, 4, 9)]


def _causal_weights(gen, dtype):
    cases = []
    for shape in [(6, 6), (2, 5, 5), (2, 3, 4, 4), (1, 1)]:
        cases.append(Case("x" + "x".join(map(str, shape)), call("causal_attention_weights", T("s")),
                          {"s": rand(gen, *shape, dtype=dtype, scale=2.0)},
                          {"out": ("batch",) * (len(shape) - 2) + QK}, (rows_sum_to_one("out"), no_future("out"))))
    return cases


def no_future(key: str) -> Check:
    def check(student: Outputs, reference: Outputs) -> str | None:
        w = student.tensor(key)
        if w is None or w.dim() < 2 or w.shape[-1] != w.shape[-2] or not w.is_floating_point():
            return None
        future = torch.ones(w.shape[-2:], dtype=torch.bool).triu(1)
        if bool((w[..., future] != 0).any()):
            i, j = [int(v) for v in future.nonzero()[(w[..., future] != 0).reshape(-1, future.sum())
                                                     .any(0).nonzero()[0, 0]]]
            return (f"query {i} gives weight to the later key {j}: fill the scores above the diagonal with -inf "
                    "before the softmax so their weights are exactly 0")
        return None
    return check


def _causal_leak_case(cls: str, kwargs: dict[str, Any], gen, dtype, b: int, n: int, upto: int) -> Case:
    params = reference_params(cls, kwargs, gen, dtype)
    x = rand(gen, b, n, kwargs["d_in"], dtype=dtype)
    x_future = x.clone()
    x_future[:, upto:] = rand(gen, b, n - upto, kwargs["d_in"], dtype=dtype)
    program = build_module(cls, kwargs, params) + forward("m", T("x"), out="out") + \
        forward("m", T("x_future"), out="out_future")
    return Case(f"no_causal_leak_n{n}", program, {**params, "x": x, "x_future": x_future},
                {"out": ("batch",) + QF, "out_future": ("batch",) + QF},
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
                return (f"in train() mode, row {row} of `{key}` is not what dropout on the attention weights "
                        "gives (the values weighted by the attention weights, some weights zeroed and the others "
                        "scaled by 1/(1-p)): apply self.dropout to the attention weights, after the softmax, "
                        "not to the output (nor to the context vectors, the values or the scores)")
        return None
    return check


def _dropout_case(cls: str, kwargs: dict[str, Any], gen, dtype) -> Case:
    """Training mode: dropout must act (two passes differ) on the attention weights (float32 and float64).

    The module's parameters come back as ``params`` (for the mistakes' predicates).
    """
    params = reference_params(cls, kwargs, gen, dtype)
    x = rand(gen, 1, 5, kwargs["d_in"], dtype=dtype)
    program = build_module(cls, kwargs, params) + [{"op": "params", "obj": "m", "out": "loaded"},
                                                   {"op": "output", "key": "params", "var": "loaded"}] + \
        forward("m", T("x"), out="eval_out") + [{"op": "mode", "obj": "m", "train": True}] + \
        forward("m", T("x"), out="train_a") + forward("m", T("x"), out="train_b")
    message = (f"{cls} in train() mode with dropout={kwargs['dropout']} gave the same output twice: apply "
               "self.dropout to the attention weights in forward")
    checks: tuple[Check, ...] = (outputs_differ("train_a", "train_b", message),)
    if dtype in (torch.float64, torch.float32):  # half precision: too coarse to tell the outcomes apart
        checks += (dropped_attention_weights(cls, kwargs, params, x),)
    return Case("dropout_in_train_mode", program, {**params, "x": x}, {"eval_out": ("batch",) + QF}, checks,
                compare=False)


def _eval_matches(key: str) -> Check:
    """For cases judged only by checks: the eval-mode output must still equal the reference's."""
    def check(student: Outputs, reference: Outputs) -> str | None:
        actual = student.tensor(key)
        if actual is None or actual.shape != reference.tensors[key].shape:
            return f"`{key}` missing or of the wrong shape in eval() mode"
        found = value_mismatch(key, actual, reference.tensors[key])
        return None if found is None else f"in eval() mode dropout must be off: {found.message}"
    return check


def _causal_attention(gen, dtype):
    cls = "CausalAttention"
    base = {"d_in": 4, "d_out": 3, "context_length": 8, "dropout": 0.0}
    cases = _module_cases(cls, [
        ("n_equals_context", base, (2, 8, 4)),
        ("n_shorter_than_context", base, (2, 5, 4)),
        ("eval_ignores_dropout", {**base, "dropout": 0.5, "qkv_bias": True}, (3, 6, 4)),
        ("single_token", base, (1, 1, 4)),
    ], gen, dtype)
    cases.append(_causal_leak_case(cls, base, gen, dtype, 2, 7, 3))
    dropout = _dropout_case(cls, {**base, "dropout": DROPOUT_P}, gen, dtype)
    dropout.checks = dropout.checks + (_eval_matches("eval_out"),)
    cases.append(dropout)
    return cases + _module_invariants(cls, base, gen, dtype)


def _module_invariants(cls: str, kwargs: dict[str, Any], gen, dtype, permutation: bool = False) -> list[Case]:
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


def _heads_independent(gen, dtype) -> Case:
    """With an identity output projection, head h's output columns depend on head h's projections only."""
    cls = "MultiHeadAttention"
    kwargs = {"d_in": 6, "d_out": 8, "context_length": 5, "dropout": 0.0, "num_heads": 2}
    params = reference_params(cls, kwargs, gen, dtype)
    params["p.out_proj.weight"] = torch.eye(8, dtype=dtype)
    params["p.out_proj.bias"] = torch.zeros(8, dtype=dtype)
    changed = {k.replace("p.", "q.", 1): v.clone() for k, v in params.items()}
    changed["q.W_query.weight"][:4] = rand(gen, 4, 6, dtype=dtype)  # rows of head 0 only
    changed["q.W_value.weight"][:4] = rand(gen, 4, 6, dtype=dtype)
    program = build_module(cls, kwargs, params) + forward("m", T("x"), out="out") + \
        build_module(cls, kwargs, changed, var="m2", prefix="q.") + forward("m2", T("x"), out="out_changed")

    def check(student: Outputs, reference: Outputs) -> str | None:
        a, b = student.tensor("out"), student.tensor("out_changed")
        if a is None or b is None or a.shape != b.shape or a.shape[-1] != 8:
            return None
        if value_mismatch("out", b[..., 4:], a[..., 4:]) is not None:
            return ("heads are not independent: changing head 0's query/value weights changed head 1's output "
                    "columns; split with .view(b, n, h, hd).transpose(1, 2) and merge with the inverse")
        if torch.equal(a[..., :4], b[..., :4]):
            return "head 0's output did not change when its own weights changed: are its weights used at all?"
        return None
    return Case("heads_independent", program, {**params, **changed, "x": rand(gen, 2, 5, 6, dtype=dtype)},
                {"out": ("batch",) + QF}, (check,), compare=False)


# --- lesson 5 -----------------------------------------------------------------------------------


def _mha_wrapper(gen, dtype):
    cls = "MultiHeadAttentionWrapper"
    base = {"d_in": 4, "d_out": 2, "context_length": 6, "dropout": 0.0, "num_heads": 3}
    cases = _module_cases(cls, [
        ("three_heads", base, (2, 6, 4)),
        ("shorter_sequence", {**base, "num_heads": 2, "qkv_bias": True}, (2, 4, 4)),
        ("eval_ignores_dropout", {**base, "dropout": 0.5}, (1, 5, 4)),
    ], gen, dtype)
    cases.append(_causal_leak_case(cls, base, gen, dtype, 2, 6, 2))
    return cases


def _split(gen, dtype):
    return [Case(f"b{b}_n{n}_d{d}_h{h}", call("split_heads", T("x"), L(h)), {"x": rand(gen, b, n, d, dtype=dtype)},
                 {"out": ("batch", "head", "query", "feature")})
            for b, n, d, h in [(2, 5, 12, 3), (1, 7, 8, 8), (3, 1, 6, 2), (2, 4, 6, 1)]]


def _merge(gen, dtype):
    return [Case(f"b{b}_h{h}_n{n}_hd{hd}", call("merge_heads", T("x")), {"x": rand(gen, b, h, n, hd, dtype=dtype)},
                 {"out": ("batch", "query", "feature")})
            for b, h, n, hd in [(2, 3, 5, 4), (1, 8, 7, 1), (3, 2, 1, 3)]]


def _mha(gen, dtype):
    cls = "MultiHeadAttention"
    base = {"d_in": 6, "d_out": 8, "context_length": 7, "dropout": 0.0, "num_heads": 2}
    cases = _module_cases(cls, [
        ("two_heads", base, (2, 7, 6)),
        ("four_heads_shorter", {**base, "num_heads": 4}, (3, 5, 6)),
        ("qkv_bias_one_head", {**base, "num_heads": 1, "qkv_bias": True}, (2, 6, 6)),
        ("eval_ignores_dropout", {**base, "dropout": 0.5}, (1, 4, 6)),
    ], gen, dtype)
    cases.append(_causal_leak_case(cls, base, gen, dtype, 2, 7, 4))
    dropout = _dropout_case(cls, {**base, "dropout": DROPOUT_P}, gen, dtype)
    dropout.checks = dropout.checks + (_eval_matches("eval_out"),)
    cases.append(dropout)
    bad = {"d_in": 6, "d_out": 7, "context_length": 4, "dropout": 0.0, "num_heads": 2}

    def raises(student: Outputs, reference: Outputs) -> str | None:
        got = student.meta.get("raised", {}).get("value")
        if got in ("ValueError", "AssertionError"):
            return None
        return ("MultiHeadAttention(d_out=7, num_heads=2) must raise ValueError (or AssertionError): d_out "
                f"must be divisible by num_heads; got {'no exception' if not got else got}")
    cases.append(_heads_independent(gen, dtype))
    cases += _module_invariants(cls, base, gen, dtype)
    cases.append(Case("rejects_indivisible_d_out",
                      [{"op": "raises", "fn": cls, "kwargs": {k: L(v) for k, v in bad.items()}, "out": "r"},
                       {"op": "output", "key": "raised", "var": "r"}], {}, checks=(raises,), compare=False))
    return cases


def _count(gen, dtype):
    def module_case(name, steps):
        return Case(name, steps + [{"op": "call", "fn": "count_parameters", "args": [V("m")], "out": "n"},
                                   {"op": "output", "key": "out", "var": "n"}], {})
    gpt2_like = [{"op": "new", "cls": "torch.nn.Linear", "args": [L(768), L(3 * 768)],
                  "kwargs": {"bias": L(False)}, "out": "qkv"},
                 {"op": "new", "cls": "torch.nn.Linear", "args": [L(768), L(768)], "out": "proj"},
                 {"op": "new", "cls": "torch.nn.Sequential", "args": [V("qkv"), V("proj")], "out": "m"}]
    return [
        module_case("gpt2_small_attention_shapes", gpt2_like),
        module_case("frozen_parameters_excluded", gpt2_like + [{"op": "freeze", "obj": "m", "names": ["1.bias"]}]),
        module_case("embedding", [{"op": "new", "cls": "torch.nn.Embedding", "args": [L(50), L(7)], "out": "m"}]),
        # BatchNorm1d: 2 * 10 parameters and 21 buffer values (running mean and variance, batch count); with
        # the frozen bias, counting buffers (201), frozen parameters (190) or the state_dict (211) all differ (180)
        module_case("buffers_excluded", [
            {"op": "new", "cls": "torch.nn.Linear", "args": [L(16), L(10)], "out": "lin"},
            {"op": "new", "cls": "torch.nn.BatchNorm1d", "args": [L(10)], "out": "bn"},
            {"op": "new", "cls": "torch.nn.Sequential", "args": [V("lin"), V("bn")], "out": "m"},
            {"op": "freeze", "obj": "m", "names": ["0.bias"]}]),
    ]


# --- lesson 6 -----------------------------------------------------------------------------------


def _train(gen, dtype):
    import solutions

    tokens, inputs, targets = solutions.toy_dataset(seed=int(torch.randint(0, 2**31, (1,), generator=gen)),
                                                    dtype=dtype)
    d_model = inputs.shape[-1]
    params = reference_params("ToySelfAttention", {"d_model": d_model}, gen, dtype)
    steps = 60
    program = build_module("ToySelfAttention", {"d_model": d_model}, params, train=True) + [
        {"op": "call", "fn": "train_self_attention", "args": [V("m"), T("x"), T("y")],
         "kwargs": {"steps": L(steps), "lr": L(0.05)}, "out": "losses"},
        {"op": "output", "key": "losses", "var": "losses"},
        {"op": "params", "obj": "m", "out": "after"},
        {"op": "output", "key": "after", "var": "after"},
    ]

    def judge(student: Outputs, reference: Outputs) -> str | None:
        meta = student.meta.get("losses", {})
        if meta.get("pytype") not in ("list", "tuple") or not meta.get("numbers"):
            return f"train_self_attention must return a list of per-step losses (floats), got {meta.get('pytype')}"
        losses = student.tensors["losses"]
        if len(losses) != steps:
            return f"expected {steps} losses (one per step), got {len(losses)}"
        if not bool(torch.isfinite(losses).all()):
            return "some losses are NaN or inf"
        first = reference.tensors["losses"][0]
        # the losses are float32 numbers carried as float64: judged as what they were computed in
        if value_mismatch("first loss", losses[:1], first.reshape(1),
                          computed_in=number_dtype(reference.meta["losses"])) is not None:
            return (f"the first loss should be the mean-squared error of the untrained model, {float(first):.6g}; "
                    f"got {float(losses[0]):.6g}: record loss.item() before the optimiser step, use F.mse_loss")
        if not float(losses[-1]) < 0.5 * float(losses[0]):
            return (f"the loss did not fall (first {float(losses[0]):.4g}, last {float(losses[-1]):.4g}): "
                    "call loss.backward() and optimizer.step() every step, and optimizer.zero_grad()")
        changed = [k for k in params if not torch.equal(student.tensors.get("after." + k[2:], params[k]), params[k])]
        if not changed:
            return "the model's weights did not change: step the optimiser built on model.parameters()"
        return None

    return [Case(f"toy_{len(tokens)}_tokens", program, {**params, "x": inputs, "y": targets}, checks=(judge,),
                 compare=False)]


def _plot(gen, dtype):
    import solutions

    n = 5
    weights = solutions.softmax_stable(rand(gen, n, n, dtype=torch.float64, scale=2.0)).float()
    tokens = ["the", "cat", "sat", "on", "mats"]

    def judge(student: Outputs, reference: Outputs) -> str | None:
        meta = student.meta.get("fig", {})
        if meta.get("pytype") != "Figure":
            return f"plot_attention must return a matplotlib Figure (e.g. `return fig`), got {meta.get('pytype')}"
        for ax in meta.get("axes", []):
            for image in ax["images"]:
                data = student.tensors[image]
                if data.numel() == n * n and torch.allclose(data.reshape(n, n), weights.double(), atol=1e-3):
                    if ax["xticklabels"] != tokens or ax["yticklabels"] != tokens:
                        return (f"the heatmap needs the tokens as tick labels on both axes: x={ax['xticklabels']}, "
                                f"y={ax['yticklabels']}, expected {tokens} (set_xticks(range(n)) then set_xticklabels)")
                    return None
        return "no heatmap in the figure shows the (n, n) weights as given (use ax.imshow(weights))"

    program = [{"op": "call", "fn": "plot_attention", "args": [T("w"), L(tokens)], "out": "fig"},
               {"op": "output", "key": "fig", "var": "fig"}]
    return [Case("five_tokens", program, {"w": weights}, checks=(judge,), compare=False)]


# --- lesson 7 -----------------------------------------------------------------------------------


def window_rule(window: int) -> Check:
    def check(student: Outputs, reference: Outputs) -> str | None:
        m = student.tensor("out")
        if m is None or m.dtype != torch.bool or m.dim() != 2 or m.shape[0] != m.shape[1]:
            return None
        i, j = torch.meshgrid(torch.arange(m.shape[0]), torch.arange(m.shape[1]), indexing="ij")
        allowed = (i - j >= 0) & (i - j < window)
        if bool((m & ~allowed & (j > i)).any()):
            return "the mask lets a query see a later key: a sliding window is causal too (i - j >= 0)"
        if bool((m & ~allowed).any()):
            return f"the mask reaches further back than the window: query i may see keys i-{window - 1}..i only"
        if bool((~m & allowed).any()):
            return f"the mask hides keys inside the window: query i must see keys i-{window - 1}..i (the diagonal too)"
        return None
    return check


def _sliding(gen, dtype):
    return [Case(f"n{n}_w{w}", call("sliding_window_mask", L(n), L(w), device=DEVICE), {}, {"out": QK},
                 (window_rule(w),))
            for n, w in [(6, 1), (6, 3), (8, 8), (5, 10), (1, 1), (9, 2)]]


def _online(gen, dtype):
    cases = []
    for name, batch, nq, nk, d, dv, block, causal in [
        ("block_divides_n", (2,), 16, 16, 8, 8, 4, False),
        ("block_does_not_divide_n", (2,), 10, 10, 4, 6, 3, False),
        ("causal", (2, 2), 12, 12, 8, 8, 5, True),
        ("causal_block_1", (1,), 6, 6, 4, 4, 1, True),
        ("nq_ne_nk", (3,), 5, 11, 4, 2, 4, False),
        ("causal_nq_lt_nk", (2,), 5, 11, 4, 3, 3, True),  # top-left: query i sees keys j <= i
        ("causal_nq_gt_nk", (2,), 9, 4, 4, 3, 2, True),
        ("block_larger_than_n", (), 7, 7, 4, 4, 64, True),
        ("single_token", (), 1, 1, 3, 3, 2, False),
    ]:
        inputs = {"q": rand(gen, *batch, nq, d, dtype=dtype), "k": rand(gen, *batch, nk, d, dtype=dtype),
                  "v": rand(gen, *batch, nk, dv, dtype=dtype)}
        program = call("online_softmax_attention", T("q"), T("k"), T("v"), block_size=L(block), causal=L(causal))
        cases.append(Case(name, program, inputs, {"out": ("batch",) * len(batch) + QF}))
    return cases


ITEMS: dict[str, Item] = {item.name: item for item in [
    Item("attention_scores_loop", NB1, _scores_loop),
    Item("attention_scores", NB1, _scores),
    Item("softmax_naive", NB1, _softmax_cases("softmax_naive", large=False), forbidden=BUILTIN_SOFTMAX),
    Item("softmax_stable", NB1, _softmax_cases("softmax_stable", large=True), forbidden=BUILTIN_SOFTMAX),
    Item("context_vectors", NB1, _context),
    Item("simple_self_attention", NB1, _simple, depends_on=("attention_scores", "softmax_stable", "context_vectors")),
    Item("project_qkv", NB2, _project),
    Item("scaled_dot_product_attention", NB2, _sdpa, forbidden=BUILTIN_SDPA + BUILTIN_MHA),
    Item("SelfAttention_v1", NB3, _sa_v1, forbidden=BUILTIN_SDPA + BUILTIN_MHA),
    Item("SelfAttention_v2", NB3, _sa_v2, forbidden=BUILTIN_SDPA + BUILTIN_MHA),
    Item("transfer_weights", NB3, _transfer, depends_on=("SelfAttention_v1", "SelfAttention_v2")),
    Item("causal_mask", NB4, _causal_mask, dtypes=(None,), gpu_dtypes=()),
    Item("causal_attention_weights", NB4, _causal_weights, forbidden=BUILTIN_SDPA),
    Item("CausalAttention", NB4, _causal_attention, forbidden=BUILTIN_SDPA + BUILTIN_MHA),
    Item("MultiHeadAttentionWrapper", NB5, _mha_wrapper, forbidden=BUILTIN_SDPA + BUILTIN_MHA,
         depends_on=("CausalAttention",)),
    Item("split_heads", NB5, _split),
    Item("merge_heads", NB5, _merge),
    Item("MultiHeadAttention", NB5, _mha, forbidden=BUILTIN_SDPA + BUILTIN_MHA,
         depends_on=("split_heads", "merge_heads")),
    Item("count_parameters", NB5, _count, dtypes=(None,), gpu_dtypes=()),
    Item("train_self_attention", NB6, _train, dtypes=("float32",), gpu_dtypes=()),
    Item("plot_attention", NB6, _plot, dtypes=(None,), gpu_dtypes=()),
    Item("sliding_window_mask", NB7, _sliding, dtypes=(None,), gpu_dtypes=()),
    Item("online_softmax_attention", NB7, _online),
]}

NOTEBOOKS: tuple[str, ...] = (NB1, NB2, NB3, NB4, NB5, NB6, NB7)


def items_in(notebook: str) -> list[Item]:
    """The graded items of one notebook, in catalogue order."""
    return [item for item in ITEMS.values() if item.notebook == notebook]
