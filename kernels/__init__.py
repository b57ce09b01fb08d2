# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Triton kernels of chill-jax (no JAX import): forward, backward, tile ranges."""

from .backward import attn_bwd_dkdv, attn_bwd_dq, attn_bwd_preprocess
from .forward import attn_fwd
from .tiles import MAX_MASK_ARGS, PACKERS

__all__ = [
    "MAX_MASK_ARGS",
    "PACKERS",
    "attn_bwd_dkdv",
    "attn_bwd_dq",
    "attn_bwd_preprocess",
    "attn_fwd",
]
