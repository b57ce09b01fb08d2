# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Sweeps kernel configurations (tiles, warps, stages) for the tuned tables.

For every shape, dtype and mask it runs the search of ``autotune=True``
(``chill_jax._autotune.search``) over the candidates of
``chill_jax.configs.autotune_candidates`` plus the current default: forward
configurations by forward time, then dK/dV (dQ fixed) and dQ (dK/dV at its
winner) by forward + backward time. Every measurement is printed and written
to ``--out`` (CSV). ``--write PATH`` merges the winners into a tuned table
in the schema of ``chill_jax/tuned/hopper.json``, one entry per (padded head
dim, dtype class, mask class); ``--wildcard NAME`` also makes mask NAME's
winners the ``"*"`` entry of their head dim. Later shapes override earlier
ones with the same entry key (bf16 and fp16 share one).

Usage on an H100::

    python benchmarks/sweep.py --out benchmarks/results/sweep_h100.csv \\
        --shapes D16 D32 S1 S2 D256 --masks full causal --wildcard causal \\
        --write chill_jax/tuned/hopper.json

Smoke test on a CPU (the interpreter; its timings mean nothing)::

    python benchmarks/sweep.py --out /tmp/sweep.csv --tiny --implementation interpret \\
        --candidates 2 --write /tmp/tuned.json --wildcard causal
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile

import jax.numpy as jnp
import triton

import chill_jax as cj
from chill_jax import _autotune, configs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import SHAPES as BENCH_SHAPES  # noqa: E402

# (batch, seq, heads, head_dim); S1 and S2 are the benchmark's shapes.
SHAPES = {"D16": (8, 4096, 16, 16), "D32": (8, 4096, 16, 32), **BENCH_SHAPES, "D256": (4, 4096, 16, 256)}
TINY_SHAPES = {"D16": (1, 48, 2, 16), "S1": (1, 64, 2, 64), "S2": (1, 64, 1, 128), "D256": (1, 40, 1, 256)}
MASKS = {"full": cj.FullChillMask(), "causal": cj.CausalChillMask(),
         "sliding_window_256_256": cj.SlidingWindowChillMask(256, 256),
         "chunkwise_128_2": cj.ChunkwiseChillMask(128, 2), "prefix_lm_512": cj.PrefixLMChillMask(512)}
DTYPES = {"bf16": jnp.bfloat16, "fp16": jnp.float16, "fp32": jnp.float32}
FIELDS = ["shape", "dtype", "mask", "step", "block_m", "block_n", "num_warps", "num_stages", "ms", "note"]


def write_table(path: str, winners: dict[tuple[int, str, str], configs.AttentionConfig],
                description: str | None = None) -> None:
    """Merges winners into the tuned table at ``path`` (created if missing).

    Entries of an existing table with other keys are kept; its description
    too unless ``description`` is given. The file is validated before and
    after, and replaced atomically.

    Raises:
      ValueError: the existing file does not follow the schema.
    """
    entries: dict[tuple[int, str, str], configs.AttentionConfig] = {}
    old_description = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        entries.update(configs.parse_table(data, path))
        old_description = data.get("description", "")
    entries.update(winners)
    text = configs.dump_table([configs.TunedEntry(d, t, m, cfg) for (d, t, m), cfg in entries.items()],
                              old_description if description is None else description)
    fd, tmp = tempfile.mkstemp(prefix=".tuned-", suffix=".json", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="CSV of every measurement")
    parser.add_argument("--shapes", nargs="+", default=["S1", "S2"], help=f"names from {list(SHAPES)}")
    parser.add_argument("--masks", nargs="+", default=["full", "causal"], choices=list(MASKS))
    parser.add_argument("--dtypes", nargs="+", default=["bf16"], choices=list(DTYPES))
    parser.add_argument("--implementation", default="triton", choices=["triton", "interpret"])
    parser.add_argument("--reps", type=int, default=20, help="timed calls per candidate (after 2 warm-up calls)")
    parser.add_argument("--candidates", type=int, default=None,
                        help="time only the first N candidates of each pass (plus the default)")
    parser.add_argument("--steps", nargs="+", default=list(_autotune.PASSES), choices=list(_autotune.PASSES),
                        help="passes whose candidates are searched; the others keep the table's entry")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test)")
    parser.add_argument("--write", metavar="PATH", help="merge the winners into this tuned table (JSON)")
    parser.add_argument("--wildcard", choices=list(MASKS),
                        help="with --write: this mask's winners are also the '*' entry of their head dim")
    parser.add_argument("--description", help="with --write: the table's description (default: keep)")
    args = parser.parse_args(argv)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    unknown = [s for s in args.shapes if s not in shapes]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; expected some of {list(shapes)}")
    if args.wildcard and args.wildcard not in args.masks:
        parser.error(f"--wildcard {args.wildcard} must be one of the swept --masks {args.masks}")
    winners: dict[tuple[int, str, str], configs.AttentionConfig] = {}
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for shape in args.shapes:
            b, t, n, d = shapes[shape]
            block_d = max(16, triton.next_power_of_2(d))
            for dtype_name in args.dtypes:
                dtype = jnp.dtype(DTYPES[dtype_name])
                for mask_name in args.masks:
                    mask = MASKS[mask_name]
                    problem = _autotune.Problem(args.implementation, (b, t, n, d), (b, t, n, d), dtype.name, mask,
                                                "BTNH", 1.0 / math.sqrt(d), "ieee")
                    # The GPU table's entry (this GPU's generation) even under the interpreter.
                    base = configs.default_config("triton", block_d, dtype.itemsize, mask)
                    candidates = configs.autotune_candidates(block_d, dtype.itemsize)
                    if args.candidates is not None:
                        candidates = {step: tuple(c)[:args.candidates] for step, c in candidates.items()}
                    candidates = {step: c if step in args.steps else () for step, c in candidates.items()}
                    # The tables hold tiles; key splits are decided per call.
                    best, measurements = _autotune.search(problem, base, candidates, kv_splits=(),
                                                          repetitions=(2, args.reps))
                    for m in measurements:
                        kernel = getattr(m.config, m.step)
                        row = dict(shape=shape, dtype=dtype_name, mask=mask_name, step=m.step, **kernel.to_dict(),
                                   ms="" if m.error else f"{m.ms:.4f}", note=m.error)
                        writer.writerow(row)
                        print(*row.values(), sep=",", flush=True)
                    f.flush()
                    if not any(m.step == "fwd" and not m.error for m in measurements):
                        print(f"# {shape} {dtype_name} {mask_name}: every candidate failed; not written",
                              flush=True)
                        continue
                    dtype_class = configs.dtype_class(dtype.itemsize)
                    keys = [(block_d, dtype_class, configs.mask_name(mask))]
                    if mask_name == args.wildcard:
                        keys.append((block_d, dtype_class, configs.WILDCARD))
                    for key in keys:
                        if key in winners and winners[key] != best:
                            print(f"# {shape} {dtype_name} {mask_name} replaces the winner for {key}", flush=True)
                        winners[key] = best
                    print(f"# winner {shape} {dtype_name} {mask_name}: {best}", flush=True)
    if args.write:
        write_table(args.write, winners, args.description)
        print(f"# wrote {len(winners)} entries to {args.write}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
