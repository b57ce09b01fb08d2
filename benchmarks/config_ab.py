# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""A/B timing of kernel configurations in one process: the tuned table's
configuration against the same with some passes replaced, per benchmark
shape and mask, with FlexAttention where torch is importable.

Each override is a pass name and a ``KernelConfig`` as JSON (the table's
format). Prints, per case, milliseconds and effective TFLOP/s of the
forward and of forward+backward for each configuration, and the largest
relative difference of the outputs and gradients from the table's.

Usage::

    python benchmarks/config_ab.py --shapes S2 --masks sliding_window_256_256 chunkwise_128_2 \\
        --override bwd_dkdv='{"block_m": 64, "block_n": 128, "num_warps": 4, "num_stages": 2, "gluon": true}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402  (sets XLA's memory fraction before JAX starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import chill_jax as cj  # noqa: E402
from chill_jax import _autotune  # noqa: E402
from chill_jax.configs import kernel_config_from_dict  # noqa: E402

PASSES = ("fwd", "bwd_dkdv", "bwd_dq")


def parse_override(text: str) -> tuple[str, cj.KernelConfig]:
    """``pass={json}`` -> (pass, KernelConfig)."""
    name, sep, body = text.partition("=")
    if not sep or name not in PASSES:
        raise argparse.ArgumentTypeError(f"expected PASS=JSON with PASS one of {PASSES}, got {text!r}")
    return name, kernel_config_from_dict(json.loads(body), f"--override {name}")


def outputs_and_grads(fn, q, k, v, do):
    """The output and the three gradients of ``fn`` at cotangent ``do``."""
    def run(q, k, v, do):
        out, vjp = jax.vjp(fn, q, k, v)
        return (out, *vjp(do))

    return jax.jit(run)(q, k, v, do)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(bench.SHAPES), choices=list(bench.SHAPES))
    parser.add_argument("--masks", nargs="+", default=list(bench.MASKS), choices=list(bench.MASKS))
    parser.add_argument("--override", type=parse_override, action="append", required=True,
                        help="PASS=JSON: replaces the table's config of that pass (repeatable)")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    overrides = dict(args.override)
    rng = np.random.default_rng(0)
    for shape_name in args.shapes:
        b, t, n, d = bench.SHAPES[shape_name]
        for mask_name in args.masks:
            mask = bench.MASKS[mask_name][0]
            q, k, v, do = (jnp.asarray(rng.standard_normal((b, t, n, d), dtype=np.float32)).astype(jnp.bfloat16)
                           for _ in range(4))
            table = _autotune.resolve_config("triton", q.shape, k.shape, q.dtype, mask, layout="BTNH",
                                             sm_scale=d ** -0.5, precision="ieee")
            configs = {"table": table, "override": dataclasses.replace(table, **overrides)}
            flops = 4 * b * n * t * t * d * bench.dense_mask(mask_name, t).mean()
            times, results = {}, {}
            for name, config in configs.items():
                jax.clear_caches()

                def fn(q, k, v, config=config):
                    return cj.attention(q, k, v, mask, config=config)

                for pas in ("fwd", "fwd+bwd"):
                    times[f"{name} {pas}"] = bench.time_jax_pass(fn, q, k, v, do, pas, args.reps)
                results[name] = outputs_and_grads(fn, q, k, v, do)
            made = bench.flex_fns(mask_name, b, n, t)
            if made is not None:
                for pas in ("fwd", "fwd+bwd"):
                    times[f"flex {pas}"] = bench.time_flex_pass(*made, q, k, v, do, pas, args.reps)
            cells = [f"{key} {ms:.3f} ms ({flops * (3.5 if '+' in key else 1) / ms / 1e9:.0f} TFLOP/s)"
                     for key, ms in times.items()]
            diffs = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32)))
                           / jnp.max(jnp.abs(r.astype(jnp.float32))))
                     for a, r in zip(results["override"], results["table"])]
            print(f"{shape_name} {mask_name}: " + "; ".join(cells), flush=True)
            print("    override vs table, max |diff| / max |table| (out, dq, dk, dv): "
                  + ", ".join(f"{e:.1e}" for e in diffs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
