# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""The float64 reference implementation (numpy), forward and gradients."""

from __future__ import annotations

from typing import Any

import numpy as np

from chill_jax.masks import ChillMask, FullChillMask


def _to_bnth(x: Any, layout: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x if layout == "BNTH" else x.transpose(0, 2, 1, 3)


def _from_bnth(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "BNTH" else x.transpose(0, 2, 1, 3)


def _allowed(mask: ChillMask | np.ndarray, t: int, s: int, q_len: int, kv_len: int, example: int) -> np.ndarray:
    """Bool ``[t, s]``: the mask within the lengths (seq_len = kv_len)."""
    allowed = np.zeros((t, s), bool)
    if q_len > 0 and kv_len > 0:
        if isinstance(mask, np.ndarray):
            allowed[:q_len, :kv_len] = mask[example if mask.ndim == 3 else ...][:q_len, :kv_len]
        else:
            shared = all(np.shape(a)[0] == 1 for a in mask.arrays)  # one row serves every example
            allowed[:q_len, :kv_len] = mask.make_mask(q_len, kv_len, seq_len=kv_len,
                                                      example=0 if shared else example)
    return allowed


def reference_attention(query, key, value, mask: ChillMask | np.ndarray | None = None, *, lengths=None,
                        q_lengths=None, kv_lengths=None, sm_scale: float | None = None, layout: str = "BTNH",
                        dout=None, dlse=None) -> dict[str, np.ndarray]:
    """Attention in float64 with the semantics of :func:`chill_jax.attention`.

    Args:
      query, key, value, lengths, q_lengths, kv_lengths, sm_scale, layout: as
        in :func:`chill_jax.attention`.
      mask: a :class:`ChillMask` (evaluated through its own Triton ``mask``
        method, per example for masks with arrays), or a dense bool array
        ``[T, S]`` or ``[B, T, S]`` of allowed pairs (an independent
        statement of the mask), or None for full attention.
      dout: optional cotangent of the output (query's shape).
      dlse: optional cotangent of the lse, ``[B, N, T]``.

    Returns:
      Dict with ``out`` (query's shape) and ``lse`` (``[B, N, T]``), and with
      ``dout`` given, ``dq``, ``dk``, ``dv``; all float64.
    """
    mask = FullChillMask() if mask is None else mask
    q, k, v = (_to_bnth(x, layout) for x in (query, key, value))
    b, n, t, d = q.shape
    kh, s = k.shape[1], k.shape[2]
    group = n // kh
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scale = 1.0 / np.sqrt(d) if sm_scale is None else float(sm_scale)
    if lengths is not None:
        q_lengths = kv_lengths = lengths
    q_lens = np.full(b, t) if q_lengths is None else np.clip(np.asarray(q_lengths), 0, t)
    kv_lens = np.full(b, s) if kv_lengths is None else np.clip(np.asarray(kv_lengths), 0, s)
    if not isinstance(mask, ChillMask):
        mask = np.asarray(mask, bool)
        if mask.shape not in ((t, s), (b, t, s)):
            raise ValueError(f"a dense mask must have shape {(t, s)} or {(b, t, s)}, got {mask.shape}")
    # Examples with equal lengths share the evaluation unless it depends on the example.
    per_example = isinstance(mask, np.ndarray) and mask.ndim == 3 or isinstance(mask, ChillMask) and mask.arrays
    cache: dict[tuple[int, ...], np.ndarray] = {}
    allowed = np.stack([
        cache.setdefault((int(ql), int(kl), e if per_example else 0), _allowed(mask, t, s, int(ql), int(kl), e))
        for e, (ql, kl) in enumerate(zip(q_lens, kv_lens))])[:, None]  # [B, 1, T, S]
    logits = np.einsum("bntd,bnsd->bnts", q, k) * scale
    logits = np.where(allowed, logits, -np.inf)
    row_max = logits.max(-1, keepdims=True)
    has_key = np.isfinite(row_max)
    shifted = np.where(allowed, logits - np.where(has_key, row_max, 0.0), -np.inf)
    e = np.exp(shifted)
    denom = e.sum(-1, keepdims=True)
    p = np.where(has_key, e / np.where(has_key, denom, 1.0), 0.0)
    out = np.einsum("bnts,bnsd->bntd", p, v)
    lse = np.where(has_key, np.log(np.where(has_key, denom, 1.0)) + np.where(has_key, row_max, 0.0), -np.inf)[..., 0]
    result = {"out": _from_bnth(out, layout), "lse": lse}
    if dout is not None:
        do = _to_bnth(dout, layout)
        dl = np.zeros((b, n, t)) if dlse is None else np.asarray(dlse, np.float64)
        dv = np.einsum("bnts,bntd->bnsd", p, do)
        dp = np.einsum("bntd,bnsd->bnts", do, v)
        delta = (do * out).sum(-1, keepdims=True) - dl[..., None]
        ds = p * (dp - delta)
        dq = np.einsum("bnts,bnsd->bntd", ds, k) * scale
        dk = np.einsum("bnts,bntd->bnsd", ds, q) * scale
        dk = dk.reshape(b, kh, group, s, d).sum(2)
        dv = dv.reshape(b, kh, group, s, d).sum(2)
        result.update(dq=_from_bnth(dq, layout), dk=_from_bnth(dk, layout), dv=_from_bnth(dv, layout))
    return result
