"""Lesson 7, a tiny language model: rotary multi-head attention, the next-token loss, the training loop and
greedy generation. Their cases, their items and their known mistakes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

import solutions
from exercises.cases import (
    BUILTIN_MHA,
    BUILTIN_SDPA,
    QUERY_FEATURE_DIMS,
    Case,
    Item,
    build_module,
    causal_leak_case,
    forward,
    gradient_case,
    literal_arg,
    module_cases,
    module_invariants,
    rand,
    reference_params,
    tensor_arg,
    var_arg,
)
from exercises.compare import Outputs, number_dtype, value_mismatch
from exercises.i18n import tr
from exercises.mistakes import error_hint, mistake
from exercises.tolerances import tolerance

NOTEBOOK = "07_tiny_language_model.ipynb"


# --- cases: RotaryMultiHeadAttention -------------------------------------------------------------------------

ROTARY = "RotaryMultiHeadAttention"
ROTARY_BASE = {"d_in": 6, "d_out": 8, "context_length": 64, "dropout": 0.0, "num_heads": 2}


def _positions_case(name: str, gen, dtype, positions: torch.Tensor, kwargs: dict[str, Any]) -> Case:
    """The module called with explicit ``positions`` (``(n,)`` or ``(b, n)`` integers)."""
    params = reference_params(ROTARY, kwargs, gen, dtype)
    b = positions.shape[0] if positions.dim() == 2 else 2
    x = rand(gen, b, positions.shape[-1], kwargs["d_in"], dtype=dtype)
    program = build_module(ROTARY, kwargs, params) + forward("m", tensor_arg("x"), tensor_arg("positions"), out="out")
    return Case(name, program, {**params, "x": x, "positions": positions}, {"out": ("batch",) + QUERY_FEATURE_DIMS})


def _shift_invariance(gen, dtype) -> Case:
    """RoPE's point: shifting every position by the same amount leaves the scores, so the output, unchanged."""
    params = reference_params(ROTARY, ROTARY_BASE, gen, dtype)
    n, shift = 6, int(torch.randint(3, 40, (1,), generator=gen))
    program = build_module(ROTARY, ROTARY_BASE, params) + forward("m", tensor_arg("x"), out="out") + \
        forward("m", tensor_arg("x"), tensor_arg("shifted"), out="out_shifted")

    def check(student: Outputs, reference: Outputs) -> str | None:
        a, b = student.tensor("out"), student.tensor("out_shifted")
        if a is None or b is None or a.shape != b.shape:
            return None  # the comparison reports it
        if value_mismatch("out_shifted", b, a, scale=4.0) is not None:
            return tr("moving every position by {shift} changed the output: with RoPE on the queries and keys only, "
                      "the scores depend on the distance between positions alone (do not rotate the values, and "
                      "rotate each head's queries and keys after the split)").format(shift=shift)
        return None
    return Case(f"shift_positions_by_{shift}", program,
                {**params, "x": rand(gen, 2, n, 6, dtype=dtype), "shifted": torch.arange(n) + shift},
                {"out": ("batch",) + QUERY_FEATURE_DIMS, "out_shifted": ("batch",) + QUERY_FEATURE_DIMS},
                (check,), tolerance_scale=4.0)


def _rotary(gen, dtype):
    base = ROTARY_BASE
    cases = module_cases(ROTARY, [
        ("two_heads", base, (2, 7, 6)),
        ("four_heads_shorter", {**base, "num_heads": 4}, (3, 5, 6)),
        ("qkv_bias_one_head", {**base, "num_heads": 1, "qkv_bias": True}, (2, 6, 6)),
        ("rope_base_100", {**base, "rope_base": 100.0}, (2, 9, 6)),
        ("eval_ignores_dropout", {**base, "dropout": 0.5}, (1, 4, 6)),
    ], gen, dtype)
    cases.append(_positions_case("positions_from_20", gen, dtype, torch.arange(20, 27), base))
    # (b, n) = (3, 5) with 2 heads: positions that are not given a heads axis fail to broadcast (b != h)
    per_sequence = torch.stack([torch.arange(5) + 3, torch.tensor([0, 2, 4, 6, 8]), torch.arange(5)])
    cases.append(_positions_case("positions_per_sequence", gen, dtype, per_sequence, base))
    cases.append(_shift_invariance(gen, dtype))
    cases.append(causal_leak_case(ROTARY, base, gen, dtype, 2, 7, 4))
    cases += module_invariants(ROTARY, base, gen, dtype)
    return cases


# --- cases: next_token_loss ----------------------------------------------------------------------------------


def _tokens(gen, b: int, n: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (b, n), generator=gen)


def _loss(gen, dtype):
    cases = []
    for b, n, vocab in [(2, 6, 7), (3, 9, 5), (4, 2, 11), (2, 5, 3)]:
        logits = rand(gen, b, n, vocab, dtype=dtype, scale=2.0)
        program = [{"op": "call", "fn": "next_token_loss", "args": [tensor_arg("logits"), tensor_arg("tokens")],
                    "out": "loss"}, {"op": "output", "key": "out", "var": "loss"}]
        cases.append(Case(f"b{b}_n{n}_vocab{vocab}", program, {"logits": logits, "tokens": _tokens(gen, b, n, vocab)}))
    if dtype == torch.float64:
        logits = rand(gen, 2, 5, 4, dtype=dtype)
        cases.append(gradient_case("gradient_wrt_logits", [], "next_token_loss", ["logits"],
                                   {"logits": logits, "tokens": _tokens(gen, 2, 5, 4)}, (1,), gen, dtype,
                                   extra_args=(tensor_arg("tokens"),)))
    return cases


# --- cases: train_language_model -----------------------------------------------------------------------------

STEPS = 40  # the graded run: a fraction of a second on a CPU core
LR = 0.02
TRAIN_VOCAB, TRAIN_D = 7, 8
# How far a correct run may stray from the reference run from the same initial weights (the first edition's
# training grade): Adam divides by the root of the squared gradients, so rounding differences between two
# correct loops (F.cross_entropy on flattened or permuted logits, model.zero_grad()) can grow over the steps:
# 10 times the relative tolerance of exercises/tolerances.py, and an absolute part a tenth of it. A curve that
# is not this training (made up, shifted by one step, another loss, another optimiser) is off by percents.
CURVE_SCALE = 10.0


def curve_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    rtol, atol = tolerance(dtype)
    return rtol * CURVE_SCALE, atol * CURVE_SCALE / 100


def bigram_model(vocab: int = TRAIN_VOCAB, d: int = TRAIN_D) -> torch.nn.Module:
    """The graded training's model: ``Embedding(vocab, d)`` then ``Linear(d, vocab)`` (torch.nn only, so the
    student's other answers cannot change it)."""
    return torch.nn.Sequential(torch.nn.Embedding(vocab, d), torch.nn.Linear(d, vocab))


def _bigram_steps(var: str = "m") -> list[dict[str, Any]]:
    return [
        {"op": "new", "cls": "torch.nn.Embedding", "args": [literal_arg(TRAIN_VOCAB), literal_arg(TRAIN_D)],
         "out": "emb"},
        {"op": "new", "cls": "torch.nn.Linear", "args": [literal_arg(TRAIN_D), literal_arg(TRAIN_VOCAB)],
         "out": "head"},
        {"op": "new", "cls": "torch.nn.Sequential", "args": [var_arg("emb"), var_arg("head")], "out": var},
    ]


def model_loss(params: dict[str, torch.Tensor], tokens: torch.Tensor) -> float:
    """The next-token loss of the bigram model with ``params`` (name -> tensor), in float64, in the grader.

    Computed from the returned parameters, so nothing the student's code did to the model's ``forward``
    can change it.
    """
    model = bigram_model().double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name].double().cpu())
        return float(solutions.next_token_loss(model(tokens.cpu()), tokens.cpu()))


def returned_params(outputs: Outputs, key: str = "after") -> dict[str, torch.Tensor] | None:
    """The model's parameters after training (``before``: as loaded), by name, or None if one is missing."""
    names = [name for name, _ in bigram_model().named_parameters()]
    found = {name: outputs.tensors.get(f"{key}.{name}") for name in names}
    if any(t is None or not t.is_floating_point() for t in found.values()):
        return None
    return found  # type: ignore[return-value]


def end_of_curve_slack(reference: Outputs, dtype: torch.dtype) -> float:
    """How far above the last recorded loss the returned model's loss may lie: twice the larger of the
    reference run's own last change and its own gap (returned model's loss minus last recorded loss), plus
    the curve tolerance."""
    r = reference.tensors["losses"]
    rtol, atol = curve_tolerance(dtype)
    after = returned_params(reference)
    gap = abs(model_loss(after, reference.tensors["tokens"]) - float(r[-1])) if after else 0.0
    last_change = float((r[-2] - r[-1]).abs()) if len(r) > 1 else 0.0
    return 2 * max(gap, last_change) + rtol * float(r[-1].abs()) + atol


def chain_tokens(gen, b: int, n: int, vocab: int) -> torch.Tensor:
    """``(b, n)`` sequences that follow one random permutation from random first tokens: a bigram model can
    learn them, and at ``LR`` it is still learning steadily after ``STEPS`` steps (each step lowers the loss by
    about a tenth), so one step more or fewer shows in the returned model."""
    perm = torch.randperm(vocab, generator=gen)
    rows = [torch.randint(0, vocab, (b,), generator=gen)]
    for _ in range(n - 1):
        rows.append(perm[rows[-1]])
    return torch.stack(rows, dim=1)


def _train(gen, dtype):
    tokens = chain_tokens(gen, 4, 12, TRAIN_VOCAB)
    params = {f"p.{name}": rand(gen, *p.shape, dtype=dtype, scale=1 / math.sqrt(p.shape[-1]))
              for name, p in bigram_model().named_parameters()}
    steps = STEPS
    program = _bigram_steps() + [
        {"op": "load_params", "obj": "m", "params": {k[2:]: k for k in params}},
        {"op": "mode", "obj": "m", "train": True},
        {"op": "params", "obj": "m", "out": "before"},
        {"op": "output", "key": "before", "var": "before"},
        {"op": "call", "fn": "train_language_model", "args": [var_arg("m"), tensor_arg("tokens")],
         "kwargs": {"steps": literal_arg(steps), "lr": literal_arg(LR)}, "out": "losses"},
        {"op": "output", "key": "losses", "var": "losses"},
        {"op": "params", "obj": "m", "out": "after"},
        {"op": "output", "key": "after", "var": "after"},
        # the tokens as the call saw them (the reference's copy is what the mistakes' predicates read)
        {"op": "call", "fn": "torch.clone", "args": [tensor_arg("tokens")], "out": "tokens_copy"},
        {"op": "output", "key": "tokens", "var": "tokens_copy"},
    ]
    initial = {k[2:]: v for k, v in params.items()}
    computed_in = dtype

    def judge(student: Outputs, reference: Outputs) -> str | None:
        meta = student.meta.get("losses", {})
        if meta.get("pytype") not in ("list", "tuple") or not meta.get("numbers"):
            return tr("train_language_model must return a list of per-step losses (floats), got {got}").format(
                got=meta.get("pytype"))
        losses = student.tensors["losses"]
        if len(losses) != steps:
            return tr("expected {steps} losses (one per step), got {got}").format(steps=steps, got=len(losses))
        if not bool(torch.isfinite(losses).all()):
            return tr("some losses are NaN or inf")
        ref = reference.tensors["losses"]
        if value_mismatch("first loss", losses[:1], ref[:1], computed_in=number_dtype(reference.meta["losses"])):
            return tr("the first loss should be the next-token loss of the untrained model, {expected:.6g}; got "
                      "{got:.6g}: record each loss before that step's update, and use "
                      "next_token_loss(model(tokens), tokens)").format(expected=float(ref[0]), got=float(losses[0]))
        after = returned_params(student)
        if after is None:
            return tr("the model's parameters could not be read back after training")
        if all(torch.equal(after[k].to(v.dtype), v) for k, v in initial.items()):
            return tr("the model's weights did not change: step the optimiser built on model.parameters()")
        if not float(losses[-1]) < float(losses[0]) - 0.5 * float(ref[0] - ref[-1]):
            return tr("the loss did not fall (first {first:.4g}, last {last:.4g}; training gets it to {target:.4g}): "
                      "every step needs a fresh gradient (zero it), loss.backward(), then optimizer.step()").format(
                first=float(losses[0]), last=float(losses[-1]), target=float(ref[-1]))
        returned = model_loss(after, tokens)
        if returned > float(losses[-1]) + end_of_curve_slack(reference, computed_in):
            return tr("the model you return gives a loss of {returned:.6g} on these tokens, but your last recorded "
                      "loss is {last:.6g}: the losses must be those of training this model (its loss after the last "
                      "step is at most about one step's change above the last one recorded)").format(
                returned=returned, last=float(losses[-1]))
        rtol, atol = curve_tolerance(computed_in)
        off = ((losses - ref).abs() > atol + rtol * ref.abs()).nonzero()
        if len(off):
            k = int(off[0, 0])
            return tr("your losses leave those of Adam training from the same initial weights at step {k}: got "
                      "{got:.6g}, expected {expected:.6g}: one Adam optimiser made once before the loop, each step "
                      "zero the gradients, compute the loss, record it, backward, step").format(
                k=k, got=float(losses[k]), expected=float(ref[k]))
        expected = model_loss(returned_params(reference), tokens)  # type: ignore[arg-type]
        # a quarter of the reference's own last-step change tells one step more (or fewer) from rounding
        if abs(returned - expected) > 0.25 * abs(expected - float(ref[-1])) + atol + rtol * abs(expected):
            return tr("the model you return gives a loss of {returned:.6g}, not {expected:.6g}, the loss after "
                      "{steps} optimiser steps: take exactly one step per recorded loss and return the trained "
                      "model").format(returned=returned, expected=expected, steps=steps)
        return None

    return [Case(f"bigram_{tokens.shape[0]}_sequences_{tokens.shape[1]}_tokens", program,
                 {**params, "tokens": tokens}, checks=(judge,), compare=False)]


# --- cases: generate -----------------------------------------------------------------------------------------

GEN_VOCAB, GEN_D = 9, 8


def context_model() -> torch.nn.Module:
    """The graded generation's model: embedding, one (non-causal) ``TransformerEncoderLayer``, output layer.

    Every position's logits depend on the whole sequence, so a ``generate`` that feeds the model anything but
    all the tokens so far gets other logits; torch.nn only, so the student's other answers cannot change it.
    """
    return torch.nn.Sequential(
        torch.nn.Embedding(GEN_VOCAB, GEN_D),
        torch.nn.TransformerEncoderLayer(GEN_D, 2, dim_feedforward=16, dropout=0.0, batch_first=True),
        torch.nn.Linear(GEN_D, GEN_VOCAB))


def _generate(gen, dtype):
    params = {f"p.{name}": rand(gen, *p.shape, dtype=torch.float32, scale=3 / math.sqrt(p.shape[-1]))
              for name, p in context_model().named_parameters()}
    for name, p in context_model().named_parameters():  # plain norms and no output bias: the logits follow
        if ".norm" in name or name == "2.bias":             # the context, not a favourite token
            params[f"p.{name}"] = torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)
    build = [
        {"op": "new", "cls": "torch.nn.Embedding", "args": [literal_arg(GEN_VOCAB), literal_arg(GEN_D)], "out": "emb"},
        {"op": "new", "cls": "torch.nn.TransformerEncoderLayer", "args": [literal_arg(GEN_D), literal_arg(2)],
         "kwargs": {"dim_feedforward": literal_arg(16), "dropout": literal_arg(0.0), "batch_first": literal_arg(True)},
         "out": "layer"},
        {"op": "new", "cls": "torch.nn.Linear", "args": [literal_arg(GEN_D), literal_arg(GEN_VOCAB)], "out": "head"},
        {"op": "new", "cls": "torch.nn.Sequential", "args": [var_arg("emb"), var_arg("layer"), var_arg("head")],
         "out": "m"},
        {"op": "load_params", "obj": "m", "params": {k[2:]: k for k in params}},
        {"op": "mode", "obj": "m", "train": False},
    ]
    cases = []
    for b, n, new in [(3, 4, 6), (1, 2, 5), (2, 7, 1), (2, 3, 0), (4, 5, 8), (3, 1, 6)]:
        program = build + [{"op": "call", "fn": "generate", "args": [var_arg("m"), tensor_arg("prompt")],
                            "kwargs": {"max_new_tokens": literal_arg(new)}, "out": "tokens"},
                           {"op": "output", "key": "out", "var": "tokens"}]
        cases.append(Case(f"b{b}_prompt{n}_new{new}", program, {**params, "prompt": _tokens(gen, b, n, GEN_VOCAB)},
                          {"out": ("batch", "token")}))
    return cases


ITEMS: list[Item] = [
    Item(ROTARY, NOTEBOOK, _rotary, forbidden=BUILTIN_SDPA + BUILTIN_MHA,
         depends_on=("apply_rope", "MultiHeadAttention")),
    Item("next_token_loss", NOTEBOOK, _loss),
    Item("train_language_model", NOTEBOOK, _train, gpu_dtypes=(), depends_on=("next_token_loss",)),
    Item("generate", NOTEBOOK, _generate, dtypes=(None,), gpu_dtypes=()),
]


# --- known mistakes: RotaryMultiHeadAttention ----------------------------------------------------------------


def _rotate_half(x: torch.Tensor, positions=None, base: float = 10000.0) -> torch.Tensor:
    """RoPE on the halves (feature i with i + d/2, GPT-NeoX and Hugging Face's rotate_half), not on neighbours."""
    d = x.shape[-1]
    perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # interleaved -> halves
    inverse = torch.argsort(perm)
    return solutions.apply_rope(x[..., inverse], positions, base)[..., perm]


def _rotary_variant(*, where: str = "heads", rotate: tuple[str, ...] = ("q", "k"), use_positions: bool = True,
                    rope=solutions.apply_rope, scale: str = "head_dim", mask: bool = True, base: float | None = None):
    class RotaryMultiHeadAttention(solutions.RotaryMultiHeadAttention):
        def forward(self, x, positions=None):
            if base is not None:
                self.rope_base = base  # the constructor's rope_base is never used
            b, n, _ = x.shape
            pos = positions if use_positions else None
            if pos is not None:
                pos = torch.as_tensor(pos, device=x.device)
            head_pos = pos.unsqueeze(-2) if pos is not None and pos.dim() >= 2 else pos

            def rot(t, which, at_heads):
                if which not in rotate:
                    return t
                return rope(t, head_pos if at_heads else pos, self.rope_base)

            source = rope(x, pos, self.rope_base) if where == "input" else x
            q, k, v = self.W_query(source), self.W_key(source), self.W_value(x if where == "input" else source)
            if where == "merged":
                q, k, v = rot(q, "q", False), rot(k, "k", False), rot(v, "v", False)
            q, k, v = (solutions.split_heads(t, self.num_heads) for t in (q, k, v))  # (b, h, n, hd)
            if where == "heads":
                q, k, v = rot(q, "q", True), rot(k, "k", True), rot(v, "v", True)
            scores = q @ k.transpose(-2, -1)  # (b, h, n, n)
            if mask:
                scores = scores.masked_fill(~self.mask[:n, :n], float("-inf"))
            d = self.d_out if scale == "d_out" else k.shape[-1]
            weights = self.dropout(torch.softmax(scores / d**0.5, dim=-1))
            out = self.out_proj(solutions.merge_heads(weights @ v))
            return rope(out, pos, self.rope_base) if where == "output" else out
    return {ROTARY: RotaryMultiHeadAttention}


@mistake(ROTARY, "rope_after_merging_heads",
         "RoPE is applied to the whole projected queries and keys (b, n, d_out) before the split into heads, so "
         "each head's features are rotated with the frequencies of d_out instead of head_dim",
         "split into heads first, (b, h, n, head_dim), then apply_rope to the queries and the keys")
def _rot_merged():
    return _rotary_variant(where="merged")


@mistake(ROTARY, "rope_on_values",
         "the values are rotated too: RoPE belongs on the queries and keys only (it changes where a token "
         "looks, not what it hands over)",
         "apply_rope to queries and keys after the split; leave the values as they are")
def _rot_values():
    return _rotary_variant(rotate=("q", "k", "v"))


@mistake(ROTARY, "positions_not_passed",
         "the positions argument is ignored: apply_rope is called with the default 0 .. n-1 whatever forward "
         "was given",
         "pass positions on: apply_rope(queries, positions, self.rope_base) and the same for the keys")
def _rot_no_positions():
    return _rotary_variant(use_positions=False)


@mistake(ROTARY, "queries_only",
         "only the queries are rotated: the scores then depend on the query's absolute position, not on the "
         "distance between query and key",
         "rotate the keys as well, with the same positions")
def _rot_queries():
    return _rotary_variant(rotate=("q",))


@mistake(ROTARY, "keys_only",
         "only the keys are rotated: the scores then depend on the key's absolute position, not on the "
         "distance between query and key",
         "rotate the queries as well, with the same positions")
def _rot_keys():
    return _rotary_variant(rotate=("k",))


@mistake(ROTARY, "rope_on_the_input",
         "RoPE rotates the input x before the projections: W_query and W_key then mix the rotated pairs, and "
         "the scores no longer depend on the distance alone",
         "project first, split into heads, then rotate the queries and keys")
def _rot_input():
    return _rotary_variant(where="input")


@mistake(ROTARY, "rope_on_the_output",
         "RoPE is applied to the output instead of the queries and keys",
         "rotate the per-head queries and keys before the scores, not the result")
def _rot_output():
    return _rotary_variant(where="output", rotate=())


@mistake(ROTARY, "rotate_half_pairs",
         "features i and i + head_dim/2 are rotated together (the rotate_half layout of GPT-NeoX and Hugging "
         "Face), not the neighbouring pairs (2i, 2i+1) of the RoFormer paper that lesson 6 uses",
         "use your lesson-6 apply_rope, which rotates each pair (x[2i], x[2i+1])")
def _rot_half():
    return _rotary_variant(rope=_rotate_half)


@mistake(ROTARY, "causal_mask_dropped",
         "the new forward forgets the causal mask: every token also attends to later tokens",
         "mask the scores with self.mask[:n, :n] (-inf where a query may not attend) before the softmax")
def _rot_no_mask():
    return _rotary_variant(mask=False)


@mistake(ROTARY, "scaled_by_d_out",
         "the scores are divided by sqrt(d_out) instead of sqrt(head_dim)",
         "divide by keys.shape[-1] ** 0.5 after the split")
def _rot_d_out():
    return _rotary_variant(scale="d_out")


@mistake(ROTARY, "rope_base_ignored",
         "the rope_base argument is ignored: the rotation always uses base 10000",
         "keep rope_base from the constructor and pass it on: apply_rope(queries, positions, self.rope_base)")
def _rot_base_ignored():
    return _rotary_variant(base=10000.0)


error_hint(ROTARY, "positions_per_sequence_not_broadcast",
           r"must match the size of tensor b|must match the existing size|shape mismatch|cannot be broadcast|"
           r"not broadcastable",
           "positions of shape (b, n) were passed to apply_rope on (b, h, n, head_dim) tensors unchanged, so "
           "they do not broadcast against the heads",
           "give the heads their own axis: positions.unsqueeze(1) when positions has shape (b, n)")


# --- known mistakes: next_token_loss -------------------------------------------------------------------------


def _flat(logits, tokens):
    return logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1)


@mistake("next_token_loss", "not_shifted",
         "the loss compares logits[:, t] with tokens[:, t]: each position is asked to predict its own token, "
         "which it can see, instead of the next one",
         "predict tokens[:, 1:] from logits[:, :-1]")
def _loss_not_shifted():
    return {"next_token_loss": lambda logits, tokens: F.cross_entropy(*_flat(logits, tokens))}


@mistake("next_token_loss", "shifted_the_wrong_way",
         "the loss predicts tokens[:, t] from logits[:, t + 1], the previous token from the next position",
         "logits[:, :-1] predict tokens[:, 1:]")
def _loss_wrong_way():
    return {"next_token_loss": lambda logits, tokens: F.cross_entropy(*_flat(logits[:, 1:], tokens[:, :-1]))}


@mistake("next_token_loss", "shifted_after_flattening",
         "the batch is flattened before the shift: the last position of one sequence is asked to predict the "
         "first token of the next sequence",
         "shift inside each sequence first (logits[:, :-1], tokens[:, 1:]), then reshape")
def _loss_flat_shift():
    def next_token_loss(logits, tokens):
        flat_logits, flat_tokens = _flat(logits, tokens)
        return F.cross_entropy(flat_logits[:-1], flat_tokens[1:])
    return {"next_token_loss": next_token_loss}


@mistake("next_token_loss", "targets_transposed_in_reshape",
         "the targets are flattened time-major (tokens[:, 1:].T) while the logits are flattened batch-major, so "
         "logits and targets are paired up wrongly",
         "flatten both the same way: logits[:, :-1].reshape(-1, V) and tokens[:, 1:].reshape(-1)")
def _loss_transposed():
    def next_token_loss(logits, tokens):
        vocab = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].T.reshape(-1))
    return {"next_token_loss": next_token_loss}


@mistake("next_token_loss", "summed_not_averaged",
         "the cross-entropies are added up instead of averaged (reduction='sum')",
         "the mean over every predicted position: F.cross_entropy's default reduction")
def _loss_sum():
    return {"next_token_loss": lambda logits, tokens: F.cross_entropy(*_flat(logits[:, :-1], tokens[:, 1:]),
                                                                      reduction="sum")}


@mistake("next_token_loss", "mean_over_batch_only",
         "the cross-entropies are summed over the positions and averaged over the sequences only",
         "average over every predicted position of every sequence")
def _loss_mean_batch():
    def next_token_loss(logits, tokens):
        per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")  # (b, n-1)
        return per_token.sum(dim=1).mean()
    return {"next_token_loss": next_token_loss}


@mistake("next_token_loss", "softmax_before_cross_entropy",
         "the logits go through a softmax before F.cross_entropy, which applies its own log-softmax: the "
         "probabilities are normalised twice",
         "pass the raw logits to F.cross_entropy")
def _loss_softmax():
    return {"next_token_loss": lambda logits, tokens: F.cross_entropy(
        *_flat(torch.softmax(logits[:, :-1], dim=-1), tokens[:, 1:]))}


@mistake("next_token_loss", "nll_of_raw_logits",
         "F.nll_loss is given the raw logits: without a log-softmax first it returns minus the mean logit of "
         "the right token, not a cross-entropy",
         "use F.cross_entropy(logits, targets), or F.nll_loss(F.log_softmax(logits, -1), targets)")
def _loss_nll():
    return {"next_token_loss": lambda logits, tokens: F.nll_loss(*_flat(logits[:, :-1], tokens[:, 1:]))}


@mistake("next_token_loss", "returns_a_python_float",
         "the loss is returned as a Python float (loss.item()): nothing can be trained from it",
         "return the scalar tensor itself; call .item() only where you record it")
def _loss_item():
    return {"next_token_loss": lambda logits, tokens: solutions.next_token_loss(logits, tokens).item()}


error_hint("next_token_loss", "logits_not_flattened",
           r"Expected target size|expected target size|Expected input batch_size",
           "F.cross_entropy was given (b, n, V) logits: it reads the classes from dimension 1, so it expects "
           "(N, V) logits with (N,) targets (or (b, V, n) with (b, n))",
           "flatten: F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))")


# --- known mistakes: train_language_model --------------------------------------------------------------------


def _train_variant(*, step: bool = True, zero_grad: bool = True, after: bool = False, loss_fn=None,
                   as_tensors: bool = False, returns: bool = True, optimizer_in_loop: bool = False,
                   step_first: bool = False, optimizer: str = "adam"):
    def loss_of(model, tokens):
        return (loss_fn or solutions.next_token_loss)(model(tokens), tokens)

    def make(model, lr):
        cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
        return cls(model.parameters(), lr=lr)

    def train_language_model(model, tokens, steps, lr):
        opt = make(model, lr)
        losses = []
        for _ in range(steps):
            if optimizer_in_loop:
                opt = make(model, lr)
            if zero_grad:
                opt.zero_grad()
            loss = loss_of(model, tokens)
            if step and step_first:
                opt.step()
            loss.backward()
            if step and not step_first:
                opt.step()
            if after:
                with torch.no_grad():
                    loss = loss_of(model, tokens)
            losses.append(loss if as_tensors else loss.item())
        return losses if returns else None
    return {"train_language_model": train_language_model}


def _fabricated():
    def train_language_model(model, tokens, steps, lr):
        with torch.no_grad():
            first = solutions.next_token_loss(model(tokens), tokens).item()
            for p in model.parameters():
                p.add_(1e-3)
        return [first * 0.95**i for i in range(steps)]
    return {"train_language_model": train_language_model}


def _losses(outputs: Outputs) -> torch.Tensor | None:
    meta = outputs.meta.get("losses", {})
    if meta.get("pytype") not in ("list", "tuple") or not meta.get("numbers"):
        return None
    return outputs.tensors["losses"]


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    rtol, atol = curve_tolerance(dtype)
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _never_steps(student: Outputs, reference: Outputs) -> bool:
    s = _losses(student)
    return s is not None and len(s) > 1 and bool((s == s[0]).all())


def _loss_after_step(student: Outputs, reference: Outputs) -> bool:
    s, r = _losses(student), _losses(reference)
    return s is not None and r is not None and len(s) == len(r) > 1 and _close(s[:-1], r[1:])


def _unshifted_loss(student: Outputs, reference: Outputs) -> bool:
    """The first loss is the untrained model's loss on predicting each position's own token."""
    s, before, tokens = _losses(student), returned_params(reference, "before"), reference.tensors.get("tokens")
    if s is None or before is None or tokens is None or len(s) < 1:
        return False
    model = bigram_model().double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(before[name].double())
        own = F.cross_entropy(model(tokens).reshape(-1, TRAIN_VOCAB), tokens.reshape(-1))
    return _close(s[:1], own.reshape(1).to(s.dtype))


def _made_up(student: Outputs, reference: Outputs) -> bool:
    """A falling curve that is not the training's, and the returned model's loss far above its end."""
    s, r = _losses(student), _losses(reference)
    after = returned_params(student)
    if s is None or r is None or after is None or len(s) != len(r) or len(s) < 2 or _close(s, r):
        return False
    returned = model_loss(after, reference.tensors["tokens"])
    return float(s[-1]) < float(s[0]) and returned > float(s[-1]) + end_of_curve_slack(reference, torch.float32)


def _first_two_right(student: Outputs, reference: Outputs) -> bool:
    s, r = _losses(student), _losses(reference)
    return s is not None and r is not None and len(s) == len(r) > 2 and _close(s[:2], r[:2]) and not _close(s, r)


def _gradients_pile_up(student: Outputs, reference: Outputs) -> bool:
    """The first two losses are right (the first gradient is clean), then the curve leaves the training's, and
    not by a fresh Adam every step: the stale gradients of earlier steps keep pushing (on the graded chain
    tokens they all point the same way, so the curve even falls faster)."""
    return _first_two_right(student, reference) and not _fresh_adam_every_step(student, reference)


def _fresh_adam_every_step(student: Outputs, reference: Outputs) -> bool:
    """Every weight moved by a whole number of learning rates: Adam's first step (lr * sign(g)), each step."""
    before, after = returned_params(reference, "before"), returned_params(student)
    if not _first_two_right(student, reference) or before is None or after is None:
        return False
    moved = torch.cat([(after[k].double() - before[k].double()).flatten() for k in before]).abs()
    in_lr = moved[moved > 0] / LR
    return len(in_lr) > 0 and float(((in_lr - in_lr.round()).abs() < 0.01).double().mean()) > 0.5


def _plain_gradient_steps(student: Outputs, reference: Outputs) -> bool:
    """The first loss is right and the weights moved by exactly -lr times the first gradient would give for SGD:
    detected as the curve falling far more slowly than Adam's, with first losses equal."""
    s, r = _losses(student), _losses(reference)
    if s is None or r is None or len(s) != len(r) or len(s) < 3 or not _close(s[:1], r[:1]) or _close(s[:2], r[:2]):
        return False
    return float(s[0]) > float(s[-1]) > float(r[-1])


def _losses_are_tensors(student: Outputs, reference: Outputs) -> bool:
    meta = student.meta.get("losses", {})
    return (meta.get("pytype") in ("list", "tuple") and not meta.get("numbers")
            and student.meta.get("losses.0", {}).get("pytype") == "Tensor")


def _returned_none(student: Outputs, reference: Outputs) -> bool:
    return student.meta.get("losses", {}).get("pytype") == "NoneType"


TRAIN = "train_language_model"


@mistake(TRAIN, "optimiser_never_steps",
         "the weights never change, so the loss stays flat: optimizer.step() is missing (or loss.backward() "
         "is, and there are no gradients; the two cannot be told apart from the losses)",
         "each step: optimizer.zero_grad(), loss.backward(), optimizer.step()", predicate=_never_steps,
         same_as=("step_before_backward",))
def _train_no_step():
    return _train_variant(step=False)


@mistake(TRAIN, "step_before_backward",
         "optimizer.step() comes before loss.backward(): when it runs the gradients were just zeroed, so "
         "it changes nothing and the loss stays flat",
         "the order is zero_grad(), forward, loss, backward(), step()", predicate=_never_steps,
         same_as=("optimiser_never_steps",))
def _train_step_first():
    return _train_variant(step_first=True)


@mistake(TRAIN, "no_zero_grad",
         "the gradients are never reset, so from the second step on each step uses the sum of all past "
         "gradients (the first two losses are right, then the curve leaves the training's)",
         "call optimizer.zero_grad() once every step, before loss.backward()", predicate=_gradients_pile_up)
def _train_no_zero():
    return _train_variant(zero_grad=False)


@mistake(TRAIN, "optimizer_created_in_loop",
         "a new Adam optimiser is made at every step, so its running averages of the gradients start from "
         "zero each time (the first two losses are right, then the curve leaves the training's)",
         "create the optimiser once, before the loop", predicate=_fresh_adam_every_step)
def _train_optimizer_in_loop():
    return _train_variant(optimizer_in_loop=True)


@mistake(TRAIN, "loss_recorded_after_step",
         "the losses are recorded after the optimiser step (losses[0] is already the loss after one update)",
         "append loss.item() of the loss you call backward() on, computed before optimizer.step()",
         predicate=_loss_after_step)
def _train_after():
    return _train_variant(after=True)


@mistake(TRAIN, "loss_not_shifted",
         "the model is trained to predict each position's own token (cross-entropy of logits[:, t] against "
         "tokens[:, t]), not the next one",
         "train with next_token_loss(model(tokens), tokens), which shifts by one", predicate=_unshifted_loss)
def _train_unshifted():
    return _train_variant(loss_fn=lambda logits, tokens: F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                                         tokens.reshape(-1)))


@mistake(TRAIN, "sgd_instead_of_adam",
         "the first loss is right but the curve falls much more slowly than Adam's: plain gradient descent "
         "(torch.optim.SGD) instead of Adam?",
         "optimizer = torch.optim.Adam(model.parameters(), lr=lr)", predicate=_plain_gradient_steps)
def _train_sgd():
    return _train_variant(optimizer="sgd")


@mistake(TRAIN, "fabricated_curve",
         "the losses are not those of training this model: the model that comes back gives a loss far above "
         "the end of the reported curve",
         "record loss.item() of the real loss each step, and train the model you were given", predicate=_made_up)
def _train_fabricated():
    return _fabricated()


@mistake(TRAIN, "losses_are_tensors",
         "the losses are appended as tensors, not Python floats",
         "append loss.item()", predicate=_losses_are_tensors)
def _train_tensors():
    return _train_variant(as_tensors=True)


@mistake(TRAIN, "returns_nothing",
         "the function returns None: the list of losses is never returned",
         "end with return losses", predicate=_returned_none)
def _train_none():
    return _train_variant(returns=False)


# --- known mistakes: generate --------------------------------------------------------------------------------


def _generate_variant(*, pick: str = "last", feed_back: bool = True, extra: int = 0, only_new: bool = False,
                      sample: bool = False):
    @torch.no_grad()
    def generate(model, prompt, max_new_tokens):
        tokens = prompt
        for _ in range(max_new_tokens + extra):
            logits = model(tokens if feed_back else prompt)  # (b, t, V)
            if sample:
                probs = torch.softmax(logits[:, -1], dim=-1)
                nxt = torch.multinomial(probs, 1)
            elif pick == "first":
                nxt = logits[:, 0].argmax(dim=-1, keepdim=True)
            elif pick == "flattened":
                flat = logits[:, -1].argmax()  # one index into the flattened (b, V) logits
                nxt = (flat % logits.shape[-1]).expand(tokens.shape[0], 1)
            elif pick == "value":
                nxt = logits[:, -1].max(dim=-1, keepdim=True).values
            else:
                nxt = logits[:, -1].argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens.to(nxt.dtype) if pick == "value" else tokens, nxt.to(
                tokens.dtype) if pick != "value" else nxt], dim=1)
        return tokens[:, prompt.shape[1]:] if only_new else tokens
    return {"generate": generate}


@mistake("generate", "argmax_of_first_position",
         "the next token is read from the logits of the first position (logits[:, 0]) instead of the last",
         "the prediction for the next token is at the last position: logits[:, -1, :].argmax(dim=-1)")
def _gen_first():
    return _generate_variant(pick="first")


@mistake("generate", "never_feeds_back",
         "the model is always run on the prompt, not on the tokens generated so far, so every step predicts "
         "the same token",
         "run the model on the growing sequence: logits = model(tokens), then tokens = torch.cat([tokens, next], 1)")
def _gen_no_feedback():
    return _generate_variant(feed_back=False)


@mistake("generate", "samples_instead_of_argmax",
         "the next token is sampled from the softmax (torch.multinomial): greedy decoding takes the most "
         "likely token",
         "next = logits[:, -1, :].argmax(dim=-1, keepdim=True)")
def _gen_sample():
    return _generate_variant(sample=True)


@mistake("generate", "one_token_too_many",
         "one token more than max_new_tokens is generated (range(max_new_tokens + 1), or a loop that appends "
         "after its last check)",
         "exactly max_new_tokens steps: for _ in range(max_new_tokens)")
def _gen_extra():
    return _generate_variant(extra=1)


@mistake("generate", "one_token_too_few",
         "one token fewer than max_new_tokens is generated",
         "exactly max_new_tokens steps: for _ in range(max_new_tokens)")
def _gen_fewer():
    return _generate_variant(extra=-1)


@mistake("generate", "returns_only_new_tokens",
         "only the generated tokens come back: the result must start with the prompt, (b, n + max_new_tokens)",
         "return the whole sequence, prompt included")
def _gen_only_new():
    return _generate_variant(only_new=True)


@mistake("generate", "argmax_over_the_whole_batch",
         "argmax() without dim= picks one index in the flattened (b, V) logits, so every sequence gets the "
         "same token (the batch's single best one)",
         "argmax over the vocabulary of each sequence: logits[:, -1, :].argmax(dim=-1, keepdim=True)")
def _gen_flattened():
    return _generate_variant(pick="flattened")


@mistake("generate", "appends_the_best_logit",
         "the largest logit itself is appended (max(...).values) instead of its index, the token id",
         "append the index: logits[:, -1].argmax(dim=-1, keepdim=True) (or max(...).indices)")
def _gen_value():
    return _generate_variant(pick="value")
