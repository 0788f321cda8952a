"""Reference solutions of the self-attention course: the ground truth the grader compares against.

Every graded name of the course specification is importable from here, plus the given
``ToySelfAttention`` model of lesson 7, the toy data set, and the book's example inputs.
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
from .lesson7_training import ToySelfAttention, plot_attention, toy_dataset, train_self_attention
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
    "train_self_attention",
    "plot_attention",
    # lesson 9
    "sliding_window_mask",
    "online_softmax_attention",
    "flash_attention_forward",
    # lesson 10
    "flash_attention_backward",
    "FlashAttentionFunction",
    "flash_attention",
    # given code and data
    "ToySelfAttention",
    "toy_dataset",
    "BOOK_INPUTS",
    "BOOK_TOKENS",
]
