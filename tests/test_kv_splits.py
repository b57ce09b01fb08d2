# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""The forward's key splits (``KernelConfig.kv_splits``): partial results in
key-split programs, merged by ``attn_fwd_combine``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chill_jax
from chill_jax import AttentionConfig, KernelConfig, _launch
from chill_jax.attention import _programs_per_multiprocessor, kv_splits
from chill_jax.configs import default_config, kernel_config_from_dict
import compile_check
from testing_utils import BUILTIN_MASKS, attention_and_grads, check_against_reference, normal, random_qkv


def _split_config(implementation, head_dim, mask, splits, **fwd):
    base = default_config(implementation, head_dim, 2, mask)
    return dataclasses.replace(base, fwd=dataclasses.replace(base.fwd, kv_splits=splits, **fwd))


def _forward_launches(q, k, v, mask, **kwargs):
    jax.clear_caches()  # record_launches sees only launches traced anew
    return [(kernel.fn.__name__, consts) for kernel, _, _, consts, _ in compile_check.record_launches(
        lambda q, k, v: chill_jax.attention(q, k, v, mask, **kwargs), q, k, v)]


@pytest.mark.parametrize("splits", [2, 3])
@pytest.mark.parametrize("mask", BUILTIN_MASKS, ids=repr)
def test_key_splits_match_reference(kernel_implementation, rng, mask, splits):
    """Every built-in mask with its keys split 2 and 3 ways (cross-attention,
    random query and key lengths, one of them 0, so whole splits and rows
    have no allowed key): the merged out and lse and the gradients through
    both match the reference, and dead rows are exactly 0."""
    b, t, s, n = 3, 70, 300, 2
    q, k, v = random_qkv(rng, jnp.bfloat16, batch=b, q_len=t, kv_len=s, heads=n, head_dim=32)
    config = _split_config(kernel_implementation, 32, mask, splits)
    kwargs = dict(q_lengths=jnp.asarray(rng.integers(1, t + 1, size=b), jnp.int32),
                  kv_lengths=jnp.asarray([0, *rng.integers(1, s + 1, size=b - 1)], jnp.int32),
                  implementation=kernel_implementation)
    launched = _forward_launches(q, k, v, mask, config=config, **kwargs)
    assert [name for name, _ in launched] == ["attn_fwd", "attn_fwd_combine"]
    assert launched[0][1]["KV_SPLITS"] == launched[1][1]["KV_SPLITS"] == splits
    dout = normal(rng, q.shape, q.dtype)
    dlse = normal(rng, (b, n, t), jnp.float32)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, config=config, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


@pytest.mark.parametrize("splits, layout", [(2, "BTNH"), (3, "BNTH")])
@pytest.mark.parametrize("mask", BUILTIN_MASKS, ids=repr)
def test_dq_key_splits_match_reference(kernel_implementation, rng, mask, splits, layout):
    """The dQ launch with its keys split (float32 partial dQ per split,
    summed; delta from the first split): every built-in mask, GQA,
    cross-attention, random lengths with an empty key range, and an lse
    cotangent (delta's dLse). Split counts and layouts go in pairs (the
    layout only changes the strides), so each mask meets both of each."""
    b, t, s, n = 3, 70, 300, 4
    q, k, v = random_qkv(rng, jnp.float16, batch=b, q_len=t, kv_len=s, heads=n, kv_heads=2, head_dim=32,
                         layout=layout)
    base = default_config(kernel_implementation, 32, 2, mask)
    config = dataclasses.replace(base, bwd_dq=dataclasses.replace(base.bwd_dq, kv_splits=splits))
    kwargs = dict(q_lengths=jnp.asarray(rng.integers(1, t + 1, size=b), jnp.int32),
                  kv_lengths=jnp.asarray([*rng.integers(1, s + 1, size=b - 1), 0], jnp.int32),
                  layout=layout, implementation=kernel_implementation)

    def loss(q, k, v):
        return jnp.sum(chill_jax.attention(q, k, v, mask, config=config, **kwargs).astype(jnp.float32))

    jax.clear_caches()
    dq_splits = [consts["KV_SPLITS"] for kernel, _, _, consts, _ in compile_check.record_launches(
        jax.grad(loss, argnums=(0, 1, 2)), q, k, v) if kernel.fn.__name__ == "attn_bwd_dq"]
    assert dq_splits == [splits]
    dout = normal(rng, q.shape, q.dtype)
    dlse = normal(rng, (b, n, t), jnp.float32)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, config=config, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, **kwargs)


def test_dq_programs_per_multiprocessor():
    """dQ holds two query-side tiles (Q and dOut): 64x64 with 2 stages at
    D=128 is 96 KB, two programs; 128x64 with 8 warps one."""
    assert _programs_per_multiprocessor(KernelConfig(64, 64, 4, 2), False, 128, 2, query_tiles=2) == 2
    assert _programs_per_multiprocessor(KernelConfig(128, 64, 8, 3), False, 128, 2, query_tiles=2) == 1


@pytest.mark.parametrize("layout", ["BTNH", "BNTH"])
@pytest.mark.parametrize("mask", [chill_jax.FullChillMask(), chill_jax.CausalChillMask()], ids=repr)
def test_key_splits_warp_specialized(kernel_implementation, rng, mask, layout):
    """The warp-specialized forward splits its keys too (GQA, fp16)."""
    b, t, s, n = 2, 64, 256, 4
    q, k, v = random_qkv(rng, jnp.float16, batch=b, q_len=t, kv_len=s, heads=n, kv_heads=2, head_dim=32,
                         layout=layout)
    config = _split_config(kernel_implementation, 32, mask, 3, block_m=32, block_n=32, num_stages=2,
                           warp_specialize=True)
    kwargs = dict(layout=layout, implementation=kernel_implementation)
    launched = [name for name, _ in _forward_launches(q, k, v, mask, config=config, **kwargs)]
    if kernel_implementation == "interpret" or _launch.can_warp_specialize(kernel_implementation):
        assert launched == ["attn_fwd_ws", "attn_fwd_combine"]
    dout = normal(rng, q.shape, q.dtype)
    result = attention_and_grads(q, k, v, mask, dout=dout, config=config, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, **kwargs)


def test_more_splits_than_key_tiles(kernel_implementation, rng):
    """A split count above the key tiles gives one tile per split."""
    q, k, v = random_qkv(rng, jnp.float32, batch=1, q_len=40, kv_len=150, heads=2, head_dim=16)
    config = _split_config(kernel_implementation, 16, chill_jax.FullChillMask(), 64)
    launched = _forward_launches(q, k, v, None, config=config, implementation=kernel_implementation)
    tiles = -(-150 // config.fwd.block_n)
    assert [consts["KV_SPLITS"] for _, consts in launched] == [tiles, tiles]
    dout = normal(rng, q.shape, q.dtype)
    result = attention_and_grads(q, k, v, None, dout=dout, config=config, implementation=kernel_implementation)
    check_against_reference(result, q, k, v, None, dout=dout, implementation=kernel_implementation)


def test_one_split_and_the_interpreter_do_not_split(rng):
    """``kv_splits=1`` never splits, and automatic splitting needs a known
    multiprocessor count (the interpreter has none)."""
    q, k, v = random_qkv(rng, jnp.float32, batch=1, q_len=16, kv_len=512, heads=1, head_dim=16)
    for splits in (0, 1):
        config = _split_config("interpret", 16, chill_jax.FullChillMask(), splits)
        launched = _forward_launches(q, k, v, None, config=config, implementation="interpret")
        assert [(name, consts["KV_SPLITS"]) for name, consts in launched] == [("attn_fwd", 1)]


@pytest.mark.parametrize("programs, key_tiles, slots, expected", [
    (4096, 128, 132, 1),   # many waves already
    (120, 128, 132, 1),    # one wave, 91% filled
    (64, 128, 132, 2),     # 2 x 64 = 128 of 132
    (8, 512, 132, 15),     # 120 of 132: within 90% of the best (16 parts, 128)
    (1, 512, 132, 29),     # at most 32 parts: 29 within 90% of 32
    (8, 20, 132, 5),       # at least 4 key tiles per part
    (8, 3, 132, 1),        # too few key tiles to split
    (64, 128, None, 1),    # slot count unknown
    (64, 128, 264, 4),     # two programs per multiprocessor: 256 of 264
])
def test_automatic_split_count(programs, key_tiles, slots, expected):
    assert kv_splits(KernelConfig(), programs, key_tiles, slots) == expected


@pytest.mark.parametrize("cfg, warp_specialize, block_d, expected", [
    (KernelConfig(128, 128, 4, 2, warp_specialize=True), True, 128, 1),  # the Hopper D=128 forward
    (KernelConfig(128, 128, 4, 3), False, 64, 2),   # the Hopper D=64 full forward: 112 KB
    (KernelConfig(128, 64, 8, 3), False, 128, 1),   # 8 warps at 255 registers fill the register file
    (KernelConfig(128, 128, 4, 3), False, 128, 1),  # 224 KB of shared memory
])
def test_programs_per_multiprocessor(cfg, warp_specialize, block_d, expected):
    assert _programs_per_multiprocessor(cfg, warp_specialize, block_d, 2) == expected


def test_automatic_split_fills_waves():
    """Whatever the grid below 80% of one wave, the split fills its waves to
    at least 85% when 32 parts of at least 4 key tiles allow it."""
    for programs in range(5, 106):
        parts = kv_splits(KernelConfig(), programs, 1024, 132)
        waves = programs * parts / 132
        assert waves / np.ceil(waves) >= 0.85, (programs, parts)


def test_explicit_split_count_wins():
    assert kv_splits(KernelConfig(kv_splits=3), 4096, 128, 132) == 3
    assert kv_splits(KernelConfig(kv_splits=8), 1, 5, 132) == 5


@pytest.mark.skipif(not _launch.cuda_available(), reason="automatic splits need a GPU's multiprocessor count")
def test_automatic_split_on_gpu(rng):
    """On a GPU a launch with few query tiles splits its keys by itself,
    forward and dQ, and matches the reference. (Where the table takes the
    Gluon backward, Hopper, its items are key tiles, so it has no dQ pass
    to split; the dQ split is then checked with the Triton backward.)"""
    q, k, v = random_qkv(rng, jnp.bfloat16, batch=1, q_len=128, kv_len=4096, heads=2, head_dim=64)
    launched = _forward_launches(q, k, v, None, implementation="triton")
    assert [name for name, _ in launched] in (["attn_fwd", "attn_fwd_combine"], ["attn_fwd_ws", "attn_fwd_combine"])
    assert launched[0][1]["KV_SPLITS"] > 1
    table = default_config("triton", 64, 2, chill_jax.FullChillMask())
    triton_bwd = dataclasses.replace(table, bwd_dkdv=dataclasses.replace(table.bwd_dkdv, gluon=False))
    for config in (None, triton_bwd):
        jax.clear_caches()
        backward = [(kernel.fn.__name__, consts) for kernel, _, _, consts, _ in compile_check.record_launches(
            jax.grad(lambda q: chill_jax.attention(q, k, v, implementation="triton", config=config)
                     .astype(jnp.float32).sum()), q)]
        names = [name for name, _ in backward]
        if "attn_bwd_gluon" in names:
            assert config is None and _launch.can_run_gluon("triton") and "attn_bwd_dq" not in names
        else:
            assert [consts["KV_SPLITS"] for name, consts in backward if name == "attn_bwd_dq"][0] > 1
        dout = normal(rng, q.shape, q.dtype)
        result = attention_and_grads(q, k, v, None, dout=dout, implementation="triton", config=config)
        check_against_reference(result, q, k, v, None, dout=dout, implementation="triton")


@pytest.mark.parametrize("value", [-1, 65, 2.0, True, "4"])
def test_bad_split_count(value):
    with pytest.raises(ValueError, match="kv_splits"):
        KernelConfig(kv_splits=value)
    with pytest.raises(ValueError, match="kv_splits"):
        kernel_config_from_dict(dict(block_m=64, block_n=64, num_warps=4, num_stages=2, kv_splits=value), "x")


def test_split_count_round_trips_through_json():
    config = KernelConfig(64, 64, 4, 2, kv_splits=4)
    assert config.to_dict()["kv_splits"] == 4
    assert kernel_config_from_dict(config.to_dict(), "x") == config
    assert "kv_splits" not in KernelConfig().to_dict()
    assert AttentionConfig(fwd=config).fwd.kv_splits == 4
