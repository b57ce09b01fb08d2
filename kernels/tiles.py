# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Tile-range helpers shared by the forward and backward kernels.

A mask reaches the kernels as constexpr ``@triton.jit`` functions plus up to
``MAX_MASK_ARGS`` constexpr constants ``A0 .. A15`` and up to
``MAX_MASK_ARRAYS`` runtime arrays ``M0 .. M3``. Triton cannot unpack a
constexpr tuple, so the kernels rebuild the mask's ``args`` tuple with the
``pack{n}`` helper of the mask's arity (``PACKERS[n]``), append the array
pointers (each already offset to the program's batch element) with
``pack_arrays{m}`` (``ARRAY_PACKERS[m]``), and hand that tuple to the mask's
methods, which unpack it as ordinary Triton code: constants first, then
arrays.
"""

import triton
import triton.language as tl

MAX_MASK_ARGS = 16
MAX_MASK_ARRAYS = 4


@triton.jit
def pack0(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return ()


@triton.jit
def pack1(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0,)


@triton.jit
def pack2(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1)


@triton.jit
def pack3(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2)


@triton.jit
def pack4(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3)


@triton.jit
def pack5(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4)


@triton.jit
def pack6(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4, a5)


@triton.jit
def pack7(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4, a5, a6)


@triton.jit
def pack8(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4, a5, a6, a7)


@triton.jit
def pack9(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4, a5, a6, a7, a8)


@triton.jit
def pack10(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9)


@triton.jit
def pack11(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10)


@triton.jit
def pack12(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11)


@triton.jit
def pack13(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12)


@triton.jit
def pack14(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13)


@triton.jit
def pack15(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14)


@triton.jit
def pack16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15)


PACKERS = (pack0, pack1, pack2, pack3, pack4, pack5, pack6, pack7, pack8, pack9,
           pack10, pack11, pack12, pack13, pack14, pack15, pack16)


@triton.jit
def pack_arrays0(m0, m1, m2, m3):
    return ()


@triton.jit
def pack_arrays1(m0, m1, m2, m3):
    return (m0,)


@triton.jit
def pack_arrays2(m0, m1, m2, m3):
    return (m0, m1)


@triton.jit
def pack_arrays3(m0, m1, m2, m3):
    return (m0, m1, m2)


@triton.jit
def pack_arrays4(m0, m1, m2, m3):
    return (m0, m1, m2, m3)


ARRAY_PACKERS = (pack_arrays0, pack_arrays1, pack_arrays2, pack_arrays3, pack_arrays4)


@triton.jit
def mask_args(b, PACK: tl.constexpr, A0: tl.constexpr, A1: tl.constexpr,
              A2: tl.constexpr, A3: tl.constexpr, A4: tl.constexpr,
              A5: tl.constexpr, A6: tl.constexpr, A7: tl.constexpr,
              A8: tl.constexpr, A9: tl.constexpr, A10: tl.constexpr,
              A11: tl.constexpr, A12: tl.constexpr, A13: tl.constexpr,
              A14: tl.constexpr, A15: tl.constexpr, PACK_ARRAYS: tl.constexpr,
              M0, M1, M2, M3, MS0: tl.constexpr, MS1: tl.constexpr,
              MS2: tl.constexpr, MS3: tl.constexpr):
    """The mask's ``args`` tuple for batch element ``b``.

    ``MS0 .. MS3`` are the arrays' batch strides in elements (0 for an array
    shared by every example); unused array slots are never dereferenced.
    """
    consts = PACK(A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15)
    bb = b.to(tl.int64)
    arrays = PACK_ARRAYS(M0 + bb * MS0, M1 + bb * MS1, M2 + bb * MS2, M3 + bb * MS3)
    return consts + arrays


@triton.jit
def range_union(start, count, other_len, RANGE_FN: tl.constexpr,
                CONTINUOUS: tl.constexpr, SIZE: tl.constexpr, ARGS):
    """Hull of ``RANGE_FN`` over positions ``start .. start + count - 1``.

    Args:
      start: first position of the tile (scalar).
      count: number of valid positions in the tile, ``1 <= count <= SIZE``.
      other_len: length of the other side, passed to ``RANGE_FN`` as seq_len.
      RANGE_FN: the mask's ``k_range_for_q`` or ``q_range_for_k``.
      CONTINUOUS: both range ends are non-decreasing in the position, so the
        hull is ``[lo(first), hi(last)]``; otherwise every position is asked.
      SIZE: the tile size (upper bound on ``count``).
      ARGS: the mask's constants tuple.

    Returns:
      ``(lo, hi)``: inclusive hull, clipped to ``[0, other_len - 1]``; empty
      when ``hi < lo``.
    """
    if CONTINUOUS:
        lo, _unused_hi = RANGE_FN(start, other_len, ARGS)
        _unused_lo, hi = RANGE_FN(start + count - 1, other_len, ARGS)
        lo = tl.maximum(lo + 0 * start, 0)
        hi = tl.minimum(hi + 0 * start, other_len - 1)
    else:
        lo = other_len + 0 * start
        hi = -1 + 0 * start
        for i in range(SIZE):
            if i < count:
                lo_i, hi_i = RANGE_FN(start + i, other_len, ARGS)
                lo = tl.minimum(lo, lo_i)
                hi = tl.maximum(hi, hi_i)
        lo = tl.maximum(lo, 0)
        hi = tl.minimum(hi, other_len - 1)
    return lo, hi


@triton.jit
def tile_loop_bounds(start, count, other_len, RANGE_FN: tl.constexpr,
                     CONTINUOUS: tl.constexpr, SIZE: tl.constexpr, ARGS,
                     OTHER_BLOCK: tl.constexpr):
    """Loop bounds over the other side's tiles that a tile must visit.

    Returns:
      ``(first, end)``: tile starts are ``first, first + OTHER_BLOCK, ...``
      below ``end``; ``first`` is a multiple of ``OTHER_BLOCK`` and the loop is
      empty when nothing is allowed. Tiles outside the hull are never visited.
    """
    lo, hi = range_union(start, count, other_len, RANGE_FN, CONTINUOUS, SIZE, ARGS)
    first = (lo // OTHER_BLOCK) * OTHER_BLOCK
    end = tl.where(hi >= lo, hi + 1, first)
    return first, end


@triton.jit
def _declared_full(fixed, pos, seq_len, FULL_FN: tl.constexpr, SCAN_KEYS: tl.constexpr,
                   BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, ARGS):
    """``FULL_FN`` for the tile at ``pos`` on the scanned side (keys when
    ``SCAN_KEYS``) and ``fixed`` on the other, as a scalar int1 tensor (the
    always-false ``pos < 0`` makes one of a constant answer)."""
    if SCAN_KEYS:
        full = FULL_FN(fixed, pos, BLOCK_Q, BLOCK_K, seq_len, ARGS)
    else:
        full = FULL_FN(pos, fixed, BLOCK_Q, BLOCK_K, seq_len, ARGS)
    return full | (pos < 0)


@triton.jit
def load_tile(ptrs, pos_ok, d_ok, POS_ON_ROWS: tl.constexpr, CHECK_POS: tl.constexpr,
              CHECK_D: tl.constexpr):
    """Loads a ``[positions, head dim]`` tile (``POS_ON_ROWS``) or its
    transpose, with 0 where a position is invalid (``CHECK_POS``, from
    ``pos_ok``) or past the head dim (``CHECK_D``, from ``d_ok``; implied by
    ``CHECK_POS``). Without either check the load is unmasked."""
    if POS_ON_ROWS:
        pos_mask = pos_ok[:, None]
        d_mask = d_ok[None, :]
    else:
        pos_mask = pos_ok[None, :]
        d_mask = d_ok[:, None]
    if CHECK_POS:
        tile = tl.load(ptrs, mask=pos_mask & d_mask, other=0.0)
    elif CHECK_D:
        tile = tl.load(ptrs, mask=d_mask, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def full_tile_span(fixed, first, end, limit, seq_len, FULL_FN: tl.constexpr,
                   SCAN_KEYS: tl.constexpr, BLOCK_Q: tl.constexpr,
                   BLOCK_K: tl.constexpr, ARGS):
    """The first run of tiles the mask declares full, among the visited ones.

    The kernels' tile loops visit ``first, first + B, ... < end`` on the
    scanned side (keys when ``SCAN_KEYS``, else queries; ``B`` is that side's
    tile size) for the tile starting at ``fixed`` on the other side. This
    returns ``[lo, hi)``, tile starts inside ``[first, end)``, such that every
    tile in it is declared full by ``FULL_FN`` and lies wholly below ``limit``
    (the scanned side's valid length). The kernels run those tiles without
    evaluating the mask or bounds, and the rest (``[first, lo)`` and
    ``[hi, end)``) with both. Only scalar work: one ``FULL_FN`` call per tile.

    Returns:
      ``(lo, hi)`` with ``first <= lo <= hi <= end``, both on the tile grid;
      ``lo == hi`` when there is no such tile (or no ``FULL_FN``).
    """
    STEP: tl.constexpr = BLOCK_K if SCAN_KEYS else BLOCK_Q
    stop = tl.minimum(end, limit - STEP + 1)
    lo = first
    if FULL_FN is not None:
        searching = lo < stop
        while searching:
            full = _declared_full(fixed, lo, seq_len, FULL_FN, SCAN_KEYS, BLOCK_Q, BLOCK_K, ARGS)
            searching = (lo < stop) & (full == 0)
            if searching:
                lo += STEP
        hi = lo
        growing = hi < stop
        while growing:
            full = _declared_full(fixed, hi, seq_len, FULL_FN, SCAN_KEYS, BLOCK_Q, BLOCK_K, ARGS)
            growing = full != 0
            if growing:
                hi += STEP
                growing = hi < stop
    else:
        hi = lo
    lo = tl.minimum(lo, end)
    hi = tl.maximum(tl.minimum(hi, end), lo)
    return lo, hi


@triton.jit
def mask_tile(scores, fill, offs_q, offs_k, kv_len, MASK_FN: tl.constexpr,
              MASK_TAKES_LEN: tl.constexpr, TRANSPOSED: tl.constexpr, ARGS,
              CHECK_LEN: tl.constexpr = True):
    """Replaces the entries of a tile that the mask forbids, or whose key is
    at or past ``kv_len``, by ``fill``.

    Args:
      scores: ``[BLOCK_Q, BLOCK_K]`` tile, or ``[BLOCK_K, BLOCK_Q]`` when
        ``TRANSPOSED``.
      fill: value for forbidden entries (``-inf`` for logits, 0 for
        probabilities).
      offs_q: ``[BLOCK_Q]`` query positions; ``offs_k``: ``[BLOCK_K]`` keys.
      kv_len: the key length; the mask methods receive it as ``seq_len``.
      CHECK_LEN: also forbid keys at or past ``kv_len`` (off where the
        caller knows every key of the tile is below it).

    Returns:
      The masked tile, same shape as ``scores``.
    """
    if MASK_TAKES_LEN:
        allowed = MASK_FN(offs_q, offs_k, kv_len, ARGS)
    else:
        allowed = MASK_FN(offs_q, offs_k, ARGS)
    allowed = allowed.to(tl.int1)
    if CHECK_LEN:
        allowed = allowed & (offs_k < kv_len)[None, :]
    if TRANSPOSED:
        allowed = tl.trans(allowed)
    return tl.where(allowed, scores, fill)


@triton.jit
def live_key_tiles(live, start_m, q_len, kv_len, K_RANGE_FN: tl.constexpr,
                   K_CONTINUOUS: tl.constexpr, FULL_FN: tl.constexpr, SPLIT_FULL: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ARGS):
    """The key tiles the query tile at ``start_m`` visits (forward and dQ).

    ``live`` says whether the tile starts below the query length ``q_len``.
    A tile that does not gets empty ranges (all four values 0) without a
    branch: the bounds are computed for the first query tile in its place,
    so the mask methods only ever see valid positions, and then replaced.
    The kernels use this instead of branching around their loops, which
    costs ptxas registers (see ``attn_fwd``).

    Returns:
      ``(first, end, full_lo, full_hi)``: the tiles ``first, first +
      BLOCK_N, ... < end`` (``tile_loop_bounds``), and within them the run
      ``[full_lo, full_hi)`` that skips the mask (``full_tile_span``; empty,
      at ``end``, without ``SPLIT_FULL``).
    """
    tile = tl.where(live, start_m, 0)
    count = tl.minimum(tl.where(live, q_len, 1) - tile, BLOCK_M)
    first, end = tile_loop_bounds(tile, count, kv_len, K_RANGE_FN,
                                  K_CONTINUOUS, BLOCK_M, ARGS, BLOCK_N)
    full_lo = end
    full_hi = end
    if SPLIT_FULL:
        full_lo, full_hi = full_tile_span(tile, first, end, kv_len, kv_len, FULL_FN,
                                          True, BLOCK_M, BLOCK_N, ARGS)
    return (tl.where(live, first, 0), tl.where(live, end, 0), tl.where(live, full_lo, 0),
            tl.where(live, full_hi, 0))


@triton.jit
def split_key_tiles(first, end, full_lo, full_hi, split, SPLITS: tl.constexpr, BLOCK_N: tl.constexpr):
    """The part ``split`` of ``SPLITS`` of a query tile's key tiles (the
    forward's key splits, for launches with fewer query tiles than the GPU
    has multiprocessors).

    Args:
      first, end: the tiles ``first, first + BLOCK_N, ... < end``
        (``live_key_tiles``).
      full_lo, full_hi: the run of full tiles within them.
      split: which part, ``0 <= split < SPLITS``.

    Returns:
      ``(first, end, full_lo, full_hi)`` of the part: consecutive tiles,
      ``cdiv(tiles, SPLITS)`` of them (fewer in the last parts, none past
      the end), with the full run cut to it. Every tile is in exactly one
      part.
    """
    per = tl.cdiv(tl.cdiv(end - first, BLOCK_N), SPLITS) * BLOCK_N
    lo = tl.minimum(first + split * per, end)
    hi = tl.minimum(lo + per, end)
    return (lo, hi, tl.minimum(tl.maximum(full_lo, lo), hi), tl.minimum(tl.maximum(full_hi, lo), hi))


@triton.jit
def seq_descriptor(X, batch, HEADS: tl.constexpr, LEN: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """A two-dimensional tensor descriptor over all of ``X`` (``[B, LEN,
    HEADS, HEAD_DIM]`` when ``SH < ST``, else ``[B, HEADS, LEN, HEAD_DIM]``,
    contiguous, ``batch`` = B) with ``[BLOCK, HEAD_DIM]`` blocks;
    :func:`seq_origin` gives a (batch, head) slice's first row and column.

    One descriptor for the whole array, not one per (batch, head): with
    per-slice descriptors and a mask in the loop, Triton 3.6's
    warp-specialized build gave wrong results (H200). Rows past ``LEN``
    belong to the next slice (or are zeros past the array's end).
    """
    if SH < ST:
        desc = tl.make_tensor_descriptor(X, [batch * LEN, HEADS * HEAD_DIM], [ST, 1], [BLOCK, HEAD_DIM])
    else:
        desc = tl.make_tensor_descriptor(X, [batch * HEADS * LEN, HEAD_DIM], [ST, 1], [BLOCK, HEAD_DIM])
    return desc


@triton.jit
def seq_origin(b, h, HEADS: tl.constexpr, LEN: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr,
               HEAD_DIM: tl.constexpr):
    """Row and column of :func:`seq_descriptor` where (batch ``b``, head
    ``h``) starts."""
    if SH < ST:
        row = b * LEN
        col = h * HEAD_DIM
    else:
        row = (b * HEADS + h) * LEN
        col = 0 * h
    return row, col
