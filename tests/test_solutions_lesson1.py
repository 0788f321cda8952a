"""Lesson 1 reference: attention scores, softmax and context vectors.

Does the reference reproduce the book's printed tensors, agree with PyTorch, and stay generic in
dtype and device?
"""

import pytest
import torch
from tensor_helpers import DEVICES, randn

import solutions as S

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
LOOSE = dict(rtol=5e-2, atol=5e-2)  # bfloat16 against a float64 reference
BOOK_DECIMALS = dict(rtol=0, atol=5e-5 + 1e-6)  # printed values are rounded to 4 decimals

# Printed in the book (section 3.3.2), for the inputs "Your journey starts with one step".
BOOK_SCORES = [
    [0.9995, 0.9544, 0.9422, 0.4753, 0.4576, 0.6310],
    [0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865],
    [0.9422, 1.4754, 1.4570, 0.8296, 0.7154, 1.0605],
    [0.4753, 0.8434, 0.8296, 0.4937, 0.3474, 0.6565],
    [0.4576, 0.7070, 0.7154, 0.3474, 0.6654, 0.2935],
    [0.6310, 1.0865, 1.0605, 0.6565, 0.2935, 0.9450],
]
BOOK_WEIGHTS = [
    [0.2098, 0.2006, 0.1981, 0.1242, 0.1220, 0.1452],
    [0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581],
    [0.1390, 0.2369, 0.2326, 0.1242, 0.1108, 0.1565],
    [0.1435, 0.2074, 0.2046, 0.1462, 0.1263, 0.1720],
    [0.1526, 0.1958, 0.1975, 0.1367, 0.1879, 0.1295],
    [0.1385, 0.2184, 0.2128, 0.1420, 0.0988, 0.1896],
]
BOOK_CONTEXT = [
    [0.4421, 0.5931, 0.5790],
    [0.4419, 0.6515, 0.5683],
    [0.4431, 0.6496, 0.5671],
    [0.4304, 0.6298, 0.5510],
    [0.4671, 0.5910, 0.5266],
    [0.4177, 0.6503, 0.5645],
]


def book(device, dtype=torch.float32):
    return S.BOOK_INPUTS.to(device=device, dtype=dtype)


def expected(rows, device):
    return torch.tensor(rows, dtype=torch.float32, device=device)


def forbid_builtin_softmax(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a built-in softmax was called")

    for owner, name in [
        (torch, "softmax"),
        (torch, "log_softmax"),
        (torch.Tensor, "softmax"),
        (torch.Tensor, "log_softmax"),
        (torch.nn.functional, "softmax"),
        (torch.nn.functional, "log_softmax"),
        (torch.special, "softmax"),
        (torch.special, "log_softmax"),
    ]:
        monkeypatch.setattr(owner, name, boom)


def test_are_the_book_inputs_and_tokens_the_books():
    assert S.BOOK_TOKENS == ("Your", "journey", "starts", "with", "one", "step")
    assert S.BOOK_INPUTS.dtype == torch.float32 and S.BOOK_INPUTS.shape == (6, 3)
    assert S.BOOK_INPUTS[0].tolist() == pytest.approx([0.43, 0.15, 0.89])
    assert S.BOOK_INPUTS[-1].tolist() == pytest.approx([0.05, 0.80, 0.55])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn", [S.attention_scores_loop, S.attention_scores], ids=["loop", "matmul"])
def test_do_the_scores_match_the_book(fn, device):
    scores = fn(book(device))
    assert scores.shape == (6, 6)
    torch.testing.assert_close(scores, expected(BOOK_SCORES, device), **BOOK_DECIMALS)
    assert scores[0].tolist() == pytest.approx([0.9995, 0.9544, 0.9422, 0.4753, 0.4576, 0.6310], abs=5e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("softmax", [S.softmax_naive, S.softmax_stable], ids=["naive", "stable"])
def test_do_the_weights_match_the_book(softmax, device):
    weights = softmax(S.attention_scores(book(device)), dim=-1)
    torch.testing.assert_close(weights, expected(BOOK_WEIGHTS, device), **BOOK_DECIMALS)


@pytest.mark.parametrize("device", DEVICES)
def test_does_simple_self_attention_reproduce_the_books_weights_and_context_vectors(device):
    context, weights = S.simple_self_attention(book(device))
    torch.testing.assert_close(weights, expected(BOOK_WEIGHTS, device), **BOOK_DECIMALS)
    torch.testing.assert_close(context, expected(BOOK_CONTEXT, device), **BOOK_DECIMALS)
    assert context[0].tolist() == pytest.approx([0.4421, 0.5931, 0.5790], abs=5e-5)
    # The book's context_vec_2, computed for the second token alone.
    assert context[1].tolist() == pytest.approx([0.4419, 0.6515, 0.5683], abs=5e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_does_context_vectors_reproduce_the_book(device):
    weights = torch.softmax(S.attention_scores(book(device)), dim=-1)
    torch.testing.assert_close(
        S.context_vectors(weights, book(device)), expected(BOOK_CONTEXT, device), **BOOK_DECIMALS
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("softmax", [S.softmax_naive, S.softmax_stable], ids=["naive", "stable"])
def test_is_softmax_of_2_1_01_the_books(softmax, device):
    x = torch.tensor([2.0, 1.0, 0.1], device=device)
    torch.testing.assert_close(softmax(x), torch.tensor([0.6590, 0.2424, 0.0986], device=device), **BOOK_DECIMALS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape,dim",
    [((1,), -1), ((5,), 0), ((3, 7), -1), ((3, 7), 0), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), -2), ((4, 1), -1)],
)
def test_does_softmax_stable_agree_with_torch_softmax(shape, dim, dtype, device):
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        x = randn(gen, *shape, dtype=dtype, device=device, scale=3.0)
        torch.testing.assert_close(S.softmax_stable(x, dim=dim), torch.softmax(x, dim=dim), **TOL[dtype])
        torch.testing.assert_close(S.softmax_naive(x, dim=dim), torch.softmax(x, dim=dim), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_does_softmax_stable_survive_large_inputs(dtype, device):
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        x = randn(gen, 4, 9, dtype=dtype, device=device, scale=1000.0)
        for dim in (-1, 0):
            y = S.softmax_stable(x, dim=dim)
            assert torch.isfinite(y).all()
            torch.testing.assert_close(y, torch.softmax(x, dim=dim), **TOL[dtype])
    big = torch.tensor([1000.0, 999.0, -1000.0], dtype=dtype, device=device)
    torch.testing.assert_close(S.softmax_stable(big), torch.softmax(big, dim=-1), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_does_softmax_naive_overflow_where_stable_does_not(device):
    x = torch.tensor([1000.0, 0.0], device=device)
    assert torch.isnan(S.softmax_naive(x)).any()  # the motivation for the stable version
    torch.testing.assert_close(S.softmax_stable(x), torch.tensor([1.0, 0.0], device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_does_softmax_stable_handle_rows_with_some_minus_inf(dtype, device):
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        x = randn(gen, 3, 5, 8, dtype=dtype, device=device, scale=5.0)
        drop = (torch.rand(3, 5, 8, generator=gen) < 0.5).to(device)
        drop[..., seed % 8] = False  # at least one finite entry per row
        x = x.masked_fill(drop, float("-inf"))
        y = S.softmax_stable(x, dim=-1)
        assert not torch.isnan(y).any()
        assert (y[drop] == 0).all()
        torch.testing.assert_close(y, torch.softmax(x, dim=-1), **TOL[dtype])
    row = torch.tensor([float("-inf"), 1000.0, float("-inf"), 998.0], dtype=dtype, device=device)
    torch.testing.assert_close(S.softmax_stable(row), torch.softmax(row, dim=-1), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_does_softmax_stable_never_call_a_builtin_softmax(monkeypatch, device):
    x = torch.tensor([[2.0, 1.0, 0.1], [1000.0, 0.0, float("-inf")]], device=device)
    expected_y = torch.softmax(x, dim=-1)
    forbid_builtin_softmax(monkeypatch)
    with pytest.raises(AssertionError):
        torch.softmax(x, dim=-1)  # the patch is in place
    torch.testing.assert_close(S.softmax_stable(x), expected_y)
    torch.testing.assert_close(S.softmax_stable(x.T, dim=0), expected_y.T)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,d", [(1, 1), (1, 4), (6, 3), (9, 5)])
def test_does_the_loop_agree_with_the_matrix_product(n, d, dtype, device):
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        x = randn(gen, n, d, dtype=dtype, device=device)
        torch.testing.assert_close(S.attention_scores_loop(x), x @ x.T, **TOL[dtype])
        torch.testing.assert_close(S.attention_scores(x), x @ x.T, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
def test_do_scores_context_and_simple_attention_work_on_batches(batch, dtype, device):
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        x = randn(gen, *batch, 5, 4, dtype=dtype, device=device)
        scores = torch.einsum("...id,...jd->...ij", x, x)
        weights = torch.softmax(scores, dim=-1)
        torch.testing.assert_close(S.attention_scores(x), scores, **TOL[dtype])
        torch.testing.assert_close(
            S.context_vectors(weights, x), torch.einsum("...ij,...jd->...id", weights, x), **TOL[dtype]
        )
        context, w = S.simple_self_attention(x)
        assert context.shape == (*batch, 5, 4) and w.shape == (*batch, 5, 5)
        torch.testing.assert_close(w, weights, **TOL[dtype])
        torch.testing.assert_close(w.sum(dim=-1), torch.ones(*batch, 5, dtype=dtype, device=device), **TOL[dtype])
        torch.testing.assert_close(context, weights @ x, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_do_lesson1_outputs_keep_dtype_and_device(dtype, device):
    x = book(device, dtype)
    outputs = {
        "attention_scores_loop": S.attention_scores_loop(x),
        "attention_scores": S.attention_scores(x),
        "softmax_naive": S.softmax_naive(x),
        "softmax_stable": S.softmax_stable(x),
        "context_vectors": S.context_vectors(S.softmax_stable(S.attention_scores(x)), x),
        "simple_self_attention.context": S.simple_self_attention(x)[0],
        "simple_self_attention.weights": S.simple_self_attention(x)[1],
    }
    for name, out in outputs.items():
        assert out.dtype == dtype, name
        assert out.device.type == torch.device(device).type, name


@pytest.mark.parametrize("device", DEVICES)
def test_is_bfloat16_close_to_the_book(device):
    context, weights = S.simple_self_attention(book(device, torch.bfloat16))
    torch.testing.assert_close(weights.float(), expected(BOOK_WEIGHTS, device), **LOOSE)
    torch.testing.assert_close(context.float(), expected(BOOK_CONTEXT, device), **LOOSE)
    stable = S.softmax_stable(S.attention_scores_loop(book(device, torch.bfloat16)))
    torch.testing.assert_close(stable.float(), expected(BOOK_WEIGHTS, device), **LOOSE)
