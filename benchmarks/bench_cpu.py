# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Times the pure-JAX blockwise attention against ``jax.nn.dot_product_attention`` on CPU.

For each mask, ``chill_jax._xla.xla_attention`` runs with the mask's own
methods, and ``jax.nn.dot_product_attention(implementation="xla")`` with
``is_causal=True`` (causal), no mask (full) or the equivalent dense boolean
``[T, S]`` mask (the sparse masks). Each pass (``fwd``: output;
``fwd+bwd``: output and the gradients of q, k, v for a random output
cotangent) is jitted, warmed up, then timed on fresh standard normal inputs
per run (generated outside the timed region); the table gives the median.

Usage: ``python benchmarks/bench_cpu.py [--T 2048] [--B 1] [--N 8] [--K 8]
[--D 64] [--dtype float32] [--runs 7] [--masks causal full ...] [--long]``

``--long`` adds a 16384-long sliding-window row for chill-jax alone (the
dense peer would need a 16384 x 16384 score matrix per head).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import jax
import jax.numpy as jnp

import chill_jax as cj
from chill_jax._xla import xla_attention

MASKS = {
    "causal": (cj.CausalChillMask(), None),
    "full": (cj.FullChillMask(), None),
    "sliding_window_128_128": (cj.SlidingWindowChillMask(128, 128), lambda q, k: np.abs(q - k) <= 128),
    "chunkwise_128_1": (cj.ChunkwiseChillMask(128, 1),
                        lambda q, k: (k // 128 <= q // 128) & (k // 128 >= q // 128 - 1)),
    "prefix_lm_512": (cj.PrefixLMChillMask(512), lambda q, k: (q >= k) | (k < 512)),
}


def chill_fn(mask, sm_scale):
    return lambda q, k, v: xla_attention(q, k, v, mask=mask, sm_scale=sm_scale, layout="BTNH")[0]


def peer_fn(name, dense, t, s, sm_scale):
    if name == "causal":
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=sm_scale, is_causal=True,
                                                            implementation="xla")
    if dense is None:
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=sm_scale, implementation="xla")
    allowed = jnp.asarray(dense(np.arange(t)[:, None], np.arange(s)[None, :]))
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=sm_scale, mask=allowed[None, None],
                                                        implementation="xla")


def passes(fn):
    """Jitted ``fwd`` and ``fwd+bwd`` (VJP of a given output cotangent) of ``fn``."""

    def fwd_bwd(q, k, v, dout):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(dout)

    return {"fwd": jax.jit(lambda q, k, v, dout: fn(q, k, v)), "fwd+bwd": jax.jit(fwd_bwd)}


def time_pass(fn, shapes, dtype, runs: int, seed: int) -> tuple[float, float]:
    """(compile + first run seconds, median milliseconds over ``runs`` fresh inputs)."""
    key = jax.random.PRNGKey(seed)

    def inputs(i):
        keys = jax.random.split(jax.random.fold_in(key, i), 4)
        return [jax.random.normal(kk, shp, jnp.float32).astype(dtype) for kk, shp in zip(keys, shapes)]

    args = jax.block_until_ready(inputs(0))
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for i in range(runs):
        args = jax.block_until_ready(inputs(i + 1))
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--T", type=int, default=2048)
    parser.add_argument("--N", type=int, default=8)
    parser.add_argument("--K", type=int, default=None, help="key/value heads (default N)")
    parser.add_argument("--D", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--masks", nargs="*", default=list(MASKS), choices=list(MASKS))
    parser.add_argument("--long", action="store_true", help="add a 16384-long sliding window (chill-jax only)")
    args = parser.parse_args()
    b, t, n, d = args.B, args.T, args.N, args.D
    kh = n if args.K is None else args.K
    dtype = jnp.dtype(args.dtype)
    sm_scale = 1.0 / d ** 0.5
    print(f"# {jax.devices()[0].device_kind} x{jax.local_device_count()}, jax {jax.__version__}, "
          f"B={b} T={t} N={n} K={kh} D={d} {dtype.name}, median of {args.runs} runs")
    header = f"{'mask':<31}{'pass':<9}{'chill xla ms':>14}{'jax.nn xla ms':>15}{'speedup':>9}{'compile s':>11}"
    print(header)
    print("-" * len(header))
    shapes = [(b, t, n, d), (b, t, kh, d), (b, t, kh, d), (b, t, n, d)]
    rows = [(name, t) for name in args.masks]
    if args.long:
        rows.append(("sliding_window_128_128", 16384))
    for name, length in rows:
        mask, dense = MASKS[name]
        shp = [(s[0], length, *s[2:]) for s in shapes]
        ours = passes(chill_fn(mask, sm_scale))
        peer = passes(peer_fn(name, dense, length, length, sm_scale)) if length == t else None
        for which in ("fwd", "fwd+bwd"):
            compile_s, ms = time_pass(ours[which], shp, dtype, args.runs, seed=1)
            peer_ms = time_pass(peer[which], shp, dtype, args.runs, seed=1)[1] if peer else float("nan")
            label = name if length == t else f"{name} T={length}"
            speedup = f"{peer_ms / ms:8.2f}x" if peer else f"{'-':>9}"
            peer_text = f"{peer_ms:15.1f}" if peer else f"{'-':>15}"
            print(f"{label:<31}{which:<9}{ms:14.1f}{peer_text}{speedup}{compile_s:11.2f}", flush=True)


if __name__ == "__main__":
    main()
