# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Kernels that evaluate a mask's own Triton methods (for make_mask/verify).

Each evaluates batch element ``b`` of the mask's arrays ``M0 .. M3``.
"""

import triton
import triton.language as tl

from .tiles import mask_args


@triton.jit
def eval_dense_mask(
    seq_len, b, M0, M1, M2, M3, Out,
    Q_LEN: tl.constexpr, KV_LEN: tl.constexpr, BLOCK: tl.constexpr,
    MASK_FN: tl.constexpr, MASK_TAKES_LEN: tl.constexpr, PACK: tl.constexpr,
    A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr,
    A4: tl.constexpr, A5: tl.constexpr, A6: tl.constexpr, A7: tl.constexpr,
    A8: tl.constexpr, A9: tl.constexpr, A10: tl.constexpr, A11: tl.constexpr,
    A12: tl.constexpr, A13: tl.constexpr, A14: tl.constexpr, A15: tl.constexpr,
    PACK_ARRAYS: tl.constexpr,
    MS0: tl.constexpr, MS1: tl.constexpr, MS2: tl.constexpr, MS3: tl.constexpr,
):
    """Out int8 ``[Q_LEN, KV_LEN]`` = mask(q, k). Grid: tiles of BLOCK x BLOCK."""
    ARGS = mask_args(b, PACK, A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13,
                     A14, A15, PACK_ARRAYS, M0, M1, M2, M3, MS0, MS1, MS2, MS3)
    offs_q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if MASK_TAKES_LEN:
        allowed = MASK_FN(offs_q, offs_k, seq_len, ARGS)
    else:
        allowed = MASK_FN(offs_q, offs_k, ARGS)
    allowed = allowed.to(tl.int1) | ((offs_q[:, None] < 0) & (offs_k[None, :] < 0))
    ok = (offs_q[:, None] < Q_LEN) & (offs_k[None, :] < KV_LEN)
    tl.store(Out + offs_q[:, None] * KV_LEN + offs_k[None, :], allowed.to(tl.int8), mask=ok)


@triton.jit
def eval_ranges(
    q_len, kv_len, b, M0, M1, M2, M3, KRanges, QRanges,
    Q_LEN: tl.constexpr, KV_LEN: tl.constexpr,
    K_RANGE_FN: tl.constexpr, Q_RANGE_FN: tl.constexpr, PACK: tl.constexpr,
    A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr,
    A4: tl.constexpr, A5: tl.constexpr, A6: tl.constexpr, A7: tl.constexpr,
    A8: tl.constexpr, A9: tl.constexpr, A10: tl.constexpr, A11: tl.constexpr,
    A12: tl.constexpr, A13: tl.constexpr, A14: tl.constexpr, A15: tl.constexpr,
    PACK_ARRAYS: tl.constexpr,
    MS0: tl.constexpr, MS1: tl.constexpr, MS2: tl.constexpr, MS3: tl.constexpr,
):
    """KRanges int32 ``[Q_LEN, 2]``, QRanges ``[KV_LEN, 2]``: raw range ends.

    Grid: ``(max(Q_LEN, KV_LEN),)``; program ``i`` evaluates position ``i``.
    """
    ARGS = mask_args(b, PACK, A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13,
                     A14, A15, PACK_ARRAYS, M0, M1, M2, M3, MS0, MS1, MS2, MS3)
    i = tl.program_id(0)
    if i < Q_LEN:
        lo, hi = K_RANGE_FN(i, kv_len, ARGS)
        tl.store(KRanges + 2 * i, lo + 0 * i)
        tl.store(KRanges + 2 * i + 1, hi + 0 * i)
    if i < KV_LEN:
        lo, hi = Q_RANGE_FN(i, q_len, ARGS)
        tl.store(QRanges + 2 * i, lo + 0 * i)
        tl.store(QRanges + 2 * i + 1, hi + 0 * i)


@triton.jit
def eval_full_blocks(
    seq_len, b, M0, M1, M2, M3, Out,
    N_Q_TILES: tl.constexpr, N_K_TILES: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    FULL_FN: tl.constexpr, PACK: tl.constexpr,
    A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr,
    A4: tl.constexpr, A5: tl.constexpr, A6: tl.constexpr, A7: tl.constexpr,
    A8: tl.constexpr, A9: tl.constexpr, A10: tl.constexpr, A11: tl.constexpr,
    A12: tl.constexpr, A13: tl.constexpr, A14: tl.constexpr, A15: tl.constexpr,
    PACK_ARRAYS: tl.constexpr,
    MS0: tl.constexpr, MS1: tl.constexpr, MS2: tl.constexpr, MS3: tl.constexpr,
):
    """Out int8 ``[N_Q_TILES, N_K_TILES]`` = is_full_block claim per tile pair."""
    ARGS = mask_args(b, PACK, A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13,
                     A14, A15, PACK_ARRAYS, M0, M1, M2, M3, MS0, MS1, MS2, MS3)
    tq = tl.program_id(0)
    tk = tl.program_id(1)
    full = FULL_FN(tq * BLOCK_Q, tk * BLOCK_K, BLOCK_Q, BLOCK_K, seq_len, ARGS)
    tl.store(Out + tq * N_K_TILES + tk, (full | (tq < 0)).to(tl.int8))
