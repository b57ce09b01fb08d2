# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Kernel launch configurations (tile sizes, warps, pipeline stages)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tiling of one kernel launch.

    Attributes:
      block_m: query tile size (a power of two, >= 16).
      block_n: key tile size (a power of two, >= 16).
      num_warps: warps per program (GPU only).
      num_stages: software-pipelining depth (GPU only).
    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 16 or value & (value - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two >= 16, got {value!r}")
        if not isinstance(self.num_warps, int) or self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"KernelConfig.num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"KernelConfig.num_stages must be a positive int, got {self.num_stages!r}")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Configurations of the three passes: forward, dK/dV and dQ."""

    fwd: KernelConfig = KernelConfig()
    bwd_dkdv: KernelConfig = KernelConfig()
    bwd_dq: KernelConfig = KernelConfig()


# The interpreter costs a few milliseconds per (program x tile) step whatever
# the tile size, so wide tiles are fastest there.
INTERPRET_CONFIG = AttentionConfig(
    fwd=KernelConfig(64, 64, 4, 1),
    bwd_dkdv=KernelConfig(64, 64, 4, 1),
    bwd_dq=KernelConfig(64, 64, 4, 1),
)

# GPU defaults by padded head dim (block_d), for 16-bit inputs; float32 inputs
# use the next smaller entry's tiles (twice the bytes per element).
_GPU_CONFIGS = {
    16: AttentionConfig(KernelConfig(128, 64, 4, 3), KernelConfig(64, 128, 8, 2), KernelConfig(128, 64, 8, 2)),
    32: AttentionConfig(KernelConfig(128, 64, 4, 3), KernelConfig(64, 128, 8, 2), KernelConfig(128, 64, 8, 2)),
    64: AttentionConfig(KernelConfig(128, 64, 4, 3), KernelConfig(64, 128, 8, 2), KernelConfig(128, 64, 8, 2)),
    128: AttentionConfig(KernelConfig(128, 64, 8, 3), KernelConfig(64, 64, 4, 2), KernelConfig(64, 64, 4, 2)),
    256: AttentionConfig(KernelConfig(64, 32, 4, 2), KernelConfig(32, 32, 4, 1), KernelConfig(32, 32, 4, 1)),
}


def default_config(implementation: str, block_d: int, itemsize: int) -> AttentionConfig:
    """The default configuration for an implementation, head dim and dtype size."""
    if implementation == "interpret":
        return INTERPRET_CONFIG
    key = block_d if itemsize <= 2 else min(256, block_d * 2)
    return _GPU_CONFIGS[max(16, key)]


def all_tile_sizes() -> tuple[tuple[int, int], ...]:
    """Every (query tile, key tile) pair any default configuration uses."""
    pairs = set()
    for cfg in [INTERPRET_CONFIG, *_GPU_CONFIGS.values()]:
        for k in (cfg.fwd, cfg.bwd_dkdv, cfg.bwd_dq):
            pairs.add((k.block_m, k.block_n))
    return tuple(sorted(pairs))
