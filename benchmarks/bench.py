# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Times chill-jax against its peers in one process on one GPU.

Peers: ``jax.nn.dot_product_attention`` (cudnn and xla), Pallas GPU ``mha``
and, when torch is importable, FlexAttention (compiled, with its block mask).
Writes one CSV row per (impl, mask, shape, pass) as soon as it is measured:
``impl,mask,B,T,N,D,dtype,pass,ms,tflops`` with effective TFLOP/s =
4*B*N*T^2*D*density/time (x3.5 for fwd+bwd). Failures are rows with empty
``ms`` and the reason in ``note``.

``--long`` adds chill-jax alone at batch 1, heads 8, seq 131072, head dim
128 with a sliding window (memory linear in the sequence length);
``--packed`` adds packed documents (8 documents of 512 tokens per row,
``DocumentChillMask``) against ``jax.nn.dot_product_attention`` with the
equivalent dense bool mask.

Usage: ``python benchmarks/bench.py --out results/h100.csv [--shapes S1 S2] [--long] [--packed]``
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import traceback

import numpy as np

# XLA preallocates 75% of the GPU by default; leave room for torch (Flex).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")

import jax
import jax.numpy as jnp

import chill_jax as cj
from chill_jax import _autotune

SHAPES = {"S1": (8, 4096, 16, 64), "S2": (4, 8192, 16, 128)}
MASKS = {
    "full": (cj.FullChillMask(), lambda q, k: np.ones_like(q >= k)),
    "causal": (cj.CausalChillMask(), lambda q, k: q >= k),
    "sliding_window_256_256": (cj.SlidingWindowChillMask(256, 256), lambda q, k: np.abs(q - k) <= 256),
    "chunkwise_128_2": (cj.ChunkwiseChillMask(128, 2),
                        lambda q, k: (k // 128 <= q // 128) & (k // 128 >= q // 128 - 2)),
    "prefix_lm_512": (cj.PrefixLMChillMask(512), lambda q, k: (q >= k) | (k < 512)),
}
FIELDS = ["impl", "mask", "B", "T", "N", "D", "dtype", "pass", "ms", "tflops", "note"]


def dense_mask(name: str, t: int) -> np.ndarray:
    pos = np.arange(t)
    return MASKS[name][1](pos[:, None], pos[None, :])


def time_jax(fn, args, reps: int) -> float:
    """Median milliseconds per call of ``fn(*args)`` after two warm-up calls, timed
    as ``autotune=True`` times its candidates (samples of back-to-back calls
    lasting at least ``_autotune._SAMPLE_MS``, so host dispatch and the final
    wait do not count)."""
    return _autotune._time_call(fn, args, warmup=2, reps=reps)


def jax_impls(mask_name: str, t: int, dense):
    """name -> attention fn(q, k, v) on [B, T, N, D] for the jax peers."""
    impls = {}
    chill_mask = MASKS[mask_name][0]
    impls["chill_jax"] = lambda q, k, v: cj.attention(q, k, v, chill_mask)
    kw = {}
    if mask_name == "causal":
        kw = dict(is_causal=True)
    elif mask_name == "sliding_window_256_256":
        kw = dict(local_window_size=(256, 256))
    elif mask_name != "full":
        kw = dict(mask=jnp.asarray(dense)[None, None])
    impls["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kw)
    xkw = dict(kw)
    if mask_name == "sliding_window_256_256":
        xkw = dict(mask=jnp.asarray(dense)[None, None])
    impls["xla"] = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla", **xkw)
    if mask_name in ("full", "causal"):
        try:
            from jax.experimental.pallas.ops.gpu import attention as pallas_attention

            def pallas(q, k, v):
                return pallas_attention.mha(q, k, v, segment_ids=None, sm_scale=1.0 / np.sqrt(q.shape[-1]),
                                            causal=mask_name == "causal")

            impls["pallas"] = pallas
        except ImportError:
            pass
    return impls


def flex_fns(mask_name: str, b: int, n: int, t: int):
    """FlexAttention fwd and fwd+bwd callables on torch tensors, or None."""
    try:
        import torch
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    mods = {
        "full": None,
        "causal": lambda bb, h, q, k: q >= k,
        "sliding_window_256_256": lambda bb, h, q, k: (q - k <= 256) & (k - q <= 256),
        "chunkwise_128_2": lambda bb, h, q, k: (k // 128 <= q // 128) & (k // 128 >= q // 128 - 2),
        "prefix_lm_512": lambda bb, h, q, k: (q >= k) | (k < 512),
    }
    mod = mods[mask_name]
    # A fresh compile per mask: past dynamo's recompile limit (8 by default)
    # flex_attention silently runs eagerly, materializing the scores.
    torch._dynamo.reset()
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    block_mask = None if mod is None else create_block_mask(mod, None, None, t, t, device="cuda")
    compiled = torch.compile(flex_attention)
    return torch, lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def time_torch(torch, fn, reps: int) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=50, rep=max(100, reps * 10), return_mode="median")


def time_jax_pass(fn, q, k, v, do, pas: str, reps: int) -> float:
    """Median ms of the jitted ``fn(q, k, v)`` (``pas="fwd"``) or of its
    forward + backward with output cotangent ``do``."""
    if pas == "fwd":
        return time_jax(jax.jit(fn), (q, k, v), reps)

    def fb(q, k, v, do):
        return jax.vjp(fn, q, k, v)[1](do)

    return time_jax(jax.jit(fb), (q, k, v, do), reps)


def time_flex_pass(torch, fn, q, k, v, do, pas: str, reps: int) -> float:
    """Median ms of the torch callable ``fn(q, k, v)`` (FlexAttention, on
    ``[B, N, T, D]`` bf16 CUDA copies of the ``[B, T, N, D]`` JAX arrays), or
    of its forward + backward with output cotangent ``do``."""
    tq, tk, tv, tdo = (torch.from_numpy(np.asarray(x.astype(jnp.float32))).cuda()
                       .to(torch.bfloat16).transpose(1, 2).contiguous() for x in (q, k, v, do))
    if pas == "fwd":
        ms = time_torch(torch, lambda: fn(tq, tk, tv), reps)
    else:
        for x in (tq, tk, tv):
            x.requires_grad_(True)
        ms = time_torch(torch, lambda: torch.autograd.grad(fn(tq, tk, tv), (tq, tk, tv), tdo), reps)
    del tq, tk, tv, tdo
    torch.cuda.empty_cache()
    return ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--masks", nargs="+", default=list(MASKS))
    parser.add_argument("--impls", nargs="+", default=["chill_jax", "cudnn", "flex", "pallas", "xla"])
    parser.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="smoke-test shapes (CPU)")
    parser.add_argument("--long", action="store_true", help="also run B=1,N=8,T=131072,D=128 sliding window")
    parser.add_argument("--packed", action="store_true", help="also run packed documents (8 x 512 per row)")
    parser.add_argument("--small", action="store_true",
                        help="also run small grids: batch 1, a few query tiles against many keys (full mask)")
    args = parser.parse_args()
    home = os.environ.get("HOME", "")
    if not os.environ.get("TRITON_CACHE_DIR") and not (home and os.access(home, os.W_OK)):
        # Triton (FlexAttention's compiler) needs a writable cache directory.
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-cache-")
    out = open(args.out, "w", newline="")
    writer = csv.DictWriter(out, FIELDS)
    writer.writeheader()
    print(jax.devices(), flush=True)

    def emit(**row):
        writer.writerow(row)
        out.flush()
        print(" ".join(f"{k}={row.get(k, '')}" for k in FIELDS), flush=True)

    if args.tiny:
        SHAPES.update(S1=(1, 128, 2, 64), S2=(1, 256, 1, 128))
    rng = np.random.default_rng(0)
    for shape_name in args.shapes:
        b, t, n, d = SHAPES[shape_name]
        qkv = [jnp.asarray(rng.standard_normal((b, t, n, d), np.float32), jnp.bfloat16) for _ in range(3)]
        do = jnp.asarray(rng.standard_normal((b, t, n, d), np.float32), jnp.bfloat16)
        for mask_name in args.masks:
            dense = dense_mask(mask_name, t)
            density = float(dense.mean())
            flops = 4.0 * b * n * t * t * d * density
            impls = jax_impls(mask_name, t, dense)
            for impl in args.impls:
                for pas in args.passes:
                    base = dict(impl=impl, mask=mask_name, B=b, T=t, N=n, D=d, dtype="bf16", **{"pass": pas})
                    try:
                        if impl == "flex":
                            made = flex_fns(mask_name, b, n, t)
                            if made is None:
                                continue
                            ms = time_flex_pass(*made, *qkv, do, pas, args.reps)
                        else:
                            if impl not in impls:
                                continue
                            ms = time_jax_pass(impls[impl], *qkv, do, pas, args.reps)
                        mult = 1.0 if pas == "fwd" else 3.5
                        emit(**base, ms=f"{ms:.4f}", tflops=f"{mult * flops / ms / 1e9:.1f}", note="")
                    except Exception as e:  # record refusals/OOM as rows
                        emit(**base, ms="", tflops="", note=(type(e).__name__ + ": " + str(e).splitlines()[0])[:160]
                             if str(e) else type(e).__name__)
                        if "--debug" in sys.argv:
                            traceback.print_exc()
        del qkv, do
    if args.long:
        b, t, n, d = 1, 131072, 8, 128
        q, k, v, do = (jnp.asarray(rng.standard_normal((b, t, n, d), np.float32), jnp.bfloat16) for _ in range(4))
        mask = cj.SlidingWindowChillMask(256, 256)
        density = (t * 513 - 256 * 257) / t / t
        flops = 4.0 * b * n * t * t * d * density
        for pas in ("fwd", "fwd+bwd"):
            base = dict(impl="chill_jax", mask="sliding_window_256_256", B=b, T=t, N=n, D=d, dtype="bf16",
                        **{"pass": pas})
            try:
                ms = time_jax_pass(lambda q, k, v: cj.attention(q, k, v, mask), q, k, v, do, pas, 5)
                mult = 1.0 if pas == "fwd" else 3.5
                emit(**base, ms=f"{ms:.4f}", tflops=f"{mult * flops / ms / 1e9:.1f}", note="memory linear in T")
            except Exception as e:
                emit(**base, ms="", tflops="", note=(type(e).__name__ + ": " + str(e).splitlines()[0])[:160])
    if args.packed:
        run_packed(emit, rng, args.reps)
    if args.small:
        run_small(emit, rng, args.reps, args.impls)
    out.close()
    return 0


SMALL_SHAPES = ((1, 1024, 32768, 8, 128), (1, 512, 16384, 16, 64))  # B, T (queries), S (keys), N, D


def run_small(emit, rng, reps: int, impls: list[str]) -> None:
    """Small grids, where the forward's query tiles alone leave most of the
    GPU idle (``KernelConfig.kv_splits``): batch 1, full attention of T
    queries to S keys (a prompt chunk against a long context), bf16. Rows
    are named ``full_cross_kv<S>``; effective TFLOP/s = 4·B·N·T·S·D / time
    (x3.5 for forward+backward)."""
    for b, t, s, n, d in SMALL_SHAPES:
        q, do = (jnp.asarray(rng.standard_normal((b, t, n, d), np.float32), jnp.bfloat16) for _ in range(2))
        k, v = (jnp.asarray(rng.standard_normal((b, s, n, d), np.float32), jnp.bfloat16) for _ in range(2))
        flops = 4.0 * b * n * t * s * d
        fns = {"chill_jax": lambda q, k, v: cj.attention(q, k, v),
               "cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn")}
        for impl in ("chill_jax", "cudnn", "flex"):
            if impl not in impls:
                continue
            for pas in ("fwd", "fwd+bwd"):
                base = dict(impl=impl, mask=f"full_cross_kv{s}", B=b, T=t, N=n, D=d, dtype="bf16", **{"pass": pas})
                try:
                    if impl == "flex":
                        try:
                            import torch
                            from torch.nn.attention.flex_attention import flex_attention
                        except ImportError:
                            continue
                        ms = time_flex_pass(torch, torch.compile(flex_attention), q, k, v, do, pas, reps)
                    else:
                        ms = time_jax_pass(fns[impl], q, k, v, do, pas, reps)
                    mult = 1.0 if pas == "fwd" else 3.5
                    emit(**base, ms=f"{ms:.4f}", tflops=f"{mult * flops / ms / 1e9:.1f}", note=f"{s} keys")
                except Exception as e:
                    emit(**base, ms="", tflops="", note=(type(e).__name__ + ": " + str(e).splitlines()[0])[:160])


def run_packed(emit, rng, reps: int) -> None:
    """Packed documents: B=8 rows of 8 documents x 512 tokens, N=16, D=64,
    bf16. chill-jax builds ``DocumentChillMask`` from the segment ids inside
    the jitted call (its table derivation is timed too); jax.nn gets the
    equivalent dense bool mask ``[B, 1, T, T]``."""
    b, t, n, d, docs = 8, 4096, 16, 64, 8
    ids = jnp.asarray(np.repeat(np.arange(docs, dtype=np.int32), t // docs)[None].repeat(b, 0))
    dense = (ids[:, :, None] == ids[:, None, :])[:, None]
    q, k, v, do = (jnp.asarray(rng.standard_normal((b, t, n, d), np.float32), jnp.bfloat16) for _ in range(4))
    flops = 4.0 * b * n * t * t * d / docs
    impls = {
        "chill_jax": lambda q, k, v, ids, dense: cj.attention(q, k, v, cj.DocumentChillMask(ids)),
        "cudnn": lambda q, k, v, ids, dense: jax.nn.dot_product_attention(q, k, v, mask=dense,
                                                                          implementation="cudnn"),
        "xla": lambda q, k, v, ids, dense: jax.nn.dot_product_attention(q, k, v, mask=dense, implementation="xla"),
    }
    for impl, fn in impls.items():
        for pas in ("fwd", "fwd+bwd"):
            base = dict(impl=impl, mask="documents_8x512", B=b, T=t, N=n, D=d, dtype="bf16", **{"pass": pas})
            try:
                if pas == "fwd":
                    ms = time_jax(jax.jit(fn), (q, k, v, ids, dense), reps)
                else:
                    def fb(q, k, v, ids, dense, do, fn=fn):
                        return jax.vjp(lambda q, k, v: fn(q, k, v, ids, dense), q, k, v)[1](do)

                    ms = time_jax(jax.jit(fb), (q, k, v, ids, dense, do), reps)
                mult = 1.0 if pas == "fwd" else 3.5
                emit(**base, ms=f"{ms:.4f}", tflops=f"{mult * flops / ms / 1e9:.1f}", note="packed documents")
            except Exception as e:  # noqa: BLE001 (recorded as a row)
                emit(**base, ms="", tflops="", note=(type(e).__name__ + ": " + str(e).splitlines()[0])[:160])


if __name__ == "__main__":
    sys.exit(main())
