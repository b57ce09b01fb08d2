# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Attention outputs, lse and gradients against the float64 reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chill_jax
from chill_jax import (
    AttentionConfig,
    CausalChillMask,
    ChunkwiseChillMask,
    FullChillMask,
    KernelConfig,
    PrefixLMChillMask,
    SlidingWindowChillMask,
)
from chill_jax import _launch
from chill_jax.configs import default_config
import compile_check
import custom_masks
from testing_utils import (
    BUILTIN_MASKS,
    DTYPES,
    LSE_TOLERANCE,
    TOLERANCES,
    as_f64,
    assert_close,
    attention_and_grads,
    check_against_reference,
    dtype_name,
    normal,
    random_lengths,
    random_qkv,
    reference,
    relative_error,
    to_bnth,
)

LAYOUTS = ("BTNH", "BNTH")


def _cotangents(rng, q, heads: int, q_len: int, batch: int = 2):
    """A random output cotangent (q's dtype) and a float32 lse cotangent."""
    return normal(rng, q.shape, q.dtype), normal(rng, (batch, heads, q_len), jnp.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("mask", BUILTIN_MASKS, ids=repr)
def test_builtin_masks_match_reference(implementation, rng, mask, dtype, layout):
    """Every built-in mask x dtype x layout: out, lse and the three gradients,
    through both the output and the lse, with random per-example lengths."""
    b, t, n = 2, 130, 2
    q, k, v = random_qkv(rng, dtype, batch=b, q_len=t, heads=n, head_dim=32, layout=layout)
    dout, dlse = _cotangents(rng, q, n, t)
    kwargs = dict(lengths=random_lengths(rng, b, t), layout=layout, implementation=implementation)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


LENGTH_CASES = {
    "none": None,
    "random": "random",
    "one": [1, 100],
    "full": [100, 100],
    "clamped": [137, 101],
    "zero": [0, 58],
    "all_zero": [0, 0],
}


@pytest.mark.parametrize("case", LENGTH_CASES)
@pytest.mark.parametrize("mask", [CausalChillMask(), SlidingWindowChillMask(20, 7)], ids=repr)
def test_lengths(implementation, rng, mask, case):
    """Lengths: none, random, 1, full, above T (clamped), 0. Rows at or past
    the length have exactly 0 output and dq and an lse of exactly -inf;
    keys past it exactly 0 dk and dv."""
    b, t, n = 2, 100, 2
    q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, heads=n, head_dim=32)
    dout, dlse = _cotangents(rng, q, n, t)
    lengths = LENGTH_CASES[case]
    if lengths == "random":
        lengths = random_lengths(rng, b, t)
    elif lengths is not None:
        lengths = jnp.asarray(lengths, jnp.int32)
    kwargs = dict(lengths=lengths, implementation=implementation)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    valid = np.full(b, t) if lengths is None else np.minimum(np.asarray(lengths), t)
    for i, length in enumerate(valid):
        assert np.all(np.asarray(result["out"])[i, length:] == 0)
        assert np.all(np.asarray(result["dq"])[i, length:] == 0)
        assert np.all(np.asarray(result["dk"])[i, length:] == 0)
        assert np.all(np.asarray(result["dv"])[i, length:] == 0)
        assert np.all(np.isneginf(np.asarray(result["lse"])[i, :, length:]))
        assert np.all(np.isfinite(np.asarray(result["lse"])[i, :, :length]))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=dtype_name)
def test_separate_query_and_key_lengths(implementation, rng, dtype):
    """q_lengths and kv_lengths differ, including a query length above the
    key length, so some rows under the window mask have no key."""
    b, t, n = 3, 120, 2
    mask = SlidingWindowChillMask(20, 7)
    q, k, v = random_qkv(rng, dtype, batch=b, q_len=t, heads=n, head_dim=32)
    dout, dlse = _cotangents(rng, q, n, t, batch=b)
    kwargs = dict(q_lengths=jnp.asarray([120, 45, 90], jnp.int32),
                  kv_lengths=jnp.asarray([70, 120, 3], jnp.int32), implementation=implementation)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    ref = check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    assert np.isneginf(ref["lse"][0, :, 90:]).all() and np.isfinite(ref["lse"][0, :, :90]).all()
    assert np.isneginf(ref["lse"][2, :, 23:]).all() and np.isfinite(ref["lse"][2, :, :23]).all()


@pytest.mark.parametrize("which", ["q_lengths", "kv_lengths"])
def test_one_sided_lengths(implementation, rng, which):
    """Only query or only key lengths: the other side is the full sequence."""
    b, t, s, n = 2, 90, 110, 2
    mask = PrefixLMChillMask(40)
    q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, kv_len=s, heads=n, head_dim=32)
    dout, dlse = _cotangents(rng, q, n, t)
    kwargs = {which: jnp.asarray([7, 200], jnp.int32), "implementation": implementation}
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


def test_lengths_dtypes(implementation, rng):
    """Lengths of any integer dtype (numpy or JAX) give the same result."""
    mask = CausalChillMask()
    q, k, v = random_qkv(rng, jnp.float32, batch=2, q_len=100, heads=2, head_dim=16)
    expected = chill_jax.attention(q, k, v, mask, lengths=jnp.asarray([33, 100], jnp.int32),
                                   implementation=implementation)
    check_against_reference(dict(out=expected), q, k, v, mask, lengths=[33, 100])
    for lengths in (np.asarray([33, 100], np.int64), jnp.asarray([33, 100], jnp.uint8),
                    np.asarray([33, 100], np.int16)):
        out = chill_jax.attention(q, k, v, mask, lengths=lengths, implementation=implementation)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(expected), err_msg=str(lengths.dtype))


@pytest.mark.parametrize("t,mask", [
    (1, CausalChillMask()),
    (63, PrefixLMChillMask(40)),
    (64, SlidingWindowChillMask(20, 7)),
    (65, ChunkwiseChillMask(32, 1)),
    (100, FullChillMask()),
    (200, CausalChillMask()),
    (200, SlidingWindowChillMask(20, 7)),
], ids=lambda x: repr(x) if isinstance(x, chill_jax.ChillMask) else f"T{x}")
def test_sequence_lengths_around_tiles(implementation, rng, t, mask):
    """Sequence lengths below, at, just above and far from the 64-wide tiles."""
    b, n = 2, 2
    q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, heads=n, head_dim=32)
    dout, dlse = _cotangents(rng, q, n, t)
    kwargs = dict(lengths=random_lengths(rng, b, t), implementation=implementation)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=dtype_name)
@pytest.mark.parametrize("head_dim", [8, 16, 24, 64, 100, 128, 256])
def test_head_dims(implementation, rng, head_dim, dtype):
    """Head dims of powers of two and padded ones, up to the 256 maximum."""
    b, t, n = 2, 100, 2
    mask = ChunkwiseChillMask(32, 1) if head_dim in (24, 128) else CausalChillMask()
    q, k, v = random_qkv(rng, dtype, batch=b, q_len=t, heads=n, head_dim=head_dim)
    dout, dlse = _cotangents(rng, q, n, t)
    kwargs = dict(lengths=random_lengths(rng, b, t), implementation=implementation)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16], ids=dtype_name)
@pytest.mark.parametrize("mask,lengths", [
    (custom_masks.ShiftedCausalMask(70), None),
    (custom_masks.ShiftedCausalMask(70), dict(lengths=[50, 130])),
    (SlidingWindowChillMask(3, 0), dict(q_lengths=[130, 130], kv_lengths=[40, 0])),
], ids=["shifted_causal", "shifted_causal_lengths", "window_short_keys"])
def test_rows_without_keys(implementation, rng, mask, lengths, dtype):
    """Rows with no allowed key (including whole query tiles) give exactly 0
    output and dq, an lse of -inf, and no NaN anywhere."""
    b, t, n = 2, 130, 2
    q, k, v = random_qkv(rng, dtype, batch=b, q_len=t, heads=n, head_dim=32)
    dout, dlse = _cotangents(rng, q, n, t)
    kwargs = {key: jnp.asarray(val, jnp.int32) for key, val in (lengths or {}).items()}
    kwargs["implementation"] = implementation
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    ref = check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    empty = np.isneginf(ref["lse"])
    assert empty.any() and not empty.all()
    for name, value in result.items():
        assert not np.isnan(as_f64(value)).any(), name


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("heads,kv_heads,mask", [
    (4, 2, CausalChillMask()),
    (4, 1, SlidingWindowChillMask(20, 7)),
    (3, 1, PrefixLMChillMask(40)),
], ids=["4q2kv", "4q1kv", "3q1kv"])
def test_grouped_query_attention(implementation, rng, heads, kv_heads, mask, layout):
    """Several query heads share a key/value head; dk/dv sum over the group."""
    b, t = 2, 100
    q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, heads=heads, kv_heads=kv_heads,
                         head_dim=32, layout=layout)
    dout, dlse = _cotangents(rng, q, heads, t)
    kwargs = dict(lengths=random_lengths(rng, b, t), layout=layout, implementation=implementation)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


@pytest.mark.parametrize("t,s,mask,layout", [
    (100, 170, CausalChillMask(), "BTNH"),
    (150, 70, SlidingWindowChillMask(20, 7), "BNTH"),
    (130, 200, FullChillMask(), "BNTH"),
    (90, 45, PrefixLMChillMask(40), "BTNH"),
    (1, 130, ChunkwiseChillMask(32, 1), "BTNH"),
    (130, 1, FullChillMask(), "BTNH"),
], ids=lambda x: repr(x) if isinstance(x, chill_jax.ChillMask) else str(x))
def test_cross_attention(implementation, rng, t, s, mask, layout):
    """Query and key lengths differ (T != S), with separate random lengths."""
    b, n = 2, 4
    q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, kv_len=s, heads=n, kv_heads=2,
                         head_dim=32, layout=layout)
    dout, dlse = _cotangents(rng, q, n, t)
    kwargs = dict(q_lengths=random_lengths(rng, b, t), kv_lengths=random_lengths(rng, b, s),
                  layout=layout, implementation=implementation)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


@pytest.mark.parametrize("mask", [
    custom_masks.LocalWindowMask(9, 4),
    custom_masks.DilatedWindowMask(30, 10, 3),
    custom_masks.DiscontinuousModuloMask(23),
    custom_masks.LastKeysMask(10),
    custom_masks.RadiusMask(6, 6.5, True),
], ids=repr)
def test_custom_masks(implementation, rng, mask):
    """Custom masks: README style, three constants (int, float and bool ones),
    discontinuous ranges, and a mask that reads ``seq_len`` (each example's
    key length)."""
    b, t, n = 2, 130, 2
    q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, heads=n, head_dim=32)
    dout, dlse = _cotangents(rng, q, n, t)
    kwargs = dict(q_lengths=jnp.asarray([130, 101], jnp.int32), kv_lengths=jnp.asarray([77, 130], jnp.int32),
                  implementation=implementation)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


def test_return_lse_false_and_lse_only_gradient(implementation, rng):
    """``return_lse=False`` returns the same output and gradients; a loss of
    the lse alone gives the lse's gradients; repeated calls are bitwise equal."""
    b, t, n = 2, 100, 2
    mask = PrefixLMChillMask(40)
    q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, heads=n, head_dim=32)
    dout, dlse = _cotangents(rng, q, n, t)
    lengths = random_lengths(rng, b, t)
    kwargs = dict(lengths=lengths, implementation=implementation)

    def loss(q, k, v):
        out = chill_jax.attention(q, k, v, mask, **kwargs)
        return jnp.sum(out * dout), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    assert isinstance(out, jax.Array) and out.shape == q.shape
    with_lse = attention_and_grads(q, k, v, mask, dout=dout, **kwargs)
    for name, value in zip(("out", "dq", "dk", "dv"), (out, *grads)):
        np.testing.assert_array_equal(np.asarray(value), np.asarray(with_lse[name]), err_msg=name)
    check_against_reference(with_lse, q, k, v, mask, dout=dout, **kwargs)

    lse_only = attention_and_grads(q, k, v, mask, dlse=dlse, **kwargs)
    check_against_reference(lse_only, q, k, v, mask, dlse=dlse, **kwargs)


@pytest.mark.parametrize("sm_scale", [0.05, 1.5])
def test_sm_scale(implementation, rng, sm_scale):
    """An explicit logit scale replaces ``1 / sqrt(D)``."""
    b, t, n = 2, 100, 2
    mask = SlidingWindowChillMask(20, 7)
    q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, heads=n, head_dim=32)
    dout, dlse = _cotangents(rng, q, n, t)
    kwargs = dict(sm_scale=sm_scale, implementation=implementation)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    default = chill_jax.attention(q, k, v, mask, implementation=implementation)
    assert relative_error(as_f64(default), as_f64(result["out"])) > 1e-2


@pytest.mark.parametrize("precision,expected", [
    (None, "ieee"), ("ieee", "ieee"), ("HIGHEST", "ieee"), (jax.lax.Precision.HIGHEST, "ieee"),
    ("tf32x3", "tf32x3"), (jax.lax.Precision.HIGH, "tf32x3"), ("tf32", "tf32"),
    (jax.lax.Precision.DEFAULT, "tf32"), ("default", "tf32"),
], ids=str)
def test_precision(kernel_implementation, rng, precision, expected):
    """Float32 dot precisions reach the kernels as the matching Triton
    ``input_precision``; IEEE meets the float32 tolerance, TF32 the bfloat16
    one (TF32 has a longer mantissa than bfloat16)."""
    b, t, n = 2, 100, 2
    mask = CausalChillMask()
    q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, heads=n, head_dim=32)

    def run(q, k, v):
        return chill_jax.attention(q, k, v, mask, precision=precision, return_lse=True,
                                   implementation=kernel_implementation)

    jax.clear_caches()  # record_launches sees only launches traced anew
    launches = compile_check.record_launches(jax.grad(lambda *x: run(*x)[0].sum(), argnums=(0, 1, 2)), q, k, v)
    precisions = {kernel.fn.__name__: consts.get("PRECISION") for kernel, _, _, consts, _ in launches}
    assert precisions == dict(attn_fwd=expected, attn_bwd_dkdv=expected, attn_bwd_dq=expected)
    out, lse = run(q, k, v)
    ref = reference(q, k, v, mask)
    tol = TOLERANCES["float32"] if expected == "ieee" else TOLERANCES["bfloat16"]
    assert_close("out", out, ref["out"], tol)
    assert_close("lse", lse, ref["lse"], LSE_TOLERANCE if expected == "ieee" else tol)


def test_jit_does_not_retrace(implementation, rng):
    """One trace serves calls with new values and new lengths."""
    b, t, n = 2, 100, 2
    mask = ChunkwiseChillMask(32, 1)
    chex.clear_trace_counter()  # the counter is shared by this test's parametrizations

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(q, k, v, lengths, dout, dlse):
        return attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, lengths=lengths,
                                   implementation=implementation)

    for _ in range(2):
        q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, heads=n, head_dim=32)
        dout, dlse = _cotangents(rng, q, n, t)
        lengths = random_lengths(rng, b, t)
        result = step(q, k, v, lengths, dout, dlse)
        check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, lengths=lengths)


def _check_slices(out, q, k, v, mask, *, q_axis=0, kv_axis=0, lengths=None, lengths_axis=None):
    """Checks every slice of a vmapped output against the reference."""
    for i in range(out.shape[0]):
        qi = jnp.take(q, i, axis=q_axis)
        ki = k if kv_axis is None else jnp.take(k, i, axis=kv_axis)
        vi = v if kv_axis is None else jnp.take(v, i, axis=kv_axis)
        li = lengths if lengths_axis is None else lengths[i]
        ref = reference(qi, ki, vi, mask, lengths=li)
        assert_close(f"out[{i}]", out[i], ref["out"], TOLERANCES["float32"])


def test_vmap_over_leading_axis(implementation, rng):
    """vmap over an extra leading axis of q, k and v (lengths unbatched)."""
    mask = CausalChillMask()
    q, k, v = random_qkv(rng, jnp.float32, batch=6, q_len=100, heads=2, head_dim=32)
    q, k, v = (x.reshape(3, 2, *x.shape[1:]) for x in (q, k, v))
    lengths = random_lengths(rng, 2, 100)
    fn = jax.vmap(lambda q, k, v: chill_jax.attention(q, k, v, mask, lengths=lengths,
                                                      implementation=implementation))
    _check_slices(fn(q, k, v), q, k, v, mask, lengths=lengths)


def test_vmap_with_batched_lengths_inside_jit(implementation, rng):
    """vmap with lengths batched along with q, k and v, under jit."""
    mask = SlidingWindowChillMask(20, 7)
    q, k, v = random_qkv(rng, jnp.float32, batch=6, q_len=100, heads=2, head_dim=32)
    q, k, v = (x.reshape(3, 2, *x.shape[1:]) for x in (q, k, v))
    lengths = jnp.asarray(rng.integers(1, 101, size=(3, 2)), jnp.int32)
    fn = jax.jit(jax.vmap(lambda q, k, v, lengths: chill_jax.attention(
        q, k, v, mask, lengths=lengths, implementation=implementation)))
    _check_slices(fn(q, k, v, lengths), q, k, v, mask, lengths=lengths, lengths_axis=0)


def test_vmap_query_only(implementation, rng):
    """vmap over q alone: k and v are shared by every slice."""
    mask = PrefixLMChillMask(40)
    q, k, v = random_qkv(rng, jnp.float32, batch=2, q_len=100, heads=2, head_dim=32)
    qs = normal(rng, (3, *q.shape), jnp.float32)
    fn = jax.vmap(lambda q: chill_jax.attention(q, k, v, mask, implementation=implementation))
    _check_slices(fn(qs), qs, k, v, mask, kv_axis=None)


def test_vmap_lengths_only(implementation, rng):
    """vmap over the lengths alone: q, k and v are shared by every slice."""
    mask = SlidingWindowChillMask(20, 7)
    q, k, v = random_qkv(rng, jnp.float32, batch=2, q_len=100, heads=2, head_dim=32)
    lengths = jnp.asarray([[5, 100], [37, 1], [0, 64]], jnp.int32)
    fn = jax.vmap(lambda lengths: chill_jax.attention(q, k, v, mask, lengths=lengths,
                                                      implementation=implementation))
    out = fn(lengths)
    assert out.shape == (3, *q.shape)
    _check_slices(out, jnp.broadcast_to(q, out.shape), k, v, mask, kv_axis=None, lengths=lengths,
                  lengths_axis=0)


def test_nested_vmap(implementation, rng):
    """vmap of vmap folds both axes into the batch."""
    mask = ChunkwiseChillMask(32, 1)
    q, k, v = random_qkv(rng, jnp.float32, batch=12, q_len=70, heads=2, head_dim=16)
    q, k, v = (x.reshape(2, 3, 2, *x.shape[1:]) for x in (q, k, v))
    fn = jax.vmap(jax.vmap(lambda q, k, v: chill_jax.attention(q, k, v, mask, implementation=implementation)))
    out = fn(q, k, v)
    flat = lambda x: x.reshape(6, *x.shape[2:])  # noqa: E731
    _check_slices(flat(out), flat(q), flat(k), flat(v), mask)


def test_vmap_non_leading_axis(implementation, rng):
    """vmap over axis 1 of the query and axis 2 of key/value, output on axis 1."""
    mask = CausalChillMask()
    q, k, v = random_qkv(rng, jnp.float32, batch=2, q_len=100, heads=2, head_dim=32)
    qs = normal(rng, (2, 3, 100, 2, 32), jnp.float32)
    ks = normal(rng, (2, 100, 3, 2, 32), jnp.float32)
    vs = normal(rng, (2, 100, 3, 2, 32), jnp.float32)
    fn = jax.vmap(lambda q, k, v: chill_jax.attention(q, k, v, mask, implementation=implementation),
                  in_axes=(1, 2, 2), out_axes=1)
    out = fn(qs, ks, vs)
    assert out.shape == qs.shape
    _check_slices(jnp.moveaxis(out, 1, 0), qs, ks, vs, mask, q_axis=1, kv_axis=2)


def test_vmap_of_grad(implementation, rng):
    """vmap(grad): per-slice gradients, with per-slice lengths."""
    mask = ChunkwiseChillMask(32, 1)
    q, k, v = random_qkv(rng, jnp.float32, batch=4, q_len=100, heads=2, head_dim=32)
    q, k, v = (x.reshape(2, 2, *x.shape[1:]) for x in (q, k, v))
    dout = normal(rng, q.shape, jnp.float32)
    lengths = jnp.asarray(rng.integers(1, 101, size=(2, 2)), jnp.int32)

    def loss(q, k, v, lengths, dout):
        return jnp.sum(chill_jax.attention(q, k, v, mask, lengths=lengths, implementation=implementation) * dout)

    grads = jax.vmap(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v, lengths, dout)
    for i in range(2):
        ref = reference(q[i], k[i], v[i], mask, lengths=lengths[i], dout=dout[i])
        for name, g in zip(("dq", "dk", "dv"), grads):
            assert_close(f"{name}[{i}]", g[i], ref[name], TOLERANCES["float32"])


def test_grad_of_vmap(implementation, rng):
    """grad of a loss over a vmapped attention (k, v shared by the slices)."""
    mask = SlidingWindowChillMask(20, 7)
    q, k, v = random_qkv(rng, jnp.float32, batch=2, q_len=100, heads=2, head_dim=32)
    qs = normal(rng, (2, *q.shape), jnp.float32)
    dout = normal(rng, qs.shape, jnp.float32)
    lengths = random_lengths(rng, 2, 100)

    def loss(qs, k, v):
        out = jax.vmap(lambda q: chill_jax.attention(q, k, v, mask, lengths=lengths,
                                                     implementation=implementation))(qs)
        return jnp.sum(out * dout)

    dqs, dk, dv = jax.grad(loss, argnums=(0, 1, 2))(qs, k, v)
    refs = [reference(qs[i], k, v, mask, lengths=lengths, dout=dout[i]) for i in range(2)]
    for i in range(2):
        assert_close(f"dq[{i}]", dqs[i], refs[i]["dq"], TOLERANCES["float32"])
    assert_close("dk", dk, refs[0]["dk"] + refs[1]["dk"], TOLERANCES["float32"])
    assert_close("dv", dv, refs[0]["dv"] + refs[1]["dv"], TOLERANCES["float32"])


def test_remat_and_eval_shape(implementation, rng):
    """Gradients through jax.checkpoint equal plain ones; eval_shape gives the
    output and lse shapes without running the kernels."""
    mask = CausalChillMask()
    q, k, v = random_qkv(rng, jnp.bfloat16, batch=2, q_len=100, heads=4, kv_heads=2, head_dim=16)
    dout = normal(rng, q.shape, jnp.bfloat16)

    def loss(q, k, v):
        return jnp.sum(chill_jax.attention(q, k, v, mask, implementation=implementation).astype(jnp.float32)
                       * dout.astype(jnp.float32))

    plain = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    remat = jax.grad(jax.checkpoint(loss), argnums=(0, 1, 2))(q, k, v)
    for name, a, r in zip(("dq", "dk", "dv"), plain, remat):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(r, np.float32), err_msg=name)
    check_against_reference(dict(zip(("dq", "dk", "dv"), plain)), q, k, v, mask, dout=dout)
    out, lse = jax.eval_shape(lambda q, k, v: chill_jax.attention(q, k, v, mask, return_lse=True,
                                                                  implementation=implementation), q, k, v)
    assert (out.shape, out.dtype) == (q.shape, q.dtype)
    assert (lse.shape, lse.dtype) == ((2, 4, 100), jnp.float32)


def test_default_implementation(rng):
    """``implementation=None`` picks triton on a CUDA GPU, else xla, and
    gives that implementation's results bit for bit."""
    mask = CausalChillMask()
    q, k, v = random_qkv(rng, jnp.float32, batch=2, q_len=100, heads=2, head_dim=32)
    dout = normal(rng, q.shape, jnp.float32)
    lengths = random_lengths(rng, 2, 100)
    default = attention_and_grads(q, k, v, mask, dout=dout, lengths=lengths)
    chosen = "triton" if _launch.cuda_available() else "xla"
    explicit = attention_and_grads(q, k, v, mask, dout=dout, lengths=lengths, implementation=chosen)
    for name in default:
        np.testing.assert_array_equal(np.asarray(default[name]), np.asarray(explicit[name]), err_msg=name)
    check_against_reference(default, q, k, v, mask, dout=dout, lengths=lengths)


CONFIGS = {
    "32x16_16x32_16x16": AttentionConfig(KernelConfig(32, 16), KernelConfig(16, 32), KernelConfig(16, 16)),
    "16x32_32x16_32x32": AttentionConfig(KernelConfig(16, 32), KernelConfig(32, 16), KernelConfig(32, 32)),
    "gpu_default": default_config("triton", 32, 4),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("mask", [SlidingWindowChillMask(40, 7), ChunkwiseChillMask(32, 1),
                                  PrefixLMChillMask(40)], ids=repr)
def test_config_override(implementation, rng, mask, config):
    """Small and mixed tile sizes: several tiles per row and column, full-block
    shortcuts on and off, tiles wider than the sequence."""
    b, t, s, n = 1, 70, 90, 2
    q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, kv_len=s, heads=n, head_dim=32)
    dout, dlse = _cotangents(rng, q, n, t, batch=b)
    kwargs = dict(q_lengths=jnp.asarray([61], jnp.int32), kv_lengths=jnp.asarray([83], jnp.int32),
                  config=config, implementation=implementation)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


def test_bnth_equals_transposed_btnh(implementation, rng):
    """The BNTH layout computes the same numbers as BTNH on transposed inputs."""
    mask = ChunkwiseChillMask(32, 1)
    q, k, v = random_qkv(rng, jnp.bfloat16, batch=2, q_len=100, heads=4, kv_heads=2, head_dim=32)
    dout = normal(rng, q.shape, jnp.bfloat16)
    lengths = random_lengths(rng, 2, 100)
    btnh = attention_and_grads(q, k, v, mask, dout=dout, lengths=lengths, implementation=implementation)
    tr = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
    bnth = attention_and_grads(tr(q), tr(k), tr(v), mask, dout=tr(dout), lengths=lengths, layout="BNTH",
                               implementation=implementation)
    for name in ("out", "dq", "dk", "dv"):
        np.testing.assert_array_equal(to_bnth(as_f64(btnh[name]), "BTNH"), as_f64(bnth[name]), err_msg=name)
    np.testing.assert_array_equal(np.asarray(btnh["lse"]), np.asarray(bnth["lse"]))


@pytest.mark.parametrize("dtype,mask,expected", [
    (jnp.bfloat16, CausalChillMask(), True),
    (jnp.float16, PrefixLMChillMask(40), True),
    (jnp.float32, CausalChillMask(), True),
    (jnp.bfloat16, custom_masks.LocalWindowMask(9, 4), False),
], ids=["bf16-causal", "fp16-prefix", "fp32-causal", "bf16-no-full-blocks"])
def test_full_tile_runs(kernel_implementation, rng, dtype, mask, expected):
    """Tiles declared full get a loop of their own (SPLIT_FULL) for masks
    that declare full tiles, whatever the dtype; both forms match the
    reference."""
    q, k, v = random_qkv(rng, dtype, batch=2, q_len=150, heads=2, head_dim=32)
    kwargs = dict(lengths=random_lengths(rng, 2, 150), implementation=kernel_implementation)

    def loss(q, k, v):
        return chill_jax.attention(q, k, v, mask, **kwargs).astype(jnp.float32).sum()

    jax.clear_caches()  # record_launches sees only launches traced anew
    launches = compile_check.record_launches(jax.grad(loss, argnums=(0, 1, 2)), q, k, v)
    split = {kernel.fn.__name__: consts.get("SPLIT_FULL") for kernel, _, _, consts, _ in launches}
    assert split == dict(attn_fwd=expected, attn_bwd_dkdv=expected, attn_bwd_dq=expected)
    dout, dlse = _cotangents(rng, q, 2, 150)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=dtype_name)
@pytest.mark.parametrize("mask", BUILTIN_MASKS, ids=repr)
def test_warp_specialized_forward(implementation, rng, mask, dtype, layout):
    """The forward of ``KernelConfig(warp_specialize=True)`` (``attn_fwd_ws``:
    tensor descriptors, one key loop that evaluates the mask on every tile,
    or none for full attention): GQA, cross-attention, random query lengths
    and a query tile past the sequence; the backward is the usual one."""
    b, t, s, n = 2, 100, 128, 4
    q, k, v = random_qkv(rng, dtype, batch=b, q_len=t, kv_len=s, heads=n, kv_heads=2, head_dim=32,
                         layout=layout)
    base = default_config(implementation, 32, 2, mask)
    config = AttentionConfig(fwd=KernelConfig(32, 32, 4, 2, warp_specialize=True), bwd_dkdv=base.bwd_dkdv,
                             bwd_dq=base.bwd_dq)
    dout, dlse = _cotangents(rng, q, n, t)
    kwargs = dict(q_lengths=random_lengths(rng, b, t), layout=layout, implementation=implementation)
    launched = [launch[0].fn.__name__ for launch in compile_check.record_launches(
        lambda q, k, v: chill_jax.attention(q, k, v, mask, config=config, **kwargs), q, k, v)]
    if implementation == "interpret" or _launch.can_warp_specialize(implementation):
        assert launched == ["attn_fwd_ws"]
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, config=config, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mask", BUILTIN_MASKS, ids=repr)
def test_warp_specialized_dkdv(implementation, rng, mask, layout):
    """The dK/dV kernel of ``KernelConfig(warp_specialize=True)``
    (``attn_bwd_dkdv_ws``: the group's heads and query tiles in one loop,
    tensor descriptors, the mask on every tile): GQA and cross-attention,
    no lengths (its condition)."""
    b, t, s, n = 2, 128, 256, 4
    q, k, v = random_qkv(rng, jnp.bfloat16, batch=b, q_len=t, kv_len=s, heads=n, kv_heads=2, head_dim=32,
                         layout=layout)
    base = default_config(implementation, 32, 2, mask)
    config = AttentionConfig(fwd=base.fwd, bwd_dkdv=KernelConfig(64, 128, 4, 2, warp_specialize=True),
                             bwd_dq=base.bwd_dq)
    dout, dlse = _cotangents(rng, q, n, t)
    kwargs = dict(layout=layout, implementation=implementation)

    def loss(q, k, v):
        return jnp.sum(chill_jax.attention(q, k, v, mask, config=config, **kwargs).astype(jnp.float32))

    launched = [launch[0].fn.__name__ for launch in compile_check.record_launches(
        jax.grad(loss, argnums=(0, 1, 2)), q, k, v)]
    if implementation == "interpret" or _launch.can_warp_specialize(implementation):
        assert "attn_bwd_dkdv_ws" in launched
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, config=config, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


@pytest.mark.parametrize("reason", ["q_lengths", "prescale_qk", "query_tile_128", "partial_query_tile"])
def test_warp_specialized_dkdv_fallback(implementation, rng, reason):
    """A warp-specialized dK/dV configuration that a call cannot take runs
    ``attn_bwd_dkdv`` with at most 32x64 tiles and 3 stages, and is right."""
    t = 100 if reason == "partial_query_tile" else 128
    q, k, v = random_qkv(rng, jnp.bfloat16, batch=2, q_len=t, kv_len=256, heads=4, kv_heads=2, head_dim=32)
    mask = chill_jax.CausalChillMask()
    base = default_config(implementation, 32, 2, mask)
    block_m = 128 if reason == "query_tile_128" else 64
    config = AttentionConfig(fwd=base.fwd, bwd_dkdv=KernelConfig(block_m, 128, 4, 2, warp_specialize=True),
                             bwd_dq=base.bwd_dq)
    kwargs = dict(implementation=implementation)
    if reason == "q_lengths":
        kwargs["q_lengths"] = random_lengths(rng, 2, t)
    if reason == "prescale_qk":
        kwargs["prescale_qk"] = True

    def loss(q, k, v):
        return jnp.sum(chill_jax.attention(q, k, v, mask, config=config, **kwargs).astype(jnp.float32))

    jax.clear_caches()
    dkdv = [(consts["BLOCK_M"], consts["BLOCK_N"], cfg.num_stages)
            for kernel, _, _, consts, cfg in compile_check.record_launches(jax.grad(loss, argnums=(0, 1, 2)), q, k, v)
            if kernel.fn.__name__.startswith("attn_bwd_dkdv")]
    if implementation != "xla":
        assert dkdv == [(32, 64, 3)]
    dout, dlse = _cotangents(rng, q, 4, t)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, config=config, **kwargs)
    # prescale_qk rounds the scaled query to bfloat16, and the lse with it.
    lse_tol = {"lse_tol": TOLERANCES["bfloat16"]} if reason == "prescale_qk" else {}
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **lse_tol, **kwargs)
