# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Hopper forward written with explicit warp specialization (Gluon).

A persistent kernel: each program computes ``[BLOCK_M, HEAD_DIM]`` output
tiles (one (batch, head) and query tile each) one after another, with a
partition per compute warp group and one for the loader:

* ``BLOCK_M // 64`` compute warp groups (4 warps each; two at 128 queries,
  three at 192), each owning 64 query rows: ``S = Q K^T`` and ``O += P V`` on
  the tensor cores (``wgmma``, P from registers), the online softmax on the
  CUDA cores. Inside each group the next tile's ``Q K^T`` is issued before
  this tile's softmax, so the softmax runs while the tensor cores work (the
  intra-warpgroup overlap of FlashAttention-3); the groups overlap each
  other's softmax and MMAs (a third group, FlashAttention-3's choice at
  D=64, gives each scheduler a third warp to switch to);
* one loader warp that copies each output tile's Q slices (as soon as the
  group that owns one has issued its last ``Q K^T`` of the previous tile)
  and the K and V tiles into a ring of ``NUM_STAGES`` shared-memory slots
  by TMA, with ready/empty mbarriers per slot (each slot is released by
  every compute group, also by a group whose rows do not need the tile);
  the ring runs on from one output tile to the next.

The output tile is staged in shared memory of its own and stored by TMA
while the next tile runs.

Inputs are contiguous 16-bit arrays, ``[B, T, N, D]`` or ``[B, N, T, D]``
(``Q``, ``Out``; ``K`` and ``V`` with ``N / GROUP`` heads and ``S`` keys,
``SQT``/``SQH`` and ``SKT``/``SKH`` their sequence and head strides); ``Lse``
is ``[B, N, T]`` float32 in the natural-log domain. The mask is inlined like
in ``forward.py`` (its methods, for masks without arrays). Conditions (the
binding checks them): ``T % 64 == 0`` (a first query tile may be partial:
its groups before 0 only release the ring), ``S % BLOCK_N == 0``,
``HEAD_DIM`` 64 or 128, every query and key length the sequence length.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .tiles import full_tile_span, mask_tile, seq_origin, tile_loop_bounds

_LOG2E = gl.constexpr(1.4426950408889634)
# Query rows per compute warp group (one wgmma M).
_GROUP_M = gl.constexpr(64)


@gluon.jit
def _seq_descriptor(X, batch, HEADS: gl.constexpr, LEN: gl.constexpr, ST: gl.constexpr, SH: gl.constexpr,
                    HEAD_DIM: gl.constexpr, BLOCK: gl.constexpr, layout: gl.constexpr):
    """A two-dimensional descriptor over all of ``X`` with ``[BLOCK,
    HEAD_DIM]`` blocks: ``[B * LEN, HEADS * HEAD_DIM]`` for ``[B, LEN, HEADS,
    HEAD_DIM]`` (``SH < ST``), else ``[B * HEADS * LEN, HEAD_DIM]``: the
    Gluon counterpart of ``tiles.seq_descriptor`` (Gluon's descriptors take
    their shared-memory layout); ``tiles.seq_origin`` gives a slice's
    origin."""
    if SH < ST:
        desc = tma.make_tensor_descriptor(X, [batch * LEN, HEADS * HEAD_DIM], [ST, 1], [BLOCK, HEAD_DIM], layout)
    else:
        desc = tma.make_tensor_descriptor(X, [batch * HEADS * LEN, HEAD_DIM], [ST, 1], [BLOCK, HEAD_DIM], layout)
    return desc


@gluon.jit
def _ring_load(desc, row, col, ready, empty, smem, slot, free_phase):
    """Copies ``desc``'s block at ``[row, col]`` into ring slot ``slot`` by
    TMA once the slot's ``empty`` barrier has completed ``free_phase``; the
    slot's ``ready`` barrier completes when the bytes have landed."""
    mbarrier.wait(empty.index(slot), free_phase)
    mbarrier.expect(ready.index(slot), desc.block_type.nbytes)
    tma.async_copy_global_to_shared(desc, [row, col], ready.index(slot), smem.index(slot))


@gluon.jit
def _snake(work, total):
    """The item that the persistent loop's ``work``-th index names: the
    loops hand each of the ``P`` programs every ``P``-th index, so round
    ``work // P`` gives the next ``P`` items to the programs in order; odd
    rounds (when complete) give them in reverse. Items are in decreasing
    cost within a head (causal), so a program that took a long item in one
    round takes a short one in the next: at the S2 causal forward's grid
    (4096 items, 132 programs) the largest program's sum of key tiles is
    1.034x the mean, against 1.079x for plain round-robin."""
    programs = gl.num_programs(0)
    round_index = work // programs
    pid = work - round_index * programs
    flip = ((round_index % 2) == 1) & ((round_index + 1) * programs <= total)
    return work + flip.to(gl.int32) * (programs - 1 - 2 * pid)


@gluon.jit
def _tile_keys(tile, BATCH: gl.constexpr, NUM_HEADS: gl.constexpr, Q_LEN: gl.constexpr, KV_LEN: gl.constexpr,
               BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, K_RANGE_FN: gl.constexpr, K_CONTINUOUS: gl.constexpr,
               UNMASKED: gl.constexpr, ARGS):
    """Work item ``tile`` of the persistent loop: its (batch * heads) index,
    the start of its query tile, and the key tiles it visits (``first``, a
    multiple of ``BLOCK_N``, and ``end``). Query tiles are innermost, so the
    items running at once share a few heads' keys and values in L2 (with
    heads innermost the S2 full forward took 4.1 ms, against 3.4, on an
    H200); within a head they go from the last query tile to the first (a
    causal mask's longest loops first), in the order of ``_snake``. The
    tiles end at ``Q_LEN``: when it is not a multiple of ``BLOCK_M`` the
    first tile starts before 0 (its groups there have no rows), so the
    partial tile is the one with the fewest keys under a causal mask. The
    keys are those of the tile's rows from 0."""
    m_tiles: gl.constexpr = (Q_LEN + BLOCK_M - 1) // BLOCK_M
    tile = _snake(tile, m_tiles * BATCH * NUM_HEADS)
    pid_bh = tile // m_tiles
    q_start = Q_LEN - (1 + tile % m_tiles) * BLOCK_M
    if UNMASKED:
        first = q_start * 0
        end = first + KV_LEN
    elif Q_LEN % BLOCK_M == 0:
        first, end = tile_loop_bounds(q_start, BLOCK_M, KV_LEN, K_RANGE_FN, K_CONTINUOUS, BLOCK_M, ARGS, BLOCK_N)
    else:
        row = gl.maximum(q_start, 0)
        first, end = tile_loop_bounds(row, q_start + BLOCK_M - row, KV_LEN, K_RANGE_FN, K_CONTINUOUS, BLOCK_M, ARGS,
                                      BLOCK_N)
    return pid_bh, q_start, first, end


@gluon.jit
def _loader(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty,
            ARGS, BATCH: gl.constexpr, NUM_HEADS: gl.constexpr, GROUP: gl.constexpr, Q_LEN: gl.constexpr,
            KV_LEN: gl.constexpr, SQT: gl.constexpr, SQH: gl.constexpr, SKT: gl.constexpr, SKH: gl.constexpr,
            HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
            K_RANGE_FN: gl.constexpr, K_CONTINUOUS: gl.constexpr, UNMASKED: gl.constexpr):
    """The loader warp: for each work item, Q's 64-row slices (each once its
    compute group has issued its last ``Q K^T`` of the previous item; a
    slice before row 0 is loaded too, rows of the previous head or TMA's
    zeros, so that every group's barriers keep one phase per item), then
    the item's K and V tiles through the ring (``count`` tiles so far set
    the slot and phase, so the ring runs on across items)."""
    WARP_GROUPS: gl.constexpr = BLOCK_M // _GROUP_M
    KV_HEADS: gl.constexpr = NUM_HEADS // GROUP
    total = ((Q_LEN + BLOCK_M - 1) // BLOCK_M) * BATCH * NUM_HEADS
    count = 0
    item = 0
    for tile in range(gl.program_id(0), total, gl.num_programs(0)):
        pid_bh, q_start, first, end = _tile_keys(tile, BATCH, NUM_HEADS, Q_LEN, KV_LEN, BLOCK_M, BLOCK_N,
                                                 K_RANGE_FN, K_CONTINUOUS, UNMASKED, ARGS)
        b = pid_bh // NUM_HEADS
        h = pid_bh % NUM_HEADS
        q_row, q_col = seq_origin(b, h, NUM_HEADS, Q_LEN, SQT, SQH, HEAD_DIM)
        kv_row, kv_col = seq_origin(b, h // GROUP, KV_HEADS, KV_LEN, SKT, SKH, HEAD_DIM)
        # A fresh mbarrier counts as having completed the phase before its
        # first, so the first item (and the first pass through the ring)
        # does not wait.
        for wg in gl.static_range(WARP_GROUPS):
            _ring_load(q_desc, q_row + q_start + wg * _GROUP_M, q_col, q_ready, q_empty, q_smem, wg,
                       (item & 1) ^ 1)
        n_tiles = gl.cdiv(gl.maximum(end - first, 0), BLOCK_N)
        for j in range(n_tiles):
            slot = (count + j) % NUM_STAGES
            free = (((count + j) // NUM_STAGES) & 1) ^ 1
            row = kv_row + first + j * BLOCK_N
            _ring_load(k_desc, row, kv_col, k_ready, k_empty, k_smem, slot, free)
            _ring_load(v_desc, row, kv_col, v_ready, v_empty, v_smem, slot, free)
        count += n_tiles
        item += 1


@gluon.jit
def _softmax_step(s, m_i, l_i, qk_scale, q_start, k_start, MASKED: gl.constexpr, s_layout: gl.constexpr,
                  ROWS: gl.constexpr, BLOCK_N: gl.constexpr, KV_LEN: gl.constexpr, MASK_FN: gl.constexpr,
                  MASK_TAKES_LEN: gl.constexpr, ARGS):
    """One tile of the online softmax on raw scores ``s`` (float32, MMA
    layout): returns P (float32), the rescale factor for the accumulator and
    the updated running max and sum (log2 domain, scaled). With ``MASKED``
    the mask's method decides which entries count; a row with no allowed
    key so far keeps max ``-inf`` and gets P = 0."""
    if MASKED:
        rows = q_start + gl.arange(0, ROWS, layout=gl.SliceLayout(1, s_layout))
        cols = k_start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        # Every key tile lies below KV_LEN (whole tiles): no length check.
        s = mask_tile(s, float("-inf"), rows, cols, KV_LEN, MASK_FN, MASK_TAKES_LEN, False, ARGS, False)
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
        shift = gl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
        shift = m_new
    p = gl.exp2(s * qk_scale - gl.expand_dims(shift, 1))
    alpha = gl.exp2(m_i - shift)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_i


@gluon.jit
def _pass_ring(k_ready, k_empty, v_ready, v_empty, count, n_tiles, NUM_STAGES: gl.constexpr):
    """A compute group's part of the ring for ``n_tiles`` of an item's key
    tiles (from the ring's ``count``-th) that its rows do not need: each K
    and V slot is released once it has been filled (a release before the
    fill would count toward the slot's previous round, freeing it under the
    other groups)."""
    for j in range(n_tiles):
        slot = (count + j) % NUM_STAGES
        phase = ((count + j) // NUM_STAGES) & 1
        mbarrier.wait(k_ready.index(slot), phase)
        mbarrier.arrive(k_empty.index(slot), count=1)
        mbarrier.wait(v_ready.index(slot), phase)
        mbarrier.arrive(v_empty.index(slot), count=1)


@gluon.jit
def _compute(q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty,
             o_desc, Lse, qk_scale, ARGS, WG: gl.constexpr, BATCH: gl.constexpr, NUM_HEADS: gl.constexpr,
             Q_LEN: gl.constexpr, KV_LEN: gl.constexpr, SQT: gl.constexpr, SQH: gl.constexpr,
             HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
             MASK_FN: gl.constexpr, MASK_TAKES_LEN: gl.constexpr, K_RANGE_FN: gl.constexpr,
             K_CONTINUOUS: gl.constexpr, FULL_FN: gl.constexpr, SPLIT_FULL: gl.constexpr,
             UNMASKED: gl.constexpr):
    """Compute warp group ``WG``, for each work item: the flash-attention
    loop over the item's key tiles for query rows ``q_start + 64 * WG +
    [0, 64)``, then the output tile (staged in ``o_smem``, stored by TMA
    while the next item runs) and its log-sum-exps. Tiles outside the mask's
    full run evaluate the mask (none with ``UNMASKED``); with no tile at all
    the rows get 0 and ``-inf``. Of three groups, each visits the key tiles
    its own rows need and only releases the item's others (two groups visit
    the item's); rows before 0 (a partial first query tile) are not
    computed, their group only releases the ring."""
    ROWS: gl.constexpr = _GROUP_M
    # Runs of their own for the groups at three only: at two, with the
    # tuned 128-key tiles, a group's run is the item's for the benchmark
    # masks, and working it out cost S2's sliding window forward 5%.
    GROUP_RUNS: gl.constexpr = BLOCK_M // _GROUP_M > 2
    # Whether the first query tile is partial (else no group has rows
    # before 0, and the branch for them folds away).
    PARTIAL: gl.constexpr = Q_LEN % BLOCK_M != 0
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    dtype: gl.constexpr = q_smem.dtype
    q = q_smem.index(WG)
    o_stage = o_smem.index(WG)
    zero_s = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    total = ((Q_LEN + BLOCK_M - 1) // BLOCK_M) * BATCH * NUM_HEADS
    count = 0
    item = 0
    for tile in range(gl.program_id(0), total, gl.num_programs(0)):
        pid_bh, q_tile, first, end = _tile_keys(tile, BATCH, NUM_HEADS, Q_LEN, KV_LEN, BLOCK_M, BLOCK_N,
                                                K_RANGE_FN, K_CONTINUOUS, UNMASKED, ARGS)
        # The item's key tiles (the ring's); this group's rows may need fewer.
        n_tiles = gl.cdiv(gl.maximum(end - first, 0), BLOCK_N)
        q_start = q_tile + WG * ROWS
        if (q_start < 0) & PARTIAL:
            # Rows before the sequence (a partial first query tile): nothing
            # to compute or store.
            mbarrier.wait(q_ready.index(WG), item & 1)
            mbarrier.arrive(q_empty.index(WG), count=1)
            _pass_ring(k_ready, k_empty, v_ready, v_empty, count, n_tiles, NUM_STAGES)
        else:
            # This group's own run of the item's key tiles, from tile `skip`:
            # the tiles before and after it are only released (a causal
            # tile's first group skips the keys past its rows).
            if UNMASKED or not GROUP_RUNS:
                skip = n_tiles * 0
                own_tiles = n_tiles
            else:
                own_lo, own_end = tile_loop_bounds(q_start, ROWS, KV_LEN, K_RANGE_FN, K_CONTINUOUS, ROWS, ARGS,
                                                   BLOCK_N)
                skip = gl.minimum(gl.maximum(own_lo - first, 0) // BLOCK_N, n_tiles)
                own_tiles = gl.minimum(gl.cdiv(gl.maximum(own_end - own_lo, 0), BLOCK_N), n_tiles - skip)
            if GROUP_RUNS:
                _pass_ring(k_ready, k_empty, v_ready, v_empty, count, skip, NUM_STAGES)
            own_count = count + skip
            own_first = first + skip * BLOCK_N
            own_stop = own_first + own_tiles * BLOCK_N
            if UNMASKED:
                full_lo = own_first
                full_hi = own_stop
            elif SPLIT_FULL:
                # Among this group's key tiles, the run the mask declares
                # full for its rows (no mask evaluated there).
                full_lo, full_hi = full_tile_span(q_start, own_first, own_stop, KV_LEN, KV_LEN, FULL_FN, True, ROWS,
                                                  BLOCK_N, ARGS)
            else:
                full_lo = own_stop
                full_hi = own_stop
            acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)
            m_i = gl.full([ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
            l_i = gl.zeros([ROWS], gl.float32, gl.SliceLayout(1, s_layout))
            # The key runs are worked out while the item's Q slice may still
            # be on its way.
            mbarrier.wait(q_ready.index(WG), item & 1)
            if own_tiles > 0:
                # Tile 0: its scores and softmax, nothing to overlap with yet.
                slot = own_count % NUM_STAGES
                mbarrier.wait(k_ready.index(slot), (own_count // NUM_STAGES) & 1)
                s = warpgroup_mma(q, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                mbarrier.arrive(k_empty.index(slot), count=1)
                if UNMASKED:
                    p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, q_start, own_first, False, s_layout,
                                                       ROWS, BLOCK_N, KV_LEN, MASK_FN, MASK_TAKES_LEN, ARGS)
                elif (own_first < full_lo) | (own_first >= full_hi):
                    p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, q_start, own_first, True, s_layout,
                                                       ROWS, BLOCK_N, KV_LEN, MASK_FN, MASK_TAKES_LEN, ARGS)
                else:
                    p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, q_start, own_first, False, s_layout,
                                                       ROWS, BLOCK_N, KV_LEN, MASK_FN, MASK_TAKES_LEN, ARGS)
                p_op = gl.convert_layout(p.to(dtype), p_layout)

                # Tile j's scores are issued, then tile j - 1's P V, then tile
                # j's softmax runs while P V is on the tensor cores.
                for j in range(1, own_tiles):
                    slot = (own_count + j) % NUM_STAGES
                    prev = (own_count + j - 1) % NUM_STAGES
                    k_start = own_first + j * BLOCK_N
                    mbarrier.wait(k_ready.index(slot), ((own_count + j) // NUM_STAGES) & 1)
                    s = warpgroup_mma(q, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
                    acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
                    mbarrier.wait(v_ready.index(prev), ((own_count + j - 1) // NUM_STAGES) & 1)
                    acc = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
                    s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
                    mbarrier.arrive(k_empty.index(slot), count=1)
                    if UNMASKED:
                        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, q_start, k_start, False, s_layout,
                                                           ROWS, BLOCK_N, KV_LEN, MASK_FN, MASK_TAKES_LEN, ARGS)
                    elif (k_start < full_lo) | (k_start >= full_hi):
                        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, q_start, k_start, True, s_layout,
                                                           ROWS, BLOCK_N, KV_LEN, MASK_FN, MASK_TAKES_LEN, ARGS)
                    else:
                        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, q_start, k_start, False, s_layout,
                                                           ROWS, BLOCK_N, KV_LEN, MASK_FN, MASK_TAKES_LEN, ARGS)
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                    mbarrier.arrive(v_empty.index(prev), count=1)
                    p_op = gl.convert_layout(p.to(dtype), p_layout)
                # Every Q K^T of this item is done: the loader may bring the
                # next item's Q slice.
                mbarrier.arrive(q_empty.index(WG), count=1)

                last = (own_count + own_tiles - 1) % NUM_STAGES
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
                mbarrier.wait(v_ready.index(last), ((own_count + own_tiles - 1) // NUM_STAGES) & 1)
                acc = warpgroup_mma(p_op, v_smem.index(last), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(v_empty.index(last), count=1)
            else:
                mbarrier.arrive(q_empty.index(WG), count=1)

            if GROUP_RUNS:
                _pass_ring(k_ready, k_empty, v_ready, v_empty, own_count + own_tiles, n_tiles - skip - own_tiles,
                           NUM_STAGES)

            # Rows without an allowed key (l = 0) get 0 and lse -inf.
            l_safe = gl.where(l_i == 0.0, 1.0, l_i)
            l_o = gl.convert_layout(l_safe, gl.SliceLayout(1, o_layout))
            out = acc / gl.expand_dims(l_o, 1)
            b = pid_bh // NUM_HEADS
            h = pid_bh % NUM_HEADS
            q_row, q_col = seq_origin(b, h, NUM_HEADS, Q_LEN, SQT, SQH, HEAD_DIM)
            # The previous item's output has left the staging tile.
            tma.store_wait(pendings=0)
            o_stage.store(out.to(dtype))
            fence_async_shared()
            tma.async_copy_shared_to_global(o_desc, [q_row + q_start, q_col], o_stage)
            rows = gl.arange(0, ROWS, layout=gl.SliceLayout(1, s_layout))
            lse = gl.where(l_i == 0.0, float("-inf"), (m_i + gl.log2(l_safe)) / _LOG2E)
            gl.store(Lse + pid_bh * Q_LEN + q_start + rows, lse)
        count += n_tiles
        item += 1
    tma.store_wait(pendings=0)


@gluon.jit
def attn_fwd_gluon(Q, K, V, sm_scale, Out, Lse,
                   SQT: gl.constexpr, SQH: gl.constexpr, SKT: gl.constexpr, SKH: gl.constexpr,
                   BATCH: gl.constexpr, NUM_HEADS: gl.constexpr, GROUP: gl.constexpr, Q_LEN: gl.constexpr,
                   KV_LEN: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                   NUM_STAGES: gl.constexpr, MASK_FN: gl.constexpr, MASK_TAKES_LEN: gl.constexpr,
                   K_RANGE_FN: gl.constexpr, K_CONTINUOUS: gl.constexpr, FULL_FN: gl.constexpr,
                   SPLIT_FULL: gl.constexpr, UNMASKED: gl.constexpr, PACK: gl.constexpr,
                   A0: gl.constexpr, A1: gl.constexpr, A2: gl.constexpr, A3: gl.constexpr,
                   A4: gl.constexpr, A5: gl.constexpr, A6: gl.constexpr, A7: gl.constexpr,
                   A8: gl.constexpr, A9: gl.constexpr, A10: gl.constexpr, A11: gl.constexpr,
                   A12: gl.constexpr, A13: gl.constexpr, A14: gl.constexpr, A15: gl.constexpr):
    """Persistent: grid ``(P,)`` for any ``P >= 1`` (the binding launches
    one program per multiprocessor, or one per work item when there are
    fewer); program ``i`` takes work items ``i, i + P, ...`` of the
    ``cdiv(Q_LEN, BLOCK_M) * BATCH * NUM_HEADS`` output tiles
    (:func:`_tile_keys` orders them). ``BLOCK_M`` is 128 (two compute
    groups) or 192 (three). Launched with 4 warps (the first compute group;
    the partitions add the rest, 12 or 16 in all, each warp group's
    registers set to fill the register file). The mask arrives
    as ``attn_fwd``'s mask constexprs for a mask without arrays (``PACK``
    and ``A0 .. A15`` its constants); ``UNMASKED`` (full attention) skips
    the ranges and the mask altogether."""
    ROWS: gl.constexpr = _GROUP_M
    WARP_GROUPS: gl.constexpr = BLOCK_M // _GROUP_M
    KV_HEADS: gl.constexpr = NUM_HEADS // GROUP
    dtype: gl.constexpr = Q.dtype.element_ty
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, HEAD_DIM], dtype)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    q_desc = _seq_descriptor(Q, BATCH, NUM_HEADS, Q_LEN, SQT, SQH, HEAD_DIM, ROWS, q_layout)
    o_desc = _seq_descriptor(Out, BATCH, NUM_HEADS, Q_LEN, SQT, SQH, HEAD_DIM, ROWS, q_layout)
    k_desc = _seq_descriptor(K, BATCH, KV_HEADS, KV_LEN, SKT, SKH, HEAD_DIM, BLOCK_N, kv_layout)
    v_desc = _seq_descriptor(V, BATCH, KV_HEADS, KV_LEN, SKT, SKH, HEAD_DIM, BLOCK_N, kv_layout)

    q_smem = gl.allocate_shared_memory(dtype, [WARP_GROUPS, ROWS, HEAD_DIM], q_layout)
    o_smem = gl.allocate_shared_memory(dtype, [WARP_GROUPS, ROWS, HEAD_DIM], q_layout)
    k_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM], kv_layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [WARP_GROUPS, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [WARP_GROUPS, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(WARP_GROUPS):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=WARP_GROUPS)
        mbarrier.init(v_empty.index(i), count=WARP_GROUPS)

    ARGS = PACK(A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15)
    qk_scale = sm_scale * _LOG2E
    # Registers per thread: the default partition (the first compute group)
    # gets what the others leave of the 64K (512 per warp group's thread).
    if WARP_GROUPS == 3:
        gl.warp_specialize([
            (_compute, (q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, o_desc,
                        Lse, qk_scale, ARGS, 0, BATCH, NUM_HEADS, Q_LEN, KV_LEN, SQT, SQH, HEAD_DIM, BLOCK_M,
                        BLOCK_N, NUM_STAGES, MASK_FN, MASK_TAKES_LEN, K_RANGE_FN, K_CONTINUOUS, FULL_FN, SPLIT_FULL,
                        UNMASKED)),
            (_compute, (q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, o_desc,
                        Lse, qk_scale, ARGS, 1, BATCH, NUM_HEADS, Q_LEN, KV_LEN, SQT, SQH, HEAD_DIM, BLOCK_M,
                        BLOCK_N, NUM_STAGES, MASK_FN, MASK_TAKES_LEN, K_RANGE_FN, K_CONTINUOUS, FULL_FN, SPLIT_FULL,
                        UNMASKED)),
            (_compute, (q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, o_desc,
                        Lse, qk_scale, ARGS, 2, BATCH, NUM_HEADS, Q_LEN, KV_LEN, SQT, SQH, HEAD_DIM, BLOCK_M,
                        BLOCK_N, NUM_STAGES, MASK_FN, MASK_TAKES_LEN, K_RANGE_FN, K_CONTINUOUS, FULL_FN, SPLIT_FULL,
                        UNMASKED)),
            (_loader, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready,
                       v_empty, ARGS, BATCH, NUM_HEADS, GROUP, Q_LEN, KV_LEN, SQT, SQH, SKT, SKH, HEAD_DIM, BLOCK_M,
                       BLOCK_N, NUM_STAGES, K_RANGE_FN, K_CONTINUOUS, UNMASKED)),
        ], [4, 4, 1], [160, 160, 24])
    else:
        gl.warp_specialize([
            (_compute, (q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, o_desc,
                        Lse, qk_scale, ARGS, 0, BATCH, NUM_HEADS, Q_LEN, KV_LEN, SQT, SQH, HEAD_DIM, BLOCK_M,
                        BLOCK_N, NUM_STAGES, MASK_FN, MASK_TAKES_LEN, K_RANGE_FN, K_CONTINUOUS, FULL_FN, SPLIT_FULL,
                        UNMASKED)),
            (_compute, (q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, o_desc,
                        Lse, qk_scale, ARGS, 1, BATCH, NUM_HEADS, Q_LEN, KV_LEN, SQT, SQH, HEAD_DIM, BLOCK_M,
                        BLOCK_N, NUM_STAGES, MASK_FN, MASK_TAKES_LEN, K_RANGE_FN, K_CONTINUOUS, FULL_FN, SPLIT_FULL,
                        UNMASKED)),
            (_loader, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready,
                       v_empty, ARGS, BATCH, NUM_HEADS, GROUP, Q_LEN, KV_LEN, SQT, SQH, SKT, SKH, HEAD_DIM, BLOCK_M,
                       BLOCK_N, NUM_STAGES, K_RANGE_FN, K_CONTINUOUS, UNMASKED)),
        ], [4, 1], [232, 24])
