"""Lesson 1, attention scores: scores by loop and by matrix product, two softmaxes, context vectors,
simple self-attention. Their cases, their items and their known mistakes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import solutions
from exercises.cases import (
    BUILTIN_SOFTMAX,
    QUERY_FEATURE_DIMS,
    QUERY_KEY_DIMS,
    Case,
    Item,
    call,
    gradient_case,
    literal_arg,
    permutation_case,
    rand,
    rows_sum_to_one,
    tensor_arg,
)
from exercises.mistakes import mistake
from exercises.tolerances import tolerance

NOTEBOOK = "01_attention_scores.ipynb"


# --- cases ----------------------------------------------------------------------------------------------


def _book(dtype: torch.dtype) -> torch.Tensor:
    return solutions.BOOK_INPUTS.to(dtype)


def _scores_loop(gen, dtype):
    shapes = [(1, 3), (5, 4), (7, 2)]
    cases = [Case("book_example", call("attention_scores_loop", tensor_arg("x")), {"x": _book(dtype)},
                  {"out": QUERY_KEY_DIMS})]
    for n, d in shapes:
        cases.append(Case(f"n{n}_d{d}", call("attention_scores_loop", tensor_arg("x")),
                          {"x": rand(gen, n, d, dtype=dtype)}, {"out": QUERY_KEY_DIMS}))
    return cases


def _scores(gen, dtype):
    cases = [Case("book_example", call("attention_scores", tensor_arg("x")), {"x": _book(dtype)},
                  {"out": QUERY_KEY_DIMS})]
    for shape in [(2, 5, 4), (3, 2, 1, 6), (4, 3)]:
        cases.append(Case("x" + "x".join(map(str, shape)), call("attention_scores", tensor_arg("x")),
                          {"x": rand(gen, *shape, dtype=dtype)},
                          {"out": ("batch",) * (len(shape) - 2) + QUERY_KEY_DIMS}))
    return cases


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


def _softmax_cases(fn: str, large: bool) -> Callable:
    def build(gen, dtype):
        cases = [
            Case("rows_4x6", call(fn, tensor_arg("x")), {"x": rand(gen, 4, 6, dtype=dtype, scale=2.0)},
                 {"out": QUERY_KEY_DIMS}, (rows_sum_to_one("out"),)),
            Case("dim1_of_3d", call(fn, tensor_arg("x"), dim=literal_arg(1)), {"x": rand(gen, 3, 4, 5, dtype=dtype)},
                 {"out": ("batch", "softmax dim", "column")}),
            Case("vector_dim0", call(fn, tensor_arg("x"), dim=literal_arg(0)), {"x": rand(gen, 5, dtype=dtype)},
                 {"out": ("entry",)}),
        ]
        if large:
            # random rows of size ~1000, then one row of large positive and one of large negative values:
            # without the per-row maximum the first overflows (inf / inf) and the second underflows (0 / 0)
            fixed = torch.tensor([[1000.0, 999.0, 998.0, 997.0, 996.0],
                                  [-1000.0, -1001.0, -1002.0, -1003.0, -1004.0]], dtype=torch.float64).to(dtype)
            big = torch.cat([rand(gen, 3, 5, dtype=dtype) * 1000, fixed])
            scale = input_rounding(big)
            cases.append(Case("large_1000", call(fn, tensor_arg("x")), {"x": big}, {"out": QUERY_KEY_DIMS},
                              (rows_sum_to_one("out", scale),), tolerance_scale=scale))
            x = rand(gen, 4, 6, dtype=dtype)
            x[0, 2] = float("-inf")
            x[1, :5] = float("-inf")
            x[3, 0] = float("-inf")
            cases.append(Case("rows_with_minus_inf", call(fn, tensor_arg("x")), {"x": x}, {"out": QUERY_KEY_DIMS},
                              (rows_sum_to_one("out"),)))
            if dtype == torch.float64:
                cases.append(gradient_case("gradients", [], fn, ["x"], {"x": rand(gen, 4, 6, dtype=dtype)}, (4, 6),
                                           gen, dtype))
        return cases
    return build


def _context(gen, dtype):
    cases = []
    for shape in [(6, 3), (2, 5, 4), (1, 2)]:
        *batch, n, d = shape
        w = solutions.softmax_stable(rand(gen, *batch, n, n, dtype=torch.float64)).to(dtype)
        cases.append(Case("x" + "x".join(map(str, shape)), call("context_vectors", tensor_arg("w"), tensor_arg("x")),
                          {"w": w, "x": rand(gen, *shape, dtype=dtype)},
                          {"out": ("batch",) * len(batch) + QUERY_FEATURE_DIMS}))
    return cases


def _simple(gen, dtype):
    dims = {"out.0": QUERY_FEATURE_DIMS, "out.1": QUERY_KEY_DIMS}
    cases = [Case("book_example", call("simple_self_attention", tensor_arg("x")), {"x": _book(dtype)}, dims,
                  (rows_sum_to_one("out.1"),))]
    for shape in [(2, 5, 4), (1, 3)]:
        cases.append(Case("x" + "x".join(map(str, shape)), call("simple_self_attention", tensor_arg("x")),
                          {"x": rand(gen, *shape, dtype=dtype)}, dims, (rows_sum_to_one("out.1"),)))
    cases.append(permutation_case("permutation_equivariant", [], "simple_self_attention", rand(gen, 7, 3, dtype=dtype),
                                  gen, take_first=True))
    return cases


ITEMS: list[Item] = [
    Item("attention_scores_loop", NOTEBOOK, _scores_loop),
    Item("attention_scores", NOTEBOOK, _scores),
    Item("softmax_naive", NOTEBOOK, _softmax_cases("softmax_naive", large=False), forbidden=BUILTIN_SOFTMAX),
    Item("softmax_stable", NOTEBOOK, _softmax_cases("softmax_stable", large=True), forbidden=BUILTIN_SOFTMAX),
    Item("context_vectors", NOTEBOOK, _context),
    Item("simple_self_attention", NOTEBOOK, _simple,
         depends_on=("attention_scores", "softmax_stable", "context_vectors")),
]


# --- known mistakes -------------------------------------------------------------------------------------


@mistake("attention_scores_loop", "float32_result_tensor",
         "the result tensor is created without `dtype=inputs.dtype`, so float64 inputs give float32 scores",
         "create it with torch.empty(n, n, dtype=inputs.dtype, device=inputs.device)")
def _loop_default_dtype():
    return {"attention_scores_loop": lambda inputs: solutions.attention_scores_loop(inputs).float()}


@mistake("attention_scores", "transposed_product",
         "the product is inputs^T @ inputs, a (d, d) matrix of feature correlations, not (n, n) token scores",
         "compute inputs @ inputs.transpose(-2, -1): rows are queries, columns keys")
def _scores_transposed_product():
    return {"attention_scores": lambda inputs: inputs.transpose(-2, -1) @ inputs}


@mistake("softmax_naive", "normalised_over_whole_tensor",
         "exp(x) is divided by the sum over the whole tensor, not along `dim`",
         "sum along the softmax dimension: exp_x.sum(dim=dim, keepdim=True)")
def _naive_whole():
    return {"softmax_naive": lambda x, dim=-1: torch.exp(x) / torch.exp(x).sum()}


@mistake("softmax_naive", "ignores_dim",
         "the softmax is always taken over the last dimension: the `dim` argument is ignored",
         "pass dim to the sum: exp_x.sum(dim=dim, keepdim=True)")
def _naive_ignores_dim():
    return {"softmax_naive": lambda x, dim=-1: solutions.softmax_naive(x)}


@mistake("softmax_stable", "no_max_subtracted",
         "the maximum is not subtracted before exp, so large scores overflow to inf and give NaN",
         "subtract x.amax(dim=dim, keepdim=True) before torch.exp")
def _softmax_no_max():
    return {"softmax_stable": lambda x, dim=-1: solutions.softmax_naive(x, dim)}


@mistake("softmax_stable", "one_max_for_whole_tensor",
         "one maximum of the whole tensor is subtracted instead of each slice's own: rows far below the "
         "global maximum underflow to 0/0 = NaN",
         "take the maximum along the softmax dimension: x.amax(dim=dim, keepdim=True)")
def _softmax_global_max():
    return {"softmax_stable": lambda x, dim=-1: solutions.softmax_naive(x - x.max(), dim)}


@mistake("softmax_stable", "ignores_dim",
         "the softmax is always taken over the last dimension: the `dim` argument is ignored",
         "use dim for both the maximum and the sum")
def _stable_ignores_dim():
    return {"softmax_stable": lambda x, dim=-1: solutions.softmax_stable(x)}


@mistake("softmax_stable", "max_along_wrong_dim",
         "the maximum is taken along the last dimension while the sum runs along `dim`, so what is "
         "subtracted varies inside a softmax slice and does not cancel",
         "take the maximum along the same dimension as the sum: x.amax(dim=dim, keepdim=True)")
def _stable_max_wrong_dim():
    def softmax_stable(x, dim=-1):
        e = torch.exp(x - x.amax(dim=-1, keepdim=True))
        return e / e.sum(dim=dim, keepdim=True)
    return {"softmax_stable": softmax_stable}


@mistake("context_vectors", "weights_transposed",
         "the weights are transposed before the product: each context vector mixes by a column of weights",
         "row i of the weights belongs to query i: compute weights @ inputs")
def _context_transposed():
    return {"context_vectors": lambda weights, inputs: weights.transpose(-2, -1) @ inputs}


@mistake("simple_self_attention", "outputs_swapped",
         "the function returns (weights, context) instead of (context, weights)",
         "return context, weights in that order")
def _simple_swapped():
    return {"simple_self_attention": lambda inputs: solutions.simple_self_attention(inputs)[::-1]}


def _simple_variant(dim: int = -1, scale: bool = False, normalise: bool = True):
    def simple_self_attention(inputs):
        scores = solutions.attention_scores(inputs)
        if scale:
            scores = scores / inputs.shape[-1] ** 0.5
        weights = solutions.softmax_stable(scores, dim=dim) if normalise else scores
        return solutions.context_vectors(weights, inputs), weights
    return {"simple_self_attention": simple_self_attention}


@mistake("simple_self_attention", "softmax_over_dim_0",
         "the softmax runs over dim 0 (down the columns, or across the batch) instead of over the keys",
         "normalise each query's scores: softmax over dim=-1")
def _simple_dim0():
    return _simple_variant(dim=0)


@mistake("simple_self_attention", "scores_scaled",
         "the scores are divided by sqrt(d): this simplified attention has no scaling (that comes in lesson 2)",
         "use the raw dot products inputs @ inputs^T")
def _simple_scaled():
    return _simple_variant(scale=True)


@mistake("simple_self_attention", "scores_used_as_weights",
         "the raw scores are used as weights: no softmax, so the rows do not sum to 1",
         "apply softmax_stable(scores, dim=-1) before the context vectors")
def _simple_no_softmax():
    return _simple_variant(normalise=False)
