# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Sweeps kernel configurations (tiles, warps, stages) for the default table.

Times the forward with each forward config and forward+backward with each
backward config (same config for dK/dV and dQ), bf16, on the benchmark shapes.
Prints one line per measurement and writes them to ``--out`` (CSV).
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

import jax
import jax.numpy as jnp

import chill_jax as cj
from chill_jax.configs import AttentionConfig, KernelConfig, default_config

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench import SHAPES, time_jax  # noqa: E402

FWD = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (128, 64, 4, 4)]
BWD = [(64, 64, 4, 2), (64, 128, 8, 2), (128, 64, 8, 2), (32, 64, 4, 2), (64, 64, 4, 3), (128, 128, 8, 2)]
MASKS = {"full": cj.FullChillMask(), "causal": cj.CausalChillMask(),
         "sliding_window_256_256": cj.SlidingWindowChillMask(256, 256)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--masks", nargs="+", default=["full", "causal"])
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["shape", "mask", "pass", "block_m", "block_n", "num_warps", "num_stages", "ms", "note"])
        for shape in args.shapes:
            b, t, n, d = SHAPES[shape]
            q, k, v, do = (jnp.asarray(rng.standard_normal((b, t, n, d), np.float32), jnp.bfloat16)
                           for _ in range(4))
            base = default_config("triton", d, 2)
            for mask_name in args.masks:
                mask = MASKS[mask_name]
                for pas, table in (("fwd", FWD), ("fwd+bwd", BWD)):
                    for cfg in table:
                        kc = KernelConfig(*cfg)
                        if pas == "fwd":
                            config = AttentionConfig(kc, base.bwd_dkdv, base.bwd_dq)
                            fn = jax.jit(lambda q, k, v, c=config: cj.attention(q, k, v, mask, config=c))
                            call = (q, k, v)
                        else:
                            config = AttentionConfig(base.fwd, kc, kc)
                            fn = jax.jit(lambda q, k, v, do, c=config: jax.vjp(
                                lambda q, k, v: cj.attention(q, k, v, mask, config=c), q, k, v)[1](do))
                            call = (q, k, v, do)
                        try:
                            ms, note = time_jax(fn, call, 10), ""
                        except Exception as e:  # e.g. out of shared memory
                            ms, note = float("nan"), (type(e).__name__ + ": " + str(e).splitlines()[0])[:120]
                        row = [shape, mask_name, pas, *cfg, f"{ms:.4f}", note]
                        w.writerow(row)
                        f.flush()
                        print(*row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
