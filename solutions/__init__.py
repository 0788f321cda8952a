"""Reference solutions of the self-attention course: the ground truth the grader compares against.

Every graded name of the course specification is importable from here, plus the given
``TinyLanguageModel`` of lesson 7 with its corpus, and the book's example inputs.
Never shipped to students.
"""

from .lesson1_scores import (
    BOOK_INPUTS,
    BOOK_TOKENS,
    attention_scores,
    attention_scores_loop,
    context_vectors,
    simple_self_attention,
    softmax_naive,
    softmax_stable,
)
from .lesson2_sdpa import project_qkv, scaled_dot_product_attention
from .lesson3_trainable import SelfAttention_v1, SelfAttention_v2, transfer_weights
from .lesson4_causal import CausalAttention, causal_attention_weights, causal_mask
from .lesson5_multihead import (
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    count_parameters,
    merge_heads,
    split_heads,
)
from .lesson6_positions import apply_rope, sinusoidal_positional_encoding
from .lesson7_language_model import (
    CORPUS,
    RotaryMultiHeadAttention,
    TinyLanguageModel,
    generate,
    next_token_loss,
    plot_attention,
    train_language_model,
)
from .lesson8_inference import (
    GroupedQueryAttention,
    KVCache,
    kv_cache_bytes,
    padding_mask,
    safe_softmax,
)
from .lesson9_flash_forward import flash_attention_forward, online_softmax_attention, sliding_window_mask
from .lesson10_flash_backward import FlashAttentionFunction, flash_attention, flash_attention_backward

__all__ = [
    # lesson 1
    "attention_scores_loop",
    "attention_scores",
    "softmax_naive",
    "softmax_stable",
    "context_vectors",
    "simple_self_attention",
    # lesson 2
    "project_qkv",
    "scaled_dot_product_attention",
    # lesson 3
    "SelfAttention_v1",
    "SelfAttention_v2",
    "transfer_weights",
    # lesson 4
    "causal_mask",
    "causal_attention_weights",
    "CausalAttention",
    # lesson 5
    "MultiHeadAttentionWrapper",
    "split_heads",
    "merge_heads",
    "MultiHeadAttention",
    "count_parameters",
    # lesson 6
    "sinusoidal_positional_encoding",
    "apply_rope",
    # lesson 7
    "RotaryMultiHeadAttention",
    "next_token_loss",
    "train_language_model",
    "generate",
    # lesson 8 (second edition): generating fast and long
    "KVCache",
    "GroupedQueryAttention",
    "padding_mask",
    "safe_softmax",
    "kv_cache_bytes",
    # lesson 9
    "sliding_window_mask",
    "online_softmax_attention",
    "flash_attention_forward",
    # lesson 10
    "flash_attention_backward",
    "FlashAttentionFunction",
    "flash_attention",
    # given code and data
    "TinyLanguageModel",
    "CORPUS",
    "plot_attention",
    "BOOK_INPUTS",
    "BOOK_TOKENS",
]
