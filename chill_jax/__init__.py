# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""chill-jax: fast, flexible sparse flash attention for JAX."""

from chill_jax.attention import attention
from chill_jax.configs import AttentionConfig, KernelConfig
from chill_jax.flax_attention import make_attention_fn
from chill_jax.masks import (
    CausalChillMask,
    ChillMask,
    ChunkwiseChillMask,
    ComposedChillMask,
    DocumentChillMask,
    FullChillMask,
    PrefixLMChillMask,
    SlidingWindowChillMask,
)
from chill_jax.reference import reference_attention

__all__ = [
    "AttentionConfig",
    "CausalChillMask",
    "ChillMask",
    "ChunkwiseChillMask",
    "ComposedChillMask",
    "DocumentChillMask",
    "FullChillMask",
    "KernelConfig",
    "PrefixLMChillMask",
    "SlidingWindowChillMask",
    "attention",
    "make_attention_fn",
    "reference_attention",
]
__version__ = "0.1.0"
