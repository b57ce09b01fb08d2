# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Triton kernels of chill-jax (no JAX import): forward, backward, tile ranges."""

from .backward import attn_bwd_dkdv, attn_bwd_dkdv_ws, attn_bwd_dq
from .forward import attn_fwd, attn_fwd_combine, attn_fwd_ws
from .tiles import ARRAY_PACKERS, MAX_MASK_ARGS, MAX_MASK_ARRAYS, PACKERS

__all__ = [
    "ARRAY_PACKERS",
    "MAX_MASK_ARGS",
    "MAX_MASK_ARRAYS",
    "PACKERS",
    "attn_bwd_dkdv",
    "attn_bwd_dkdv_ws",
    "attn_bwd_dq",
    "attn_fwd",
    "attn_fwd_combine",
    "attn_fwd_ws",
]
