# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""A/B timing of kernel configurations in one process: the tuned table's
configuration against alternatives with some passes replaced, per benchmark
shape and mask, with FlexAttention where torch is importable.

Each override is an optional alternative's name, a pass name and a
``KernelConfig`` as JSON (the table's format); the overrides of one name
form one alternative (default name ``override``). With ``--rounds R`` the
configurations are timed R times in turn (so a drift of the GPU's state
hits them alike) and each cell gives the R medians. Prints, per case,
milliseconds and effective TFLOP/s of the chosen passes for each
configuration, and the largest relative difference of the outputs and
gradients from the table's.

Usage::

    python benchmarks/config_ab.py --shapes S2 --masks sliding_window_256_256 chunkwise_128_2 \\
        --override bwd_dkdv='{"block_m": 64, "block_n": 128, "num_warps": 4, "num_stages": 2, "gluon": true}'
    python benchmarks/config_ab.py --shapes S1 --masks causal --passes fwd --rounds 3 \\
        --override s3:fwd='{"block_m": 192, "block_n": 128, "num_warps": 4, "num_stages": 3, "gluon": true,
                            "fallback": {"block_m": 128, "block_n": 128, "num_warps": 4, "num_stages": 3}}' \\
        --override n64:fwd='{"block_m": 192, "block_n": 64, "num_warps": 4, "num_stages": 3, "gluon": true,
                             "fallback": {"block_m": 128, "block_n": 128, "num_warps": 4, "num_stages": 3}}'
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


def parse_override(text: str) -> tuple[str, str, cj.KernelConfig]:
    """``[name:]pass={json}`` -> (name, pass, KernelConfig)."""
    head, sep, body = text.partition("=")
    alt, colon, name = head.rpartition(":")
    alt = alt if colon else "override"
    if not sep or name not in PASSES or not alt.isidentifier() or alt == "table":
        raise argparse.ArgumentTypeError(
            f"expected [NAME:]PASS=JSON with PASS one of {PASSES} and NAME an identifier other than 'table', "
            f"got {text!r}")
    return alt, name, kernel_config_from_dict(json.loads(body), f"--override {head}")


def outputs_and_grads(fn, q, k, v, do, backward: bool = True):
    """The output and (with ``backward``) the three gradients of ``fn`` at
    cotangent ``do``."""
    def run(q, k, v, do):
        if not backward:
            return (fn(q, k, v),)
        out, vjp = jax.vjp(fn, q, k, v)
        return (out, *vjp(do))

    return jax.jit(run)(q, k, v, do)


def jitted_pass(fn, pas: str):
    """The jitted forward of ``fn(q, k, v)`` or its forward + backward, both
    taking ``(q, k, v, do)``."""
    if pas == "fwd":
        return jax.jit(lambda q, k, v, do: fn(q, k, v))
    return jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(bench.SHAPES), choices=list(bench.SHAPES))
    parser.add_argument("--masks", nargs="+", default=list(bench.MASKS), choices=list(bench.MASKS))
    parser.add_argument("--override", type=parse_override, action="append", required=True,
                        help="[NAME:]PASS=JSON: replaces the table's config of that pass in alternative NAME "
                             "(repeatable)")
    parser.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--rounds", type=int, default=1, help="times every configuration is timed, in turn")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="bench.py's smoke-test shapes (CPU)")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    args = parser.parse_args()
    if args.tiny:
        bench.SHAPES.update(S1=(1, 128, 2, 64), S2=(1, 256, 1, 128))
    implementation = "triton" if jax.default_backend() == "gpu" else "interpret"
    alternatives: dict[str, dict[str, cj.KernelConfig]] = {}
    for alt, name, config in args.override:
        alternatives.setdefault(alt, {})[name] = config
    backward = "fwd+bwd" in args.passes
    rng = np.random.default_rng(0)
    for shape_name in args.shapes:
        b, t, n, d = bench.SHAPES[shape_name]
        for mask_name in args.masks:
            mask = bench.MASKS[mask_name][0]
            q, k, v, do = (jnp.asarray(rng.standard_normal((b, t, n, d), dtype=np.float32)).astype(jnp.bfloat16)
                           for _ in range(4))
            table = _autotune.resolve_config(implementation, q.shape, k.shape, q.dtype, mask, layout="BTNH",
                                             sm_scale=d ** -0.5, precision="ieee")
            configs = {"table": table}
            configs.update((alt, dataclasses.replace(table, **over)) for alt, over in alternatives.items())
            flops = 4 * b * n * t * t * d * bench.dense_mask(mask_name, t).mean()
            calls, results = {}, {}
            for name, config in configs.items():
                def fn(q, k, v, config=config):
                    return cj.attention(q, k, v, mask, config=config)

                for pas in args.passes:
                    calls[f"{name} {pas}"] = jitted_pass(fn, pas)
                results[name] = outputs_and_grads(fn, q, k, v, do, backward)
            times: dict[str, list[float]] = {key: [] for key in calls}
            for _ in range(args.rounds):
                for key, call in calls.items():
                    times[key].append(bench.time_jax(call, (q, k, v, do), args.reps))
            made = None if args.no_flex else bench.flex_fns(mask_name, b, n, t)
            if made is not None:
                for pas in args.passes:
                    times[f"flex {pas}"] = [bench.time_flex_pass(*made, q, k, v, do, pas, args.reps)]
            print(f"{shape_name} {mask_name}:", flush=True)
            for key, samples in times.items():
                best = min(samples)
                ms = " / ".join(f"{x:.3f}" for x in samples)
                print(f"    {key}: {ms} ms ({flops * (3.5 if '+' in key else 1) / best / 1e9:.0f} TFLOP/s at the "
                      "fastest)", flush=True)
            for name in alternatives:
                diffs = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32)))
                               / jnp.max(jnp.abs(r.astype(jnp.float32))))
                         for a, r in zip(results[name], results["table"])]
                labels = "out, dq, dk, dv" if backward else "out"
                print(f"    {name} vs table, max |diff| / max |table| ({labels}): "
                      + ", ".join(f"{e:.1e}" for e in diffs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
