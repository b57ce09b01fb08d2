# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Shared test helpers: random inputs, tolerances, and checks against the reference.

Tolerances are on the relative max error
``max|actual - ref| / max(max|ref|, 1e-6)`` against the float64 reference
evaluated on the (already rounded) inputs. Measured on the interpreter over
this suite with three input seeds (random normal inputs, T <= 200, head dims
8 .. 256), the worst errors of outputs and gradients are 1.8e-6 (float32,
with sm_scale=1.5; about 8e-7 at the default scale), 9e-4 (float16) and
1.3e-2 (bfloat16), and 2.9e-7 for the float32 lse; the tolerances sit 3-4x
above. The same tolerances hold for ``implementation="triton"`` on an H100.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import chill_jax
from chill_jax import _launch

_AVAILABLE = ("interpret", "xla") + (("triton",) if _launch.cuda_available() else ())
# CHILL_JAX_TEST_IMPLEMENTATIONS="triton" (comma-separated) narrows the run,
# e.g. to the compiled kernels on a GPU machine.
IMPLEMENTATIONS = tuple(
    i for i in os.environ.get("CHILL_JAX_TEST_IMPLEMENTATIONS", ",".join(_AVAILABLE)).split(",") if i)
# The implementations that launch the Triton kernels.
KERNEL_IMPLEMENTATIONS = tuple(i for i in IMPLEMENTATIONS if i != "xla")

TOLERANCES = {"float32": 6e-6, "float16": 3e-3, "bfloat16": 4e-2}
LSE_TOLERANCE = 1e-6

DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16)

BUILTIN_MASKS = (
    chill_jax.FullChillMask(),
    chill_jax.CausalChillMask(),
    chill_jax.SlidingWindowChillMask(20, 7),
    chill_jax.ChunkwiseChillMask(32, 1),
    chill_jax.PrefixLMChillMask(40),
)


# Fresh inputs every run; the header of the pytest run prints the seed, and
# CHILL_JAX_TEST_SEED=<seed> reproduces a run's inputs.
SESSION_SEED = str(np.random.SeedSequence().entropy % 10**9)


def seed_for(nodeid: str) -> int:
    """A seed that differs between tests, drawn afresh every run.

    Set ``CHILL_JAX_TEST_SEED`` to reproduce a run (the seed is printed in the
    pytest header).
    """
    salt = os.environ.get("CHILL_JAX_TEST_SEED") or SESSION_SEED
    return zlib.crc32(f"{salt}:{nodeid}".encode())


def dtype_name(dtype: Any) -> str:
    """``"float32"``, ``"float16"`` or ``"bfloat16"``."""
    return jnp.dtype(dtype).name


def layout_shape(layout: str, batch: int, seq: int, heads: int, head_dim: int) -> tuple[int, ...]:
    """The array shape of ``(batch, seq, heads, head_dim)`` in ``layout``."""
    if layout == "BTNH":
        return batch, seq, heads, head_dim
    return batch, heads, seq, head_dim


def to_bnth(x: Any, layout: str) -> np.ndarray:
    """``x`` as a numpy ``[B, N, T, D]`` array."""
    x = np.asarray(x)
    return x if layout == "BNTH" else x.transpose(0, 2, 1, 3)


def normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """Standard normal values rounded to ``dtype``."""
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dtype)


def random_qkv(rng: np.random.Generator, dtype: Any, *, batch: int = 2, q_len: int = 100,
               kv_len: int | None = None, heads: int = 2, kv_heads: int | None = None,
               head_dim: int = 32, layout: str = "BTNH") -> tuple[jax.Array, jax.Array, jax.Array]:
    """Random query, key and value in ``layout``.

    Args:
      rng: the test's generator.
      dtype: the arrays' dtype.
      batch, q_len, heads, head_dim: the query's dimensions.
      kv_len: key/value length (default ``q_len``).
      kv_heads: key/value heads (default ``heads``).
      layout: ``"BTNH"`` or ``"BNTH"``.

    Returns:
      ``(query, key, value)``.
    """
    kv_len = q_len if kv_len is None else kv_len
    kv_heads = heads if kv_heads is None else kv_heads
    q = normal(rng, layout_shape(layout, batch, q_len, heads, head_dim), dtype)
    k = normal(rng, layout_shape(layout, batch, kv_len, kv_heads, head_dim), dtype)
    v = normal(rng, layout_shape(layout, batch, kv_len, kv_heads, head_dim), dtype)
    return q, k, v


def random_lengths(rng: np.random.Generator, batch: int, seq: int) -> jax.Array:
    """Int32 ``[batch]`` lengths drawn uniformly from ``1 .. seq``."""
    return jnp.asarray(rng.integers(1, seq + 1, size=batch), jnp.int32)


def as_f64(x: Any) -> np.ndarray:
    """``x`` as float64 numpy (exact for float16/bfloat16/float32 values)."""
    x = jnp.asarray(x)
    if x.dtype != jnp.float64:
        x = x.astype(jnp.float32)
    return np.asarray(x, np.float64)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max|actual - expected| / max(max|expected|, 1e-6)`` (NaN stays NaN)."""
    if actual.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    return float(np.max(np.abs(actual - expected))) / scale


def assert_close(name: str, actual: Any, expected: np.ndarray, tol: float) -> None:
    """Asserts ``actual`` matches the float64 ``expected`` within ``tol``.

    NaN in ``actual`` always fails; infinities must sit exactly where
    ``expected`` has them, with the same sign.

    Raises:
      AssertionError: naming ``name`` and the error.
    """
    actual = as_f64(actual)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != reference {expected.shape}"
    nan = np.argwhere(np.isnan(actual))
    assert nan.size == 0, f"{name}: {len(nan)} NaN(s), first at {tuple(nan[0])}"
    inf_ok = np.isinf(actual) == np.isinf(expected)
    inf_ok &= ~np.isinf(expected) | (actual == expected)
    bad = np.argwhere(~inf_ok)
    assert bad.size == 0, (f"{name}: infinities differ at {len(bad)} position(s), first {tuple(bad[0])}: "
                           f"{actual[tuple(bad[0])]} vs reference {expected[tuple(bad[0])]}")
    finite = np.isfinite(expected)
    err = relative_error(actual[finite], expected[finite])
    assert err <= tol, f"{name}: relative max error {err:.3e} > tolerance {tol:.1e}"


def attention_and_grads(q, k, v, mask=None, *, dout=None, dlse=None, **kwargs) -> dict[str, jax.Array]:
    """Runs attention and ``jax.grad`` of ``sum(out * dout) + sum(lse * dlse)``.

    Args:
      q, k, v, mask: as in :func:`chill_jax.attention`.
      dout: cotangent of the output (query's shape and dtype), or None to
        leave the output out of the loss.
      dlse: float32 ``[B, N, T]`` cotangent of the lse, or None to leave the
        lse out of the loss. Rows whose lse is ``-inf`` drop out of the loss.
      **kwargs: more :func:`chill_jax.attention` arguments.

    Returns:
      Dict of ``out``, ``lse``, ``dq``, ``dk`` and ``dv``.
    """

    def loss(q, k, v):
        out, lse = chill_jax.attention(q, k, v, mask, return_lse=True, **kwargs)
        total = jnp.float32(0.0)
        if dout is not None:
            total += jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32))
        if dlse is not None:
            total += jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * dlse)
        return total, (out, lse)

    (_, (out, lse)), (dq, dk, dv) = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return dict(out=out, lse=lse, dq=dq, dk=dk, dv=dv)


def reference(q, k, v, mask=None, *, dout=None, dlse=None, **kwargs) -> dict[str, np.ndarray]:
    """:func:`chill_jax.reference_attention` on the float64 values of the inputs.

    ``dout=None`` means a zero output cotangent (the gradients are still
    computed). ``kwargs`` are the attention arguments the reference takes.
    """
    ref_kwargs = {key: kwargs[key] for key in ("lengths", "q_lengths", "kv_lengths", "sm_scale", "layout")
                  if kwargs.get(key) is not None}
    for key in ("lengths", "q_lengths", "kv_lengths"):
        if key in ref_kwargs:
            ref_kwargs[key] = np.asarray(ref_kwargs[key])
    dout = np.zeros(np.shape(q)) if dout is None else as_f64(dout)
    dlse = None if dlse is None else as_f64(dlse)
    return chill_jax.reference_attention(as_f64(q), as_f64(k), as_f64(v), mask, dout=dout, dlse=dlse,
                                         **ref_kwargs)


def check_against_reference(result: dict[str, Any], q, k, v, mask=None, *, dout=None, dlse=None,
                            tol: float | None = None, lse_tol: float = LSE_TOLERANCE,
                            **kwargs) -> dict[str, np.ndarray]:
    """Checks :func:`attention_and_grads` results against the float64 reference.

    Beyond the tolerance check of every present entry of ``result``: rows
    whose reference lse is ``-inf`` (at or past the query length, or with no
    allowed key) must have exactly 0 output and dq, and key positions no
    query attends to (the reference's dk and dv rows are exactly 0) must have
    exactly 0 dk and dv.

    Args:
      result: dict with some of ``out``, ``lse``, ``dq``, ``dk``, ``dv``.
      q, k, v, mask, dout, dlse: the inputs of the call.
      tol: tolerance for out and the gradients (default by dtype).
      lse_tol: tolerance for lse (its default holds where the kernels see the
        inputs as given; ``prescale_qk`` rounds the scaled query to its dtype).
      **kwargs: the attention arguments the call used (lengths, layout, ...).

    Returns:
      The reference dict.
    """
    ref = reference(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    tol = TOLERANCES[dtype_name(q.dtype)] if tol is None else tol
    for name in ("out", "dq", "dk", "dv"):
        if name in result:
            assert jnp.asarray(result[name]).dtype == q.dtype, f"{name}: dtype {result[name].dtype} != {q.dtype}"
            assert_close(name, result[name], ref[name], tol)
    if "lse" in result:
        assert jnp.asarray(result["lse"]).dtype == jnp.float32, f"lse dtype {result['lse'].dtype}"
        assert_close("lse", result["lse"], ref["lse"], lse_tol)
    layout = kwargs.get("layout", "BTNH")
    dead_rows = np.isneginf(ref["lse"])
    for name in ("out", "dq"):
        if name in result:
            rows = to_bnth(as_f64(result[name]), layout)[dead_rows]
            assert (rows == 0).all(), f"{name}: rows with lse = -inf are not exactly 0"
    dead_keys = (to_bnth(ref["dk"], layout) == 0).all(-1) & (to_bnth(ref["dv"], layout) == 0).all(-1)
    for name in ("dk", "dv"):
        if name in result:
            rows = to_bnth(as_f64(result[name]), layout)[dead_keys]
            assert (rows == 0).all(), f"{name}: rows of keys no query attends to are not exactly 0"
    return ref
