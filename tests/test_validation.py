# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Bad arguments raise TypeError/ValueError naming the argument."""

import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chill_jax
from chill_jax import AttentionConfig, CausalChillMask, KernelConfig, SlidingWindowChillMask
from chill_jax import _launch

B, T, N, D = 2, 16, 2, 16


def _x(shape=(B, T, N, D), dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def _call(**overrides):
    """Calls attention with valid arguments except for ``overrides``."""
    args = dict(query=_x(), key=_x(), value=_x(), implementation="interpret")
    args.update(overrides)
    q, k, v = args.pop("query"), args.pop("key"), args.pop("value")
    return lambda: chill_jax.attention(q, k, v, **args)


ATTENTION_CASES = {
    "query_rank": (_call(query=_x((B, T, N * D))), ValueError, "query"),
    "key_rank": (_call(key=_x((B, T, N, D, 1))), ValueError, "key"),
    "query_not_array": (_call(query=np.ones((B, T, N, D)).tolist()), TypeError, "query"),
    "batch_mismatch": (_call(key=_x((B + 1, T, N, D)), value=_x((B + 1, T, N, D))), ValueError, "batch"),
    "head_dim_mismatch": (_call(key=_x((B, T, N, 2 * D)), value=_x((B, T, N, 2 * D))), ValueError,
                          "head_dim"),
    "heads_not_multiple": (_call(query=_x((B, T, 3, D))), ValueError, "heads"),
    "key_value_shapes": (_call(value=_x((B, T + 1, N, D))), ValueError, "key and value"),
    "int_dtype": (_call(query=_x(dtype=jnp.int32)), TypeError, "query"),
    "bool_dtype": (_call(value=_x(dtype=jnp.bool_)), TypeError, "value"),
    "float64_dtype": (_call(key=np.ones((B, T, N, D))), TypeError, "key"),
    "mixed_dtypes": (_call(key=_x(dtype=jnp.bfloat16), value=_x(dtype=jnp.bfloat16)), TypeError, "dtype"),
    "head_dim_too_large": (_call(query=_x((B, T, N, 257)), key=_x((B, T, N, 257)), value=_x((B, T, N, 257))),
                           ValueError, "head_dim"),
    "empty_sequence": (_call(key=_x((B, 0, N, D)), value=_x((B, 0, N, D))), ValueError, "sequence"),
    "lengths_float": (_call(lengths=jnp.ones((B,), jnp.float32)), TypeError, "lengths"),
    "lengths_shape": (_call(lengths=jnp.ones((B, 1), jnp.int32)), ValueError, "lengths"),
    "lengths_list": (_call(lengths=[3, 4]), TypeError, "lengths"),
    "q_lengths_shape": (_call(q_lengths=jnp.ones((B + 1,), jnp.int32)), ValueError, "q_lengths"),
    "kv_lengths_float": (_call(kv_lengths=jnp.ones((B,), jnp.float32)), TypeError, "kv_lengths"),
    "lengths_and_q_lengths": (_call(lengths=jnp.ones((B,), jnp.int32), q_lengths=jnp.ones((B,), jnp.int32)),
                              ValueError, "lengths"),
    "mask_string": (_call(mask="causal"), TypeError, "mask"),
    "mask_class": (_call(mask=CausalChillMask), TypeError, "mask"),
    "layout_unknown": (_call(layout="BHTD"), ValueError, "layout"),
    "layout_lowercase": (_call(layout="btnh"), ValueError, "layout"),
    "implementation_unknown": (_call(implementation="cuda"), ValueError, "implementation"),
    "sm_scale_negative": (_call(sm_scale=-0.1), ValueError, "sm_scale"),
    "sm_scale_zero": (_call(sm_scale=0.0), ValueError, "sm_scale"),
    "sm_scale_nan": (_call(sm_scale=float("nan")), ValueError, "sm_scale"),
    "sm_scale_inf": (_call(sm_scale=float("inf")), ValueError, "sm_scale"),
    "sm_scale_bool": (_call(sm_scale=True), ValueError, "sm_scale"),
    "sm_scale_string": (_call(sm_scale="0.1"), ValueError, "sm_scale"),
    "precision_unknown": (_call(precision="fp8"), ValueError, "precision"),
    "config_kernel_config": (_call(config=KernelConfig()), TypeError, "config"),
    "config_dict": (_call(config={"fwd": KernelConfig()}), TypeError, "config"),
}


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_argument_errors(case):
    """Each bad argument raises its error type with a message naming it."""
    thunk, error, word = ATTENTION_CASES[case]
    with pytest.raises(error, match=re.escape(word)):
        thunk()


def test_errors_under_jit():
    """Argument checks run at trace time inside jit too."""
    with pytest.raises(ValueError, match="sm_scale"):
        jax.jit(lambda q: chill_jax.attention(q, q, q, sm_scale=-1.0, implementation="interpret"))(_x())
    with pytest.raises(TypeError, match="lengths"):
        jax.jit(lambda q, lengths: chill_jax.attention(q, q, q, lengths=lengths, implementation="interpret"))(
            _x(), jnp.ones((B,), jnp.float32))


@pytest.mark.skipif(_launch.cuda_available(), reason="a CUDA GPU is present")
def test_triton_without_gpu():
    """implementation='triton' without a CUDA GPU names the implementation."""
    with pytest.raises(ValueError, match="implementation"):
        _call(implementation="triton")()


@pytest.mark.parametrize("call,word", [
    (lambda: CausalChillMask().verify(0), "q_len"),
    (lambda: CausalChillMask().verify(5, 0), "kv_len"),
    (lambda: CausalChillMask().verify(True), "q_len"),
    (lambda: CausalChillMask().verify(4.0), "q_len"),
    (lambda: SlidingWindowChillMask(1, 1).make_mask(-1), "q_len"),
    (lambda: SlidingWindowChillMask(1, 1).make_mask(3, -2), "kv_len"),
    (lambda: CausalChillMask().ranges(0), "q_len"),
    (lambda: CausalChillMask().full_blocks(4, 0, 16, 16), "kv_len"),
], ids=["verify_0", "verify_kv_0", "verify_bool", "verify_float", "make_mask_negative",
        "make_mask_kv_negative", "ranges_0", "full_blocks_kv_0"])
def test_mask_size_errors(call, word):
    """Mask helpers reject sizes that are not positive ints, naming the size."""
    with pytest.raises(ValueError, match=word):
        call()


@pytest.mark.parametrize("kwargs,word", [
    (dict(block_m=48), "block_m"),
    (dict(block_m=8), "block_m"),
    (dict(block_m=64.0), "block_m"),
    (dict(block_n=0), "block_n"),
    (dict(block_n=-64), "block_n"),
    (dict(num_warps=3), "num_warps"),
    (dict(num_stages=0), "num_stages"),
], ids=lambda x: "-".join(f"{k}={v}" for k, v in x.items()) if isinstance(x, dict) else None)
def test_kernel_config_errors(kwargs, word):
    """KernelConfig rejects tile sizes that are not powers of two >= 16."""
    with pytest.raises(ValueError, match=word):
        KernelConfig(**kwargs)


def test_valid_configs_accepted():
    """The smallest legal tiles and an AttentionConfig of them construct."""
    config = AttentionConfig(KernelConfig(16, 16, 1, 1), KernelConfig(32, 16), KernelConfig(16, 128, 8, 4))
    assert config.fwd.block_m == 16 and config.bwd_dq.block_n == 128


@pytest.mark.parametrize("before", [None, "/some/triton/cache"])
def test_jax_triton_import_keeps_triton_cache_dir(tmp_path, monkeypatch, before):
    """jax-triton's import blanks TRITON_CACHE_DIR for the process (later
    triton.compile calls, torch's FlexAttention among them, then fail); the
    launcher puts the caller's value back. A stand-in module does what
    jax-triton 0.3.1 does at import."""
    from chill_jax import _launch

    (tmp_path / "jax_triton.py").write_text('import os\nos.environ["TRITON_CACHE_DIR"] = ""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "jax_triton", raising=False)
    if before is None:
        monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TRITON_CACHE_DIR", before)
    _launch._jax_triton.cache_clear()
    try:
        assert _launch._jax_triton().__file__ == str(tmp_path / "jax_triton.py")
        assert os.environ.get("TRITON_CACHE_DIR") == before
    finally:
        _launch._jax_triton.cache_clear()
        sys.modules.pop("jax_triton", None)
