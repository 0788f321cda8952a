"""Lesson 7 reference: the toy model and data, training, and the attention heatmap."""

import time

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from tensor_helpers import DEVICES
from torch import nn

import solutions as S

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def toy_model(seed=0, dtype=torch.float32, device="cpu"):
    torch.manual_seed(seed)
    return S.ToySelfAttention(8).to(device=device, dtype=dtype)


@pytest.fixture(scope="module", autouse=True)
def warm_up_adam():
    """The first torch.optim.Adam in a process pays a one-off import (about 1.5 s); keep it out of timings."""
    torch.optim.Adam(nn.Linear(1, 1).parameters())


# --- given: ToySelfAttention and toy_dataset ----------------------------------------------------


def test_does_toy_self_attention_have_the_documented_parts():
    model = S.ToySelfAttention(8)
    for name in ("W_query", "W_key", "W_value"):
        layer = getattr(model, name)
        assert isinstance(layer, nn.Linear) and layer.weight.shape == (8, 8) and layer.bias is None
    assert isinstance(model.out_proj, nn.Linear) and model.out_proj.bias is not None
    assert S.count_parameters(model) == 4 * 64 + 8


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_is_toy_self_attention_scaled_non_causal_attention(dtype, device):
    model = toy_model(dtype=dtype, device=device)
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device, dtype)
    output, weights = model(x)
    assert output.shape == (3, 5, 8) and weights.shape == (3, 5, 5)
    q, k, v = model.W_query(x), model.W_key(x), model.W_value(x)
    torch.testing.assert_close(output, model.out_proj(F.scaled_dot_product_attention(q, k, v)), **TOL[dtype])
    torch.testing.assert_close(weights, torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_is_the_toy_dataset_a_seeded_reconstruction_task(dtype, device):
    tokens, inputs, targets = S.toy_dataset(seed=0, dtype=dtype, device=device)
    assert isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
    assert inputs.shape == (1, len(tokens), 8)
    assert inputs.dtype == dtype and inputs.device.type == torch.device(device).type
    assert torch.equal(inputs, targets) and inputs.data_ptr() != targets.data_ptr()
    _, again, _ = S.toy_dataset(seed=0, dtype=dtype, device=device)
    assert torch.equal(inputs, again)
    _, other, _ = S.toy_dataset(seed=1, dtype=dtype, device=device)
    assert not torch.equal(inputs, other)
    # One embedding per word: equal rows exactly for equal words.
    for i, word_i in enumerate(tokens):
        for j, word_j in enumerate(tokens):
            assert torch.equal(inputs[0, i], inputs[0, j]) == (word_i == word_j)


def test_is_the_toy_data_the_same_on_every_device_and_dtype():
    _, x32, _ = S.toy_dataset(dtype=torch.float32)
    _, x64, _ = S.toy_dataset(dtype=torch.float64)
    torch.testing.assert_close(x64.float(), x32)


# --- train_self_attention -----------------------------------------------------------------------


def test_does_training_halve_the_loss_quickly_and_change_the_weights():
    tokens, inputs, targets = S.toy_dataset()
    for seed in range(3):
        model = toy_model(seed)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        start = time.perf_counter()
        losses = S.train_self_attention(model, inputs, targets, steps=200, lr=0.05)
        elapsed = time.perf_counter() - start
        assert elapsed < 2.0, f"200 steps took {elapsed:.2f} s"
        assert isinstance(losses, list) and len(losses) == 200
        assert all(type(loss) is float for loss in losses)
        assert losses[-1] <= 0.5 * losses[0], (losses[0], losses[-1])
        for name, p in model.named_parameters():
            assert not torch.equal(p, before[name]), f"{name} did not change"


def test_is_each_loss_recorded_before_its_step():
    _, inputs, targets = S.toy_dataset()
    model = toy_model(1)
    with torch.no_grad():
        initial = F.mse_loss(model(inputs)[0], targets).item()
    losses = S.train_self_attention(model, inputs, targets, steps=3, lr=0.01)
    assert losses[0] == pytest.approx(initial, rel=1e-6)
    # and the last recorded loss is not the final model's loss
    with torch.no_grad():
        final = F.mse_loss(model(inputs)[0], targets).item()
    assert final != pytest.approx(losses[-1], rel=1e-9)


def test_do_two_seeded_runs_give_the_same_losses():
    _, inputs, targets = S.toy_dataset()
    a = S.train_self_attention(toy_model(2), inputs, targets, steps=20, lr=0.05)
    b = S.train_self_attention(toy_model(2), inputs, targets, steps=20, lr=0.05)
    assert a == b


def test_does_training_accept_a_model_that_returns_a_tensor():
    _, inputs, targets = S.toy_dataset()
    torch.manual_seed(0)
    model = nn.Linear(8, 8)
    model.eval()
    losses = S.train_self_attention(model, inputs, targets, steps=100, lr=0.05)
    assert model.training  # train mode is switched on
    assert len(losses) == 100 and losses[-1] < 0.5 * losses[0]
    assert S.train_self_attention(model, inputs, targets, steps=0, lr=0.05) == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_does_training_work_on_every_device_and_dtype(dtype, device):
    _, inputs, targets = S.toy_dataset(dtype=dtype, device=device)
    model = toy_model(0, dtype=dtype, device=device)
    losses = S.train_self_attention(model, inputs, targets, steps=50, lr=0.05)
    assert len(losses) == 50 and losses[-1] < losses[0]
    assert next(model.parameters()).dtype == dtype


# --- plot_attention -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_does_plot_attention_draw_the_weights_with_token_labels(dtype, device):
    tokens, inputs, _ = S.toy_dataset(dtype=dtype, device=device)
    _, weights = toy_model(dtype=dtype, device=device)(inputs)  # requires grad, maybe on the GPU
    fig = S.plot_attention(weights[0], tokens)
    assert isinstance(fig, Figure)
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 1
    ax = images[0].axes
    data = torch.as_tensor(images[0].get_array().data)
    torch.testing.assert_close(data, weights[0].detach().cpu().float(), rtol=0, atol=0, check_dtype=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens
    assert list(ax.get_xticks()) == list(range(len(tokens)))
    assert list(ax.get_yticks()) == list(range(len(tokens)))
    assert ax.get_xlabel() == "key" and ax.get_ylabel() == "query"


def test_does_plot_attention_render_without_a_display(tmp_path):
    fig = S.plot_attention(torch.softmax(S.attention_scores(S.BOOK_INPUTS), dim=-1), S.BOOK_TOKENS)
    path = tmp_path / "attention.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000


@pytest.mark.parametrize(
    "shape,n_tokens",
    [((3, 4), 3), ((4, 4), 3), ((1, 4, 4), 4), ((4,), 4)],
    ids=["non-square", "few-tokens", "3-d", "1-d"],
)
def test_does_plot_attention_refuse_bad_shapes(shape, n_tokens):
    with pytest.raises(ValueError):
        S.plot_attention(torch.rand(shape), [f"t{i}" for i in range(n_tokens)])
