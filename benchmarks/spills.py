# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Register spills of the Gluon kernels, built for sm_90a on the host (no GPU).

Builds ``attn_bwd_gluon`` (or, with ``--pass fwd``, ``attn_fwd_gluon`` at a
``--block-m`` x ``--block-n`` tile) the way the binding launches it for the
benchmark's shapes (S1: 8 x 4096 x 16 heads x 64, S2: 4 x 8192 x 16 x 128,
bf16), from the checkout's ``kernels/`` or from a variant's copy (a
directory laid out like the repository root, as for ``benchmarks/ab.py``),
and prints what Triton's bundled ``ptxas -v`` reports: registers, stack and
spill bytes.

Usage::

    python benchmarks/spills.py --head-dim 128 --masks full causal
    python benchmarks/spills.py --variant variants/merge --head-dim 64
    python benchmarks/spills.py --pass fwd --head-dim 64 --block-m 192 --block-n 128
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import triton

import chill_jax
from chill_jax import _launch
from chill_jax.configs import AttentionConfig, KernelConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import compile_check  # noqa: E402

_MASKS = {"full": chill_jax.FullChillMask(), "causal": chill_jax.CausalChillMask(),
          "sliding_window_256_256": chill_jax.SlidingWindowChillMask(256, 256),
          "chunkwise_128_2": chill_jax.ChunkwiseChillMask(128, 2), "prefix_lm_512": chill_jax.PrefixLMChillMask(512)}


def _use_variant(directory):
    """Makes the binding launch ``directory/kernels``' Gluon kernels."""
    for name, kernel in (("backward_gluon", "attn_bwd_gluon"), ("forward_gluon", "attn_fwd_gluon")):
        path = os.path.join(directory, "kernels", name + ".py")
        spec = importlib.util.spec_from_file_location("chill_jax.kernels._variant_" + name, path)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "chill_jax.kernels"
        spec.loader.exec_module(module)
        setattr(sys.modules["chill_jax.attention"], kernel, getattr(module, kernel))


def ptxas_report(ptx):
    """``ptxas -v`` of ``ptx`` for sm_90a: its lines on registers and spills."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([ptxas, "-v", "-arch=sm_90a", f.name, "-o", os.devnull], capture_output=True,
                             text=True, check=True)
    finally:
        os.unlink(f.name)
    return [line.strip() for line in out.stderr.splitlines() if "spill" in line or "registers" in line]


def build(mask, head_dim, stages, forward=False, block_m=128, block_n=128):
    """The sm_90 build of the Gluon backward (or with ``forward`` the
    forward, at ``block_m`` x ``block_n``) for ``mask`` at the benchmark's
    shape of ``head_dim``, with ``stages`` ring slots."""
    if forward:
        config = AttentionConfig(fwd=KernelConfig(block_m, block_n, 4, stages, gluon=True,
                                                  fallback=KernelConfig(64, 64, 4, 2)))
    else:
        config = AttentionConfig(fwd=KernelConfig(64, 64, 4, 2),
                                 bwd_dkdv=KernelConfig(64, 128, 4, stages, gluon=True),
                                 bwd_dq=KernelConfig(64, 64, 4, 2))
    shape = (4, 8192, 16, 128) if head_dim == 128 else (8, 4096, 16, head_dim)
    q = jax.ShapeDtypeStruct(shape, jnp.bfloat16)

    def attend(q, k, v):
        return chill_jax.attention(q, k, v, mask, config=config, implementation="interpret")

    def fwd_bwd(q, k, v):
        return jax.vjp(attend, q, k, v)[1](jnp.ones(q.shape, q.dtype))

    jax.clear_caches()
    launches = compile_check.record_launches(attend if forward else fwd_bwd, q, q, q, execute=False)
    name = "attn_fwd_gluon" if forward else "attn_bwd_gluon"
    (launch,) = [launch for launch in launches if launch[0].fn.__name__ == name]
    return compile_check.compile_launch(launch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", help="a directory with a copy of kernels/ (default: the checkout's)")
    parser.add_argument("--head-dim", type=int, choices=(64, 128), default=128)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--pass", dest="which", choices=("fwd", "bwd"), default="bwd")
    parser.add_argument("--block-m", type=int, choices=(128, 192), default=128, help="forward only")
    parser.add_argument("--block-n", type=int, choices=(64, 128), default=128, help="forward only")
    parser.add_argument("--masks", nargs="+", choices=sorted(_MASKS), default=["full", "causal"])
    args = parser.parse_args()
    if args.variant:
        _use_variant(args.variant)
    _launch.can_run_gluon = lambda implementation: True
    for name in args.masks:
        forward = args.which == "fwd"
        compiled = build(_MASKS[name], args.head_dim, args.stages, forward, args.block_m, args.block_n)
        tile = f" {args.block_m}x{args.block_n}" if forward else ""
        print(f"{args.which}{tile} {name} D={args.head_dim} stages={args.stages} shared={compiled.metadata.shared}")
        for line in ptxas_report(compiled.asm["ptx"]):
            print("   ", line)


if __name__ == "__main__":
    main()
