# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Masks with runtime arrays (packed documents, per-example parameters) and
mask composition, against the float64 reference on dense masks written
independently in numpy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chill_jax
from chill_jax import (
    CausalChillMask,
    ChunkwiseChillMask,
    DocumentChillMask,
    FullChillMask,
    PrefixLMChillMask,
    SlidingWindowChillMask,
)
import custom_masks
from testing_utils import (
    BUILTIN_MASKS,
    DTYPES,
    attention_and_grads,
    check_against_reference,
    dtype_name,
    normal,
    random_lengths,
    random_qkv,
)


def random_segments(rng: np.random.Generator, batch: int, seq: int, docs: int = 4, pad: bool = True) -> np.ndarray:
    """Int32 ``[batch, seq]`` ids of contiguous documents of random lengths
    (ids increasing along the row), with trailing padding (-1) on some rows."""
    ids = np.sort(rng.integers(0, docs, size=(batch, seq)), axis=1).astype(np.int32)
    if pad:
        for row in range(0, batch, 2):
            ids[row, seq - int(rng.integers(1, seq // 4)):] = -1
    return ids


def document_dense(q_ids: np.ndarray, kv_ids: np.ndarray | None = None) -> np.ndarray:
    """Bool ``[B, T, S]``: same non-negative id."""
    kv_ids = q_ids if kv_ids is None else kv_ids
    return (q_ids[:, :, None] == kv_ids[:, None, :]) & (q_ids[:, :, None] >= 0)


def positions_dense(fn, t: int, s: int) -> np.ndarray:
    """Bool ``[T, S]`` of ``fn(q, k)`` over position grids."""
    q, k = np.meshgrid(np.arange(t), np.arange(s), indexing="ij")
    return fn(q, k)


def causal_dense(t, s):
    return positions_dense(lambda q, k: k <= q, t, s)


def window_dense(left, right, t, s):
    return positions_dense(lambda q, k: (q - k <= left) & (k - q <= right), t, s)


def _check(implementation, rng, mask, dense, *, dtype=jnp.float32, t=120, s=None, heads=2, kv_heads=None,
           lengths=None, layout="BTNH", batch=2):
    s = t if s is None else s
    q, k, v = random_qkv(rng, dtype, batch=batch, q_len=t, kv_len=s, heads=heads, kv_heads=kv_heads,
                         head_dim=32, layout=layout)
    dout = normal(rng, q.shape, dtype)
    dlse = normal(rng, (batch, heads, t), jnp.float32)
    kwargs = dict(layout=layout, implementation=implementation)
    if lengths is not None:
        kwargs.update(lengths)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, dense, dout=dout, dlse=dlse, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_documents_match_reference(implementation, rng, dtype):
    """Packed documents with padding, random per-example lengths: out, lse and
    gradients against the dense numpy mask."""
    ids = random_segments(rng, 2, 150)
    lengths = dict(lengths=random_lengths(rng, 2, 150))
    _check(implementation, rng, DocumentChillMask(ids), document_dense(ids), dtype=dtype, t=150, lengths=lengths)


@pytest.mark.parametrize("lengths", [[0, 150], [1, 37], [150, 0]], ids=str)
def test_documents_with_tiles_past_the_length(implementation, rng, lengths):
    """Documents & causal where whole query and key tiles lie past the
    length, down to none valid (the kernels give such tiles empty ranges
    without branching, ``live_key_tiles``): out, lse and the gradients match
    the dense reference, and rows past the length are exactly 0 (both
    checked by ``check_against_reference``)."""
    t = 150
    ids = random_segments(rng, 2, t)
    _check(implementation, rng, DocumentChillMask(ids) & CausalChillMask(),
           document_dense(ids) & causal_dense(t, t), t=t,
           lengths=dict(lengths=jnp.asarray(lengths, jnp.int32)))


@pytest.mark.parametrize("combine", ["causal", "window", "chunkwise"])
def test_documents_combined(implementation, rng, combine):
    """Documents & causal / sliding window / chunkwise, with GQA (4 query heads on 2 key/value heads)."""
    t = 140
    ids = random_segments(rng, 2, t, docs=3)
    other, dense = {
        "causal": (CausalChillMask(), causal_dense(t, t)),
        "window": (SlidingWindowChillMask(9, 3), window_dense(9, 3, t, t)),
        "chunkwise": (ChunkwiseChillMask(32, 1),
                      positions_dense(lambda q, k: (k // 32 <= q // 32) & (k // 32 >= q // 32 - 1), t, t)),
    }[combine]
    _check(implementation, rng, DocumentChillMask(ids) & other, document_dense(ids) & dense, t=t, heads=4,
           kv_heads=2)


def test_documents_cross_attention(implementation, rng):
    """T != S with separate query and key ids (and BNTH layout)."""
    t, s = 70, 130
    q_ids = np.sort(rng.integers(0, 3, size=(2, t)), axis=1).astype(np.int32)
    kv_ids = np.sort(rng.integers(0, 3, size=(2, s)), axis=1).astype(np.int32)
    mask = DocumentChillMask(q_ids, kv_ids)
    _check(implementation, rng, mask, document_dense(q_ids, kv_ids), t=t, s=s, layout="BNTH")


def test_documents_shared_row_and_unsorted_ids(implementation, rng):
    """One ``[1, T]`` row of ids for the whole batch, with ids that repeat in
    separate runs and come in no particular order (ranges widen, results stay exact)."""
    t = 110
    ids = rng.integers(-1, 3, size=(1, t)).astype(np.int32)
    _check(implementation, rng, DocumentChillMask(ids), np.broadcast_to(document_dense(ids), (2, t, t)), t=t)


def test_per_example_prefix_lm(implementation, rng):
    t = 100
    prefix = np.array([0, 37], np.int32)
    dense = np.stack([positions_dense(lambda q, k, p=p: (k <= q) | (k < p), t, t) for p in prefix])
    _check(implementation, rng, PrefixLMChillMask(jnp.asarray(prefix)), dense, t=t)


def test_custom_mask_with_array(implementation, rng):
    """A user mask with a per-example window size array (the README's example)."""
    t = 90
    window = np.array([3, 40], np.int32)
    dense = np.stack([positions_dense(lambda q, k, w=w: (q - k >= 0) & (q - k <= w), t, t) for w in window])
    _check(implementation, rng, custom_masks.PerExampleWindowMask(jnp.asarray(window)), dense, t=t)


def test_custom_mask_with_float_array_gets_no_gradient(implementation, rng):
    """A float mask array changes nothing in the gradient: its cotangent is 0."""
    t = 80
    scores = rng.standard_normal((2, t)).astype(np.float32)
    mask = custom_masks.KeyScoreMask(jnp.asarray(scores), 0.0)
    dense = np.broadcast_to((scores >= 0.0)[:, None, :], (2, t, t))
    _check(implementation, rng, mask, dense, t=t)
    q, k, v = random_qkv(rng, jnp.float32, q_len=t)
    grads = jax.grad(lambda m: jnp.sum(chill_jax.attention(q, k, v, m, implementation=implementation)),
                     allow_int=True)(mask)
    (g,) = jax.tree.leaves(grads)
    assert g.shape == scores.shape and not np.any(np.asarray(g))


@pytest.mark.parametrize("op", ["&", "|"])
@pytest.mark.parametrize("pair", [(0, 1), (2, 4), (3, 2), (1, 4)], ids=str)
def test_composed_builtins(implementation, rng, op, pair):
    """Compositions of built-in masks against the composition of their dense masks."""
    a, b = BUILTIN_MASKS[pair[0]], BUILTIN_MASKS[pair[1]]
    t = 100
    mask = a & b if op == "&" else a | b
    da, db = a.make_mask(t, t), b.make_mask(t, t)
    _check(implementation, rng, mask, (da & db) if op == "&" else (da | db), t=t)


def test_nested_composition_with_custom_and_array_masks(implementation, rng):
    """(documents & window) | prefix-LM(array): nested, custom, arrays on both sides."""
    t = 96
    ids = random_segments(rng, 2, t, pad=False)
    window = np.array([5, 17], np.int32)
    prefix = np.array([10, 3], np.int32)
    mask = ((DocumentChillMask(ids) & custom_masks.PerExampleWindowMask(jnp.asarray(window)))
            | PrefixLMChillMask(jnp.asarray(prefix)))
    win = np.stack([positions_dense(lambda q, k, w=w: (q - k >= 0) & (q - k <= w), t, t) for w in window])
    pre = np.stack([positions_dense(lambda q, k, p=p: (k <= q) | (k < p), t, t) for p in prefix])
    _check(implementation, rng, mask, (document_dense(ids) & win) | pre, t=t)


def test_no_retrace_when_mask_arrays_change(implementation, rng):
    """New segment ids, prefix lengths and inputs never retrace the jitted step."""
    t = 64
    q, k, v = random_qkv(rng, jnp.float32, q_len=t)
    chex.clear_trace_counter()  # the counter is shared by this test's parametrizations

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(q, k, v, ids, prefix):
        mask = DocumentChillMask(ids) | PrefixLMChillMask(prefix)
        return jax.value_and_grad(lambda q: jnp.sum(chill_jax.attention(q, k, v, mask,
                                                                         implementation=implementation)))(q)

    for _ in range(3):
        ids = jnp.asarray(random_segments(rng, 2, t))
        prefix = jnp.asarray(rng.integers(0, t, size=2), jnp.int32)
        jax.block_until_ready(step(q + 1, k, v, ids, prefix))


def test_mask_is_a_jit_argument_and_vmaps(implementation, rng):
    """A mask carrying arrays passes through jit as an argument and through
    vmap as a batched pytree (one row of ids per vmapped example)."""
    t = 64
    q, k, v = random_qkv(rng, jnp.float32, batch=3, q_len=t)
    ids = random_segments(rng, 3, t)

    def one(q, k, v, mask):  # unbatched [T, N, D] and a mask of batch 1
        return chill_jax.attention(q[None], k[None], v[None], mask, implementation=implementation)[0]

    mask = DocumentChillMask(ids)
    vmapped = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0)))(q, k, v, jax.tree.map(lambda a: a[:, None], mask))
    direct = jax.jit(lambda q, k, v, m: chill_jax.attention(q, k, v, m, implementation=implementation))(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(vmapped), np.asarray(direct), rtol=1e-5, atol=1e-6)


def test_mask_pytree_and_identity():
    ids = np.zeros((2, 16), np.int32)
    mask = DocumentChillMask(ids) & CausalChillMask()
    leaves, treedef = jax.tree_util.tree_flatten(mask)
    assert len(leaves) == 2 and all(leaf.dtype == jnp.int32 for leaf in leaves)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt == mask and hash(rebuilt) == hash(mask)
    assert DocumentChillMask(ids) != DocumentChillMask(ids)  # arrays compare by identity, never by value
    assert CausalChillMask() & FullChillMask() == CausalChillMask() & FullChillMask()
    assert CausalChillMask() & FullChillMask() != CausalChillMask() | FullChillMask()
    assert "DocumentChillMask" in repr(mask) and "int32[2, 16, 4]" in repr(mask)


@pytest.mark.parametrize("example", [0, 1])
def test_verify_array_and_composed_masks(rng, example):
    ids = random_segments(rng, 2, 150)
    DocumentChillMask(ids).verify(150, example=example)
    (DocumentChillMask(ids) & SlidingWindowChillMask(20, 3)).verify(150, example=example)
    (DocumentChillMask(ids) | PrefixLMChillMask(jnp.asarray([5, 60]))).verify(150, example=example)
    DocumentChillMask(ids[:, :70], ids).verify(70, 150, example=example)


def test_document_ranges_are_tight(rng):
    """A query's key range is its document's span, so tiles of other
    documents are never visited; tiles inside one document are full."""
    ids = np.repeat(np.arange(4, dtype=np.int32), 64)[None]  # 4 documents of 64
    mask = DocumentChillMask(ids)
    k_ranges, q_ranges = mask.ranges(256)
    np.testing.assert_array_equal(k_ranges[:, 0], np.repeat(np.arange(4) * 64, 64))
    np.testing.assert_array_equal(k_ranges[:, 1], np.repeat(np.arange(4) * 64 + 63, 64))
    np.testing.assert_array_equal(q_ranges, k_ranges)
    claims = mask.full_blocks(256, 256, 64, 64)
    np.testing.assert_array_equal(claims, np.eye(4, dtype=bool))


def test_array_mask_validation():
    ids = np.zeros((2, 16), np.int32)
    q = jnp.ones((2, 16, 1, 8), jnp.float32)
    with pytest.raises(ValueError, match="leading dim must be the batch size 3"):
        chill_jax.attention(jnp.ones((3, 16, 1, 8)), jnp.ones((3, 16, 1, 8)), jnp.ones((3, 16, 1, 8)),
                            DocumentChillMask(ids), implementation="xla")
    with pytest.raises(ValueError, match="cover 16 query and 16 key positions"):
        chill_jax.attention(jnp.ones((2, 20, 1, 8)), jnp.ones((2, 20, 1, 8)), jnp.ones((2, 20, 1, 8)),
                            DocumentChillMask(ids), implementation="xla")
    with pytest.raises(TypeError, match="segment_ids must be an integer array"):
        DocumentChillMask(np.zeros((2, 16), np.float32))
    with pytest.raises(ValueError, match="shape \\[batch, seq\\]"):
        DocumentChillMask(np.zeros((16,), np.int32))
    with pytest.raises(ValueError, match="must be equal"):
        DocumentChillMask(np.zeros((2, 16), np.int32), np.zeros((3, 16), np.int32))
    with pytest.raises(ValueError, match="shape \\[batch\\]"):
        PrefixLMChillMask(jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(TypeError, match="integer array"):
        PrefixLMChillMask(jnp.zeros((2,), jnp.float32))
    with pytest.raises(ValueError, match="at most 4 arrays"):
        DocumentChillMask(ids) & DocumentChillMask(ids) & CausalChillMask() & DocumentChillMask(ids)
    with pytest.raises(TypeError, match="needs concrete arrays"):
        jax.jit(lambda i: DocumentChillMask(i).make_mask(16))(ids)
    assert chill_jax.attention(q, q, q, DocumentChillMask(ids), implementation="xla").shape == q.shape


def test_xla_interpreter_fallback_with_arrays(rng):
    """A mask with arrays that the xla shim cannot evaluate falls back (with
    a warning) to the interpreter, per example, and stays exact."""
    t = 70
    window = np.array([2, 30], np.int32)
    dense = np.stack([positions_dense(lambda q, k, w=w: (q - k >= 0) & (q - k <= w), t, t) for w in window])
    with pytest.warns(UserWarning, match="falling back to Triton's interpreter"):
        _check("xla", rng, custom_masks.CastWindowMask(jnp.asarray(window)), dense, t=t)
