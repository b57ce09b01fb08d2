# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""``make_attention_fn`` inside Flax attention modules, and the training example.

The modules with ``attention_fn=chill_jax.make_attention_fn(mask)`` must give
the same outputs and parameter gradients as the same modules running Flax's
own attention with the equivalent dense mask (``mask.make_mask(T)``). The
sequence length is not a multiple of the tile sizes, so partial tiles are
covered.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")
from flax import linen, nnx  # noqa: E402

import chill_jax  # noqa: E402
from chill_jax import CausalChillMask, SlidingWindowChillMask, make_attention_fn  # noqa: E402

B, T, FEATURES, HEADS = 2, 80, 32, 4
# Relative max error, max|a - b| / max|b|, of float32 outputs and gradients.
# The blockwise and the dense softmax differ only in summation order: measured
# over 4 input seeds, both masks, "xla" and "interpret", at most 1.4e-6.
RTOL = 1e-5
MASKS = (CausalChillMask(), SlidingWindowChillMask(20, 7))
EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "train_lm.py"


@pytest.fixture(autouse=True)
def _exact_float32_matmuls():
    """Flax's own attention and projections in full float32 (on GPUs JAX's
    default float32 matmul is TF32, ~1e-3 off), like chill-jax's default
    ``precision="ieee"``."""
    with jax.default_matmul_precision("highest"):
        yield


def _inputs(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """A random ``[B, T, FEATURES]`` input and the output weights of the test loss."""
    kx, kw = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(kx, (B, T, FEATURES), jnp.float32),
            jax.random.normal(kw, (B, T, FEATURES), jnp.float32))


def _dense(mask: chill_jax.ChillMask) -> jax.Array:
    """The equivalent Flax mask, ``[1, 1, T, T]``."""
    return jnp.asarray(mask.make_mask(T))[None, None]


def _assert_close(actual, expected, what: str):
    """Asserts that two pytrees of arrays agree to ``RTOL``.

    Each leaf's error is ``max|a - e|`` relative to ``max|e|`` of that leaf,
    but to no less than a tenth of the largest ``|e|`` in the tree: the key
    projection's bias has a gradient that is zero in exact arithmetic (adding
    the same number to every logit of a row leaves the softmax unchanged), so
    both sides hold only rounding noise there (measured: ~1e-6, against
    gradients of 10-40 elsewhere).
    """
    actual_leaves, _ = jax.tree_util.tree_flatten_with_path(actual)
    expected_leaves, _ = jax.tree_util.tree_flatten_with_path(expected)
    assert [p for p, _ in actual_leaves] == [p for p, _ in expected_leaves], what
    assert actual_leaves, what
    floor = 0.1 * max(float(np.max(np.abs(np.asarray(e)))) for _, e in expected_leaves)
    for (path, a), (_, e) in zip(actual_leaves, expected_leaves):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        assert a.shape == e.shape, f"{what} {jax.tree_util.keystr(path)}: shape {a.shape} != {e.shape}"
        err = np.max(np.abs(a - e)) / max(np.max(np.abs(e)), floor, 1e-30)
        assert err <= RTOL, f"{what} {jax.tree_util.keystr(path)}: relative error {err:.2e} > {RTOL:g}"


def _nnx_module(attention_fn=None, **kwargs) -> nnx.MultiHeadAttention:
    """An ``nnx.MultiHeadAttention`` with the parameters of ``nnx.Rngs(0)``."""
    if attention_fn is not None:
        kwargs["attention_fn"] = attention_fn
    return nnx.MultiHeadAttention(num_heads=HEADS, in_features=FEATURES, decode=False, rngs=nnx.Rngs(0),
                                  **kwargs)


def _nnx_output_and_grads(module: nnx.MultiHeadAttention, x, w, **call_kwargs):
    """The module's output on ``x`` and the gradient of ``sum(out * w)`` w.r.t. its params."""

    def loss(m):
        return jnp.sum(m(x, **call_kwargs) * w)

    grads = nnx.grad(loss)(module)
    return module(x, **call_kwargs), nnx.state(grads, nnx.Param)


# The interpreter (slow) is checked on one mask.
@pytest.mark.parametrize("mask,implementation", [(m, "xla") for m in MASKS] + [(MASKS[0], "interpret")],
                         ids=lambda p: repr(p) if isinstance(p, chill_jax.ChillMask) else p)
def test_nnx_matches_flax_dense_mask(mask, implementation):
    """nnx.MultiHeadAttention: forward and parameter gradients match Flax's
    attention with the dense mask."""
    x, w = _inputs()
    chill = _nnx_module(make_attention_fn(mask, implementation=implementation))
    reference = _nnx_module()
    nnx.update(reference, nnx.state(chill, nnx.Param))
    out, grads = _nnx_output_and_grads(chill, x, w)
    ref_out, ref_grads = _nnx_output_and_grads(reference, x, w, mask=_dense(mask))
    _assert_close(out, ref_out, "output")
    _assert_close(grads, ref_grads, "gradient")


@pytest.mark.parametrize("mask", MASKS, ids=repr)
def test_linen_matches_flax_dense_mask(mask):
    """linen.MultiHeadDotProductAttention: forward and parameter gradients
    match Flax's attention with the dense mask."""
    x, w = _inputs(1)
    chill = linen.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=FEATURES,
                                               attention_fn=make_attention_fn(mask, implementation="xla"))
    reference = linen.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=FEATURES)
    params = reference.init(jax.random.key(2), x)
    dense = _dense(mask)

    def chill_loss(p):
        return jnp.sum(chill.apply(p, x) * w)

    def reference_loss(p):
        return jnp.sum(reference.apply(p, x, mask=dense) * w)

    _assert_close(chill.apply(params, x), reference.apply(params, x, mask=dense), "output")
    _assert_close(jax.grad(chill_loss)(params), jax.grad(reference_loss)(params), "gradient")


def test_nnx_under_jit_and_extra_batch_dims():
    """Under nnx.jit, and with two leading batch dims (folded into one)."""
    mask = SlidingWindowChillMask(9, 0)
    x, _ = _inputs(3)
    x = x.reshape(1, B, T, FEATURES)
    chill = _nnx_module(make_attention_fn(mask, implementation="xla"))
    reference = _nnx_module()
    nnx.update(reference, nnx.state(chill, nnx.Param))
    out = nnx.jit(lambda m, x: m(x))(chill, x)
    assert out.shape == (1, B, T, FEATURES)
    _assert_close(out, reference(x, mask=_dense(mask)[None]), "output")


def test_is_causal_without_mask_is_causal_mask():
    """is_causal=True with no ChillMask equals CausalChillMask and Flax's own is_causal."""
    x, _ = _inputs(4)
    plain = _nnx_module(make_attention_fn(implementation="xla"))
    causal = _nnx_module(make_attention_fn(CausalChillMask(), implementation="xla"))
    reference = _nnx_module()
    for module in (causal, reference):
        nnx.update(module, nnx.state(plain, nnx.Param))
    out = plain(x, is_causal=True)
    _assert_close(out, causal(x), "is_causal=True vs CausalChillMask")
    _assert_close(out, causal(x, is_causal=True), "is_causal=True with CausalChillMask")
    _assert_close(out, reference(x, is_causal=True), "is_causal=True vs Flax")
    assert np.max(np.abs(np.asarray(plain(x) - out))) > 1e-3, "without is_causal the attention is full"


def test_dropout_rate_deterministic_is_allowed():
    """dropout_rate > 0 is accepted when the call is deterministic (no dropout applied)."""
    x, _ = _inputs(5)
    attention_fn = make_attention_fn(CausalChillMask(), implementation="xla")
    with_rate = _nnx_module(attention_fn, dropout_rate=0.1)
    without = _nnx_module(attention_fn)
    nnx.update(with_rate, nnx.state(without, nnx.Param))
    _assert_close(with_rate(x, deterministic=True), without(x), "deterministic dropout")


def _qkv():
    return tuple(jnp.ones((B, T, HEADS, FEATURES // HEADS), jnp.float32) for _ in range(3))


def test_refuses_dense_mask():
    """A dense Flax mask is refused (nnx and linen), not ignored."""
    mask = CausalChillMask()
    x, _ = _inputs()
    with pytest.raises(ValueError, match="dense Flax mask is not supported"):
        _nnx_module(make_attention_fn(mask))(x, mask=_dense(mask))
    module = linen.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=FEATURES,
                                                attention_fn=make_attention_fn(mask))
    params = module.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="dense Flax mask is not supported"):
        module.apply(params, x, mask=_dense(mask))


def test_refuses_bias():
    """An additive attention bias is refused."""
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="bias is not supported"):
        make_attention_fn(CausalChillMask())(q, k, v, bias=jnp.zeros((B, HEADS, T, T)))


def test_refuses_dropout():
    """Attention dropout (dropout_rate > 0, deterministic=False) is refused."""
    x, _ = _inputs()
    module = _nnx_module(make_attention_fn(CausalChillMask()), dropout_rate=0.1)
    with pytest.raises(ValueError, match="dropout is not supported"):
        module(x, deterministic=False, rngs=nnx.Rngs(dropout=1))


def test_refuses_sow_weights():
    """Attention weights cannot be sown: they are never materialized."""
    x, _ = _inputs()
    with pytest.raises(ValueError, match="cannot be sown"):
        _nnx_module(make_attention_fn(CausalChillMask()))(x, sow_weights=True)


def test_refuses_is_causal_with_non_causal_mask():
    """is_causal=True with a non-causal ChillMask is a conflict, not silently combined."""
    x, _ = _inputs()
    with pytest.raises(ValueError, match="is_causal=True conflicts with mask SlidingWindowChillMask"):
        _nnx_module(make_attention_fn(SlidingWindowChillMask(4, 4)))(x, is_causal=True)


def test_refuses_unknown_option_and_bad_mask():
    """Unknown keyword options and non-ChillMask masks raise TypeError at construction."""
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['dropout_rate'\]"):
        make_attention_fn(CausalChillMask(), dropout_rate=0.1)
    with pytest.raises(TypeError, match="mask must be a ChillMask instance or None, got ndarray"):
        make_attention_fn(np.tril(np.ones((T, T), bool)))


def _load_example():
    """Imports examples/train_lm.py as the module ``chill_jax_example_train_lm``."""
    pytest.importorskip("optax")
    pytest.importorskip("tqdm")
    name = "chill_jax_example_train_lm"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        # Registered before running it: dataclasses look their module up by name.
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_train_lm_loss_decreases():
    """The example's training loop, tiny: finite losses that fall over 30 steps."""
    train_lm = _load_example()
    cfg = train_lm.TrainConfig(mask="sliding", window=8, steps=30, batch=4, seq=32, layers=1, dim=32,
                               heads=2, lr=1e-2, implementation="xla")
    losses = train_lm.train(cfg, progress=False)
    assert losses.shape == (30,) and np.all(np.isfinite(losses)), losses
    # About ln(vocab) = 4.6 at the start; the character frequencies alone bring it near 3.3.
    assert losses[:5].mean() > 4.0, losses
    assert losses[-5:].mean() < losses[:5].mean() - 0.5, losses


def test_train_lm_compare():
    """``--compare`` (tiny): the chill_jax and the dense loss curves agree, exit status 0."""
    train_lm = _load_example()
    argv = ["--compare", "--mask", "chunkwise", "--chunk", "8", "--back", "1", "--steps", "8", "--batch", "2",
            "--seq", "32", "--layers", "1", "--dim", "16", "--heads", "2"]
    assert train_lm.main(argv) == 0
