# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Hopper backward in one pass, written with explicit warp specialization (Gluon).

One program computes dK and dV of a ``[BLOCK_N, HEAD_DIM]`` key/value tile of
one (batch, kv head) and adds that tile's share of dQ to a float32 buffer,
so each score tile is computed once (five tile products per step, against
seven in the two launches of ``backward.py``). Three partitions:

* two compute warp groups (4 warps each), each owning ``BLOCK_N // 2`` keys
  and their dK, dV accumulators. Per query tile: ``S^T = K Q^T`` and
  ``dP^T = V dO^T`` (``wgmma``; K and V from registers at D=64, from shared
  memory at D=128), ``P^T`` and ``dS^T`` on the CUDA cores, ``dV += P^T
  dO`` and ``dK += dS^T Q`` (P^T and dS^T from registers), then dQ for half
  of the head dim over all ``BLOCK_N`` keys (``dQ = dS K`` with both
  groups' dS^T staged in shared memory), staged in float32 and added to the
  buffer by TMA reductions;
* one loader warp that copies the key and value tile once, then each query
  tile of each query head of the group (Q with its lse, dO with its delta)
  into a ring of ``NUM_STAGES`` shared-memory slots by TMA (ready/empty
  mbarriers per slot, each slot released by both compute groups).

dQ's reductions land in any order, so its float32 sums are order-dependent:
unlike ``backward.py`` this backward is not bitwise deterministic in dQ (dK
and dV are).

Inputs are contiguous 16-bit arrays, ``[B, T, N, D]`` or ``[B, N, T, D]``
(``Q``, ``DOut``; ``K``, ``V``, ``DK``, ``DV`` with ``N / GROUP`` heads and
``S`` keys; ``SQT``/``SQH`` and ``SKT``/``SKH`` the sequence and head
strides). ``Lse`` (natural log) and ``Delta`` (``rowsum(dOut * Out) -
dLse``) are float32 ``[B, N, T]``; ``DQ`` is float32 with Q's shape and
strides and must hold zeros at launch; it receives ``dQ`` already scaled.
The mask is inlined like in ``backward.py`` (its methods, for masks
without arrays). Conditions (the binding checks them): ``T % BLOCK_M ==
0``, ``S % BLOCK_N == 0``, ``HEAD_DIM`` 64 or 128, every query and key
length the sequence length.
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

from triton._C.libtriton import ir
from triton.experimental.gluon.language._core import builtin
from triton.runtime.jit import constexpr_function

from .forward_gluon import _seq_descriptor, _snake
from .tiles import full_tile_span, seq_origin, tile_loop_bounds

_LOG2E = gl.constexpr(1.4426950408889634)


@constexpr_function
def _transposed(layout):
    """The distributed layout whose transpose (``gl.permute(x, (1, 0))``) is
    ``layout`` (a two-dimensional linear layout): the mask methods get query
    positions along rows, the backward's score tiles hold keys along rows."""
    def swap(bases):
        return [[basis[1], basis[0]] for basis in bases]

    return gl.DistributedLinearLayout(swap(layout.reg_bases), swap(layout.lane_bases), swap(layout.warp_bases),
                                      swap(layout.block_bases), [layout.shape[1], layout.shape[0]])


@builtin
def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
    """``global[coord:] += src`` for a shared-memory tile by TMA
    (``cp.reduce.async.bulk.tensor``; Triton 3.6's Gluon has the op but no
    wrapper for it). Completes like ``tma.async_copy_shared_to_global``
    (``tma.store_wait``)."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord, src.handle)


@gluon.jit
def _bwd_item(item, BATCH: gl.constexpr, KV_HEADS: gl.constexpr, Q_LEN: gl.constexpr, KV_LEN: gl.constexpr,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, Q_RANGE_FN: gl.constexpr, Q_CONTINUOUS: gl.constexpr,
              UNMASKED: gl.constexpr, ARGS):
    """Work item ``item`` of the persistent loop: its batch, kv head and key
    tile start, and the query tiles it visits (``first_m``, a multiple of
    ``BLOCK_M``, and ``end_m``). Key tiles are innermost, so the items
    running at once share a few heads' queries in L2; within a head they go
    from the first key tile (a causal mask's longest loop) to the last, in
    the order of ``_snake``."""
    n_tiles: gl.constexpr = KV_LEN // BLOCK_N
    item = _snake(item, n_tiles * BATCH * KV_HEADS)
    pid_bh = item // n_tiles
    n0 = (item % n_tiles) * BLOCK_N
    if UNMASKED:
        first_m = n0 * 0
        end_m = first_m + Q_LEN
    else:
        first_m, end_m = tile_loop_bounds(n0, BLOCK_N, Q_LEN, Q_RANGE_FN, Q_CONTINUOUS, BLOCK_N, ARGS, BLOCK_M)
    return pid_bh // KV_HEADS, pid_bh % KV_HEADS, n0, first_m, end_m


@gluon.jit
def _ring_load_with_stat(desc, row, col, stat_desc, stat_col, ready, empty, smem, stat_smem, slot, free_phase):
    """``forward_gluon._ring_load`` of a query tile (``desc``'s block at
    ``[row, col]``) together with its ``BLOCK_M`` float32 statistics
    (``stat_desc``'s block at ``[stat_col]``: lse with Q, delta with dO) into
    the same slot, both counted by the slot's ``ready`` barrier."""
    mbarrier.wait(empty.index(slot), free_phase)
    mbarrier.expect(ready.index(slot), desc.block_type.nbytes + stat_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(desc, [row, col], ready.index(slot), smem.index(slot))
    tma.async_copy_global_to_shared(stat_desc, [stat_col], ready.index(slot), stat_smem.index(slot))


@gluon.jit
def _bwd_loader(q_desc, do_desc, k_desc, v_desc, lse_desc, delta_desc, q_smem, do_smem, k_smem, v_smem, lse_smem,
                delta_smem, kv_bar, kv_empty, q_ready, q_empty, do_ready, do_empty, ARGS, BATCH: gl.constexpr,
                NUM_HEADS: gl.constexpr, GROUP: gl.constexpr, Q_LEN: gl.constexpr, KV_LEN: gl.constexpr,
                SQT: gl.constexpr, SQH: gl.constexpr, SKT: gl.constexpr, SKH: gl.constexpr, HEAD_DIM: gl.constexpr,
                BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
                Q_RANGE_FN: gl.constexpr, Q_CONTINUOUS: gl.constexpr, UNMASKED: gl.constexpr):
    """The loader warp, for each work item: the two halves of the key and
    value tile (once both compute groups have stored the previous item's dK
    and dV, which are staged in the same tiles), then Q with its lse and dO
    with its delta tile by tile, query head by query head, through the ring
    (``steps`` so far set the slot and phase, so the ring runs on across
    items)."""
    HALF_N: gl.constexpr = BLOCK_N // 2
    KV_HEADS: gl.constexpr = NUM_HEADS // GROUP
    total = BATCH * KV_HEADS * (KV_LEN // BLOCK_N)
    steps = 0
    item = 0
    for work in range(gl.program_id(0), total, gl.num_programs(0)):
        b, kvh, n0, first_m, end_m = _bwd_item(work, BATCH, KV_HEADS, Q_LEN, KV_LEN, BLOCK_M, BLOCK_N,
                                               Q_RANGE_FN, Q_CONTINUOUS, UNMASKED, ARGS)
        n_q = gl.cdiv(gl.maximum(end_m - first_m, 0), BLOCK_M)
        kv_row, kv_col = seq_origin(b, kvh, KV_HEADS, KV_LEN, SKT, SKH, HEAD_DIM)
        kv_row = kv_row + n0
        # A fresh mbarrier counts as having completed the phase before its
        # first, so the first item (and the first pass through the ring)
        # does not wait.
        mbarrier.wait(kv_empty, (item & 1) ^ 1)
        mbarrier.expect(kv_bar, 4 * k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [kv_row, kv_col], kv_bar, k_smem.index(0))
        tma.async_copy_global_to_shared(k_desc, [kv_row + HALF_N, kv_col], kv_bar, k_smem.index(1))
        tma.async_copy_global_to_shared(v_desc, [kv_row, kv_col], kv_bar, v_smem.index(0))
        tma.async_copy_global_to_shared(v_desc, [kv_row + HALF_N, kv_col], kv_bar, v_smem.index(1))
        for i in range(GROUP * n_q):
            g = i // n_q
            row, col = seq_origin(b, kvh * GROUP + g, NUM_HEADS, Q_LEN, SQT, SQH, HEAD_DIM)
            m0 = first_m + (i - g * n_q) * BLOCK_M
            stat = (b * NUM_HEADS + kvh * GROUP + g) * Q_LEN + m0
            slot = (steps + i) % NUM_STAGES
            free = (((steps + i) // NUM_STAGES) & 1) ^ 1
            _ring_load_with_stat(q_desc, row + m0, col, lse_desc, stat, q_ready, q_empty, q_smem, lse_smem, slot,
                                 free)
            _ring_load_with_stat(do_desc, row + m0, col, delta_desc, stat, do_ready, do_empty, do_smem, delta_smem,
                                 slot, free)
        steps += GROUP * n_q
        item += 1


@gluon.jit
def _bwd_compute(q_smem, do_smem, k_smem, v_smem, lse_smem, delta_smem, ds_smem, dq_smem, kv_bar, kv_empty,
                 q_ready, q_empty, do_ready, do_empty, ds_full, loop_done, dk_desc, dv_desc, dq_desc, sm_scale, ARGS,
                 HALF: gl.constexpr, BATCH: gl.constexpr, NUM_HEADS: gl.constexpr, GROUP: gl.constexpr,
                 Q_LEN: gl.constexpr, KV_LEN: gl.constexpr, SQT: gl.constexpr, SQH: gl.constexpr,
                 SKT: gl.constexpr, SKH: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
                 BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, MASK_FN: gl.constexpr,
                 MASK_TAKES_LEN: gl.constexpr, Q_RANGE_FN: gl.constexpr, Q_CONTINUOUS: gl.constexpr,
                 FULL_FN: gl.constexpr, SPLIT_FULL: gl.constexpr, UNMASKED: gl.constexpr):
    """One compute warp group, for each work item (a key tile of a kv
    head): dK and dV of the keys at positions ``n0 + HALF * BLOCK_N / 2 +
    [0, BLOCK_N / 2)`` over every step (a query tile of a query head); each
    step, the dQ columns ``HALF * HEAD_DIM / 2 + [0, HEAD_DIM / 2)`` over all
    ``BLOCK_N`` keys (with the other group's dS), added to ``DQ`` by a TMA
    reduction; then dK and dV stored. Query tiles outside the mask's full
    run evaluate the mask (none with ``UNMASKED``)."""
    HALF_N: gl.constexpr = BLOCK_N // 2
    KV_HEADS: gl.constexpr = NUM_HEADS // GROUP
    # S^T, dP^T: [HALF_N keys, BLOCK_M queries]; dK, dV: [HALF_N, HEAD_DIM]; dQ: [BLOCK_M, HEAD_DIM / 2].
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    HALF_D: gl.constexpr = HEAD_DIM // 2
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, HALF_D, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    # At D=64 this group's keys and values sit in registers as A of S^T and
    # dP^T (16 registers each per thread), which saves their shared-memory
    # reads every step; at D=128 they would cost 64 registers, and the kernel
    # spills already.
    KV_IN_REGS: gl.constexpr = HEAD_DIM == 64
    kv_a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
    dtype: gl.constexpr = q_smem.dtype
    k = k_smem.index(HALF)
    v = v_smem.index(HALF)
    # This group's dQ columns of both key halves (B of dQ = dS K).
    k0_cols = k_smem.index(0).slice(HALF * HALF_D, HALF_D, dim=1)
    k1_cols = k_smem.index(1).slice(HALF * HALF_D, HALF_D, dim=1)
    qk_scale = sm_scale * _LOG2E
    # A step's lse and delta, one per query column of S^T.
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    # The mask methods' layout: queries along rows, its transpose s_layout.
    qk_layout: gl.constexpr = _transposed(gl.to_linear_layout(s_layout, [HALF_N, BLOCK_M]))
    mask_q = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, qk_layout))
    total = BATCH * KV_HEADS * (KV_LEN // BLOCK_N)
    steps = 0
    item = 0
    for work in range(gl.program_id(0), total, gl.num_programs(0)):
        b, kvh, n0, first_m, end_m = _bwd_item(work, BATCH, KV_HEADS, Q_LEN, KV_LEN, BLOCK_M, BLOCK_N,
                                               Q_RANGE_FN, Q_CONTINUOUS, UNMASKED, ARGS)
        if UNMASKED:
            full_lo = first_m
            full_hi = end_m
        elif SPLIT_FULL:
            # Among the visited query tiles, the run the mask declares full
            # (no mask evaluated there).
            full_lo, full_hi = full_tile_span(n0, first_m, end_m, Q_LEN, KV_LEN, FULL_FN, False, BLOCK_M,
                                              BLOCK_N, ARGS)
        else:
            full_lo = end_m
            full_hi = end_m
        n_q = gl.cdiv(gl.maximum(end_m - first_m, 0), BLOCK_M)
        mask_k = n0 + HALF * HALF_N + gl.arange(0, HALF_N, layout=gl.SliceLayout(0, qk_layout))
        dk = gl.zeros([HALF_N, HEAD_DIM], gl.float32, o_layout)
        dv = gl.zeros([HALF_N, HEAD_DIM], gl.float32, o_layout)

        mbarrier.wait(kv_bar, item & 1)
        if KV_IN_REGS:
            k_a = k.load(kv_a_layout)
            v_a = v.load(kv_a_layout)
        else:
            k_a = k
            v_a = v
        for i in range(GROUP * n_q):
            g = i // n_q
            h = kvh * GROUP + g
            m0 = first_m + (i - g * n_q) * BLOCK_M
            step = steps + i
            slot = step % NUM_STAGES
            phase = (step // NUM_STAGES) & 1
            parity = step % 2
            q = q_smem.index(slot)
            do = do_smem.index(slot)
            # Accumulators the MMAs ignore (use_acc=False), made in the loop so
            # that no registers hold them across it.
            zero_s = gl.zeros([HALF_N, BLOCK_M], gl.float32, s_layout)
            zero_dq = gl.zeros([BLOCK_M, HALF_D], gl.float32, dq_layout)
            mbarrier.wait(q_ready.index(slot), phase)
            st = warpgroup_mma(k_a, q.permute((1, 0)), zero_s, use_acc=False, is_async=True)
            mbarrier.wait(do_ready.index(slot), phase)
            dpt = warpgroup_mma(v_a, do.permute((1, 0)), zero_s, use_acc=False, is_async=True)
            lse = lse_smem.index(slot).load(col_layout)
            # Rows with no allowed key (lse = -inf) get p = 0.
            lse2 = gl.where(lse == float("-inf"), float("inf"), lse * _LOG2E)
            st = warpgroup_mma_wait(num_outstanding=1, deps=(st,))
            pt = gl.exp2(st * qk_scale - gl.expand_dims(lse2, 0))
            if not UNMASKED:
                if (m0 < full_lo) | (m0 >= full_hi):
                    if MASK_TAKES_LEN:
                        allowed = MASK_FN(m0 + mask_q, mask_k, KV_LEN, ARGS)
                    else:
                        allowed = MASK_FN(m0 + mask_q, mask_k, ARGS)
                    allowed = gl.convert_layout(gl.permute(allowed.to(gl.int1), (1, 0)), s_layout,
                                                assert_trivial=True)
                    pt = gl.where(allowed, pt, 0.0)
            dv = warpgroup_mma(gl.convert_layout(pt.to(dtype), a_layout), do, dv, is_async=True)
            # dV done before dS: letting it run on through dS spills (sm_90 build)
            # and measured slower (S2 f+b +12%).
            dpt, dv = warpgroup_mma_wait(num_outstanding=0, deps=(dpt, dv))
            delta = delta_smem.index(slot).load(col_layout)
            dst = (pt * (dpt - gl.expand_dims(delta, 0))).to(dtype)
            dk = warpgroup_mma(gl.convert_layout(dst, a_layout), q, dk, is_async=True)
            # dS^T to shared memory for dQ = dS K, double-buffered by step: a
            # group rewrites a buffer two steps later, after the other group's
            # arrival of the step between, which follows its read of the buffer.
            ds_mine = ds_smem.index(2 * parity + HALF)
            ds_mine.store(dst)
            fence_async_shared()
            gl.thread_barrier()
            mbarrier.arrive(ds_full.index(parity), count=1)
            mbarrier.wait(ds_full.index(parity), (step // 2) & 1)
            dq = warpgroup_mma(ds_smem.index(2 * parity).permute((1, 0)), k0_cols, zero_dq, use_acc=False,
                               is_async=True)
            dq = warpgroup_mma(ds_smem.index(2 * parity + 1).permute((1, 0)), k1_cols, dq, is_async=True)
            dq, dk = warpgroup_mma_wait(num_outstanding=0, deps=(dq, dk))
            mbarrier.arrive(q_empty.index(slot), count=1)
            mbarrier.arrive(do_empty.index(slot), count=1)
            # The reduction issued from this staging buffer two steps ago has read it.
            tma.store_wait(pendings=1)
            staged = dq_smem.index(2 * HALF + parity)
            staged.store(dq * sm_scale)
            fence_async_shared()
            gl.thread_barrier()
            row, col = seq_origin(b, h, NUM_HEADS, Q_LEN, SQT, SQH, HEAD_DIM)
            _tma_reduce_add(dq_desc, [row + m0, col + HALF * HALF_D], staged)

        # V's half is this group's alone; K's is read by the other group's dQ
        # MMAs until it leaves its loop. Both then stage dK and dV for TMA
        # stores, and free the tiles for the next item's keys and values
        # once the stores have read them.
        kv_row, kv_col = seq_origin(b, kvh, KV_HEADS, KV_LEN, SKT, SKH, HEAD_DIM)
        v.store(dv.to(dtype))
        mbarrier.arrive(loop_done, count=1)
        mbarrier.wait(loop_done, item & 1)
        k.store((dk * sm_scale).to(dtype))
        fence_async_shared()
        gl.thread_barrier()
        tma.async_copy_shared_to_global(dk_desc, [kv_row + n0 + HALF * HALF_N, kv_col], k)
        tma.async_copy_shared_to_global(dv_desc, [kv_row + n0 + HALF * HALF_N, kv_col], v)
        tma.store_wait(pendings=0)
        mbarrier.arrive(kv_empty, count=1)
        steps += GROUP * n_q
        item += 1


@gluon.jit
def attn_bwd_gluon(Q, K, V, DOut, Lse, Delta, sm_scale, DQ, DK, DV,
                   SQT: gl.constexpr, SQH: gl.constexpr, SKT: gl.constexpr, SKH: gl.constexpr,
                   BATCH: gl.constexpr, NUM_HEADS: gl.constexpr, GROUP: gl.constexpr, Q_LEN: gl.constexpr,
                   KV_LEN: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                   NUM_STAGES: gl.constexpr, MASK_FN: gl.constexpr, MASK_TAKES_LEN: gl.constexpr,
                   Q_RANGE_FN: gl.constexpr, Q_CONTINUOUS: gl.constexpr, FULL_FN: gl.constexpr,
                   SPLIT_FULL: gl.constexpr, UNMASKED: gl.constexpr, PACK: gl.constexpr,
                   A0: gl.constexpr, A1: gl.constexpr, A2: gl.constexpr, A3: gl.constexpr,
                   A4: gl.constexpr, A5: gl.constexpr, A6: gl.constexpr, A7: gl.constexpr,
                   A8: gl.constexpr, A9: gl.constexpr, A10: gl.constexpr, A11: gl.constexpr,
                   A12: gl.constexpr, A13: gl.constexpr, A14: gl.constexpr, A15: gl.constexpr):
    """Persistent: grid ``(P,)`` for any ``P >= 1`` (the binding launches
    one program per multiprocessor, or one per work item when there are
    fewer); program ``i`` takes work items ``i, i + P, ...`` of the
    ``BATCH * (NUM_HEADS // GROUP) * (KV_LEN // BLOCK_N)`` key tiles
    (:func:`_bwd_item` orders them). Launched with 4 warps (the first
    compute group; the partitions add the rest, 12 in all). ``BLOCK_N`` is
    128 (64 keys per compute group), ``BLOCK_M`` 64. The mask arrives as
    ``attn_bwd_dkdv``'s mask constexprs for a mask without arrays (``PACK``
    and ``A0 .. A15`` its constants); ``UNMASKED`` (full attention) skips
    the ranges and the mask altogether."""
    HALF_N: gl.constexpr = BLOCK_N // 2
    KV_HEADS: gl.constexpr = NUM_HEADS // GROUP
    dtype: gl.constexpr = Q.dtype.element_ty
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, HEAD_DIM], dtype)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([HALF_N, HEAD_DIM], dtype)
    ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([HALF_N, BLOCK_M], dtype)
    q_desc = _seq_descriptor(Q, BATCH, NUM_HEADS, Q_LEN, SQT, SQH, HEAD_DIM, BLOCK_M, q_layout)
    do_desc = _seq_descriptor(DOut, BATCH, NUM_HEADS, Q_LEN, SQT, SQH, HEAD_DIM, BLOCK_M, q_layout)
    k_desc = _seq_descriptor(K, BATCH, KV_HEADS, KV_LEN, SKT, SKH, HEAD_DIM, HALF_N, kv_layout)
    v_desc = _seq_descriptor(V, BATCH, KV_HEADS, KV_LEN, SKT, SKH, HEAD_DIM, HALF_N, kv_layout)
    dk_desc = _seq_descriptor(DK, BATCH, KV_HEADS, KV_LEN, SKT, SKH, HEAD_DIM, HALF_N, kv_layout)
    dv_desc = _seq_descriptor(DV, BATCH, KV_HEADS, KV_LEN, SKT, SKH, HEAD_DIM, HALF_N, kv_layout)
    # Lse and delta, [B * N * T] float32, a query tile's BLOCK_M per copy.
    stat_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=1)
    lse_desc = tma.make_tensor_descriptor(Lse, [BATCH * NUM_HEADS * Q_LEN], [1], [BLOCK_M], stat_layout)
    delta_desc = tma.make_tensor_descriptor(Delta, [BATCH * NUM_HEADS * Q_LEN], [1], [BLOCK_M], stat_layout)

    q_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_M, HEAD_DIM], q_layout)
    do_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_M, HEAD_DIM], q_layout)
    k_smem = gl.allocate_shared_memory(dtype, [2, HALF_N, HEAD_DIM], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [2, HALF_N, HEAD_DIM], kv_layout)
    lse_smem = gl.allocate_shared_memory(gl.float32, [NUM_STAGES, BLOCK_M], stat_layout)
    delta_smem = gl.allocate_shared_memory(gl.float32, [NUM_STAGES, BLOCK_M], stat_layout)
    # dS^T of (step parity, group); dQ staging of (group, step parity).
    ds_smem = gl.allocate_shared_memory(dtype, [4, HALF_N, BLOCK_M], ds_layout)
    HALF_D: gl.constexpr = HEAD_DIM // 2
    dq_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, HALF_D], gl.float32)
    dq_smem = gl.allocate_shared_memory(gl.float32, [4, BLOCK_M, HALF_D], dq_layout)
    if SQH < SQT:
        dq_desc = tma.make_tensor_descriptor(DQ, [BATCH * Q_LEN, NUM_HEADS * HEAD_DIM], [SQT, 1], [BLOCK_M, HALF_D],
                                             dq_layout)
    else:
        dq_desc = tma.make_tensor_descriptor(DQ, [BATCH * NUM_HEADS * Q_LEN, HEAD_DIM], [SQT, 1], [BLOCK_M, HALF_D],
                                             dq_layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    do_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    do_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    ds_full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    loop_done = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    mbarrier.init(kv_empty, count=2)
    mbarrier.init(loop_done, count=2)
    mbarrier.init(ds_full.index(0), count=2)
    mbarrier.init(ds_full.index(1), count=2)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(do_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=2)
        mbarrier.init(do_empty.index(i), count=2)

    ARGS = PACK(A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15)
    gl.warp_specialize([
        (_bwd_compute, (q_smem, do_smem, k_smem, v_smem, lse_smem, delta_smem, ds_smem, dq_smem, kv_bar, kv_empty,
                        q_ready, q_empty, do_ready, do_empty, ds_full, loop_done, dk_desc, dv_desc, dq_desc,
                        sm_scale, ARGS, 0, BATCH, NUM_HEADS, GROUP, Q_LEN, KV_LEN, SQT, SQH, SKT, SKH, HEAD_DIM,
                        BLOCK_M, BLOCK_N, NUM_STAGES, MASK_FN, MASK_TAKES_LEN, Q_RANGE_FN, Q_CONTINUOUS, FULL_FN,
                        SPLIT_FULL, UNMASKED)),
        (_bwd_compute, (q_smem, do_smem, k_smem, v_smem, lse_smem, delta_smem, ds_smem, dq_smem, kv_bar, kv_empty,
                        q_ready, q_empty, do_ready, do_empty, ds_full, loop_done, dk_desc, dv_desc, dq_desc,
                        sm_scale, ARGS, 1, BATCH, NUM_HEADS, GROUP, Q_LEN, KV_LEN, SQT, SQH, SKT, SKH, HEAD_DIM,
                        BLOCK_M, BLOCK_N, NUM_STAGES, MASK_FN, MASK_TAKES_LEN, Q_RANGE_FN, Q_CONTINUOUS, FULL_FN,
                        SPLIT_FULL, UNMASKED)),
        (_bwd_loader, (q_desc, do_desc, k_desc, v_desc, lse_desc, delta_desc, q_smem, do_smem, k_smem, v_smem,
                       lse_smem, delta_smem, kv_bar, kv_empty, q_ready, q_empty, do_ready, do_empty, ARGS, BATCH,
                       NUM_HEADS, GROUP, Q_LEN, KV_LEN, SQT, SQH, SKT, SKH, HEAD_DIM, BLOCK_M, BLOCK_N, NUM_STAGES,
                       Q_RANGE_FN, Q_CONTINUOUS, UNMASKED)),
    ], [4, 1], [232, 24])
