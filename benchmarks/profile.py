# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""One benchmark case run a few times, for Nsight Compute.

Runs the forward (``--pass fwd``) or forward+backward of one implementation
(``bench.py``'s names: chill_jax, cudnn, xla, pallas) at one of the
benchmark's shapes and masks on fresh random bf16 inputs, jitted, ``--calls``
times, each waited on, and nothing else, so that ``ncu`` can pick a kernel
launch of the last call (the first compiles, and autotuning peers launch
their candidates there).

Usage (H200 / H100; ``--clock-control none`` leaves the clocks as the
benchmark sees them)::

    ncu --clock-control none --set full --import-source no -k regex:attn_bwd_gluon \\
        --launch-skip 2 --launch-count 1 -o bwd_s1_full \\
        python benchmarks/profile.py --shape S1 --mask full
    ncu --import bwd_s1_full.ncu-rep --page details
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(bench.SHAPES), default="S1")
    parser.add_argument("--mask", choices=sorted(bench.MASKS), default="full")
    parser.add_argument("--impl", default="chill_jax", help="chill_jax, cudnn, xla or pallas")
    parser.add_argument("--pass", dest="which", choices=("fwd", "fwd+bwd"), default="fwd+bwd")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="bench.py's smoke-test shapes (CPU)")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    if args.tiny:
        bench.SHAPES.update(S1=(1, 128, 2, 64), S2=(1, 256, 1, 128))
    b, t, n, d = bench.SHAPES[args.shape]
    impls = bench.jax_impls(args.mask, t, bench.dense_mask(args.mask, t))
    if args.impl not in impls:
        parser.error(f"--impl {args.impl} does not run {args.mask} here (available: {', '.join(sorted(impls))})")
    fn = impls[args.impl]
    q, k, v, dout = (jax.random.normal(key, (b, t, n, d), jnp.bfloat16)
                     for key in jax.random.split(jax.random.key(args.seed), 4))
    if args.which == "fwd":
        run = jax.jit(fn)
    else:
        run = jax.jit(lambda q, k, v: jax.vjp(fn, q, k, v)[1](dout))
    for _ in range(args.calls):
        jax.block_until_ready(run(q, k, v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
