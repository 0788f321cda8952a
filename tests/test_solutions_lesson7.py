"""Lesson 7 reference: rotary multi-head attention, the next-token loss, training, generation, the given model."""

import contextlib
import copy
import io
import math
import re
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from tensor_helpers import DEVICES
from torch import nn

import solutions as S
import solutions.lesson7_language_model as L7

NOTEBOOK = Path(__file__).resolve().parent.parent / "source" / "self_attention" / "07_tiny_language_model.ipynb"
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def rotary(seed=0, dtype=torch.float64, device="cpu", **kwargs):
    torch.manual_seed(seed)
    config = {"d_in": 6, "d_out": 8, "context_length": 32, "dropout": 0.0, "num_heads": 2, **kwargs}
    return S.RotaryMultiHeadAttention(**config).to(device=device, dtype=dtype).eval()


def by_hand(module, x, positions=None):
    """RoPE per head written out: split, rotate queries and keys with apply_rope, causal softmax, merge."""
    b, n, _ = x.shape
    h, hd = module.num_heads, module.head_dim
    q, k, v = (lin(x).view(b, n, h, hd).transpose(1, 2) for lin in (module.W_query, module.W_key, module.W_value))
    if positions is not None and positions.dim() == 2:
        positions = positions[:, None, :]
    q, k = S.apply_rope(q, positions, module.rope_base), S.apply_rope(k, positions, module.rope_base)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=x.device).tril(), float("-inf"))
    return module.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h * hd))


# --- RotaryMultiHeadAttention -----------------------------------------------------------------------------


def test_is_rotary_attention_lesson_5s_module_with_rope_base():
    module = rotary()
    assert isinstance(module, S.MultiHeadAttention) and module.rope_base == 10000.0
    assert [n for n, _ in module.named_parameters()] == [n for n, _ in S.MultiHeadAttention(6, 8, 32, 0.0, 2)
                                                         .named_parameters()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_is_rotary_attention_rope_on_each_heads_queries_and_keys(dtype, device):
    module = rotary(dtype=dtype, device=device)
    x = torch.randn(3, 7, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device, dtype)
    with torch.no_grad():
        torch.testing.assert_close(module(x), by_hand(module, x), **TOL[dtype])
        positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [5, 6, 7, 8, 9, 10, 11], [0, 3, 6, 9, 12, 15, 18]],
                                 device=device)
        torch.testing.assert_close(module(x, positions), by_hand(module, x, positions), **TOL[dtype])


def test_is_rotary_attention_multi_head_attention_at_position_zero():
    module = rotary()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    plain = S.MultiHeadAttention.forward(module, x)
    torch.testing.assert_close(module(x, torch.zeros(5, dtype=torch.long)), plain, rtol=0, atol=1e-12)
    assert not torch.allclose(module(x), plain, atol=1e-6)


@pytest.mark.parametrize("shift", [1, 9, 25])
def test_do_only_distances_matter(shift):
    module = rotary(seed=shift)
    x = torch.randn(2, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(module(x, torch.arange(6) + shift), module(x), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(module(x, torch.arange(6) * 2), module(x), atol=1e-6)


def test_is_rotary_attention_causal_and_differentiable():
    module = rotary()
    x = torch.randn(2, 7, 6, dtype=torch.float64, requires_grad=True)
    changed = x.detach().clone()
    changed[:, 4:] += 1.0
    torch.testing.assert_close(module(changed)[:, :4], module(x)[:, :4])
    module(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in module.parameters())


def test_does_rotary_attention_refuse_too_many_tokens_and_odd_heads():
    with pytest.raises(ValueError):
        rotary(context_length=4)(torch.randn(1, 5, 6, dtype=torch.float64))
    with pytest.raises(ValueError):  # head_dim 3 cannot be rotated in pairs
        rotary(d_out=6)(torch.randn(1, 3, 6, dtype=torch.float64))


# --- next_token_loss --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_is_the_loss_the_mean_cross_entropy_of_the_next_token(dtype, device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 5, (3, 6), generator=g)
    by_loop = sum(torch.logsumexp(logits[b, t], 0) - logits[b, t, tokens[b, t + 1]]
                  for b in range(3) for t in range(5)) / 15
    got = S.next_token_loss(logits.to(device, dtype), tokens.to(device))
    assert got.dim() == 0 and got.dtype == dtype
    torch.testing.assert_close(got.double().cpu(), by_loop, **TOL[dtype])


def test_is_the_loss_log_v_for_uniform_logits_and_zero_for_certain_ones():
    tokens = torch.randint(0, 7, (2, 9), generator=torch.Generator().manual_seed(0))
    assert abs(float(S.next_token_loss(torch.zeros(2, 9, 7), tokens)) - math.log(7)) < 1e-6
    perfect = torch.zeros(2, 9, 7)
    perfect[:, :-1] = 40.0 * F.one_hot(tokens[:, 1:], 7)
    assert float(S.next_token_loss(perfect, tokens)) < 1e-9


def test_does_the_loss_carry_a_gradient_to_every_predicting_position_only():
    logits = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    S.next_token_loss(logits, torch.randint(0, 4, (2, 5))).backward()
    assert logits.grad[:, :-1].abs().sum() > 0
    assert torch.equal(logits.grad[:, -1], torch.zeros(2, 4, dtype=torch.float64))


# --- train_language_model ---------------------------------------------------------------------------------


def bigram(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(7, 8), nn.Linear(8, 7)).to(dtype)


TOKENS = (torch.arange(12) * 3 + torch.arange(4)[:, None]) % 7  # (4, 12): token + 3 comes next


def test_does_training_fall_and_record_each_loss_before_its_step():
    model = bigram()
    start = copy.deepcopy(model)
    losses = S.train_language_model(model, TOKENS, steps=40, lr=0.05)
    assert len(losses) == 40 and all(type(v) is float for v in losses)
    with torch.no_grad():
        assert losses[0] == pytest.approx(float(S.next_token_loss(start(TOKENS), TOKENS)), abs=1e-12)
    assert losses[-1] < 0.1 * losses[0]
    once = copy.deepcopy(start)
    S.train_language_model(once, TOKENS, steps=1, lr=0.05)
    with torch.no_grad():
        assert losses[1] == pytest.approx(float(S.next_token_loss(once(TOKENS), TOKENS)), abs=1e-12)


def test_do_two_runs_from_one_start_agree():
    a, b = bigram(3), bigram(3)
    assert S.train_language_model(a, TOKENS, 10, 0.05) == S.train_language_model(b, TOKENS, 10, 0.05)


@pytest.mark.parametrize("device", DEVICES)
def test_does_the_tiny_language_model_learn_the_corpus(device):
    vocab = L7.character_vocabulary(S.CORPUS)
    ids = L7.encode(S.CORPUS, vocab)
    windows = torch.stack([ids[i:i + 16] for i in range(len(ids) - 15)]).to(device)
    torch.manual_seed(0)
    model = S.TinyLanguageModel(len(vocab), 32, 64, 2).to(device)
    losses = S.train_language_model(model, windows, steps=60, lr=1e-2)
    assert losses[0] > math.log(len(vocab)) - 0.5 and losses[-1] < 0.5 * losses[0]


# --- grading: real training or nothing --------------------------------------------------------------------


def _copy_trained(model, tokens, steps, lr):
    """A real curve, from training a copy; the model handed back only nudged."""
    losses = S.train_language_model(copy.deepcopy(model), tokens, steps, lr)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)
    return losses


def _one_step_too_many(model, tokens, steps, lr):
    return S.train_language_model(model, tokens, steps + 1, lr)[:steps]


def _fabricated(model, tokens, steps, lr):
    with torch.no_grad():
        first = S.next_token_loss(model(tokens), tokens).item()
        for p in model.parameters():
            p.mul_(1.001)
    return [first * (0.2 + 0.8 * 0.93**step) for step in range(steps)]


@pytest.mark.parametrize("student", [_fabricated, _copy_trained, _one_step_too_many], ids=lambda f: f.__name__)
def test_does_a_curve_that_is_not_this_training_earn_nothing(student):
    from exercises.catalogue import ITEMS
    from exercises.judge import judge, reference_outputs, run_on

    item = ITEMS["train_language_model"]
    namespace = {**vars(S), "train_language_model": student}
    for seed in (0, 1, 2):
        for dtype in item.variants("cpu"):
            for case in item.cases(seed, dtype):
                torch.manual_seed(0)
                outputs = run_on(namespace, case, "cpu", dtype)
                verdict = judge(case, outputs, reference_outputs(case, "cpu", dtype), "cpu")
                assert not verdict.passed, (seed, dtype, case.name)


def test_does_the_reference_training_pass_its_own_grading():
    from exercises.catalogue import ITEMS
    from exercises.judge import judge, reference_outputs, run_on

    item = ITEMS["train_language_model"]
    for dtype in item.variants("cpu"):
        for case in item.cases(5, dtype):
            torch.manual_seed(0)
            assert judge(case, run_on(vars(S), case, "cpu", dtype), reference_outputs(case, "cpu", dtype), "cpu").passed


# --- generate ---------------------------------------------------------------------------------------------


class SumModel(nn.Module):
    """Next token = (sum of the tokens so far) % vocab, at every position."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, tokens):
        best = tokens.cumsum(1) % self.vocab
        return -(torch.arange(self.vocab, device=tokens.device) - best[..., None]).float() ** 2


@pytest.mark.parametrize("device", DEVICES)
def test_does_generate_append_the_argmax_of_the_last_position(device):
    prompt = torch.tensor([[1, 2], [3, 0], [4, 4]], device=device)
    out = S.generate(SumModel(7), prompt, 5)
    assert out.dtype == torch.int64 and out.shape == (3, 7) and out.device.type == torch.device(device).type
    for row in out.tolist():
        for t in range(2, 7):
            assert row[t] == sum(row[:t]) % 7
    assert torch.equal(S.generate(SumModel(7), prompt, 0), prompt)


def test_does_generate_continue_the_corpus():
    vocab = L7.character_vocabulary(S.CORPUS)
    ids = L7.encode(S.CORPUS, vocab)
    windows = torch.stack([ids[i:i + 16] for i in range(len(ids) - 15)])
    torch.manual_seed(0)
    model = S.TinyLanguageModel(len(vocab), 32, 64, 2)
    S.train_language_model(model, windows, steps=150, lr=1e-2)
    model.eval()
    text = L7.decode(S.generate(model, L7.encode("the teacher ", vocab)[None], 10)[0], vocab)
    assert text.startswith("the teacher gives")


# --- the given model and the lesson's claims --------------------------------------------------------------


def given_namespace() -> dict:
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in nbformat.read(NOTEBOOK, 4).cells}
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for grade_id in ("given_imports", "multi_head_attention_from_lesson_5", "apply_rope_from_lesson_6",
                         "RotaryMultiHeadAttention", "given_model", "given_corpus"):
            exec(cells[grade_id], namespace)
    return namespace


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_are_the_notebooks_model_and_corpus_the_references(positions):
    namespace = given_namespace()
    assert namespace["corpus"] == S.CORPUS and namespace["vocab"] == L7.character_vocabulary(S.CORPUS)
    torch.manual_seed(0)
    ours = S.TinyLanguageModel(23, 16, 32, 2, 2, positions=positions).double()
    theirs = namespace["TinyLanguageModel"](23, 16, 32, 2, 2, positions=positions).double()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    theirs.load_state_dict(ours.state_dict())
    tokens = torch.randint(0, 23, (2, 10))
    assert torch.equal(ours(tokens), theirs(tokens))
    assert torch.equal(L7.attention_weights(ours, tokens), namespace["attention_weights"](theirs, tokens))


def test_is_a_rotary_model_the_same_at_any_start_position_and_a_learned_one_not():
    tokens = torch.randint(0, 23, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    rope = S.TinyLanguageModel(23, 16, 64, 2).double()
    learned = S.TinyLanguageModel(23, 16, 64, 2, positions="learned").double()
    late = torch.arange(48, 64)
    torch.testing.assert_close(rope(tokens, late), rope(tokens), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(learned(tokens, late), learned(tokens), atol=1e-3)


def test_does_the_release_text_hold_no_line_of_the_answers():
    """Outside the solution regions (markdown included) no cell spells the graded loop or decoding step."""
    for cell in nbformat.read(NOTEBOOK, 4).cells:
        text = re.sub(r"### BEGIN SOLUTION.*?### END SOLUTION", "", cell.source, flags=re.S).replace(" ", "")
        assert "losses.append(loss.item())" not in text, cell.source[:200]
        assert "optimizer.step()\n" not in text, cell.source[:200]
        assert "torch.cat([tokens,next" not in text, cell.source[:200]
        assert "apply_rope(queries" not in text and "apply_rope(q," not in text.replace("(q,k)", ""), cell.source[:200]
