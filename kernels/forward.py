# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Forward flash-attention kernels with an inlined, tile-skipping mask: ``attn_fwd``
(pointer loads) and ``attn_fwd_ws`` (tensor descriptors, warp-specialized), and
``attn_fwd_combine``, which merges their key splits."""

import triton
import triton.language as tl

from .tiles import live_key_tiles, load_tile, mask_args, mask_tile, seq_descriptor, seq_origin, split_key_tiles


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, lo, hi, skip_lo, skip_hi, offs_m, kv_len,
               logit_scale, SKT: tl.constexpr, SVT: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
               MASKED: tl.constexpr, MASK_FN: tl.constexpr, MASK_TAKES_LEN: tl.constexpr, ARGS):
    """Online-softmax update of one query tile over key tiles ``lo, lo + BLOCK_N, ... < hi``
    except those in ``[skip_lo, skip_hi)`` (on the same tile grid).

    One loop covers the tiles on both sides of the skipped run, so they share
    one software pipeline. With ``MASKED`` every tile evaluates the mask and
    the key length; otherwise the tiles are known to be fully allowed and
    inside the key length, and are loaded and used without either check.
    ``logit_scale`` turns ``q @ k^T`` into base-2 logits (1.0, a constant,
    when the query tile arrives scaled).

    Returns:
      The updated ``(acc [BLOCK_M, BLOCK_D], l_i [BLOCK_M], m_i [BLOCK_M])``.
    """
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    skip = skip_hi - skip_lo
    for start in range(lo, hi - skip, BLOCK_N):
        start_n = start + tl.where(start >= skip_lo, skip, 0)
        offs_n = start_n + offs_n0
        kt_ptrs = k_base + offs_n[None, :] * SKT + offs_d[:, None]
        v_ptrs = v_base + offs_n[:, None] * SVT + offs_d[None, :]
        n_ok = offs_n < kv_len
        kt = load_tile(kt_ptrs, n_ok, d_ok, False, MASKED, HEAD_DIM != BLOCK_D)
        # Unscaled logits; the scale (> 0, so it commutes with the max) is
        # applied to the row max and, as one fused multiply-add, in the exp2.
        qk = tl.dot(q, kt, input_precision=PRECISION)
        if MASKED:
            qk = mask_tile(qk, float("-inf"), offs_m, offs_n, kv_len, MASK_FN,
                           MASK_TAKES_LEN, False, ARGS)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * logit_scale)
        if MASKED:
            # A row with no allowed key so far keeps m = -inf; shift it by 0.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        alpha = tl.math.exp2(m_i - m_use)
        p = tl.math.exp2(qk * logit_scale - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = load_tile(v_ptrs, n_ok, d_ok, True, MASKED, HEAD_DIM != BLOCK_D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _store_out_lse(acc, l_i, m_i, offs_m, offs_d, q_len, Out, Lse, b, h, pid_bh, SQB: tl.constexpr,
                   SQT: tl.constexpr, SQH: tl.constexpr, Q_LEN: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Normalizes one query tile's accumulator and stores it into Out and its
    natural-log LSE into Lse (the forward kernels' outputs); rows with no
    allowed key or at/after ``q_len`` get 0 and ``-inf``."""
    row_ok = (offs_m < q_len) & (l_i > 0.0)
    out = acc / tl.where(row_ok, l_i, 1.0)[:, None]
    out = tl.where(row_ok[:, None], out, 0.0)
    lse = tl.where(row_ok, (m_i + tl.math.log2(tl.where(row_ok, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    o_base = Out + b.to(tl.int64) * SQB + h.to(tl.int64) * SQH
    tl.store(o_base + offs_m[:, None] * SQT + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=(offs_m[:, None] < Q_LEN) & (offs_d < HEAD_DIM)[None, :])
    tl.store(Lse + pid_bh.to(tl.int64) * Q_LEN + offs_m, lse, mask=offs_m < Q_LEN)


@triton.jit
def _store_result(acc, l_i, m_i, offs_m, offs_d, q_len, Out, Lse, b, h, pid_bh, SQB: tl.constexpr,
                  SQT: tl.constexpr, SQH: tl.constexpr, NUM_HEADS: tl.constexpr, Q_LEN: tl.constexpr,
                  HEAD_DIM: tl.constexpr, KV_SPLITS: tl.constexpr):
    """``_store_out_lse`` into Out and Lse, or with ``KV_SPLITS > 1`` into
    this program's key split of the partial results (Out float32
    ``[KV_SPLITS, B, N, Q_LEN, HEAD_DIM]``, Lse ``[KV_SPLITS, B, N,
    Q_LEN]``; ``attn_fwd_combine`` merges them)."""
    if KV_SPLITS > 1:
        part = tl.program_id(2).to(tl.int64) * tl.num_programs(1) * Q_LEN
        _store_out_lse(acc, l_i, m_i, offs_m, offs_d, q_len, Out + part * HEAD_DIM, Lse + part, b, h, pid_bh,
                       NUM_HEADS * Q_LEN * HEAD_DIM, HEAD_DIM, Q_LEN * HEAD_DIM, Q_LEN, HEAD_DIM)
    else:
        _store_out_lse(acc, l_i, m_i, offs_m, offs_d, q_len, Out, Lse, b, h, pid_bh, SQB, SQT, SQH, Q_LEN,
                       HEAD_DIM)


@triton.jit
def attn_fwd(
    Q, K, V, QLens, KVLens, M0, M1, M2, M3, sm_scale,
    Out, Lse,
    # Strides (elements) of q/out, k and v: batch, sequence, head. The head
    # dimension is contiguous.
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
    FULL_FN: tl.constexpr, SPLIT_FULL: tl.constexpr, PACK: tl.constexpr,
    A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr,
    A4: tl.constexpr, A5: tl.constexpr, A6: tl.constexpr, A7: tl.constexpr,
    A8: tl.constexpr, A9: tl.constexpr, A10: tl.constexpr, A11: tl.constexpr,
    A12: tl.constexpr, A13: tl.constexpr, A14: tl.constexpr, A15: tl.constexpr,
    PACK_ARRAYS: tl.constexpr,
    MS0: tl.constexpr, MS1: tl.constexpr, MS2: tl.constexpr, MS3: tl.constexpr,
    KV_SPLITS: tl.constexpr,
):
    """One program computes one query tile of one (batch, head), or with
    ``KV_SPLITS > 1`` one of that many parts of its key tiles.

    Shapes: Q/Out ``[B, Q_LEN, N, D]`` or ``[B, N, Q_LEN, D]`` (by strides),
    K/V likewise with ``KV_LEN`` and ``N // GROUP`` heads, QLens/KVLens int32
    ``[B]``, M0..M3 the mask's arrays (see ``tiles.mask_args``), Lse float32
    ``[B, N, Q_LEN]`` (natural log; ``-inf`` for rows with no allowed key or
    at/after the query length). Grid: ``(cdiv(Q_LEN, BLOCK_M), B * N)``, or
    ``(cdiv(Q_LEN, BLOCK_M), B * N, KV_SPLITS)`` with key splits, which
    write partial results instead (see ``_store_result``).

    The key tiles in the mask's range hull are visited in two loops when
    ``SPLIT_FULL``: first the tiles before and after the first run of full
    tiles (``full_tile_span``), evaluating the mask, then the run itself
    without it; otherwise in one loop that evaluates the mask on every tile.
    """
    # Last query tiles first: under causal-like masks they have the most key
    # tiles, so the long programs start early and the last wave is short.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
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
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    q_base = Q + b.to(tl.int64) * SQB + h.to(tl.int64) * SQH
    k_base = K + b.to(tl.int64) * SKB + kvh.to(tl.int64) * SKH
    v_base = V + b.to(tl.int64) * SVB + kvh.to(tl.int64) * SVH

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    # No branch on the query length: a query tile at or past it gets empty
    # key ranges (behind a branch, even one around the bounds alone, ptxas
    # spilled the 128-row D=128 tiles and gave the full-tile loops 5-12% more
    # instructions; sm_90 SASS).
    live = start_m < q_len
    q = tl.load(q_base + offs_m[:, None] * SQT + offs_d[None, :],
                mask=(offs_m[:, None] < q_len) & d_ok[None, :], other=0.0)
    if PRESCALE:
        q = (q * qk_scale).to(q.dtype)
        logit_scale = 1.0
    else:
        logit_scale = qk_scale
    first, end, full_lo, full_hi = live_key_tiles(live, start_m, q_len, kv_len, K_RANGE_FN,
                                                  K_CONTINUOUS, FULL_FN, SPLIT_FULL, BLOCK_M,
                                                  BLOCK_N, ARGS)
    if KV_SPLITS > 1:
        first, end, full_lo, full_hi = split_key_tiles(first, end, full_lo, full_hi, tl.program_id(2),
                                                       KV_SPLITS, BLOCK_N)
    # The tiles around the full run, with the mask; then the run, without.
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, first, end, full_lo, full_hi,
                               offs_m, kv_len, logit_scale, SKT, SVT, HEAD_DIM, BLOCK_D, BLOCK_N,
                               PRECISION, True, MASK_FN, MASK_TAKES_LEN, ARGS)
    if SPLIT_FULL:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, full_lo, full_hi, full_hi,
                                   full_hi, offs_m, kv_len, logit_scale, SKT, SVT, HEAD_DIM,
                                   BLOCK_D, BLOCK_N, PRECISION, False, MASK_FN, MASK_TAKES_LEN, ARGS)

    _store_result(acc, l_i, m_i, offs_m, offs_d, q_len, Out, Lse, b, h, pid_bh, SQB, SQT, SQH, NUM_HEADS,
                  Q_LEN, HEAD_DIM, KV_SPLITS)


@triton.jit
def attn_fwd_ws(
    Q, K, V, QLens, KVLens, M0, M1, M2, M3, sm_scale,
    Out, Lse,
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
    FULL_FN: tl.constexpr, SPLIT_FULL: tl.constexpr, PACK: tl.constexpr,
    A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr,
    A4: tl.constexpr, A5: tl.constexpr, A6: tl.constexpr, A7: tl.constexpr,
    A8: tl.constexpr, A9: tl.constexpr, A10: tl.constexpr, A11: tl.constexpr,
    A12: tl.constexpr, A13: tl.constexpr, A14: tl.constexpr, A15: tl.constexpr,
    PACK_ARRAYS: tl.constexpr,
    MS0: tl.constexpr, MS1: tl.constexpr, MS2: tl.constexpr, MS3: tl.constexpr,
    KV_SPLITS: tl.constexpr, UNMASKED: tl.constexpr,
):
    """``attn_fwd`` with Q, K and V read through tensor descriptors (TMA) in
    one warp-specialized key loop: Triton adds producer warps that issue the
    copies while the program's warps compute (Hopper or newer).

    Same arguments, outputs and grid as ``attn_fwd``, plus ``UNMASKED``, with
    these conditions (the binding checks them): contiguous ``[B, T, N, D]``
    or ``[B, N, T, D]`` arrays of 16-bit elements, ``HEAD_DIM == BLOCK_D``,
    ``KV_LEN % BLOCK_N == 0`` and every key length equal to ``KV_LEN`` (key
    tiles past a length would read other rows: see ``tiles.seq_descriptor``), and
    a mask without arrays. Triton 3.6 warp-specializes a loop only when no
    other loop with tile products, no data-dependent ``while`` and no branch
    inside it, so there is one loop over the mask's range hull, and every
    tile in it evaluates the mask (no full-tile run as in ``attn_fwd``),
    except with ``UNMASKED``: the mask allows every key (full attention), so
    the loop is the plain flash-attention loop.
    """
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
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
    batch = tl.num_programs(1) // NUM_HEADS
    q_desc = seq_descriptor(Q, batch, NUM_HEADS, Q_LEN, SQT, SQH, HEAD_DIM, BLOCK_M)
    q_row, q_col = seq_origin(b, h, NUM_HEADS, Q_LEN, SQT, SQH, HEAD_DIM)
    k_desc = seq_descriptor(K, batch, NUM_HEADS // GROUP, KV_LEN, SKT, SKH, HEAD_DIM, BLOCK_N)
    k_row, k_col = seq_origin(b, kvh, NUM_HEADS // GROUP, KV_LEN, SKT, SKH, HEAD_DIM)
    v_desc = seq_descriptor(V, batch, NUM_HEADS // GROUP, KV_LEN, SVT, SVH, HEAD_DIM, BLOCK_N)
    v_row, v_col = seq_origin(b, kvh, NUM_HEADS // GROUP, KV_LEN, SVT, SVH, HEAD_DIM)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    # Rows at or past the query length hold the input's data there; their
    # results are discarded (row_ok below).
    q = q_desc.load([q_row + start_m, q_col])
    if PRESCALE:
        q = (q * qk_scale).to(q.dtype)
        logit_scale = 1.0
    else:
        logit_scale = qk_scale
    # The mask's range hull only (SPLIT_FULL off: no full-tile run).
    first, end, _, _ = live_key_tiles(start_m < q_len, start_m, q_len, kv_len, K_RANGE_FN, K_CONTINUOUS,
                                      FULL_FN, False, BLOCK_M, BLOCK_N, ARGS)
    if KV_SPLITS > 1:
        first, end, _, _ = split_key_tiles(first, end, end, end, tl.program_id(2), KV_SPLITS, BLOCK_N)
    for start_n in tl.range(first, end, BLOCK_N, warp_specialize=True):
        k = k_desc.load([k_row + start_n, k_col])
        qk = tl.dot(q, k.T, input_precision=PRECISION)
        if UNMASKED:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * logit_scale)
            m_use = m_new
        else:
            # Every tile evaluates the mask (a branch on the full-block hint
            # here stops Triton 3.6 from warp-specializing), not the key
            # length: every key length is KV_LEN, a multiple of BLOCK_N.
            qk = mask_tile(qk, float("-inf"), offs_m, start_n + offs_n0, kv_len, MASK_FN,
                           MASK_TAKES_LEN, False, ARGS, False)
            m_new = tl.maximum(m_i, tl.max(qk, 1) * logit_scale)
            # A row with no allowed key so far keeps m = -inf; shift it by 0.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_use)
        p = tl.math.exp2(qk * logit_scale - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = v_desc.load([v_row + start_n, v_col])
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    _store_result(acc, l_i, m_i, offs_m, offs_d, q_len, Out, Lse, b, h, pid_bh, SQB, SQT, SQH, NUM_HEADS,
                  Q_LEN, HEAD_DIM, KV_SPLITS)


@triton.jit
def attn_fwd_combine(
    OutPart, LsePart, Out, Lse,
    SQB: tl.constexpr, SQT: tl.constexpr, SQH: tl.constexpr,
    NUM_HEADS: tl.constexpr, Q_LEN: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, KV_SPLITS: tl.constexpr,
):
    """Merges the key splits of a forward launch: one program per query tile
    of one (batch, head).

    OutPart float32 ``[KV_SPLITS, B, N, Q_LEN, HEAD_DIM]`` holds each split's
    normalized output and LsePart ``[KV_SPLITS, B, N, Q_LEN]`` its natural-log
    LSE (``-inf`` where the split has no allowed key). Writes Out (the
    layout of Q, by the strides) and Lse ``[B, N, Q_LEN]``: the LSE-weighted
    mean of the splits and the LSE of their union; rows with no allowed key
    in any split get 0 and ``-inf``. Grid: ``(cdiv(Q_LEN, BLOCK_M), B * N)``.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NUM_HEADS
    h = pid_bh % NUM_HEADS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Q_LEN
    ok = m_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    split_rows = tl.num_programs(1).to(tl.int64) * Q_LEN
    rows = pid_bh.to(tl.int64) * Q_LEN + offs_m
    # One pass with a running maximum, in a runtime loop (two passes
    # unrolled over 32 splits took 0.24 ms where 2 took 0.05; H200).
    lse_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    weight = tl.zeros([BLOCK_M], tl.float32)
    for s in tl.range(0, KV_SPLITS):
        lse_s = tl.load(LsePart + s * split_rows + rows, mask=m_ok, other=float("-inf"))
        part = tl.load(OutPart + (s * split_rows + rows)[:, None] * HEAD_DIM + offs_d[None, :], mask=ok, other=0.0)
        new_max = tl.maximum(lse_max, lse_s)
        # Rows with no allowed key so far keep -inf; shift them by 0.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        old_scale = tl.exp(lse_max - shift)
        w = tl.exp(lse_s - shift)
        acc = acc * old_scale[:, None] + w[:, None] * part
        weight = weight * old_scale + w
        lse_max = new_max
    shift = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    row_ok = weight > 0.0
    out = tl.where(row_ok[:, None], acc / tl.where(row_ok, weight, 1.0)[:, None], 0.0)
    lse = tl.where(row_ok, shift + tl.log(tl.where(row_ok, weight, 1.0)), float("-inf"))
    o_base = Out + b.to(tl.int64) * SQB + h.to(tl.int64) * SQH
    tl.store(o_base + offs_m[:, None] * SQT + offs_d[None, :], out.to(Out.dtype.element_ty), mask=ok)
    tl.store(Lse + rows, lse, mask=m_ok)
