# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""A custom mask: causal sliding window with dilation.

Defines the mask, checks its range methods with ``verify``, saves a plot of it
and runs attention with it, comparing against the float64 reference.

Run: python examples/custom_mask.py [PLOT_PATH]  (CPU is fine: a few seconds)
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

import chill_jax
from chill_jax import ChillMask


class DilatedCausalChillMask(ChillMask):
    """Query ``q`` attends to keys ``q, q - d, q - 2d, ..., q - window * d``.

    Args:
      window: number of earlier keys attended (>= 0).
      dilation: distance ``d`` between attended keys (>= 1); 1 gives a plain
        causal sliding window.
    """

    def __init__(self, window: int, dilation: int):
        if window < 0 or dilation < 1:
            raise ValueError(f"need window >= 0 and dilation >= 1, got {window}, {dilation}")
        super().__init__((window, dilation))

    # Triton methods. `q`/`k` in `mask` are int32 position vectors; the range
    # methods get one scalar position and return an inclusive (lo, hi).
    @staticmethod
    def mask(q, k, args):
        window, dilation = args
        diff = q[:, None] - k[None, :]
        return (diff >= 0) & (diff <= window * dilation) & (diff % dilation == 0)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        window, dilation = args
        return max(0, q - window * dilation), min(q, seq_len - 1)

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        window, dilation = args
        return k, min(k + window * dilation, seq_len - 1)

    # Optional: both range ends never decrease, so the default
    # k_lims_continuous() / q_lims_continuous() = True is right.

    # Optional full-block shortcut. Plain Python, called before launch: with
    # dilation > 1 no tile is ever fully allowed, so don't ask.
    @staticmethod
    def has_full_blocks(q_tile, k_tile, seq_len, args):
        window, dilation = args
        return dilation == 1 and window >= q_tile + k_tile - 2

    # Triton: is every (query, key) pair of the tile starting at (q, k)
    # allowed? Only called when has_full_blocks returned True (dilation == 1).
    @staticmethod
    def is_full_block(q, k, q_tile, k_tile, seq_len, args):
        window, dilation = args
        return (k + k_tile - 1 <= q) & (q + q_tile - 1 - k <= window)


def main(plot_path: str = "dilated_causal_mask.png"):
    mask = DilatedCausalChillMask(window=24, dilation=3)
    dense_window = DilatedCausalChillMask(window=100, dilation=1)

    # Raises AssertionError naming the first wrong position if a range method
    # or a full-block claim disagrees with `mask`.
    for m in (mask, dense_window):
        m.verify(300)
        m.verify(200, 300)
    print("verify: OK")

    # Grey: allowed entries; lines: the range methods' (lo, hi) per row/column.
    mask.plot(128).savefig(plot_path, dpi=80)
    print("plot saved to", plot_path)

    rng = np.random.default_rng(0)
    b, t, n, d = 2, 256, 4, 64
    q, k, v = (jnp.asarray(rng.standard_normal((b, t, n, d)), jnp.float32) for _ in range(3))
    for m in (mask, dense_window):
        out = jax.jit(lambda q, k, v, m=m: chill_jax.attention(q, k, v, m))(q, k, v)
        ref = chill_jax.reference_attention(q, k, v, m)["out"]
        print(f"{m!r}: max |out - reference| = {np.abs(np.asarray(out) - ref).max():.2e}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
