# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Drop-in ``attention_fn`` for Flax attention modules."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from chill_jax.attention import attention
from chill_jax.masks import CausalChillMask, ChillMask

_OPTIONS = ("lengths", "q_lengths", "kv_lengths", "sm_scale", "implementation", "precision", "prescale_qk",
            "config", "autotune")


def make_attention_fn(mask: ChillMask | None = None, **options: Any) -> Callable:
    """An ``attention_fn`` for ``flax.linen.MultiHeadDotProductAttention`` and
    ``flax.nnx.MultiHeadAttention`` that runs :func:`chill_jax.attention`.

    The mask is inlined into the kernels, so Flax's dense ``mask``, ``bias``,
    attention dropout and sown attention weights are refused with a
    ValueError rather than ignored. ``is_causal=True`` (nnx) selects
    :class:`CausalChillMask` when no mask was given.

    Args:
      mask: the :class:`ChillMask`; None means full attention.
      **options: keyword options of :func:`chill_jax.attention`
        (``lengths``, ``q_lengths``, ``kv_lengths``, ``sm_scale``,
        ``implementation``, ``precision``, ``prescale_qk``, ``config``,
        ``autotune``).

    Returns:
      ``attention_fn(query, key, value, bias=None, mask=None, ...)`` taking
      Flax's ``[..., length, heads, head_dim]`` arrays.
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"make_attention_fn got unknown option(s) {unknown}; expected some of {list(_OPTIONS)}")
    if mask is not None and not isinstance(mask, ChillMask):
        raise TypeError(f"make_attention_fn: mask must be a ChillMask instance or None, got {type(mask).__name__}")
    chill_mask = mask

    def attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout=True, dropout_rng=None,
                     dropout_rate=0.0, deterministic=True, dtype=None, precision=None, module=None,
                     is_causal=False):
        if bias is not None:
            raise ValueError("chill_jax attention_fn: an additive bias is not supported (the mask is inlined "
                             "into the kernels); got bias of shape " + str(getattr(bias, "shape", None)))
        if mask is not None:
            raise ValueError("chill_jax attention_fn: a dense Flax mask is not supported; pass a ChillMask to "
                             "make_attention_fn(mask) and per-example lengths as lengths=/q_lengths=/kv_lengths=")
        if dropout_rate and not deterministic:
            raise ValueError("chill_jax attention_fn: attention dropout is not supported; set dropout_rate=0 "
                             "or deterministic=True")
        if module is not None:
            raise ValueError("chill_jax attention_fn: attention weights are never materialized, so they "
                             "cannot be sown")
        use_mask = chill_mask
        if is_causal:
            if use_mask is None:
                use_mask = CausalChillMask()
            elif not isinstance(use_mask, CausalChillMask):
                raise ValueError(f"chill_jax attention_fn: is_causal=True conflicts with mask {use_mask!r}")
        opts = dict(options)
        if precision is not None and "precision" not in opts and query.dtype == jnp.float32:
            opts["precision"] = precision
        if dtype is not None:
            query, key, value = (x.astype(dtype) for x in (query, key, value))
        batch_shape = query.shape[:-3]
        if query.ndim < 3 or key.shape[:-3] != batch_shape or value.shape[:-3] != batch_shape:
            raise ValueError("chill_jax attention_fn: query, key and value must be [..., length, heads, head_dim] "
                             f"with the same batch dims, got {query.shape}, {key.shape}, {value.shape}")
        flat = [x.reshape((-1, *x.shape[-3:])) for x in (query, key, value)]
        out = attention(*flat, use_mask, layout="BTNH", **opts)
        return out.reshape((*batch_shape, *out.shape[-3:]))

    return attention_fn
