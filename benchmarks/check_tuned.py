# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Checks tuned configurations for correctness on the GPU (``implementation="triton"``).

For each entry of a tuned table (default: the table of this GPU's
generation) and each built-in mask, runs forward + backward with the
entry's configuration on random inputs with per-example lengths and compares
out, lse, dq, dk and dv with the float64 reference. A sweep times
configurations; this checks that the ones it picked compute the right thing.

Usage: ``python benchmarks/check_tuned.py [--table hopper] [--head-dims 64 128]``
"""

from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import chill_jax  # noqa: E402
from chill_jax import configs  # noqa: E402
from testing_utils import (  # noqa: E402
    BUILTIN_MASKS, attention_and_grads, check_against_reference, normal, random_lengths, random_qkv)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", default=None, help="table name (default: this GPU's generation)")
    parser.add_argument("--head-dims", type=int, nargs="+", default=None)
    parser.add_argument("--implementation", default="triton")
    args = parser.parse_args()
    table = configs.load_table(args.table or configs.gpu_generation())
    rng = np.random.default_rng()
    failures = 0
    for (block_d, dtype_class, mask_name), cfg in sorted(table.items(), key=lambda kv: str(kv[0])):
        if args.head_dims and block_d not in args.head_dims:
            continue
        dtype = jnp.bfloat16 if dtype_class == "bf16/fp16" else jnp.float32
        for mask in BUILTIN_MASKS:
            q, k, v = random_qkv(rng, dtype, batch=2, q_len=300, heads=2, head_dim=block_d)
            dout = normal(rng, q.shape, dtype)
            kwargs = dict(implementation=args.implementation, config=cfg, lengths=random_lengths(rng, 2, 300))
            try:
                result = attention_and_grads(q, k, v, mask, dout=dout, **kwargs)
                check_against_reference(result, q, k, v, mask, dout=dout, **kwargs)
                status = "ok  "
            except AssertionError as e:
                failures += 1
                status = f"FAIL {str(e).splitlines()[0][:120]}"
            print(f"{status} D{block_d} {dtype_class} entry {mask_name} with {mask!r}: {cfg}", flush=True)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
