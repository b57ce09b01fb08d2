# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Tests of the pure-JAX blockwise attention (``chill_jax._xla.xla_attention``).

Every case compares the output, the lse and the gradients (for cotangents on
both the output and the lse) against the float64 numpy reference, which
evaluates the masks through Triton's interpreter. The masks defined here live
in this module because Triton reads a method's source.
"""

from __future__ import annotations

import functools
import math
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import triton
import triton.language as tl

import chill_jax
from chill_jax import ChillMask, _xla
from chill_jax._xla import xla_attention
from chill_jax.reference import reference_attention

TOLERANCES = {"float32": 4e-6, "bfloat16": 4e-2}
LSE_TOLERANCE = 1e-6


class ReadmeWindowMask(ChillMask):
    """A sliding window written like the PyTorch library's README example:
    ``mask`` without ``seq_len``, range methods with the builtin max/min."""

    def __init__(self, left_context, right_context, stride):
        super().__init__((left_context, right_context, stride))

    @staticmethod
    def mask(q: tl.tensor, k: tl.tensor, args) -> tl.tensor:
        left_context, right_context, stride = args
        offset = k[None, :] - q[:, None]
        return (offset >= -left_context) & (offset <= right_context) & (offset % stride == 0)

    @staticmethod
    def q_range_for_k(k: int, seq_len: tl.tensor, args) -> tuple[tl.tensor, tl.tensor]:
        left_context, right_context, stride = args
        return max(0, k - right_context), min(k + left_context, seq_len - 1)

    @staticmethod
    def k_range_for_q(q: int, seq_len: tl.tensor, args) -> tuple[tl.tensor, tl.tensor]:
        left_context, right_context, stride = args
        return max(0, q - left_context), min(q + right_context, seq_len - 1)


class TruncDivMask(ChillMask):
    """Stripes of ``(q - k) // 4`` with negative differences: Triton's ``//``
    and ``%`` truncate toward zero, Python's and jnp's floor."""

    def __init__(self):
        super().__init__(())

    @staticmethod
    def mask(q, k, seq_len, args):
        diff = q[:, None] - k[None, :]
        return (diff // 4) % 2 == 0

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        return 0, seq_len - 1

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        return 0, seq_len - 1


@triton.jit
def _band(diff, width):
    inside = tl.where(tl.abs(diff) <= width, 1, 0)
    return inside.to(tl.int1)


class HelperMask(ChillMask):
    """A band through a ``@triton.jit`` helper, ``tl.abs``/``tl.where``/
    ``.to``, and ``tl.cdiv``/``tl.minimum``/``tl.maximum`` ranges that
    depend on the lengths; declared discontinuous."""

    def __init__(self, width):
        super().__init__((width,))

    @staticmethod
    def mask(q, k, seq_len, args):
        (width,) = args
        return _band(q[:, None] - k[None, :], width) & (k[None, :] < tl.cdiv(seq_len, 2) * 2)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        (width,) = args
        return tl.maximum(q - width, 0), tl.minimum(q + width, seq_len - 1)

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        (width,) = args
        return tl.maximum(k - width, 0), tl.minimum(k + width, seq_len - 1)

    @staticmethod
    def k_lims_continuous():
        return False

    @staticmethod
    def q_lims_continuous():
        return False


class BranchyCausalMask(ChillMask):
    """Causal, with Python control flow on a position in ``k_range_for_q``
    (valid Triton, beyond the JAX shim: evaluated through the interpreter)."""

    def __init__(self):
        super().__init__(())

    @staticmethod
    def mask(q, k, args):
        return q[:, None] >= k[None, :]

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        hi = q
        if q >= seq_len:
            hi = seq_len - 1
        return 0, hi

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        return k, seq_len - 1


MASKS = (
    chill_jax.FullChillMask(),
    chill_jax.CausalChillMask(),
    chill_jax.SlidingWindowChillMask(20, 7),
    chill_jax.ChunkwiseChillMask(32, 1),
    chill_jax.PrefixLMChillMask(40),
    ReadmeWindowMask(9, 4, 2),
)


def _shape(layout, b, t, n, d):
    return (b, t, n, d) if layout == "BTNH" else (b, n, t, d)


def _inputs(rng, dtype, *, b=2, t=100, s=None, n=4, kh=2, d=16, layout="BTNH"):
    s = t if s is None else s
    draw = lambda shape: jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dtype)
    q = draw(_shape(layout, b, t, n, d))
    k, v = draw(_shape(layout, b, s, kh, d)), draw(_shape(layout, b, s, kh, d))
    dout = draw(q.shape)
    dlse = jnp.asarray(rng.standard_normal((b, n, t), dtype=np.float32))
    return q, k, v, dout, dlse


def _f64(x):
    return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def _bnth(x, layout):
    return x if layout == "BNTH" else x.transpose(0, 2, 1, 3)


@functools.lru_cache(maxsize=None)
def _jitted(mask, layout, blocks):
    """Jitted output, lse and VJP of (dout, dlse); cached so cases of equal
    shapes that differ only in the lengths compile once."""

    @jax.jit
    def fn(q, k, v, dout, dlse, q_lens, kv_lens):
        (out, lse), vjp = jax.vjp(
            lambda q, k, v: xla_attention(q, k, v, q_lens, kv_lens, mask=mask, sm_scale=0.3, layout=layout,
                                          **dict(blocks)), q, k, v)
        return (out, lse, *vjp((dout, dlse)))

    return fn


def _run(q, k, v, dout, dlse, mask, q_lens, kv_lens, layout, **blocks):
    """Output, lse and gradients of xla_attention (jitted) for cotangents dout and dlse."""
    fn = _jitted(mask, layout, tuple(sorted(blocks.items())))
    out, lse, dq, dk, dv = fn(q, k, v, dout, dlse, q_lens, kv_lens)
    return dict(out=out, lse=lse, dq=dq, dk=dk, dv=dv)


def _check(result, q, k, v, dout, dlse, mask, q_lens, kv_lens, layout):
    """Compares with the float64 reference; rows/keys without attention must be exactly 0."""
    lens = lambda x: None if x is None else np.asarray(x)
    ref = reference_attention(_f64(q), _f64(k), _f64(v), mask, q_lengths=lens(q_lens), kv_lengths=lens(kv_lens),
                              sm_scale=0.3, layout=layout, dout=_f64(dout), dlse=_f64(dlse))
    tol = TOLERANCES[jnp.dtype(q.dtype).name]
    for name in ("out", "lse", "dq", "dk", "dv"):
        actual, expected = _f64(result[name]), ref[name]
        want_dtype = jnp.float32 if name == "lse" else {"dq": q, "dk": k, "dv": v}.get(name, q).dtype
        assert result[name].dtype == want_dtype, f"{name}: dtype {result[name].dtype}"
        assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
        assert not np.isnan(actual).any(), f"{name}: NaN"
        assert (np.isneginf(actual) == np.isneginf(expected)).all(), f"{name}: -inf pattern differs"
        finite = np.isfinite(expected)
        if finite.any():
            err = np.abs(actual[finite] - expected[finite]).max() / max(np.abs(expected[finite]).max(), 1e-6)
            assert err <= (LSE_TOLERANCE if name == "lse" else tol), f"{name}: relative error {err:.2e}"
    dead_rows = np.isneginf(ref["lse"])
    for name in ("out", "dq"):
        assert (_bnth(_f64(result[name]), layout)[dead_rows] == 0).all(), f"{name}: dead rows not exactly 0"
    dead_keys = (_bnth(ref["dk"], layout) == 0).all(-1) & (_bnth(ref["dv"], layout) == 0).all(-1)
    for name in ("dk", "dv"):
        assert (_bnth(_f64(result[name]), layout)[dead_keys] == 0).all(), f"{name}: unattended keys not exactly 0"


@pytest.mark.parametrize("mask,dtype", [(m, jnp.float32) for m in MASKS]
                         + [(m, jnp.bfloat16) for m in (MASKS[1], MASKS[2], MASKS[5])],
                         ids=lambda x: repr(x) if isinstance(x, ChillMask) else jnp.dtype(x).name)
def test_masks_random_lengths(rng, mask, dtype):
    """Every mask, GQA, T not a block multiple, random per-example lengths."""
    q, k, v, dout, dlse = _inputs(rng, dtype)
    q_lens = jnp.asarray(rng.integers(1, 101, size=2), jnp.int32)
    kv_lens = jnp.asarray(rng.integers(1, 101, size=2), jnp.int32)
    result = _run(q, k, v, dout, dlse, mask, q_lens, kv_lens, "BTNH", block_q=32, block_k=16)
    _check(result, q, k, v, dout, dlse, mask, q_lens, kv_lens, "BTNH")


@pytest.mark.parametrize("layout", ["BTNH", "BNTH"])
@pytest.mark.parametrize("t,s,n,kh,mask", [(100, 60, 4, 1, chill_jax.CausalChillMask()),
                                           (37, 150, 2, 2, chill_jax.SlidingWindowChillMask(20, 7)),
                                           (1, 70, 6, 3, chill_jax.PrefixLMChillMask(40))],
                         ids=["T>S-mqa-causal", "T<S-window", "T=1-gqa-prefix"])
def test_shapes_and_layouts(rng, layout, t, s, n, kh, mask):
    """Cross-attention shapes (absolute positions from 0 on both sides), both layouts."""
    q, k, v, dout, dlse = _inputs(rng, jnp.float32, t=t, s=s, n=n, kh=kh, layout=layout)
    result = _run(q, k, v, dout, dlse, mask, None, None, layout, block_q=32, block_k=32)
    _check(result, q, k, v, dout, dlse, mask, None, None, layout)


@pytest.mark.parametrize("q_lens,kv_lens", [((0, 1), (100, 100)), ((100, 100), (0, 1)), ((1, 0), (1, 0)),
                                            ((1000, 100), (1000, -5)), ((-1, 57), (64, 1000))],
                         ids=["q0-q1", "kv0-kv1", "ones-zeros", "over-negative", "negative-over"])
def test_edge_lengths(rng, q_lens, kv_lens):
    """Lengths 0, 1, above the sequence length and negative (clamped)."""
    q, k, v, dout, dlse = _inputs(rng, jnp.float32)
    q_lens, kv_lens = jnp.asarray(q_lens, jnp.int32), jnp.asarray(kv_lens, jnp.int32)
    mask = chill_jax.SlidingWindowChillMask(20, 7)
    result = _run(q, k, v, dout, dlse, mask, q_lens, kv_lens, "BTNH", block_q=32, block_k=32)
    _check(result, q, k, v, dout, dlse, mask, np.clip(q_lens, 0, 100), np.clip(kv_lens, 0, 100), "BTNH")


def test_nan_padding_does_not_leak(rng):
    """NaN past the lengths (queries, keys, values, output cotangent) stays out,
    as with the kernels' masked loads."""
    q, k, v, dout, dlse = _inputs(rng, jnp.float32)
    q_lens, kv_lens = jnp.asarray([70, 100], jnp.int32), jnp.asarray([45, 90], jnp.int32)
    mask = chill_jax.SlidingWindowChillMask(20, 7)
    t_pos, s_pos = np.arange(100)[None, :, None, None], np.arange(100)[None, :, None, None]
    dirty = lambda x, pos, lens: jnp.where(pos >= np.asarray(lens)[:, None, None, None], jnp.nan, x)
    result = _run(dirty(q, t_pos, q_lens), dirty(k, s_pos, kv_lens), dirty(v, s_pos, kv_lens),
                  dirty(dout, t_pos, q_lens), dlse.at[0, :, 80:].set(jnp.nan), mask, q_lens, kv_lens, "BTNH",
                  block_q=32, block_k=32)
    dlse = dlse.at[0, :, 80:].set(0.0)
    _check(result, q, k, v, dout, dlse, mask, q_lens, kv_lens, "BTNH")


@pytest.mark.parametrize("mask", [TruncDivMask(), HelperMask(6), chill_jax.ChunkwiseChillMask(7, 2)], ids=repr)
def test_shim_matches_interpreter(rng, mask):
    """The shim's mask and ranges equal the interpreter's, negative ``//``/``%`` included."""
    t, s, kv_len = 45, 61, 50
    ev = _xla._evaluator(mask)
    assert isinstance(ev, _xla._ShimEvaluator)
    dense = np.asarray(ev.allowed(None, jnp.int32(0), jnp.int32(0), t, s, jnp.int32(kv_len)))
    np.testing.assert_array_equal(dense[:, :kv_len], mask.make_mask(t, kv_len, seq_len=kv_len))
    k_ranges, q_ranges = mask.ranges(t, kv_len)
    lo, hi = ev.k_range(None, jnp.arange(t, dtype=jnp.int32), jnp.int32(kv_len))
    np.testing.assert_array_equal(np.stack([lo, hi], 1), k_ranges)
    lo, hi = ev.q_range(None, jnp.arange(kv_len, dtype=jnp.int32), jnp.int32(t))
    np.testing.assert_array_equal(np.stack([lo, hi], 1), q_ranges)
    q, k, v, dout, dlse = _inputs(rng, jnp.float32, t=t, s=s)
    lens = jnp.asarray([t, 31], jnp.int32), jnp.asarray([kv_len, s], jnp.int32)
    result = _run(q, k, v, dout, dlse, mask, *lens, "BTNH", block_q=16, block_k=16)
    _check(result, q, k, v, dout, dlse, mask, *lens, "BTNH")


def test_fallback_to_interpreter(rng):
    """A method the shim cannot run warns once and goes through the interpreter."""
    mask = BranchyCausalMask()
    q, k, v, dout, dlse = _inputs(rng, jnp.float32, t=40, s=50)
    lens = jnp.asarray([40, 17], jnp.int32), jnp.asarray([33, 50], jnp.int32)
    with pytest.warns(UserWarning, match="interpreter"):
        result = _run(q, k, v, dout, dlse, mask, *lens, "BTNH", block_q=16, block_k=16)
    _check(result, q, k, v, dout, dlse, mask, *lens, "BTNH")


def test_default_lengths_and_blocks(rng):
    """No lengths and the default block sizes."""
    q, k, v, dout, dlse = _inputs(rng, jnp.float32, t=150, s=130)
    mask = chill_jax.CausalChillMask()
    result = _run(q, k, v, dout, dlse, mask, None, None, "BTNH")
    _check(result, q, k, v, dout, dlse, mask, None, None, "BTNH")


def test_vmap_and_vmap_grad(rng):
    """vmap over a leading axis (lengths batched, keys shared) and vmap of grad."""
    mask = chill_jax.SlidingWindowChillMask(5, 2)
    qs = jnp.asarray(rng.standard_normal((3, 2, 40, 2, 8), dtype=np.float32))
    k, v = (jnp.asarray(rng.standard_normal((2, 40, 1, 8), dtype=np.float32)) for _ in range(2))
    lens = jnp.asarray(rng.integers(0, 45, size=(3, 2)), jnp.int32)

    def loss(q, k, v, lens):
        out, lse = xla_attention(q, k, v, lens, lens, mask=mask, sm_scale=0.3, layout="BTNH", block_q=16,
                                 block_k=16)
        return jnp.sum(out ** 2) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0)), (out, lse)

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    (dq, dk, dv), (out, lse) = jax.jit(jax.vmap(grad, in_axes=(0, None, None, 0)))(qs, k, v, lens)
    grad_one = jax.jit(grad)
    for i in range(3):
        (dq_i, dk_i, dv_i), (out_i, lse_i) = grad_one(qs[i], k, v, lens[i])
        for batched, single in ((out, out_i), (lse, lse_i), (dq, dq_i), (dk, dk_i), (dv, dv_i)):
            np.testing.assert_allclose(batched[i], single, rtol=1e-5, atol=1e-6)
        ref = reference_attention(qs[i], k, v, mask, lengths=np.asarray(lens[i]), sm_scale=0.3,
                                  dout=2 * _f64(out_i), dlse=np.where(np.isfinite(lse_i), 1.0, 0.0))
        np.testing.assert_allclose(dq[i], ref["dq"], atol=2e-5)
        np.testing.assert_allclose(dk[i], ref["dk"], atol=2e-5)


def test_nested_vmap_matches_loop(rng):
    q = jnp.asarray(rng.standard_normal((2, 3, 1, 20, 2, 8), dtype=np.float32))
    mask = chill_jax.CausalChillMask()
    fn = jax.jit(lambda q: xla_attention(q, q, q, None, None, mask=mask, sm_scale=0.5, layout="BTNH", block_q=8,
                                         block_k=8)[0])
    out = jax.jit(jax.vmap(jax.vmap(fn)))(q)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(out[i, j], fn(q[i, j]), rtol=1e-6, atol=1e-6)


def test_no_retrace_when_lengths_change(rng):
    q, k, v, _, _ = _inputs(rng, jnp.float32, t=48)
    mask = chill_jax.ChunkwiseChillMask(32, 1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(q, k, v, q_lens, kv_lens):
        return jax.grad(lambda q: jnp.sum(xla_attention(q, k, v, q_lens, kv_lens, mask=mask, sm_scale=0.3,
                                                        layout="BTNH")[0]))(q)

    for lens in ([48, 3], [0, 17], [100, 48]):
        fn(q, k, v, jnp.asarray(lens, jnp.int32), jnp.asarray(lens[::-1], jnp.int32))


def test_long_sliding_window_memory():
    """A 16384-long sliding window never forms a T x S array (forward + backward)."""
    t, n, d = 16384, 2, 32
    x = jax.ShapeDtypeStruct((1, t, n, d), jnp.float32)
    mask = chill_jax.SlidingWindowChillMask(128, 128)

    def loss(q, k, v):
        return jnp.sum(xla_attention(q, k, v, None, None, mask=mask, sm_scale=0.2, layout="BTNH")[0])

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        pytest.skip("no memory analysis on this backend")
    t_by_s = t * t * 4 * n
    assert stats.temp_size_in_bytes < t_by_s / 64, stats


def test_sparse_masks_visit_few_blocks():
    """The loop bounds follow the range methods (sparse masks skip blocks)."""
    ev = _xla._evaluator(chill_jax.SlidingWindowChillMask(20, 7))
    for i in range(32):
        first, end = _xla._hull(ev.k_range, ev.k_continuous, None, jnp.int32(32 * i), jnp.int32(32), 32,
                                jnp.int32(1024), 32)
        assert int(first) == max(0, math.floor((32 * i - 20) / 32)) and int(end) == min(32, i + 2)
    first, end = _xla._hull(ev.k_range, ev.k_continuous, None, jnp.int32(64), jnp.int32(0), 32, jnp.int32(1024),
                            32)
    assert int(end) == int(first)


def test_bad_arguments():
    x = jnp.zeros((1, 8, 2, 4))
    mask = chill_jax.CausalChillMask()
    with pytest.raises(ValueError, match="layout"):
        xla_attention(x, x, x, mask=mask, sm_scale=1.0, layout="BHTD")
    with pytest.raises(TypeError, match="ChillMask"):
        xla_attention(x, x, x, mask=chill_jax.CausalChillMask, sm_scale=1.0, layout="BTNH")
    with pytest.raises(ValueError, match="incompatible"):
        xla_attention(x, jnp.zeros((1, 8, 3, 4)), jnp.zeros((1, 8, 3, 4)), mask=mask, sm_scale=1.0,
                      layout="BTNH")


def test_builtin_masks_need_no_fallback():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mask in MASKS + (TruncDivMask(), HelperMask(3)):
            assert isinstance(_xla._evaluator(mask), _xla._ShimEvaluator)
