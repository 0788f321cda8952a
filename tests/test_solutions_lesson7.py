"""Lesson 7 reference: the toy model and data, training, and the attention heatmap."""

import contextlib
import io
import re
import time
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from tensor_helpers import DEVICES
from torch import nn

import solutions as S
import solutions.lesson7_training as L7

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
    assert isinstance(model.pos_emb, nn.Embedding) and model.pos_emb.weight.shape == (L7.TOY_MAX_TOKENS, 8)
    assert S.count_parameters(model) == 4 * 64 + 8 + L7.TOY_MAX_TOKENS * 8


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_is_toy_self_attention_attention_with_positions_in_queries_and_keys(dtype, device):
    model = toy_model(dtype=dtype, device=device)
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device, dtype)
    output, weights = model(x)
    assert output.shape == (3, 5, 8) and weights.shape == (3, 5, 5)
    where = x + model.pos_emb.weight[:5]
    q, k, v = model.W_query(where), model.W_key(where), model.W_value(x)
    torch.testing.assert_close(output, model.out_proj(F.scaled_dot_product_attention(q, k, v)), **TOL[dtype])
    torch.testing.assert_close(weights, torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1), **TOL[dtype])


def test_do_positions_break_permutation_equivariance_and_only_they():
    model = toy_model(dtype=torch.float64)
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    out, _ = model(x)
    out_perm, _ = model(x[:, perm])
    assert not torch.allclose(out_perm, out[:, perm], atol=1e-6)  # positions: order matters
    with torch.no_grad():
        model.pos_emb.weight.zero_()
    out, _ = model(x)
    out_perm, _ = model(x[:, perm])
    torch.testing.assert_close(out_perm, out[:, perm])  # without them it does not


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_is_the_toy_dataset_the_seeded_previous_token_task(dtype, device):
    sentences, inputs, targets = S.toy_dataset(seed=0, dtype=dtype, device=device)
    b, n = L7.TOY_NUM_SENTENCES, len(L7.TOY_SENTENCE)
    assert sentences[0] == list(L7.TOY_SENTENCE) and len(sentences) == b
    assert all(len(s) == n and set(s) <= set(L7.TOY_VOCAB) for s in sentences)
    assert inputs.shape == targets.shape == (b, n, L7.TOY_D_MODEL)
    assert inputs.dtype == dtype and inputs.device.type == torch.device(device).type
    assert torch.equal(targets[:, 1:], inputs[:, :-1]) and torch.equal(targets[:, 0], inputs[:, 0])
    _, again, _ = S.toy_dataset(seed=0, dtype=dtype, device=device)
    assert torch.equal(inputs, again)
    sentences_1, other, _ = S.toy_dataset(seed=1, dtype=dtype, device=device)
    assert not torch.equal(inputs, other) and sentences_1 != sentences
    # One embedding per word: equal rows exactly for equal words.
    words = [w for s in sentences for w in s]
    rows = inputs.reshape(-1, inputs.shape[-1])
    for i in range(0, len(words), 7):
        for j in range(len(words)):
            assert torch.equal(rows[i], rows[j]) == (words[i] == words[j])


def test_does_no_word_tell_its_predecessor():
    """In the random sequences every word follows several different words: only positions solve the task."""
    sentences, _, _ = S.toy_dataset(seed=0)
    before: dict[str, set[str]] = {}
    for s in sentences:
        for prev, word in zip(s, s[1:], strict=False):
            before.setdefault(word, set()).add(prev)
    assert all(len(prev) >= 3 for prev in before.values()), before


def test_is_the_toy_data_the_same_on_every_device_and_dtype():
    _, x32, _ = S.toy_dataset(dtype=torch.float32)
    _, x64, _ = S.toy_dataset(dtype=torch.float64)
    torch.testing.assert_close(x64.float(), x32)


# --- train_self_attention -----------------------------------------------------------------------


def trained(seed, steps=200, lr=0.05, dtype=torch.float32):
    _, inputs, targets = S.toy_dataset(seed=0, dtype=dtype)
    model = toy_model(seed, dtype=dtype)
    with torch.no_grad():
        before = model(inputs)[1]
    losses = S.train_self_attention(model, inputs, targets, steps=steps, lr=lr)
    with torch.no_grad():
        after = model(inputs)[1]
    return model, losses, before, after


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_is_the_previous_token_pattern_learned(seed):
    """Before training about one row in six looks at the previous token (chance); after, (almost) every row."""
    model, losses, before, after = trained(seed)
    assert L7.previous_token_fraction(before) < 0.4
    assert L7.previous_token_fraction(after) >= 0.95
    n = after.shape[-1]
    assert float(after[:, torch.arange(1, n), torch.arange(n - 1)].mean()) > 0.9  # and nearly all the weight
    assert losses[-1] < 1e-3 * losses[0]


def test_is_the_pattern_out_of_reach_without_positions():
    _, inputs, targets = S.toy_dataset(seed=0)
    model = toy_model(0)
    with torch.no_grad():
        model.pos_emb.weight.zero_()
    model.pos_emb.weight.requires_grad_(False)
    losses = S.train_self_attention(model, inputs, targets, steps=200, lr=0.05)
    with torch.no_grad():
        weights = model(inputs)[1]
    assert L7.previous_token_fraction(weights) < 0.5
    assert losses[-1] > 0.1 * losses[0]
    # "the" at positions 0 and 4 of the toy sentence: the same query, so the same row of weights
    torch.testing.assert_close(weights[0, 0], weights[0, 4])


def test_does_training_fall_quickly_and_change_every_weight():
    _, inputs, targets = S.toy_dataset()
    model = toy_model(1)
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
    _, inputs, targets = S.toy_dataset(dtype=torch.float64)
    a = S.train_self_attention(toy_model(2, dtype=torch.float64), inputs, targets, steps=20, lr=0.05)
    b = S.train_self_attention(toy_model(2, dtype=torch.float64), inputs, targets, steps=20, lr=0.05)
    assert a == b


def test_does_training_accept_a_model_that_returns_a_tensor():
    _, inputs, targets = S.toy_dataset()
    torch.manual_seed(0)
    model = nn.Linear(8, 8)
    model.eval()
    losses = S.train_self_attention(model, inputs, targets, steps=100, lr=0.05)
    assert model.training  # train mode is switched on
    assert len(losses) == 100 and losses[-1] < losses[0]  # a linear map cannot copy the previous token
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
    sentences, inputs, _ = S.toy_dataset(dtype=dtype, device=device)
    tokens = sentences[0]
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


# --- the notebook's given code is the reference's -------------------------------------------------

NOTEBOOK = Path(__file__).resolve().parent.parent / "source" / "self_attention" / "07_training_self_attention.ipynb"


def given_cells(*grade_ids):
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in nbformat.read(NOTEBOOK, 4).cells}
    return "\n".join(cells[g] for g in grade_ids)


def test_are_the_notebooks_model_and_data_the_references():
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(given_cells("given_imports", "given_toy_model", "given_toy_data"), namespace)
    sentences, inputs, targets = S.toy_dataset(seed=0)
    assert namespace["sentences"] == sentences
    assert torch.equal(namespace["inputs"], inputs) and torch.equal(namespace["targets"], targets)
    ours, theirs = toy_model(3, dtype=torch.float64), namespace["ToySelfAttention"](8).double()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    theirs.load_state_dict(ours.state_dict())
    for a, b in zip(ours(inputs.double()), theirs(inputs.double()), strict=True):
        assert torch.equal(a, b)


def test_does_the_release_text_hold_no_line_of_the_training_answer():
    """Outside the solution regions (markdown included) nothing spells the graded loop's loss line."""
    for cell in nbformat.read(NOTEBOOK, 4).cells:
        text = re.sub(r"### BEGIN SOLUTION.*?### END SOLUTION", "", cell.source, flags=re.S)
        assert "mse_loss(output,targets)" not in text.replace(" ", ""), cell.source[:200]


# --- grading: real training or nothing ------------------------------------------------------------


def _copy_trained(model, inputs, targets, steps, lr):
    """A real curve, from training a copy; the model handed back only nudged."""
    import copy

    losses = S.train_self_attention(copy.deepcopy(model), inputs, targets, steps, lr)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)
    return losses


def _one_step_too_many(model, inputs, targets, steps, lr):
    return S.train_self_attention(model, inputs, targets, steps + 1, lr)[:steps]


def _fabricated(model, inputs, targets, steps, lr):
    with torch.no_grad():
        first = F.mse_loss(model(inputs)[0], targets).item()
        for p in model.parameters():
            p.mul_(1.001)
    return [first * (0.2 + 0.8 * 0.93**step) for step in range(steps)]


@pytest.mark.parametrize("student", [_fabricated, _copy_trained, _one_step_too_many], ids=lambda f: f.__name__)
def test_does_a_curve_that_is_not_this_training_earn_nothing(student):
    from exercises.catalogue import ITEMS
    from exercises.judge import judge, reference_outputs, run_on

    item = ITEMS["train_self_attention"]
    namespace = {**vars(S), "train_self_attention": student}
    for seed in (0, 1, 2):
        for dtype in item.variants("cpu"):
            for case in item.cases(seed, dtype):
                torch.manual_seed(0)
                outputs = run_on(namespace, case, "cpu", dtype)
                verdict = judge(case, outputs, reference_outputs(case, "cpu", dtype), "cpu")
                assert not verdict.passed, (seed, dtype, case.name)
