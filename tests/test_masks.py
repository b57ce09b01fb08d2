# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Mask classes: dense masks, range methods, full-block claims, verify, identity."""

import io
import re

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import chill_jax
from chill_jax import (
    CausalChillMask,
    ChillMask,
    ChunkwiseChillMask,
    FullChillMask,
    PrefixLMChillMask,
    SlidingWindowChillMask,
)
from chill_jax.configs import all_tile_sizes
import custom_masks
from testing_utils import attention_and_grads, check_against_reference, normal, random_qkv


def dense_numpy(mask: ChillMask, q_len: int, kv_len: int) -> np.ndarray:
    """The built-in masks written directly in numpy, bool ``[q_len, kv_len]``."""
    q = np.arange(q_len)[:, None]
    k = np.arange(kv_len)[None, :]
    if isinstance(mask, FullChillMask):
        return np.ones((q_len, kv_len), bool)
    if isinstance(mask, CausalChillMask):
        return q >= k
    if isinstance(mask, SlidingWindowChillMask):
        left, right = mask.args
        return (q - k <= left) & (k - q <= right)
    if isinstance(mask, ChunkwiseChillMask):
        size, back = mask.args
        return (k // size <= q // size) & (k // size >= q // size - back)
    if isinstance(mask, PrefixLMChillMask):
        (prefix,) = mask.args
        return (q >= k) | (k < prefix)
    raise TypeError(mask)


MASKS = [
    FullChillMask(),
    CausalChillMask(),
    SlidingWindowChillMask(20, 7),
    SlidingWindowChillMask(0, 0),
    SlidingWindowChillMask(3, 90),
    SlidingWindowChillMask(200, 200),
    SlidingWindowChillMask(31, 32),
    ChunkwiseChillMask(32, 1),
    ChunkwiseChillMask(7, 0),
    ChunkwiseChillMask(1, 2),
    ChunkwiseChillMask(100, 3),
    PrefixLMChillMask(0),
    PrefixLMChillMask(40),
    PrefixLMChillMask(63),
    PrefixLMChillMask(300),
]
SIZES = [(1, 1), (63, 63), (200, 200), (100, 37), (37, 130)]


@pytest.mark.parametrize("mask", MASKS, ids=repr)
def test_verify_builtin(mask):
    """verify() passes for every built-in, square or not, with tiny and
    non-tile-multiple sizes."""
    for q_len, kv_len in SIZES:
        mask.verify(q_len, kv_len)
    mask.verify(64)


@pytest.mark.parametrize("mask", MASKS, ids=repr)
def test_make_mask_matches_numpy(mask):
    """make_mask (the Triton mask method) equals a direct numpy construction."""
    for q_len, kv_len in SIZES:
        dense = mask.make_mask(q_len, kv_len)
        assert dense.dtype == bool and dense.shape == (q_len, kv_len)
        np.testing.assert_array_equal(dense, dense_numpy(mask, q_len, kv_len), err_msg=f"{q_len}x{kv_len}")
    np.testing.assert_array_equal(mask.make_mask(70), dense_numpy(mask, 70, 70))


@st.composite
def _builtin_masks(draw) -> ChillMask:
    """A built-in mask with random parameters."""
    kind = draw(st.sampled_from(["full", "causal", "window", "chunk", "prefix"]))
    small = st.integers(0, 80)
    if kind == "window":
        return SlidingWindowChillMask(draw(small), draw(small))
    if kind == "chunk":
        return ChunkwiseChillMask(draw(st.integers(1, 70)), draw(st.integers(0, 4)))
    if kind == "prefix":
        return PrefixLMChillMask(draw(st.integers(0, 160)))
    return FullChillMask() if kind == "full" else CausalChillMask()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(mask=_builtin_masks(), q_len=st.integers(1, 150), kv_len=st.integers(1, 150))
def test_builtin_masks_property(mask, q_len, kv_len):
    """Random parameters and sizes: make_mask matches numpy and verify passes."""
    np.testing.assert_array_equal(mask.make_mask(q_len, kv_len), dense_numpy(mask, q_len, kv_len))
    mask.verify(q_len, kv_len)


@st.composite
def _composed_masks(draw, depth: int = 2) -> ChillMask:
    """A built-in mask, or ``a & b`` / ``a | b`` of random (nested) ones."""
    if depth == 0 or draw(st.booleans()):
        return draw(_builtin_masks())
    a, b = draw(_composed_masks(depth - 1)), draw(_composed_masks(depth - 1))
    return a & b if draw(st.booleans()) else a | b


def _composed_dense(mask: ChillMask, q_len: int, kv_len: int) -> np.ndarray:
    if isinstance(mask, chill_jax.ComposedChillMask):
        a, b = (_composed_dense(m, q_len, kv_len) for m in mask.operands)
        return a & b if mask.op == "&" else a | b
    return dense_numpy(mask, q_len, kv_len)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(mask=_composed_masks(), q_len=st.integers(1, 150), kv_len=st.integers(1, 150))
def test_composed_masks_property(mask, q_len, kv_len):
    """Random compositions of built-ins: the generated ``mask`` combines the
    operands' dense masks, and the generated ranges and full-block claims
    pass verify."""
    np.testing.assert_array_equal(mask.make_mask(q_len, kv_len), _composed_dense(mask, q_len, kv_len))
    mask.verify(q_len, kv_len)


def _tight_hull(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last allowed column of each row, and which rows allow any."""
    any_allowed = dense.any(1)
    first = np.argmax(dense, 1)
    last = dense.shape[1] - 1 - np.argmax(dense[:, ::-1], 1)
    return np.stack([first, last], 1), any_allowed


@pytest.mark.parametrize("mask", MASKS, ids=repr)
def test_builtin_ranges_are_exact(mask):
    """The built-ins' ranges, clipped to the sequence, are the exact hull of
    each row and column of the mask (so no tile is visited needlessly), and
    empty where nothing is allowed."""
    for q_len, kv_len in SIZES:
        k_ranges, q_ranges = mask.ranges(q_len, kv_len)
        assert k_ranges.shape == (q_len, 2) and q_ranges.shape == (kv_len, 2)
        dense = dense_numpy(mask, q_len, kv_len)
        for ranges, rows, other in ((k_ranges, dense, kv_len), (q_ranges, dense.T, q_len)):
            clipped = np.stack([np.maximum(ranges[:, 0], 0), np.minimum(ranges[:, 1], other - 1)], 1)
            hull, nonempty = _tight_hull(rows)
            np.testing.assert_array_equal(clipped[nonempty], hull[nonempty], err_msg=f"{mask} {q_len}x{kv_len}")
            assert (clipped[~nonempty, 0] > clipped[~nonempty, 1]).all()


@pytest.mark.parametrize("mask", MASKS, ids=repr)
def test_full_block_claims(mask):
    """Claimed tiles are all allowed; for complete tiles the claims are exact."""
    q_len, kv_len = 200, 170
    dense = dense_numpy(mask, q_len, kv_len)
    for q_tile, k_tile in [(16, 32), (32, 32), (64, 64), (128, 64)]:
        claims = mask.full_blocks(q_len, kv_len, q_tile, k_tile)
        assert claims.shape == (-(-q_len // q_tile), -(-kv_len // k_tile))
        for tq, tk in np.ndindex(claims.shape):
            block = dense[tq * q_tile:(tq + 1) * q_tile, tk * k_tile:(tk + 1) * k_tile]
            where = f"{mask} tile ({tq}, {tk}) of {q_tile}x{k_tile}"
            if claims[tq, tk]:
                assert block.all(), where
            elif block.shape == (q_tile, k_tile):
                assert not block.all(), where


def test_full_blocks_without_claims():
    """A mask without is_full_block claims nothing."""
    claims = custom_masks.ShiftedCausalMask(3).full_blocks(100, 100, 32, 32)
    assert claims.shape == (4, 4) and not claims.any()


def test_seq_len_reaches_mask_methods():
    """make_mask passes ``seq_len`` (default: kv_len) to a 4-parameter mask."""
    mask = custom_masks.LastKeysMask(5)
    expected = np.zeros((3, 20), bool)
    expected[:, 15:] = True
    np.testing.assert_array_equal(mask.make_mask(3, 20), expected)
    expected = np.zeros((3, 20), bool)
    expected[:, 7:] = True
    np.testing.assert_array_equal(mask.make_mask(3, 20, seq_len=12), expected)
    mask.verify(50, 30)


@pytest.mark.parametrize("bound,radius,causal", [(6, 6.5, True), (3, 2.5, False), (0, 0.0, False)])
def test_float_and_bool_constants(bound, radius, causal):
    """Float and bool constants reach the Triton methods unchanged."""
    mask = custom_masks.RadiusMask(bound, radius, causal)
    assert mask.args == (bound, radius, causal)
    diff = np.arange(90)[:, None] - np.arange(70)[None, :]
    expected = (np.abs(diff) <= radius) & ((diff >= 0) | (not causal))
    np.testing.assert_array_equal(mask.make_mask(90, 70), expected)
    mask.verify(90, 70)


def test_verify_catches_narrow_k_range():
    """A k_range_for_q one key too narrow: the message names the query, the
    range and the missed key."""
    mask = custom_masks.NarrowKRangeMask(5, 2)
    message = "NarrowKRangeMask(5, 2): k_range_for_q(q=5) = (1, 7) but mask allows k=0"
    for sizes in [(100,), (30, 60)]:
        with pytest.raises(AssertionError, match=re.escape(message)):
            mask.verify(*sizes)
    mask.verify(5)


def test_verify_catches_narrow_q_range():
    """A q_range_for_k missing the diagonal query."""
    with pytest.raises(AssertionError, match=re.escape(
            "NarrowQRangeMask(): q_range_for_k(k=0) = (1, 49) but mask allows q=0")):
        custom_masks.NarrowQRangeMask().verify(50)


def test_verify_catches_wrong_full_block_claim():
    """An is_full_block claiming the diagonal tiles: the message names the
    tile and the first forbidden (query, key) pair in it."""
    q_tile, k_tile = all_tile_sizes()[0]
    message = (f"OverclaimingCausalMask(): is_full_block(q=0, k=0, q_tile={q_tile}, k_tile={k_tile}) "
               f"claims a full block, but mask(q=0, k=1) is False")
    with pytest.raises(AssertionError, match=re.escape(message)):
        custom_masks.OverclaimingCausalMask().verify(130)


def test_verify_catches_non_monotone_range():
    """Ranges declared continuous (the default) but dropping: the message
    names both positions and values; declaring them discontinuous passes."""
    message = ("ModuloMask(7,): k_lims_continuous() is True but k_range_for_q hi decreases: "
               "k_range_for_q(q=6)[1] = 6, k_range_for_q(q=7)[1] = 0")
    with pytest.raises(AssertionError, match=re.escape(message)):
        custom_masks.ModuloMask(7).verify(50)
    custom_masks.DiscontinuousModuloMask(7).verify(50)
    custom_masks.DiscontinuousModuloMask(7).verify(50, 9)


def test_equality_and_hash():
    """Masks compare and hash by (type, constants)."""
    assert SlidingWindowChillMask(1, 2) == SlidingWindowChillMask(1, 2)
    assert hash(SlidingWindowChillMask(1, 2)) == hash(SlidingWindowChillMask(1, 2))
    assert FullChillMask() == FullChillMask() and hash(FullChillMask()) == hash(FullChillMask())
    assert SlidingWindowChillMask(1, 2) != SlidingWindowChillMask(2, 1)
    assert SlidingWindowChillMask(1, 2) != ChunkwiseChillMask(1, 2)
    assert CausalChillMask() != FullChillMask()
    assert PrefixLMChillMask(3) != PrefixLMChillMask(4)
    assert custom_masks.LocalWindowMask(1, 2) != custom_masks.LocalWindowMask(1.0, 2)
    assert custom_masks.LocalWindowMask(1, 2) != custom_masks.LocalWindowMask(True, 2)
    assert custom_masks.ModuloMask(7) != custom_masks.DiscontinuousModuloMask(7)
    assert SlidingWindowChillMask(1, 2) != (1, 2)
    table = {SlidingWindowChillMask(1, 2): "a", ChunkwiseChillMask(1, 2): "b", CausalChillMask(): "c"}
    assert table[SlidingWindowChillMask(1, 2)] == "a" and table[CausalChillMask()] == "c"
    assert len({SlidingWindowChillMask(1, 2), SlidingWindowChillMask(1, 2), FullChillMask()}) == 2
    assert SlidingWindowChillMask(3, 4).args == (3, 4)
    assert repr(ChunkwiseChillMask(32, 1)) == "ChunkwiseChillMask(32, 1)"


@pytest.mark.parametrize("make,error,words", [
    (lambda: SlidingWindowChillMask(-1, 0), ValueError, "left_context"),
    (lambda: SlidingWindowChillMask(0, -3), ValueError, "right_context"),
    (lambda: SlidingWindowChillMask(1.5, 0), TypeError, "left_context"),
    (lambda: SlidingWindowChillMask("1", 0), TypeError, "left_context"),
    (lambda: SlidingWindowChillMask(True, 0), TypeError, "left_context"),
    (lambda: SlidingWindowChillMask(None, 0), TypeError, "left_context"),
    (lambda: ChunkwiseChillMask(0, 1), ValueError, "context_size"),
    (lambda: ChunkwiseChillMask(4, -1), ValueError, "back_contexts"),
    (lambda: ChunkwiseChillMask(4.0, 1), TypeError, "context_size"),
    (lambda: PrefixLMChillMask(-5), ValueError, "prefix_size"),
    (lambda: PrefixLMChillMask([3]), TypeError, "prefix_size"),
    (lambda: custom_masks.LocalWindowMask("a", 1), TypeError, "args[0]"),
    (lambda: custom_masks.LocalWindowMask(1, [2]), TypeError, "args[1]"),
    (lambda: custom_masks.LocalWindowMask(1, float("nan")), ValueError, "args[1]"),
    (lambda: custom_masks.LocalWindowMask(1, np.arange(2)), TypeError, "args[1]"),
    (lambda: ChillMask([1, 2]), TypeError, "tuple"),
    (lambda: ChillMask(tuple(range(17))), ValueError, "16"),
])
def test_constructor_validation(make, error, words):
    """Bad constants raise the right error, naming the offending argument."""
    with pytest.raises(error, match=re.escape(words)):
        make()


def test_mask_constants_of_each_type():
    """int, float, bool and numpy scalar constants are accepted and normalized."""
    mask = custom_masks.LocalWindowMask(np.int64(3), 2.5)
    assert mask.args == (3, 2.5) and type(mask.args[0]) is int
    assert custom_masks.LocalWindowMask(np.bool_(True), 1).args == (True, 1)
    assert mask == custom_masks.LocalWindowMask(3, 2.5)


def test_readme_style_custom_mask(rng):
    """A mask written like the PyTorch library's README (3-parameter ``mask``,
    builtin max/min, annotations) works with verify, make_mask and attention."""
    mask = custom_masks.LocalWindowMask(11, 3)
    mask.verify(130)
    mask.verify(90, 40)
    np.testing.assert_array_equal(mask.make_mask(100, 80), dense_numpy(SlidingWindowChillMask(11, 3), 100, 80))
    assert mask.spec().mask_takes_len is False
    q, k, v = random_qkv(rng, jnp.float32, batch=2, q_len=130, heads=2, head_dim=32)
    dout = normal(rng, q.shape, jnp.float32)
    lengths = jnp.asarray([130, 97], jnp.int32)
    result = attention_and_grads(q, k, v, mask, dout=dout, lengths=lengths, implementation="interpret")
    check_against_reference(result, q, k, v, mask, dout=dout, lengths=lengths)
    builtin = chill_jax.attention(q, k, v, SlidingWindowChillMask(11, 3), lengths=lengths,
                                  implementation="interpret")
    np.testing.assert_array_equal(np.asarray(result["out"]), np.asarray(builtin))


@pytest.mark.parametrize("make", [lambda: custom_masks.MissingRangeMask(), lambda: custom_masks.WrongArityMask()],
                         ids=["missing_method", "wrong_arity"])
def test_malformed_custom_mask(make):
    """A missing or wrong-arity Triton method is a TypeError naming it."""
    mask = make()
    name = "q_range_for_k" if isinstance(mask, custom_masks.MissingRangeMask) else "k_range_for_q"
    with pytest.raises(TypeError, match=name):
        mask.verify(10)
    q = jnp.ones((1, 8, 1, 16), jnp.float32)
    with pytest.raises(TypeError, match=name):
        chill_jax.attention(q, q, q, mask)


@pytest.mark.parametrize("mask,kv_len,show", [
    (ChunkwiseChillMask(16, 3), None, False),
    (SlidingWindowChillMask(20, 7), 150, True),
    (custom_masks.LocalWindowMask(5, 9), 40, True),
], ids=repr)
def test_plot(mask, kv_len, show):
    """plot() returns a matplotlib Figure showing exactly make_mask."""
    pytest.importorskip("chill_jax._plot")
    from matplotlib.figure import Figure

    fig = mask.plot(100, kv_len, show_full_blocks=show, tile=(32, 32))
    assert isinstance(fig, Figure)
    image = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(np.asarray(image, bool), mask.make_mask(100, kv_len))
    fig.savefig(io.BytesIO(), format="png")
