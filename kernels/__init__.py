# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Triton kernels of chill-jax (no JAX import): forward, backward, tile ranges,
and Hopper forward and backward kernels with hand-written warp
specialization (Gluon)."""

from .backward import attn_bwd_dkdv, attn_bwd_dkdv_ws, attn_bwd_dq
from .forward import attn_fwd, attn_fwd_combine, attn_fwd_ws
from .tiles import ARRAY_PACKERS, MAX_MASK_ARGS, MAX_MASK_ARRAYS, PACKERS

try:  # Gluon is experimental in Triton: without it (or with another API) the other kernels run.
    from .backward_gluon import attn_bwd_gluon
    from .forward_gluon import attn_fwd_gluon
except (ImportError, AttributeError):
    attn_bwd_gluon = attn_fwd_gluon = None

__all__ = [
    "ARRAY_PACKERS",
    "MAX_MASK_ARGS",
    "MAX_MASK_ARRAYS",
    "PACKERS",
    "attn_bwd_dkdv",
    "attn_bwd_dkdv_ws",
    "attn_bwd_gluon",
    "attn_bwd_dq",
    "attn_fwd",
    "attn_fwd_combine",
    "attn_fwd_gluon",
    "attn_fwd_ws",
]
