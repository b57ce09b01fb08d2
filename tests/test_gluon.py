# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""The Gluon forward (``KernelConfig.gluon``, ``kernels/forward_gluon.py``):
its configuration, when the binding takes it, the fallback, and on a Hopper
GPU its results against the float64 reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chill_jax
from chill_jax import AttentionConfig, CausalChillMask, FullChillMask, KernelConfig, _launch
from chill_jax.configs import default_config, kernel_config_from_dict
import compile_check
from custom_masks import LocalWindowMask
from testing_utils import attention_and_grads, check_against_reference, layout_shape, normal, random_qkv

GLUON = KernelConfig(128, 128, 4, 2, warp_specialize=True, gluon=True)
CONFIG = AttentionConfig(fwd=GLUON, bwd_dkdv=KernelConfig(64, 64, 4, 2), bwd_dq=KernelConfig(64, 64, 4, 2))


class _MyFull(FullChillMask):
    """A subclass of a built-in mask: its methods could differ, so it never
    takes the Gluon kernel."""


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_m=64, block_n=64), "128x64, 128x128, 192x64 or 192x128"),
    (dict(block_n=32), "128x64, 128x128, 192x64 or 192x128"),
    (dict(block_m=192, block_n=32, fallback=KernelConfig()), "192x64 or 192x128"),
    (dict(block_m=192), "block_m 192 .* needs a fallback"),
    (dict(block_m=192, gluon=False, fallback=KernelConfig()), r"power of two >= 16 \(or 192 for the Gluon"),
    (dict(block_m=96), "power of two"),
    (dict(block_m=256, block_n=128), "or 64x128"),
    (dict(num_warps=8), "num_warps == 4"),
    (dict(gluon=1), "must be a bool"),
    (dict(fallback=GLUON), "fallback must not set gluon or a fallback"),
    (dict(fallback=KernelConfig(fallback=KernelConfig())), "fallback must not set gluon or a fallback"),
])
def test_config_validation(kwargs, match):
    fields = dict(block_m=128, block_n=128, num_warps=4, num_stages=2, gluon=True)
    fields.update(kwargs)
    with pytest.raises(ValueError, match=match):
        KernelConfig(**fields)


def test_three_group_forward_config():
    """192 queries (three compute groups) is a Gluon forward tile, with a
    fallback; the backward's Gluon tile stays 64x128."""
    fwd = KernelConfig(192, 128, 4, 2, gluon=True, fallback=KernelConfig(64, 64, 4, 3))
    assert kernel_config_from_dict(fwd.to_dict(), "test") == fwd
    assert AttentionConfig(fwd=fwd).fwd == fwd
    with pytest.raises(ValueError, match="bwd_dkdv: gluon needs block_m == 64 and block_n == 128"):
        AttentionConfig(bwd_dkdv=fwd)


def test_fallback_must_be_a_kernel_config():
    with pytest.raises(TypeError, match="fallback must be a KernelConfig or None, got dict"):
        dataclasses.replace(GLUON, fallback={"block_m": 64})


def test_config_json_round_trip():
    data = GLUON.to_dict()
    assert data["gluon"] is True
    assert kernel_config_from_dict(data, "test") == GLUON
    assert "gluon" not in KernelConfig(128, 128, 4, 2).to_dict()
    with pytest.raises(ValueError, match="gluon: expected true or false"):
        kernel_config_from_dict({**data, "gluon": "yes"}, "test")
    with_fallback = dataclasses.replace(GLUON, fallback=KernelConfig(64, 64, 4, 3))
    data = with_fallback.to_dict()
    assert data["fallback"] == {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3}
    assert "fallback" not in GLUON.to_dict()
    assert kernel_config_from_dict(data, "test") == with_fallback
    with pytest.raises(ValueError, match=r"^e\.fwd\.fallback\.num_stages: expected an int"):
        kernel_config_from_dict({**data, "fallback": {**data["fallback"], "num_stages": "3"}}, "e.fwd")
    with pytest.raises(ValueError, match=r"^e\.fwd: KernelConfig\.fallback must not set gluon"):
        kernel_config_from_dict({**data, "fallback": {**data["fallback"], "block_m": 128, "gluon": True}}, "e.fwd")


@pytest.mark.parametrize("mask", [FullChillMask(), CausalChillMask(), chill_jax.PrefixLMChillMask(512),
                                  chill_jax.SlidingWindowChillMask(256, 256), chill_jax.ChunkwiseChillMask(128, 2)],
                         ids=repr)
def test_hopper_table_takes_gluon_at_d128(mask):
    fwd = default_config("triton", 128, 1, mask, generation="hopper").fwd
    assert fwd.gluon and fwd.warp_specialize and (fwd.block_m, fwd.block_n) == (128, 128)
    # The sliding window's swept Triton tile, for the calls the Gluon kernel does not take.
    sliding = type(mask) is chill_jax.SlidingWindowChillMask
    assert fwd.fallback == (KernelConfig(64, 64, 4, 3) if sliding else None)


def _chosen_kernels(q, k, v, mask, **kwargs):
    """The forward kernels a call launches where the GPU runs Gluon."""
    jax.clear_caches()  # record_launches sees only launches traced anew
    return [launch[0].fn.__name__ for launch in compile_check.record_launches(
        lambda q, k, v: chill_jax.attention(q, k, v, mask, implementation="interpret", **kwargs),
        q, k, v, execute=False)]


def _shapes(dtype=jnp.bfloat16, t=256, s=256, d=128, heads=4, kv_heads=2, layout="BTNH"):
    q = jax.ShapeDtypeStruct(layout_shape(layout, 2, t, heads, d), dtype)
    kv = jax.ShapeDtypeStruct(layout_shape(layout, 2, s, kv_heads, d), dtype)
    return q, kv, kv


def _with_fwd(**fields):
    return dataclasses.replace(CONFIG, fwd=dataclasses.replace(GLUON, **fields))


_MASKS = [FullChillMask(), CausalChillMask(), chill_jax.SlidingWindowChillMask(64, 0),
          chill_jax.ChunkwiseChillMask(64, 1), chill_jax.PrefixLMChillMask(96)]


@pytest.mark.parametrize("mask", _MASKS, ids=repr)
@pytest.mark.parametrize("layout", ["BTNH", "BNTH"])
def test_binding_takes_gluon_where_allowed(monkeypatch, mask, layout):
    monkeypatch.setattr(_launch, "can_run_gluon", lambda implementation: True)
    assert _chosen_kernels(*_shapes(layout=layout), mask, layout=layout, config=CONFIG) == ["attn_fwd_gluon"]
    assert _chosen_kernels(*_shapes(d=64, t=512, s=128), mask, config=CONFIG) == ["attn_fwd_gluon"]
    narrow = _with_fwd(block_n=64, num_stages=3, warp_specialize=False)
    assert _chosen_kernels(*_shapes(jnp.float16), mask, config=narrow) == ["attn_fwd_gluon"]
    # A partial first query tile (a multiple of 64 queries), two or three groups.
    three = _with_fwd(block_m=192, fallback=KernelConfig(64, 64, 4, 3))
    for config in (CONFIG, three):
        assert _chosen_kernels(*_shapes(t=320, layout=layout), mask, layout=layout, config=config) == [
            "attn_fwd_gluon"]


@pytest.mark.parametrize("case", [
    ("query lengths", dict(q_lengths=jnp.asarray([256, 100], jnp.int32)), {}, FullChillMask()),
    ("key lengths", dict(kv_lengths=jnp.asarray([256, 100], jnp.int32)), {}, CausalChillMask()),
    ("partial query tile", {}, dict(t=200), FullChillMask()),
    ("partial query tile, three groups", dict(config=_with_fwd(block_m=192, fallback=KernelConfig())),
     dict(t=200), CausalChillMask()),
    ("one partial query tile", {}, dict(t=64), CausalChillMask()),
    ("one partial query tile, three groups", dict(config=_with_fwd(block_m=192, fallback=KernelConfig())),
     dict(t=128), FullChillMask()),
    ("partial key tile", {}, dict(s=320), CausalChillMask()),
    ("float32", {}, dict(dtype=jnp.float32), FullChillMask()),
    ("head dim 96", {}, dict(d=96), FullChillMask()),
    ("a custom mask", {}, {}, LocalWindowMask(32, 32)),
    ("a mask with arrays", {}, {}, chill_jax.DocumentChillMask(np.zeros((2, 256), np.int32))),
    ("mask subclass", {}, {}, _MyFull()),
    ("prescale_qk", dict(prescale_qk=True), {}, CausalChillMask()),
    ("explicit key split", dict(config=_with_fwd(kv_splits=2)), {}, FullChillMask()),
    ("4 stages at D=128", dict(config=_with_fwd(num_stages=4, warp_specialize=False)), {}, FullChillMask()),
], ids=lambda c: c[0])
def test_binding_falls_back(monkeypatch, case):
    """Calls outside the kernel's conditions run the other forward kernels."""
    _, kwargs, shape, mask = case
    monkeypatch.setattr(_launch, "can_run_gluon", lambda implementation: True)
    kwargs = {"config": CONFIG, **kwargs}
    assert "attn_fwd_gluon" not in _chosen_kernels(*_shapes(**shape), mask, **kwargs)


@pytest.mark.parametrize("lengths, gluon", [(False, True), (True, True), (False, False)])
def test_fallback_tile_where_the_call_refuses_gluon(monkeypatch, lengths, gluon):
    """``KernelConfig.fallback`` is the tile of the forward the calls that
    cannot take the Gluon kernel run (all of them with ``gluon=False``); the
    others still take it."""
    monkeypatch.setattr(_launch, "can_run_gluon", lambda implementation: True)
    config = _with_fwd(fallback=KernelConfig(64, 32, 4, 3), gluon=gluon)
    kwargs = dict(config=config)
    if lengths:
        kwargs["kv_lengths"] = np.asarray([256, 100], np.int32)
    jax.clear_caches()
    q, k, v = _shapes()
    launches = [(launch[0].fn.__name__, launch[3].get("BLOCK_M"), launch[3].get("BLOCK_N"), launch[4].num_stages)
                for launch in compile_check.record_launches(
                    lambda q, k, v: chill_jax.attention(q, k, v, CausalChillMask(), implementation="interpret",
                                                        **kwargs), q, k, v, execute=False)]
    assert launches == ([("attn_fwd_gluon", 128, 128, 2)] if gluon and not lengths else [("attn_fwd", 64, 32, 3)])


def test_explicit_key_split_runs_the_fallback(monkeypatch):
    """A key-split count (as the autotuner's split step sets it, on the
    configuration and its fallback) runs the Triton forward at the
    fallback's tile with that many parts; count 1 keeps the Gluon kernel."""
    monkeypatch.setattr(_launch, "can_run_gluon", lambda implementation: True)
    q, k, v = _shapes()
    for count in (2, 1):
        config = _with_fwd(kv_splits=count, fallback=KernelConfig(64, 32, 4, 3, kv_splits=count))
        jax.clear_caches()
        launches = compile_check.record_launches(
            lambda q, k, v: chill_jax.attention(q, k, v, CausalChillMask(), implementation="interpret",
                                                config=config), q, k, v, execute=False)
        names = [launch[0].fn.__name__ for launch in launches]
        if count == 1:
            assert names == ["attn_fwd_gluon"]
        else:
            consts = launches[0][3]
            assert names == ["attn_fwd", "attn_fwd_combine"]
            assert (consts["BLOCK_M"], consts["BLOCK_N"], consts["KV_SPLITS"]) == (64, 32, 2)


@pytest.mark.parametrize("fallback", [None, KernelConfig(64, 32, 4, 3)], ids=["no fallback", "fallback"])
def test_fallback_matches_reference(kernel_implementation, rng, fallback):
    """A Gluon configuration where the call does not allow the kernel (query
    lengths here; the interpreter never does) runs the other kernels (at
    ``fallback``'s tile where it has one), with results that match the
    reference."""
    if kernel_implementation == "interpret":
        assert not _launch.can_run_gluon(kernel_implementation)
    q, k, v = random_qkv(rng, jnp.bfloat16, batch=2, q_len=128, heads=2, kv_heads=1, head_dim=64)
    mask = CausalChillMask()
    config = _with_fwd(fallback=fallback)
    kwargs = dict(q_lengths=jnp.asarray([128, 77], jnp.int32), config=config, implementation=kernel_implementation)
    jax.clear_caches()
    launched = [(launch[0].fn.__name__, launch[4]) for launch in compile_check.record_launches(
        lambda q, k, v: chill_jax.attention(q, k, v, mask, **kwargs), q, k, v)]
    assert launched and "attn_fwd_gluon" not in [name for name, _ in launched]
    if fallback is not None:
        assert launched[0] == ("attn_fwd", fallback)
    dout = normal(rng, q.shape, q.dtype)
    result = attention_and_grads(q, k, v, mask, dout=dout, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, q_lengths=kwargs["q_lengths"])


_GPU_CASES = [
    # layout, head dim, heads, kv heads, T, S, dtype, mask
    ("BTNH", 128, 4, 2, 384, 384, jnp.bfloat16, CausalChillMask()),
    ("BNTH", 128, 3, 1, 256, 512, jnp.bfloat16, FullChillMask()),
    ("BTNH", 128, 2, 2, 512, 256, jnp.float16, CausalChillMask()),
    ("BNTH", 128, 2, 2, 256, 640, jnp.float16, CausalChillMask()),
    ("BTNH", 64, 4, 4, 256, 384, jnp.bfloat16, FullChillMask()),
    ("BNTH", 64, 4, 1, 640, 640, jnp.float16, CausalChillMask()),
    ("BTNH", 128, 4, 2, 1024, 1024, jnp.bfloat16, chill_jax.SlidingWindowChillMask(100, 60)),
    ("BNTH", 128, 2, 1, 512, 768, jnp.float16, chill_jax.SlidingWindowChillMask(0, 200)),
    ("BNTH", 64, 2, 1, 640, 640, jnp.bfloat16, chill_jax.SlidingWindowChillMask(256, 256)),
    ("BTNH", 128, 2, 2, 768, 768, jnp.bfloat16, chill_jax.ChunkwiseChillMask(128, 2)),
    ("BNTH", 64, 4, 2, 640, 512, jnp.bfloat16, chill_jax.ChunkwiseChillMask(96, 1)),
    ("BTNH", 128, 4, 4, 1024, 1024, jnp.bfloat16, chill_jax.PrefixLMChillMask(300)),
    ("BNTH", 64, 2, 2, 384, 640, jnp.float16, chill_jax.PrefixLMChillMask(512)),
    # Query lengths that are not a multiple of 128 (partial first tiles at
    # both tile heights).
    ("BTNH", 64, 2, 1, 320, 256, jnp.bfloat16, CausalChillMask()),
    ("BNTH", 128, 2, 2, 448, 512, jnp.float16, chill_jax.PrefixLMChillMask(100)),
]


@pytest.mark.parametrize("block_m, block_n, stages", [(128, 128, 2), (128, 64, 3), (192, 128, 2), (192, 64, 3)])
@pytest.mark.parametrize("case", _GPU_CASES, ids=lambda c: f"{c[0]}-d{c[1]}-n{c[2]}-kv{c[3]}-t{c[4]}-s{c[5]}-"
                         f"{np.dtype(c[6]).name}-{type(c[7]).__name__}")
def test_gluon_forward_matches_reference(kernel_implementation, rng, case, block_m, block_n, stages):
    """On a Hopper GPU: the Gluon forward runs (the launch is recorded), and
    its out and lse, and the gradients the backward computes from them,
    match the float64 reference, for both layouts, GQA and MQA, query and
    key lengths that differ either way (causal cross-attention), bf16 and
    fp16, head dims 64 and 128, two or three compute groups (128 or 192
    queries per tile; most lengths leave a partial first tile at 192). Two
    runs give identical bits."""
    if not _launch.can_run_gluon(kernel_implementation):
        pytest.skip("the Gluon forward needs a GPU of compute capability 9.x")
    layout, d, heads, kv_heads, t, s, dtype, mask = case
    # kv_splits=1: these small grids would otherwise split their keys (attn_fwd + attn_fwd_combine).
    config = _with_fwd(block_m=block_m, block_n=block_n, num_stages=stages, warp_specialize=False, kv_splits=1,
                       fallback=KernelConfig(64, 64, 4, 2))
    q, k, v = random_qkv(rng, dtype, batch=2, q_len=t, kv_len=s, heads=heads, kv_heads=kv_heads, head_dim=d,
                         layout=layout)
    kwargs = dict(layout=layout, config=config, implementation=kernel_implementation)
    jax.clear_caches()
    launched = [launch[0].fn.__name__ for launch in compile_check.record_launches(
        lambda q, k, v: chill_jax.attention(q, k, v, mask, **kwargs), q, k, v)]
    assert launched == ["attn_fwd_gluon"]
    dout = normal(rng, q.shape, q.dtype)
    dlse = normal(rng, (2, heads, t), jnp.float32)
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, layout=layout)
    again = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    for name in ("out", "lse"):
        np.testing.assert_array_equal(np.asarray(again[name]), np.asarray(result[name]), err_msg=name)


@pytest.mark.parametrize("block_m", [128, 192])
@pytest.mark.parametrize("programs", [1, 5])
@pytest.mark.parametrize("case", _GPU_CASES + [
    # Query tiles past the window's reach (T > S + 64) visit no key tile.
    ("BTNH", 128, 4, 2, 1024, 512, jnp.bfloat16, chill_jax.SlidingWindowChillMask(64, 0)),
], ids=lambda c: f"{c[0]}-d{c[1]}-n{c[2]}-kv{c[3]}-t{c[4]}-s{c[5]}-{np.dtype(c[6]).name}-{type(c[7]).__name__}")
def test_persistent_programs_match_reference(monkeypatch, kernel_implementation, rng, case, programs, block_m):
    """On a Hopper GPU: the forward is persistent (one program per
    multiprocessor, each taking every P-th output tile). With the count
    pretended to be 1 or 5 each program runs many tiles, so the key/value
    ring, the Q tiles' reuse and the output staging carry over from tile to
    tile (and through tiles that visit no key, or whose last groups lie
    past the query length and only release the ring); out and lse still
    match the float64 reference and the grid has the pretended size."""
    if not _launch.can_run_gluon(kernel_implementation):
        pytest.skip("the Gluon forward needs a GPU of compute capability 9.x")
    monkeypatch.setattr(_launch, "multiprocessors", lambda implementation: programs)
    layout, d, heads, kv_heads, t, s, dtype, mask = case
    config = _with_fwd(kv_splits=1, block_m=block_m, fallback=KernelConfig(64, 64, 4, 2))
    q, k, v = random_qkv(rng, dtype, batch=2, q_len=t, kv_len=s, heads=heads, kv_heads=kv_heads, head_dim=d,
                         layout=layout)
    kwargs = dict(layout=layout, config=config, implementation=kernel_implementation)
    grids = []
    launch = _launch.launch

    def spy(kernel, *, grid, **launch_kwargs):
        grids.append(tuple(grid))
        return launch(kernel, grid=grid, **launch_kwargs)

    monkeypatch.setattr(_launch, "launch", spy)
    jax.clear_caches()
    launches = compile_check.record_launches(lambda q, k, v: chill_jax.attention(q, k, v, mask, **kwargs), q, k, v)
    assert [launch[0].fn.__name__ for launch in launches] == ["attn_fwd_gluon"]
    assert grids == [(programs,)]
    result = attention_and_grads(q, k, v, mask, **kwargs)
    check_against_reference(result, q, k, v, mask, layout=layout)
