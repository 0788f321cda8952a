"""Lesson 8 reference (second edition): KV cache with a rolling window and sinks, grouped-query attention,
padding masks, the safe softmax, the memory of a cache."""

import pytest
import torch
from tensor_helpers import DEVICES

import solutions as S


def _kv(b, h, n, d, start, device="cpu", dtype=torch.float64):
    """Keys whose every entry holds its absolute position (so eviction is visible), values its negative."""
    pos = torch.arange(start, start + n, dtype=dtype, device=device)
    k = pos.view(1, 1, n, 1).expand(b, h, n, d).clone()
    return k, -k


# --- KVCache ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_cache_without_window_keeps_everything(device):
    cache = S.KVCache()
    assert len(cache) == 0
    start = 0
    for n in (3, 1, 2):
        k, v = _kv(2, 3, n, 4, start, device)
        keys, values = cache.append(k, v)
        start += n
        assert keys.shape == (2, 3, start, 4) and values.shape == (2, 3, start, 4)
        assert torch.equal(keys[0, 0, :, 0], torch.arange(start, dtype=torch.float64, device=device))
        assert torch.equal(values, -keys)
    assert len(cache) == 6
    positions = cache.positions()
    assert positions.dtype == torch.int64 and positions.tolist() == list(range(6))


@pytest.mark.parametrize("window,sinks,chunks,expected", [
    (4, 0, [3, 1, 1, 1], [2, 3, 4, 5]),
    (4, 1, [3, 1, 1, 1], [0, 3, 4, 5]),
    (5, 2, [1, 1, 1, 1, 1, 1, 1], [0, 1, 4, 5, 6]),
    (4, 1, [7], [0, 4, 5, 6]),  # a prompt longer than the window, in one chunk
    (6, 2, [2, 5, 3], [0, 1, 6, 7, 8, 9]),
    (3, 3, [2, 2, 2], [0, 1, 2]),  # only sinks
])
def test_rolling_window_keeps_sinks_and_the_most_recent(window, sinks, chunks, expected):
    cache = S.KVCache(window=window, sinks=sinks)
    start = 0
    for n in chunks:
        keys, values = cache.append(*_kv(1, 2, n, 3, start))
        start += n
        assert keys.shape[-2] == min(start, window)
    assert len(cache) == sum(chunks)
    assert cache.positions().tolist() == expected
    assert keys[0, 1, :, 2].long().tolist() == expected  # the kept keys are those of the kept positions
    assert torch.equal(values, -keys)


def test_cache_rejects_more_sinks_than_window():
    with pytest.raises(ValueError):
        S.KVCache(window=2, sinks=3)


# --- safe_softmax ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_safe_softmax_equals_masked_softmax_and_zeros_fully_masked_rows(device):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64).to(device)
    mask = (torch.rand(2, 1, 5, 7, generator=gen) > 0.4).to(device)
    mask[0, 0, 2] = False  # a fully masked row
    got = S.safe_softmax(scores, mask)
    expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    rows = mask.expand_as(scores).any(-1)
    torch.testing.assert_close(got[rows], expected[rows])
    assert torch.equal(got[~rows], torch.zeros_like(got[~rows]))
    assert not got.isnan().any() and got.dtype == scores.dtype


def test_safe_softmax_is_stable_for_large_scores_and_large_masked_scores():
    scores = torch.tensor([[1000.0, 999.0, 5000.0], [-1000.0, -1001.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    got = S.safe_softmax(scores, mask)
    e = torch.tensor([1.0, torch.e ** -1], dtype=torch.float64)
    torch.testing.assert_close(got[:, :2], (e / e.sum()).expand(2, 2))
    assert torch.equal(got[:, 2], torch.zeros(2, dtype=torch.float64))


def test_safe_softmax_uses_no_builtin_softmax():
    from exercises.kernel import host_threads  # the test runner's threads (xdist's reader): not the code's
    from exercises.op_guard import SOFTMAX, OpGuard

    with OpGuard(allow=host_threads()) as guard:
        S.safe_softmax(torch.randn(2, 4), torch.ones(2, 4, dtype=torch.bool))
    assert SOFTMAX not in guard.report()["used"]


# --- padding_mask ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_padding_mask(device):
    got = S.padding_mask(torch.tensor([3, 0, 5]), 5, device=device)
    assert got.dtype == torch.bool and got.device.type == device
    assert got.tolist() == [[True, True, True, False, False], [False] * 5, [True] * 5]


# --- GroupedQueryAttention -------------------------------------------------------------------------------


def _gqa(num_heads=4, num_kv_groups=2, d_in=6, d_out=8, context_length=12, qkv_bias=False, seed=0):
    torch.manual_seed(seed)
    return S.GroupedQueryAttention(d_in, d_out, context_length, 0.0, num_heads, num_kv_groups, qkv_bias).double()


def test_gqa_shapes_of_the_projections():
    m = _gqa()
    assert m.W_query.weight.shape == (8, 6) and m.W_key.weight.shape == (4, 6) and m.W_value.weight.shape == (4, 6)
    assert m.out_proj.weight.shape == (8, 8)
    with pytest.raises(ValueError):
        S.GroupedQueryAttention(6, 8, 12, 0.0, num_heads=4, num_kv_groups=3)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_gqa_with_one_group_per_head_is_lesson_5_multi_head_attention(qkv_bias):
    gqa = _gqa(num_heads=4, num_kv_groups=4, qkv_bias=qkv_bias)
    mha = S.MultiHeadAttention(6, 8, 12, 0.0, 4, qkv_bias).double()
    mha.load_state_dict(gqa.state_dict())
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    torch.testing.assert_close(gqa(x), mha(x))


def test_gqa_query_head_h_uses_group_h_floor_div_group_size():
    """Expanding the keys and values to one group per head by h // (num_heads // g) gives the same module."""
    gqa = _gqa(num_heads=6, num_kv_groups=2, d_out=12)
    mha = S.MultiHeadAttention(6, 12, 12, 0.0, 6).double()
    hd, group_of = 2, [h // 3 for h in range(6)]
    with torch.no_grad():
        mha.W_query.weight.copy_(gqa.W_query.weight)
        mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
        for h, g in enumerate(group_of):
            mha.W_key.weight[h * hd:(h + 1) * hd] = gqa.W_key.weight[g * hd:(g + 1) * hd]
            mha.W_value.weight[h * hd:(h + 1) * hd] = gqa.W_value.weight[g * hd:(g + 1) * hd]
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(gqa(x), mha(x))


@pytest.mark.parametrize("num_kv_groups", [1, 2, 4])
@pytest.mark.parametrize("chunks", [[1] * 9, [4, 1, 2, 2], [9]])
def test_gqa_through_a_cache_equals_one_full_pass(num_kv_groups, chunks):
    m = _gqa(num_kv_groups=num_kv_groups).eval()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    cache = S.KVCache()
    outs, start = [], 0
    for n in chunks:
        outs.append(m(x[:, start:start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, dim=1), m(x))
    assert len(cache) == 9 and cache.keys.shape == (2, num_kv_groups, 9, 2)  # only the groups are cached


def test_gqa_with_a_windowed_cache_is_sliding_window_attention_with_sinks():
    m = _gqa().eval()
    n, window, sinks = 10, 5, 2
    x = torch.randn(1, n, 6, dtype=torch.float64)
    cache = S.KVCache(window=window, sinks=sinks)
    stepped = torch.cat([m(x[:, t:t + 1], cache=cache) for t in range(n)], dim=1)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    m.mask = ((j <= i) & ((i - j < window - sinks) | (j < sinks)))[:n, :n]  # what token-by-token sees
    torch.testing.assert_close(stepped, m(x))


def test_gqa_cached_steps_build_no_score_matrix_over_the_whole_sequence():
    from exercises.kernel import host_threads
    from exercises.op_guard import OpGuard

    b, h, n = 2, 4, 10
    m = _gqa(context_length=n).eval()
    x = torch.randn(b, n, 6, dtype=torch.float64)
    with OpGuard(max_numel=b * h * n * n - 1, allow=host_threads()) as guard:
        cache = S.KVCache()
        for t in range(n):
            m(x[:, t:t + 1], cache=cache)
    assert guard.report()["too_big"] is None


# --- kv_cache_bytes --------------------------------------------------------------------------------------


def test_kv_cache_bytes_for_a_llama_class_model_at_32k_tokens():
    """Raschka's bonus material (ch04/06_swa): 17.18 GB with MHA, 4.29 GB with GQA, 0.78 GB with GQA and a
    1024-token window in 27 of the 32 layers (Gemma 3's 5:1), for 32 layers, head_dim 128, bf16, 32k tokens."""
    mha = S.kv_cache_bytes(32, 32, 128, 32768)
    gqa = S.kv_cache_bytes(32, 8, 128, 32768)
    swa = S.kv_cache_bytes(27, 8, 128, 1024) + S.kv_cache_bytes(5, 8, 128, 32768)
    assert type(mha) is int and mha == 17_179_869_184
    assert round(mha / 1e9, 2) == 17.18 and round(gqa / 1e9, 2) == 4.29 and round(swa / 1e9, 2) == 0.78
    assert S.kv_cache_bytes(2, 3, 5, 7, batch_size=11, bytes_per_value=4) == 2 * 2 * 3 * 5 * 7 * 11 * 4
