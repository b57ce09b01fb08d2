# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Backward flash-attention kernels: delta preprocess, dK/dV, dQ.

dK/dV and dQ are separate launches without atomics, so the backward pass is
bitwise deterministic. dK/dV sums over the query heads of a key/value head's
group (GQA) inside the program.
"""

import triton
import triton.language as tl

from .tiles import apply_mask, mask_args, tile_loop_bounds


@triton.jit
def attn_bwd_preprocess(
    Out, DOut, DLse,
    Delta,
    SOB: tl.constexpr, SOT: tl.constexpr, SOH: tl.constexpr,
    NUM_HEADS: tl.constexpr, Q_LEN: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """``Delta = rowsum(dOut * Out) - dLse``, float32 ``[B, N, Q_LEN]``.

    Out/DOut share the query layout (strides ``SOB, SOT, SOH``); DLse is the
    cotangent of the log-sum-exp, float32 ``[B, N, Q_LEN]``. Grid:
    ``(cdiv(Q_LEN, BLOCK_M), B * N)``.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NUM_HEADS
    h = pid_bh % NUM_HEADS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m[:, None] < Q_LEN) & (offs_d[None, :] < HEAD_DIM)
    base = b.to(tl.int64) * SOB + h.to(tl.int64) * SOH + offs_m[:, None] * SOT + offs_d[None, :]
    o = tl.load(Out + base, mask=ok, other=0.0).to(tl.float32)
    do = tl.load(DOut + base, mask=ok, other=0.0).to(tl.float32)
    row = pid_bh.to(tl.int64) * Q_LEN + offs_m
    dlse = tl.load(DLse + row, mask=offs_m < Q_LEN, other=0.0)
    tl.store(Delta + row, tl.sum(o * do, 1) - dlse, mask=offs_m < Q_LEN)


@triton.jit
def _load_row_stats(Lse, Delta, row, offs_m, q_len):
    """Log2-domain lse (``+inf`` where the row has no key) and delta."""
    m_ok = offs_m < q_len
    lse = tl.load(Lse + row, mask=m_ok, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(Delta + row, mask=m_ok, other=0.0)
    return lse2, delta


@triton.jit
def attn_bwd_dkdv(
    Q, K, V, DOut, Lse, Delta, QLens, KVLens, M0, M1, M2, M3, sm_scale,
    DK, DV,
    SQB: tl.constexpr, SQT: tl.constexpr, SQH: tl.constexpr,
    SKB: tl.constexpr, SKT: tl.constexpr, SKH: tl.constexpr,
    SVB: tl.constexpr, SVT: tl.constexpr, SVH: tl.constexpr,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr,
    Q_LEN: tl.constexpr, KV_LEN: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, PRESCALE: tl.constexpr,
    MASK_FN: tl.constexpr, MASK_TAKES_LEN: tl.constexpr,
    Q_RANGE_FN: tl.constexpr, Q_CONTINUOUS: tl.constexpr,
    FULL_FN: tl.constexpr, PACK: tl.constexpr,
    A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr,
    A4: tl.constexpr, A5: tl.constexpr, A6: tl.constexpr, A7: tl.constexpr,
    A8: tl.constexpr, A9: tl.constexpr, A10: tl.constexpr, A11: tl.constexpr,
    A12: tl.constexpr, A13: tl.constexpr, A14: tl.constexpr, A15: tl.constexpr,
    PACK_ARRAYS: tl.constexpr,
    MS0: tl.constexpr, MS1: tl.constexpr, MS2: tl.constexpr, MS3: tl.constexpr,
):
    """One program computes dK, dV of one key tile of one (batch, kv head).

    DK/DV have the layout of K/V (strides ``SK*``/``SV*``). DOut shares the
    query layout. Grid: ``(cdiv(KV_LEN, BLOCK_N), B * (NUM_HEADS // GROUP))``.
    """
    KV_HEADS: tl.constexpr = NUM_HEADS // GROUP
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // KV_HEADS
    kvh = pid_bh % KV_HEADS
    q_len = tl.minimum(tl.maximum(tl.load(QLens + b), 0), Q_LEN)
    kv_len = tl.minimum(tl.maximum(tl.load(KVLens + b), 0), KV_LEN)
    ARGS = mask_args(b, PACK, A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13,
                     A14, A15, PACK_ARRAYS, M0, M1, M2, M3, MS0, MS1, MS2, MS3)

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    n_ok = offs_n < kv_len

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    if start_n < kv_len:
        k_base = K + b.to(tl.int64) * SKB + kvh.to(tl.int64) * SKH
        v_base = V + b.to(tl.int64) * SVB + kvh.to(tl.int64) * SVH
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * SKT + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * SVT + offs_d[None, :], mask=kv_mask, other=0.0)
        count = tl.minimum(kv_len - start_n, BLOCK_N)
        first, end = tile_loop_bounds(start_n, count, q_len, Q_RANGE_FN,
                                      Q_CONTINUOUS, BLOCK_N, ARGS, BLOCK_M)
        for g in range(GROUP):
            h = kvh * GROUP + g
            q_base = Q + b.to(tl.int64) * SQB + h.to(tl.int64) * SQH
            do_base = DOut + b.to(tl.int64) * SQB + h.to(tl.int64) * SQH
            stat_base = (b * NUM_HEADS + h).to(tl.int64) * Q_LEN
            for start_m in range(first, end, BLOCK_M):
                offs_m = start_m + offs_m0
                q_mask = (offs_m[:, None] < q_len) & d_ok[None, :]
                q = tl.load(q_base + offs_m[:, None] * SQT + offs_d[None, :], mask=q_mask, other=0.0)
                do = tl.load(do_base + offs_m[:, None] * SQT + offs_d[None, :], mask=q_mask, other=0.0)
                lse2, delta = _load_row_stats(Lse, Delta, stat_base + offs_m, offs_m, q_len)
                if PRESCALE:
                    qkt = tl.dot(k, tl.trans((q * qk_scale).to(q.dtype)), input_precision=PRECISION)
                else:
                    qkt = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
                pt = tl.math.exp2(qkt - lse2[None, :])
                pt = apply_mask(pt, 0.0, offs_m, offs_n, start_m, start_n, kv_len,
                                MASK_FN, MASK_TAKES_LEN, FULL_FN, BLOCK_M, BLOCK_N,
                                True, ARGS)
                if start_n + BLOCK_N > kv_len:
                    pt = tl.where(n_ok[:, None], pt, 0.0)
                dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
                dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
                dst = pt * (dpt - delta[None, :])
                dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)

    dk = dk * sm_scale
    st_mask = (offs_n[:, None] < KV_LEN) & d_ok[None, :]
    dk_base = DK + b.to(tl.int64) * SKB + kvh.to(tl.int64) * SKH
    dv_base = DV + b.to(tl.int64) * SVB + kvh.to(tl.int64) * SVH
    tl.store(dk_base + offs_n[:, None] * SKT + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=st_mask)
    tl.store(dv_base + offs_n[:, None] * SVT + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=st_mask)


@triton.jit
def attn_bwd_dq(
    Q, K, V, DOut, Lse, Delta, QLens, KVLens, M0, M1, M2, M3, sm_scale,
    DQ,
    SQB: tl.constexpr, SQT: tl.constexpr, SQH: tl.constexpr,
    SKB: tl.constexpr, SKT: tl.constexpr, SKH: tl.constexpr,
    SVB: tl.constexpr, SVT: tl.constexpr, SVH: tl.constexpr,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr,
    Q_LEN: tl.constexpr, KV_LEN: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, PRESCALE: tl.constexpr,
    MASK_FN: tl.constexpr, MASK_TAKES_LEN: tl.constexpr,
    K_RANGE_FN: tl.constexpr, K_CONTINUOUS: tl.constexpr,
    FULL_FN: tl.constexpr, PACK: tl.constexpr,
    A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr,
    A4: tl.constexpr, A5: tl.constexpr, A6: tl.constexpr, A7: tl.constexpr,
    A8: tl.constexpr, A9: tl.constexpr, A10: tl.constexpr, A11: tl.constexpr,
    A12: tl.constexpr, A13: tl.constexpr, A14: tl.constexpr, A15: tl.constexpr,
    PACK_ARRAYS: tl.constexpr,
    MS0: tl.constexpr, MS1: tl.constexpr, MS2: tl.constexpr, MS3: tl.constexpr,
):
    """One program computes dQ of one query tile of one (batch, head).

    DQ has the layout of Q. Grid: ``(cdiv(Q_LEN, BLOCK_M), B * NUM_HEADS)``.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NUM_HEADS
    h = pid_bh % NUM_HEADS
    kvh = h // GROUP
    q_len = tl.minimum(tl.maximum(tl.load(QLens + b), 0), Q_LEN)
    kv_len = tl.minimum(tl.maximum(tl.load(KVLens + b), 0), KV_LEN)
    ARGS = mask_args(b, PACK, A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13,
                     A14, A15, PACK_ARRAYS, M0, M1, M2, M3, MS0, MS1, MS2, MS3)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_base = Q + b.to(tl.int64) * SQB + h.to(tl.int64) * SQH
    do_base = DOut + b.to(tl.int64) * SQB + h.to(tl.int64) * SQH
    k_base = K + b.to(tl.int64) * SKB + kvh.to(tl.int64) * SKH
    v_base = V + b.to(tl.int64) * SVB + kvh.to(tl.int64) * SVH

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    if start_m < q_len:
        q_mask = (offs_m[:, None] < q_len) & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * SQT + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * SQT + offs_d[None, :], mask=q_mask, other=0.0)
        lse2, delta = _load_row_stats(Lse, Delta, pid_bh.to(tl.int64) * Q_LEN + offs_m, offs_m, q_len)
        if PRESCALE:
            q_dot = (q * qk_scale).to(q.dtype)
        else:
            q_dot = q
        count = tl.minimum(q_len - start_m, BLOCK_M)
        first, end = tile_loop_bounds(start_m, count, kv_len, K_RANGE_FN,
                                      K_CONTINUOUS, BLOCK_M, ARGS, BLOCK_N)
        for start_n in range(first, end, BLOCK_N):
            offs_n = start_n + offs_n0
            n_ok = offs_n < kv_len
            t_mask = n_ok[None, :] & d_ok[:, None]
            kt = tl.load(k_base + offs_n[None, :] * SKT + offs_d[:, None], mask=t_mask, other=0.0)
            vt = tl.load(v_base + offs_n[None, :] * SVT + offs_d[:, None], mask=t_mask, other=0.0)
            if PRESCALE:
                qk = tl.dot(q_dot, kt, input_precision=PRECISION)
            else:
                qk = tl.dot(q_dot, kt, input_precision=PRECISION) * qk_scale
            p = tl.math.exp2(qk - lse2[:, None])
            p = apply_mask(p, 0.0, offs_m, offs_n, start_m, start_n, kv_len,
                           MASK_FN, MASK_TAKES_LEN, FULL_FN, BLOCK_M, BLOCK_N,
                           False, ARGS)
            if start_n + BLOCK_N > kv_len:
                p = tl.where(n_ok[None, :], p, 0.0)
            dp = tl.dot(do, vt, input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)

    dq = dq * sm_scale
    dq_base = DQ + b.to(tl.int64) * SQB + h.to(tl.int64) * SQH
    tl.store(dq_base + offs_m[:, None] * SQT + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=(offs_m[:, None] < Q_LEN) & d_ok[None, :])
