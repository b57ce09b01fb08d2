# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""``chill_jax.attention``: validation, custom_vjp and custom_vmap binding."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import triton

from chill_jax import _autotune, _launch, _sharding, _xla
from chill_jax.configs import AttentionConfig, KernelConfig
from chill_jax.kernels import attn_bwd_dkdv, attn_bwd_dkdv_ws, attn_bwd_dq, attn_fwd, attn_fwd_combine, attn_fwd_ws
from chill_jax.kernels import attn_bwd_gluon, attn_fwd_gluon
from chill_jax.kernels import MAX_MASK_ARRAYS
from chill_jax.masks import (CausalChillMask, ChillMask, ChunkwiseChillMask, FullChillMask, PrefixLMChillMask,
                             SlidingWindowChillMask, batched_arrays, split_arrays)

LAYOUTS = ("BTNH", "BNTH")
IMPLEMENTATIONS = ("triton", "interpret", "xla")
_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32)
_PRECISIONS = ("ieee", "tf32", "tf32x3")
MAX_HEAD_DIM = 256
_MAX_AUTO_SPLITS = 32
# attn_fwd_combine's tile and launch (memory-bound).
_COMBINE_BLOCK_M = 32
# The masks the Gluon kernels take: built-in ones without arrays (exact
# types: a subclass's methods may use what Gluon does not build).
_GLUON_MASKS = (FullChillMask, CausalChillMask, SlidingWindowChillMask, ChunkwiseChillMask, PrefixLMChillMask)
_GLUON_FORWARD_CONSTEXPRS = ("MASK_FN", "MASK_TAKES_LEN", "K_RANGE_FN", "K_CONTINUOUS", "FULL_FN", "PACK",
                             *(f"A{i}" for i in range(16)))
_GLUON_BACKWARD_CONSTEXPRS = ("MASK_FN", "MASK_TAKES_LEN", "Q_RANGE_FN", "Q_CONTINUOUS", "FULL_FN", "PACK",
                              *(f"A{i}" for i in range(16)))
_COMBINE_CONFIG = KernelConfig(block_m=_COMBINE_BLOCK_M, block_n=16, num_warps=4, num_stages=1)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything static about one call (hashable: a jit/vjp/vmap constant)."""

    mask: ChillMask
    sm_scale: float
    layout: str
    implementation: str
    config: AttentionConfig
    precision: str
    prescale_qk: bool = False
    full_kv_lengths: bool = False  # no key lengths given: every one is the key sequence length
    full_q_lengths: bool = False  # likewise for the queries

    def forward(self, q, k, v, q_lens, kv_lens, *arrays):
        return _forward(self, q, k, v, q_lens, kv_lens, arrays)

    def backward(self, q, k, v, out, lse, dout, dlse, q_lens, kv_lens, *arrays):
        return _backward(self, q, k, v, out, lse, dout, dlse, q_lens, kv_lens, arrays)


def _dims(x_shape: tuple[int, ...], layout: str) -> tuple[int, int, int, int]:
    """(batch, seq, heads, head_dim) of a 4-D shape in ``layout``."""
    if layout == "BTNH":
        b, t, n, d = x_shape
    else:
        b, n, t, d = x_shape
    return b, t, n, d


def _strides(x_shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    """Element strides (batch, seq, head) of a contiguous array in ``layout``."""
    b, t, n, d = _dims(x_shape, layout)
    if layout == "BTNH":
        return t * n * d, n * d, d
    return n * t * d, d, t * d


def _geometry(static: _Static, q, k, v) -> dict[str, Any]:
    b, t, n, d = _dims(q.shape, static.layout)
    _, s, kh, _ = _dims(k.shape, static.layout)
    sq, sk, sv = (_strides(x.shape, static.layout) for x in (q, k, v))
    return dict(
        SQB=sq[0], SQT=sq[1], SQH=sq[2], SKB=sk[0], SKT=sk[1], SKH=sk[2],
        SVB=sv[0], SVT=sv[1], SVH=sv[2], NUM_HEADS=n, GROUP=n // kh,
        Q_LEN=t, KV_LEN=s, HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
        PRECISION=static.precision, PRESCALE=static.prescale_qk)


def _split_full(spec) -> bool:
    """Whether the kernels run the tiles the mask declares full in a loop of
    their own, without mask or bounds checks (``SPLIT_FULL``): whenever the
    mask declares full tiles."""
    return spec.full_fn is not None


def _mask_operands(arrays: tuple) -> list:
    """The kernels' mask-array operands ``M0 .. M3``: the mask's arrays (one
    row per example), then placeholders for the slots it does not use."""
    return [*arrays, *(jnp.zeros((1,), jnp.int32) for _ in range(MAX_MASK_ARRAYS - len(arrays)))]


def _forward_plan(static: _Static, cfg: KernelConfig, geo: dict[str, Any], q, arrays):
    """``(cfg, warp_specialize, splits)`` of a Triton forward launch at
    ``cfg``: whether it runs ``attn_fwd_ws``, the configuration it runs at
    (a warp-specialized one the call cannot take loses its wide key tiles)
    and its key split."""
    b, t, n = q.shape[0], geo["Q_LEN"], geo["NUM_HEADS"]
    warp_specialize = _warp_specialize(static, cfg, geo, q, arrays)
    if cfg.warp_specialize and not warp_specialize:
        # attn_fwd spills at the wide key tiles that warp specialization
        # likes (128x128 with 4 warps at D=128); it gets 64 keys instead.
        cfg = dataclasses.replace(cfg, block_n=min(cfg.block_n, 64), warp_specialize=False)
    multiprocessors = _launch.multiprocessors(static.implementation)
    slots = multiprocessors and multiprocessors * _programs_per_multiprocessor(
        cfg, warp_specialize, geo["BLOCK_D"], q.dtype.itemsize)
    splits = kv_splits(cfg, triton.cdiv(t, cfg.block_m) * b * n, triton.cdiv(geo["KV_LEN"], cfg.block_n), slots)
    return cfg, warp_specialize, splits


def _forward(static: _Static, q, k, v, q_lens, kv_lens, arrays=()):
    geo = _geometry(static, q, k, v)
    b, t, n, d = q.shape[0], geo["Q_LEN"], geo["NUM_HEADS"], geo["HEAD_DIM"]
    multiprocessors = _launch.multiprocessors(static.implementation)
    cfg, warp_specialize, splits = _forward_plan(static, static.config.fwd, geo, q, arrays)
    if splits == 1 and _gluon(static, static.config.fwd, geo, q, arrays):
        cfg = static.config.fwd
        # Each compute group of 64 queries takes its own full-tile run.
        spec = static.mask.spec(64, cfg.block_n, geo["KV_LEN"])
        # Persistent: one program per multiprocessor (or per output tile; the
        # first query tile may be partial).
        items = triton.cdiv(t, cfg.block_m) * b * n
        return _launch.launch(
            attn_fwd_gluon, grid=(min(items, multiprocessors or items),),
            args=[q, k, v, static.sm_scale],
            out_shapes=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, t), jnp.float32)],
            constexprs=dict(SQT=geo["SQT"], SQH=geo["SQH"], SKT=geo["SKT"], SKH=geo["SKH"], BATCH=b, NUM_HEADS=n,
                            GROUP=geo["GROUP"], Q_LEN=t, KV_LEN=geo["KV_LEN"], HEAD_DIM=d, BLOCK_M=cfg.block_m,
                            BLOCK_N=cfg.block_n, NUM_STAGES=cfg.num_stages, SPLIT_FULL=_split_full(spec),
                            UNMASKED=type(static.mask) is FullChillMask,
                            **{name: value for name, value in spec.constexprs().items()
                               if name in _GLUON_FORWARD_CONSTEXPRS}),
            config=cfg, implementation=static.implementation)
    if static.config.fwd.fallback is not None:
        # A Gluon configuration's calls the Gluon kernel does not take.
        cfg, warp_specialize, splits = _forward_plan(static, static.config.fwd.fallback, geo, q, arrays)
    spec = static.mask.spec(cfg.block_m, cfg.block_n, geo["KV_LEN"]).with_arrays(arrays)
    constexprs = dict(geo, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SPLIT_FULL=_split_full(spec),
                      KV_SPLITS=splits, **spec.constexprs())
    kernel = attn_fwd
    if warp_specialize:
        kernel = attn_fwd_ws
        constexprs["UNMASKED"] = isinstance(static.mask, FullChillMask)
    grid = (triton.cdiv(t, cfg.block_m), b * n)
    out_shapes = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, t), jnp.float32)]
    if splits > 1:
        grid += (splits,)
        out_shapes = [jax.ShapeDtypeStruct((splits, b, n, t, d), jnp.float32),
                      jax.ShapeDtypeStruct((splits, b, n, t), jnp.float32)]
    out, lse = _launch.launch(
        kernel, grid=grid, args=[q, k, v, q_lens, kv_lens, *_mask_operands(arrays), static.sm_scale],
        out_shapes=out_shapes, constexprs=constexprs, config=cfg, implementation=static.implementation)
    if splits > 1:
        out, lse = _launch.launch(
            attn_fwd_combine, grid=(triton.cdiv(t, _COMBINE_BLOCK_M), b * n), args=[out, lse],
            out_shapes=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, t), jnp.float32)],
            constexprs=dict(SQB=geo["SQB"], SQT=geo["SQT"], SQH=geo["SQH"], NUM_HEADS=n, Q_LEN=t, HEAD_DIM=d,
                            BLOCK_D=geo["BLOCK_D"], BLOCK_M=_COMBINE_BLOCK_M, KV_SPLITS=splits),
            config=_COMBINE_CONFIG, implementation=static.implementation)
    return out, lse


def _programs_per_multiprocessor(cfg: KernelConfig, warp_specialize: bool, block_d: int, itemsize: int, *,
                                 query_tiles: int = 1) -> int:
    """An estimate of how many forward or dQ programs run at once on one
    multiprocessor: one warp-specialized program (its 12 warps at 168
    registers fill the register file; sm_90 builds), otherwise as many as
    the registers (up to 255 per thread) and the shared memory (the
    program's ``query_tiles`` query-side tiles, 1 for the forward and 2 for
    dQ, and ``num_stages`` key and value tiles, within Hopper's 227 KB)
    allow, at most 2."""
    if warp_specialize:
        return 1
    by_registers = 65536 // (cfg.num_warps * 32 * 255)
    shared = (query_tiles * cfg.block_m + 2 * cfg.num_stages * cfg.block_n) * block_d * itemsize
    return max(1, min(2, by_registers, (227 * 1024) // shared))


def kv_splits(cfg: KernelConfig, programs: int, key_tiles: int, slots: int | None) -> int:
    """How many parts the forward splits each query tile's keys into.

    ``cfg.kv_splits`` when set (at most one part per key tile). Otherwise
    (0, automatic) the split fills a GPU that ``programs`` query tiles
    would leave partly idle, where ``slots`` programs run at once (one wave):
    none when they already fill one wave to at least 80%, or when ``slots``
    is unknown (the interpreter); otherwise the fewest parts, at most 32
    and leaving at least 4 key tiles per part, whose waves are filled within
    90% of the best of those counts. A split costs float32 partial results
    and a launch to merge them (``attn_fwd_combine``).
    """
    if cfg.kv_splits:
        return max(1, min(cfg.kv_splits, key_tiles))
    if not slots or programs >= 0.8 * slots:
        return 1
    limit = max(1, min(_MAX_AUTO_SPLITS, key_tiles // 4))

    def filled(parts: int) -> float:
        waves = programs * parts / slots
        return waves / math.ceil(waves)

    best = max(filled(parts) for parts in range(1, limit + 1))
    return next(parts for parts in range(1, limit + 1) if filled(parts) >= 0.9 * best)


def _gluon_allowed(static: _Static, cfg: KernelConfig, geo: dict[str, Any], q, arrays, kernel, masks: tuple,
                   shared_bytes: int, query_step: int) -> bool:
    """The conditions the Gluon kernels share: asked for (``cfg.gluon``),
    importable (``kernel``), launchable (``_launch.can_run_gluon``: compute
    capability 9.x), a mask of one of the kernel's ``masks`` types (exact
    types: a subclass's methods may differ), 16-bit inputs, head dim 64 or
    128, no query or key lengths, a query length that is a multiple of
    ``query_step``, whole key tiles, no ``prescale_qk``, and
    ``shared_bytes`` of tiles within Hopper's 227 KB of shared memory."""
    if not cfg.gluon or kernel is None or arrays or type(static.mask) not in masks:
        return False
    if not (static.full_q_lengths and static.full_kv_lengths) or static.prescale_qk:
        return False
    d, t, s = geo["HEAD_DIM"], geo["Q_LEN"], geo["KV_LEN"]
    if q.dtype.itemsize != 2 or d not in (64, 128) or t % query_step or s % cfg.block_n or s < cfg.block_n:
        return False
    if shared_bytes > 227 * 1024:
        return False
    return _launch.can_run_gluon(static.implementation)


def _gluon(static: _Static, cfg: KernelConfig, geo: dict[str, Any], q, arrays) -> bool:
    """Whether the forward runs ``attn_fwd_gluon`` (``KernelConfig.gluon``):
    :func:`_gluon_allowed`, with the Q tile, the output's staging tile and
    ``num_stages`` K and V tiles in shared memory (at D=128 and block_n 128
    that allows 2 stages), and a query length that is a multiple of 64 (a
    compute group's rows; the first query tile may be partial) and at least
    one whole tile (with a single partial tile Triton 3.6 fails to build
    the kernel: its dead groups' rows fold to constants)."""
    if geo["Q_LEN"] < cfg.block_m:
        return False
    shared = (2 * cfg.block_m + 2 * cfg.num_stages * cfg.block_n) * geo["HEAD_DIM"] * 2
    return _gluon_allowed(static, cfg, geo, q, arrays, attn_fwd_gluon, _GLUON_MASKS, shared, 64)


def _gluon_backward(static: _Static, cfg: KernelConfig, geo: dict[str, Any], q, arrays) -> bool:
    """Whether the backward runs ``attn_bwd_gluon`` (``KernelConfig.gluon``
    on ``bwd_dkdv``): :func:`_gluon_allowed` for its 64x128 tile, for the
    built-in masks without arrays (``_GLUON_MASKS``), with the ring of
    ``num_stages`` Q and dO tiles, the key and value tile, and the dS and dQ
    staging tiles in shared memory (at D=128 that allows 2 stages)."""
    d = geo["HEAD_DIM"]
    # Q and dO ring with their lse and delta (float32), K and V, dS^T (2 steps
    # x 2 groups), dQ staging (float32, 2 x 2 half tiles), and 1 KB for the
    # barriers.
    shared = ((2 * cfg.num_stages * cfg.block_m + 2 * cfg.block_n) * d * 2 + 2 * cfg.num_stages * cfg.block_m * 4
              + 2 * cfg.block_n * cfg.block_m * 2 + 2 * cfg.block_m * d * 4 + 1024)
    return _gluon_allowed(static, cfg, geo, q, arrays, attn_bwd_gluon, _GLUON_MASKS, shared, cfg.block_m)


def _warp_specialize(static: _Static, cfg, geo: dict[str, Any], q, arrays, *, dkdv: bool = False) -> bool:
    """Whether a launch runs its warp-specialized kernel (tensor descriptors,
    one warp-specialized loop): ``attn_fwd_ws``, or ``attn_bwd_dkdv_ws`` with
    ``dkdv``. Asked for by the configuration, launchable by the
    implementation (the interpreter runs it without warp specialization),
    and within the kernel's conditions: 16-bit inputs, a power-of-two head
    dim, whole key tiles, every key length the sequence length (key tiles
    read past a length would take other rows, which may hold anything), and
    a mask without arrays. dK/dV also needs the same of the queries, at most
    64 queries per tile (Triton 3.6 fails to build 128) and no
    ``prescale_qk``."""
    if not cfg.warp_specialize or arrays or not static.full_kv_lengths:
        return False
    if dkdv and not (static.full_q_lengths and not static.prescale_qk and cfg.block_m <= 64
                     and geo["Q_LEN"] % cfg.block_m == 0):
        return False
    if static.implementation == "triton" and not _launch.can_warp_specialize("triton"):
        return False
    return (q.dtype.itemsize == 2 and geo["HEAD_DIM"] == geo["BLOCK_D"]
            and geo["KV_LEN"] % cfg.block_n == 0)


def _backward(static: _Static, q, k, v, out, lse, dout, dlse, q_lens, kv_lens, arrays=()):
    geo = _geometry(static, q, k, v)
    b, t, n, s = q.shape[0], geo["Q_LEN"], geo["NUM_HEADS"], geo["KV_LEN"]
    kv_heads = n // geo["GROUP"]
    dout = dout.astype(q.dtype)
    if _gluon_backward(static, static.config.bwd_dkdv, geo, q, arrays):
        return _backward_gluon(static, geo, q, k, v, out, lse, dout, dlse)
    mask_operands = _mask_operands(arrays)
    # dQ first: its programs also compute delta, which dK/dV reads.
    cfg = static.config.bwd_dq
    spec = static.mask.spec(cfg.block_m, cfg.block_n, s).with_arrays(arrays)
    multiprocessors = _launch.multiprocessors(static.implementation)
    slots = multiprocessors and multiprocessors * _programs_per_multiprocessor(
        cfg, False, geo["BLOCK_D"], q.dtype.itemsize, query_tiles=2)
    splits = kv_splits(cfg, triton.cdiv(t, cfg.block_m) * b * n, triton.cdiv(s, cfg.block_n), slots)
    grid = (triton.cdiv(t, cfg.block_m), b * n)
    dq_shape = jax.ShapeDtypeStruct(q.shape, q.dtype)
    if splits > 1:  # one float32 partial dQ per split, summed below
        grid += (splits,)
        dq_shape = jax.ShapeDtypeStruct((splits, *q.shape), jnp.float32)
    dq, delta = _launch.launch(
        attn_bwd_dq, grid=grid,
        args=[q, k, v, out, dout, lse, dlse.astype(jnp.float32), q_lens, kv_lens, *mask_operands,
              static.sm_scale],
        out_shapes=[dq_shape, jax.ShapeDtypeStruct((b, n, t), jnp.float32)],
        constexprs=dict(geo, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SPLIT_FULL=_split_full(spec),
                        KV_SPLITS=splits, **spec.constexprs()),
        config=cfg, implementation=static.implementation)
    if splits > 1:
        dq = jnp.sum(dq, axis=0).astype(q.dtype)
    # A Gluon configuration's calls the Gluon kernel does not take run at its fallback.
    cfg = static.config.bwd_dkdv.fallback or static.config.bwd_dkdv
    warp_specialize = _warp_specialize(static, cfg, geo, q, arrays, dkdv=True)
    if cfg.warp_specialize and not warp_specialize:
        # attn_bwd_dkdv spills at the 64x128 tile the warp-specialized kernel
        # takes at D=128 (two 128-key float32 accumulators in 4 warps); it
        # gets its best D=128 tile instead (32x64, 3 stages; sweeps v6-v9).
        cfg = dataclasses.replace(cfg, block_m=min(cfg.block_m, 32), block_n=min(cfg.block_n, 64), num_stages=3,
                                  warp_specialize=False, gluon=False)
    spec = static.mask.spec(cfg.block_m, cfg.block_n, s).with_arrays(arrays)
    constexprs = dict(geo, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SPLIT_FULL=_split_full(spec),
                      **spec.constexprs(backward_q_ranges=True))
    kernel = attn_bwd_dkdv
    if warp_specialize:
        kernel = attn_bwd_dkdv_ws
        constexprs["UNMASKED"] = isinstance(static.mask, FullChillMask)
    dk, dv = _launch.launch(
        kernel, grid=(triton.cdiv(s, cfg.block_n), b * kv_heads),
        args=[q, k, v, dout, lse, delta, q_lens, kv_lens, *mask_operands, static.sm_scale],
        out_shapes=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        constexprs=constexprs, config=cfg, implementation=static.implementation)
    return dq, dk, dv


def _backward_gluon(static: _Static, geo: dict[str, Any], q, k, v, out, lse, dout, dlse):
    """The one-pass backward (``attn_bwd_gluon``): delta from XLA, dK and dV
    from the kernel, dQ summed by the kernel in float32."""
    cfg = static.config.bwd_dkdv
    b, t, n, s, d = q.shape[0], geo["Q_LEN"], geo["NUM_HEADS"], geo["KV_LEN"], geo["HEAD_DIM"]
    spec = static.mask.spec(cfg.block_m, cfg.block_n, s)
    rowsum = jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32), axis=-1)
    if static.layout == "BTNH":
        rowsum = rowsum.transpose(0, 2, 1)
    delta = rowsum - dlse.astype(jnp.float32)
    # Persistent: one program per multiprocessor (or per key tile).
    items = s // cfg.block_n * b * n // geo["GROUP"]
    dq, dk, dv = _launch.launch(
        attn_bwd_gluon, grid=(min(items, _launch.multiprocessors(static.implementation) or items),),
        args=[q, k, v, dout, lse, delta, static.sm_scale],
        out_shapes=[jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct(k.shape, k.dtype),
                    jax.ShapeDtypeStruct(v.shape, v.dtype)],
        constexprs=dict(SQT=geo["SQT"], SQH=geo["SQH"], SKT=geo["SKT"], SKH=geo["SKH"], BATCH=b, NUM_HEADS=n,
                        GROUP=geo["GROUP"], Q_LEN=t, KV_LEN=s, HEAD_DIM=d, BLOCK_M=cfg.block_m,
                        BLOCK_N=cfg.block_n, NUM_STAGES=cfg.num_stages, SPLIT_FULL=_split_full(spec),
                        UNMASKED=type(static.mask) is FullChillMask,
                        **{name: value for name, value in spec.constexprs(backward_q_ranges=True).items()
                           if name in _GLUON_BACKWARD_CONSTEXPRS}),
        config=cfg, implementation=static.implementation, zeroed_outputs=(0,))
    return dq.astype(q.dtype), dk, dv


def _check_array(name: str, x: Any) -> None:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D (batch, seq, heads, head_dim) or (batch, heads, seq, head_dim), "
                         f"got shape {tuple(x.shape)}")
    if jnp.dtype(x.dtype) not in [jnp.dtype(d) for d in _DTYPES]:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {x.dtype}")


def _lengths(name: str, x: Any, batch: int, default: int):
    if x is None:
        return jnp.full((batch,), default, jnp.int32)
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an int32 array of shape ({batch},), got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array of shape ({batch},), got dtype {x.dtype}")
    if tuple(x.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) (one length per batch element), got {tuple(x.shape)}")
    return jnp.asarray(x).astype(jnp.int32)


def _resolve_implementation(implementation: str | None) -> str:
    if implementation is None:
        return "triton" if _launch.cuda_available() else "xla"
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be None or one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "triton" and not _launch.cuda_available():
        raise ValueError("implementation='triton' needs a CUDA GPU as JAX's default backend; "
                         "use implementation='xla' or 'interpret' (or None) on this machine")
    return implementation


def _resolve_precision(precision: Any) -> str:
    if precision is None:
        return "ieee"
    if isinstance(precision, jax.lax.Precision):
        return {jax.lax.Precision.DEFAULT: "tf32", jax.lax.Precision.HIGH: "tf32x3",
                jax.lax.Precision.HIGHEST: "ieee"}[precision]
    if isinstance(precision, str) and precision.lower() in _PRECISIONS:
        return precision.lower()
    if isinstance(precision, str) and precision.upper() in ("DEFAULT", "HIGH", "HIGHEST"):
        return _resolve_precision(jax.lax.Precision[precision.upper()])
    raise ValueError(f"precision must be None, one of {_PRECISIONS} or a jax.lax.Precision, got {precision!r}")


def attention(query, key, value, mask: ChillMask | None = None, *, lengths=None, q_lengths=None,
              kv_lengths=None, sm_scale: float | None = None, return_lse: bool = False,
              layout: str = "BTNH", implementation: str | None = None, precision=None,
              prescale_qk: bool = False, config: AttentionConfig | None = None, autotune: bool = False):
    """Sparse flash attention with a mask inlined into Triton kernels.

    Args:
      query: ``[B, T, N, D]`` (layout ``"BTNH"``) or ``[B, N, T, D]``
        (``"BNTH"``); float16, bfloat16 or float32.
      key: ``[B, S, K, D]`` / ``[B, K, S, D]``, same dtype; ``N % K == 0``
        (each group of ``N // K`` query heads shares one key/value head).
      value: same shape as ``key``.
      mask: a :class:`ChillMask` instance; None means full attention. Its
        runtime arrays (if any; ``[B, ...]`` or ``[1, ...]``) are operands
        of the kernels: new values never retrace.
      lengths: int ``[B]``, valid length of each example (queries and keys);
        values above the sequence length are clamped. Shorthand for both
        ``q_lengths`` and ``kv_lengths``.
      q_lengths: int ``[B]``, valid query length per example.
      kv_lengths: int ``[B]``, valid key/value length per example.
      sm_scale: logit scale, default ``1 / sqrt(D)``.
      return_lse: also return the log-sum-exp, float32 ``[B, N, T]``
        (natural log of the row's softmax denominator, ``-inf`` for rows
        with no allowed key).
      layout: ``"BTNH"`` or ``"BNTH"``; read and written without transposes.
      implementation: ``"triton"`` (jax-triton on a CUDA GPU),
        ``"interpret"`` (the same kernels through Triton's interpreter on the
        host: exact but slow, for tests), ``"xla"`` (blockwise pure-JAX
        attention evaluating the same mask methods; CPU/TPU), or None
        (triton on a CUDA GPU, else xla).
      precision: float32 dot precision: ``"ieee"`` (default), ``"tf32"``,
        ``"tf32x3"`` or a ``jax.lax.Precision``.
      prescale_qk: multiply the query tile by the scale once (rounded to the
        input dtype) instead of every logit tile (the dK/dV kernel scales
        its key tile instead): faster, slightly less exact for 16-bit
        inputs.
      config: an :class:`AttentionConfig` overriding the default tiling
        (the GPU's tuned table entry for the head dim, dtype and mask).
      autotune: time candidate configurations for this problem once and
        use the fastest: the winner is cached on disk per (GPU, dtype,
        head dim, GQA group, layout, mask, power-of-two buckets of the
        lengths and of batch x heads) in ``$CHILL_JAX_CACHE_DIR/autotune.json``
        (default ``~/.cache/chill_jax/autotune.json``), so later calls and
        processes reuse it. Tuning runs when the call is traced, on random
        arrays of the same shapes. Needs a kernel implementation
        (``"triton"``, or ``"interpret"`` for tests); ignored when
        ``implementation=None`` resolves to ``"xla"`` (no kernels to tune
        there), refused with ``implementation="xla"`` or an explicit
        ``config``.

    Returns:
      The output, shaped and typed like ``query``; rows at or past a query
      length and rows with no allowed key are 0. With ``return_lse``,
      ``(output, lse)``.

    Raises:
      TypeError, ValueError: an argument of the wrong type, shape or value.
    """
    for name, x in (("query", query), ("key", key), ("value", value)):
        _check_array(name, x)
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    b, t, n, d = _dims(query.shape, layout)
    kb, s, kh, kd = _dims(key.shape, layout)
    if tuple(key.shape) != tuple(value.shape):
        raise ValueError(f"key and value must have the same shape, got {tuple(key.shape)} and {tuple(value.shape)}")
    if kb != b:
        raise ValueError(f"key batch size {kb} must equal query batch size {b}")
    if kd != d:
        raise ValueError(f"key head_dim {kd} must equal query head_dim {d}")
    if d < 1 or d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be between 1 and {MAX_HEAD_DIM}, got {d}")
    if t < 1 or s < 1:
        raise ValueError(f"sequence lengths must be >= 1, got query {t} and key {s}")
    if kh < 1 or n % kh:
        raise ValueError(f"query heads ({n}) must be a multiple of key/value heads ({kh})")
    if mask is None:
        mask = FullChillMask()
    if isinstance(mask, type):
        raise TypeError(f"mask must be a ChillMask instance, got the class {mask.__name__}; "
                        f"call it, e.g. {mask.__name__}(...)")
    if not isinstance(mask, ChillMask):
        raise TypeError(f"mask must be a ChillMask instance or None, got {type(mask).__name__}")
    mask.spec()
    skeleton, mask_arrays = split_arrays(mask, b, t, s)
    if lengths is not None and (q_lengths is not None or kv_lengths is not None):
        raise ValueError("pass either lengths or q_lengths/kv_lengths, not both")
    if lengths is not None:
        q_lengths = kv_lengths = lengths
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(d)
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, numbers.Real) or not (
            math.isfinite(sm_scale) and sm_scale > 0):
        raise ValueError(f"sm_scale must be a positive finite float, got {sm_scale!r}")
    if not isinstance(prescale_qk, bool):
        raise TypeError(f"prescale_qk must be a bool, got {type(prescale_qk).__name__}")
    if config is not None and not isinstance(config, AttentionConfig):
        raise TypeError(f"config must be a chill_jax.AttentionConfig, got {type(config).__name__}")
    if not isinstance(autotune, bool):
        raise TypeError(f"autotune must be a bool, got {type(autotune).__name__}")
    if autotune and config is not None:
        raise ValueError("autotune=True searches the configuration; pass either config or autotune=True, not both")
    if autotune and implementation == "xla":
        raise ValueError("autotune=True needs a kernel implementation ('triton' or 'interpret'), "
                         "got implementation='xla'")
    impl = _resolve_implementation(implementation)
    prec = _resolve_precision(precision)
    q_lens = _lengths("q_lengths" if lengths is None else "lengths", q_lengths, b, t)
    kv_lens = _lengths("kv_lengths" if lengths is None else "lengths", kv_lengths, b, s)
    if impl == "xla":
        blocks = {} if config is None else dict(block_q=config.fwd.block_m, block_k=config.fwd.block_n)
        scale = float(sm_scale)
        if prescale_qk:  # query rounded once to its dtype, as in the kernels; autodiff scales dq
            query, scale = (query * scale).astype(query.dtype), 1.0
        out, lse = _xla.xla_attention(query, key, value, q_lens, kv_lens, mask=mask, sm_scale=scale,
                                      layout=layout, precision=prec, **blocks)
        return (out, lse) if return_lse else out
    if config is None:
        config = _autotune.resolve_config(impl, query.shape, key.shape, query.dtype, mask, layout=layout,
                                          sm_scale=float(sm_scale), precision=prec, prescale_qk=prescale_qk,
                                          autotune=autotune)
    static = _Static(mask=skeleton, sm_scale=float(sm_scale), layout=layout, implementation=impl,
                     config=config, precision=prec, prescale_qk=prescale_qk,
                     full_kv_lengths=lengths is None and kv_lengths is None,
                     full_q_lengths=lengths is None and q_lengths is None)
    out, lse = _sharding.attention_op(static, query, key, value, q_lens, kv_lens, *batched_arrays(mask_arrays, b))
    return (out, lse) if return_lse else out
