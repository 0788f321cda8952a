"""The ``solutions`` package: does it export every graded name with the spec's exact signature?"""

import inspect

import pytest
import torch

import solutions as S

# name -> the parameters of the course specification, "name" or "name=default"
SPEC = {
    "attention_scores_loop": ["inputs"],
    "attention_scores": ["inputs"],
    "softmax_naive": ["x", "dim=-1"],
    "softmax_stable": ["x", "dim=-1"],
    "context_vectors": ["weights", "inputs"],
    "simple_self_attention": ["inputs"],
    "project_qkv": ["x", "W_q", "W_k", "W_v"],
    "scaled_dot_product_attention": ["q", "k", "v", "mask=None"],
    "SelfAttention_v1": ["d_in", "d_out"],
    "SelfAttention_v2": ["d_in", "d_out", "qkv_bias=False"],
    "transfer_weights": ["sa_v2", "sa_v1"],
    "causal_mask": ["num_tokens", "device=None"],
    "causal_attention_weights": ["scores"],
    "CausalAttention": ["d_in", "d_out", "context_length", "dropout", "qkv_bias=False"],
    "MultiHeadAttentionWrapper": [
        "d_in",
        "d_out",
        "context_length",
        "dropout",
        "num_heads",
        "qkv_bias=False",
    ],
    "split_heads": ["x", "num_heads"],
    "merge_heads": ["x"],
    "MultiHeadAttention": ["d_in", "d_out", "context_length", "dropout", "num_heads", "qkv_bias=False"],
    "count_parameters": ["module"],
    "sinusoidal_positional_encoding": ["num_positions", "d_model", "base=10000.0", "device=None",
                                       "dtype=torch.float32"],
    "apply_rope": ["x", "positions=None", "base=10000.0"],
    "RotaryMultiHeadAttention": ["d_in", "d_out", "context_length", "dropout", "num_heads", "qkv_bias=False",
                                 "rope_base=10000.0"],
    "next_token_loss": ["logits", "tokens"],
    "train_language_model": ["model", "tokens", "steps", "lr"],
    "generate": ["model", "prompt", "max_new_tokens"],
    "plot_attention": ["weights", "tokens"],
    # lesson 8 (second edition): generating fast and long
    "KVCache": ["window=None", "sinks=0"],
    "GroupedQueryAttention": ["d_in", "d_out", "context_length", "dropout", "num_heads", "num_kv_groups",
                              "qkv_bias=False"],
    "padding_mask": ["lengths", "num_tokens", "device=None"],
    "safe_softmax": ["scores", "mask"],
    "kv_cache_bytes": ["num_layers", "num_kv_heads", "head_dim", "num_tokens", "batch_size=1", "bytes_per_value=2"],
    "sliding_window_mask": ["num_tokens", "window_size", "device=None"],
    "online_softmax_attention": ["q", "k", "v", "block_size=64", "causal=False"],
    "flash_attention_forward": ["q", "k", "v", "causal=False", "block_q=64", "block_k=64", "window_size=None"],
    "flash_attention_backward": [
        "q", "k", "v", "out", "lse", "grad_out", "causal=False", "block_q=64", "block_k=64",
    ],
    "FlashAttentionFunction": ["q", "k", "v", "causal=False", "block_q=64", "block_k=64"],  # of .apply: forward's
    "flash_attention": ["q", "k", "v", "causal=False", "block_q=64", "block_k=64"],
}
EXTRA = {"TinyLanguageModel": ["vocab_size", "d_model", "context_length", "num_heads", "num_layers=1",
                               "positions='rope'"]}


def parameters(obj):
    out = []
    params = list(inspect.signature(obj).parameters.values())
    if inspect.isclass(obj) and issubclass(obj, torch.autograd.Function):  # obj.apply(...): forward, less ctx
        params = list(inspect.signature(obj.forward).parameters.values())[1:]
    for p in params:
        if p.default is inspect.Parameter.empty:
            out.append(p.name)
        elif isinstance(p.default, torch.dtype):
            out.append(f"{p.name}={p.default}")
        else:
            out.append(f"{p.name}={p.default!r}")
    return out


def test_does_all_list_every_graded_name_and_the_extras():
    expected = set(SPEC) | set(EXTRA) | {"BOOK_INPUTS", "BOOK_TOKENS", "CORPUS"}
    assert set(S.__all__) == expected
    assert len(S.__all__) == len(set(S.__all__))
    for name in S.__all__:
        assert hasattr(S, name), name


@pytest.mark.parametrize("name", sorted({**SPEC, **EXTRA}))
def test_is_the_signature_the_specs(name):
    assert parameters(getattr(S, name)) == {**SPEC, **EXTRA}[name]


@pytest.mark.parametrize("name", sorted({**SPEC, **EXTRA}))
def test_is_everything_documented(name):
    obj = getattr(S, name)
    assert inspect.getdoc(obj), name
    if inspect.isclass(obj) and not hasattr(obj, "forward"):  # a plain class (lesson 8's KVCache): its methods
        assert all(inspect.getdoc(getattr(obj, m)) for m in ("append", "positions")), name
    elif inspect.isclass(obj):
        assert inspect.getdoc(obj.forward) and obj.forward is not torch.nn.Module.forward, name


def test_are_the_classes_modules():
    for name in (
        "SelfAttention_v1",
        "SelfAttention_v2",
        "CausalAttention",
        "MultiHeadAttentionWrapper",
        "MultiHeadAttention",
        "RotaryMultiHeadAttention",
        "TinyLanguageModel",
    ):
        assert issubclass(getattr(S, name), torch.nn.Module), name


def test_does_nothing_fall_back_to_the_default_device():
    """Run everything on PyTorch's "meta" device: a tensor created without the input's device lands
    on the CPU and makes the call fail or return a CPU tensor, even on a machine without a GPU."""
    meta = torch.device("meta")

    def t(*shape):
        return torch.empty(*shape, device=meta)

    outputs = {
        "attention_scores_loop": S.attention_scores_loop(t(4, 3)),
        "attention_scores": S.attention_scores(t(2, 4, 3)),
        "softmax_naive": S.softmax_naive(t(2, 4)),
        "softmax_stable": S.softmax_stable(t(2, 4), dim=0),
        "context_vectors": S.context_vectors(t(2, 4, 4), t(2, 4, 3)),
        "simple_self_attention": S.simple_self_attention(t(2, 4, 3))[0],
        "project_qkv": S.project_qkv(t(4, 3), t(3, 2), t(3, 2), t(3, 5))[2],
        "scaled_dot_product_attention": S.scaled_dot_product_attention(
            t(2, 4, 3), t(2, 6, 3), t(2, 6, 5), mask=torch.ones(4, 6, dtype=torch.bool, device=meta)
        )[0],
        "causal_mask": S.causal_mask(4, device=meta),
        "causal_attention_weights": S.causal_attention_weights(t(2, 4, 4)),
        "split_heads": S.split_heads(t(2, 4, 6), 3),
        "merge_heads": S.merge_heads(t(2, 3, 4, 2)),
        "sliding_window_mask": S.sliding_window_mask(5, 2, device=meta),
        "online_softmax_attention": S.online_softmax_attention(t(2, 5, 3), t(2, 7, 3), t(2, 7, 4), 3, True),
        "flash_attention_forward": S.flash_attention_forward(t(2, 5, 3), t(2, 7, 3), t(2, 7, 4), True, 2, 3)[1],
        "flash_attention_backward": S.flash_attention_backward(
            t(2, 5, 3), t(2, 7, 3), t(2, 7, 4), t(2, 5, 4), t(2, 5), t(2, 5, 4), True, 2, 3
        )[1],
        "flash_attention": S.flash_attention(t(2, 5, 3), t(2, 7, 3), t(2, 7, 4), True, 2, 3),
        "next_token_loss": S.next_token_loss(t(2, 5, 7), torch.zeros(2, 5, dtype=torch.long, device=meta)),
    }
    modules = {
        "SelfAttention_v1": S.SelfAttention_v1(3, 2),
        "SelfAttention_v2": S.SelfAttention_v2(3, 2),
        "CausalAttention": S.CausalAttention(3, 2, 6, 0.5),
        "MultiHeadAttentionWrapper": S.MultiHeadAttentionWrapper(3, 2, 6, 0.5, 2),
        "MultiHeadAttention": S.MultiHeadAttention(3, 4, 6, 0.5, 2),
        "RotaryMultiHeadAttention": S.RotaryMultiHeadAttention(3, 4, 6, 0.5, 2),
    }
    for name, module in modules.items():
        for train in (False, True):
            out = module.to(meta).train(train)(t(2, 5, 3))
            outputs[f"{name}(train={train})"] = out[0] if isinstance(out, tuple) else out
    tokens = torch.zeros(2, 5, dtype=torch.long, device=meta)
    for kind in ("rope", "learned"):
        outputs[f"TinyLanguageModel({kind})"] = S.TinyLanguageModel(7, 4, 8, 2, positions=kind).to(meta)(tokens)
    for name, out in outputs.items():
        assert out.device == meta, name
