# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Times a minimal full-attention forward loop against the chill-jax forward.

The minimal kernel is the plain flash-attention loop (no mask, no lengths,
no head-dim padding, no LSE output): what the chill-jax forward costs on top
of it is its overhead for flexibility. It runs in both memory layouts, with
a constant trip count or one loaded from memory; chill-jax runs the same
tile in both layouts (``benchmarks/NOTES.md``, v7). Needs a CUDA GPU and
jax-triton.

Usage::

    python benchmarks/minimal_forward.py [--shape 4 8192 16 128] [--tile 128 64 4 2]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import triton
import triton.language as tl

import chill_jax as cj
from chill_jax import _autotune, _launch, configs


@triton.jit
def minimal_forward(Q, K, V, Lens, sm_scale, Out, T: tl.constexpr, D: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_HEADS: tl.constexpr,
                    SEQ_MAJOR: tl.constexpr, LOADED_TRIP_COUNT: tl.constexpr):
    """Softmax(q k^T * sm_scale) v for one query tile; ``SEQ_MAJOR``: the
    ``[B, T, N, D]`` layout, else ``[B, N, T, D]``. With
    ``LOADED_TRIP_COUNT`` the key loop ends at ``Lens[b]`` (set to ``T``)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NUM_HEADS
    h = pid_bh % NUM_HEADS
    if SEQ_MAJOR:
        base = (b * T * NUM_HEADS + h).to(tl.int64) * D
        row_stride = NUM_HEADS * D
    else:
        base = pid_bh.to(tl.int64) * T * D
        row_stride = D
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + base + offs_m[:, None] * row_stride + offs_d[None, :])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    scale = sm_scale * 1.4426950408889634
    end = T
    if LOADED_TRIP_COUNT:
        end = tl.load(Lens + b)
    for start in range(0, end, BLOCK_N):
        kt = tl.load(K + base + (start + offs_n)[None, :] * row_stride + offs_d[:, None])
        qk = tl.dot(q, kt)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * scale)
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk * scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + base + (start + offs_n)[:, None] * row_stride + offs_d[None, :])
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(Out + base + offs_m[:, None] * row_stride + offs_d[None, :], out.to(Out.dtype.element_ty))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[4, 8192, 16, 128], metavar=("B", "T", "N", "D"))
    parser.add_argument("--tile", type=int, nargs=4, default=[128, 64, 4, 2],
                        metavar=("BLOCK_M", "BLOCK_N", "WARPS", "STAGES"))
    args = parser.parse_args()
    b, t, n, d = args.shape
    bm, bn, warps, stages = args.tile
    if t % bm or t % bn or d & (d - 1) or d < 16:
        parser.error("T must be a multiple of both tile sizes and D a power of two >= 16")
    jt = _launch._jax_triton()
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    lens = jnp.full((b,), t, jnp.int32)
    kernel_config = configs.KernelConfig(bm, bn, warps, stages)
    config = configs.AttentionConfig(fwd=kernel_config, bwd_dkdv=kernel_config, bwd_dq=kernel_config)
    flops = 4 * b * n * t * t * d
    for seq_major in (False, True):
        layout = "BTNH" if seq_major else "BNTH"
        shape = (b, t, n, d) if seq_major else (b, n, t, d)
        q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)
        for loaded in (False, True):
            def minimal(q, k, v, lens, seq_major=seq_major, loaded=loaded, shape=shape):
                return jt.triton_call(q, k, v, lens, np.float32(d ** -0.5), kernel=minimal_forward,
                                      out_shape=jax.ShapeDtypeStruct(shape, q.dtype), grid=(t // bm, b * n),
                                      num_warps=warps, num_stages=stages, T=t, D=d, BLOCK_M=bm, BLOCK_N=bn,
                                      NUM_HEADS=n, SEQ_MAJOR=seq_major, LOADED_TRIP_COUNT=loaded)
            ms = _autotune._time_call(jax.jit(minimal), (q, k, v, lens), warmup=3, reps=15)
            trip = "loaded" if loaded else "constant"
            print(f"minimal   {layout} trip count {trip:8s}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s", flush=True)

        def chill(q, k, v, layout=layout):
            return cj.attention(q, k, v, cj.FullChillMask(), config=config, layout=layout)
        ms = _autotune._time_call(jax.jit(chill), (q, k, v), warmup=3, reps=15)
        print(f"chill-jax {layout}                     : {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
