# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""The Gluon one-pass backward (``KernelConfig.gluon`` on ``bwd_dkdv``,
``kernels/backward_gluon.py``): its configuration, when the binding takes
it, the fallback, and on a Hopper GPU its gradients against the float64
reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chill_jax
from chill_jax import AttentionConfig, CausalChillMask, FullChillMask, KernelConfig, _launch
from chill_jax.configs import attention_config_from_dict, default_config
import compile_check
from custom_masks import LocalWindowMask
from testing_utils import attention_and_grads, check_against_reference, layout_shape, normal, random_qkv

GLUON_BWD = KernelConfig(64, 128, 4, 2, gluon=True)
CONFIG = AttentionConfig(fwd=KernelConfig(64, 64, 4, 2), bwd_dkdv=GLUON_BWD, bwd_dq=KernelConfig(64, 64, 4, 2))


class _MyCausal(CausalChillMask):
    """A subclass of a built-in mask: its methods could differ, so it never
    takes the Gluon kernel."""


@pytest.mark.parametrize("passes, match", [
    (dict(bwd_dkdv=KernelConfig(128, 128, 4, 2, gluon=True)), "bwd_dkdv: gluon needs block_m == 64"),
    (dict(fwd=KernelConfig(64, 128, 4, 2, gluon=True)), "fwd: gluon needs block_m 128 or 192"),
    (dict(bwd_dq=KernelConfig(64, 128, 4, 2, gluon=True)), "no Gluon dQ kernel"),
])
def test_config_validation(passes, match):
    with pytest.raises(ValueError, match=match):
        AttentionConfig(**passes)


def test_config_validation_names_the_json_entry():
    data = CONFIG.to_dict()
    assert data["bwd_dkdv"]["gluon"] is True
    assert attention_config_from_dict(data, "test") == CONFIG
    data["bwd_dq"] = {**data["bwd_dq"], "block_n": 128, "gluon": True}
    with pytest.raises(ValueError, match="^entry 3: AttentionConfig.bwd_dq"):
        attention_config_from_dict(data, "entry 3")


def _chosen_kernels(q, k, v, mask, **kwargs):
    """The kernels forward + backward launch where the GPU runs Gluon."""
    jax.clear_caches()  # record_launches sees only launches traced anew

    def fb(q, k, v):
        return jax.vjp(lambda q, k, v: chill_jax.attention(q, k, v, mask, implementation="interpret", **kwargs),
                       q, k, v)[1](jnp.ones(q.shape, q.dtype))

    return [launch[0].fn.__name__ for launch in compile_check.record_launches(fb, q, k, v, execute=False)]


def _shapes(dtype=jnp.bfloat16, t=256, s=256, d=128, heads=4, kv_heads=2, layout="BTNH"):
    q = jax.ShapeDtypeStruct(layout_shape(layout, 2, t, heads, d), dtype)
    kv = jax.ShapeDtypeStruct(layout_shape(layout, 2, s, kv_heads, d), dtype)
    return q, kv, kv


def _with_bwd(**fields):
    return dataclasses.replace(CONFIG, bwd_dkdv=dataclasses.replace(GLUON_BWD, **fields))


_MASKS = [FullChillMask(), CausalChillMask(), chill_jax.SlidingWindowChillMask(64, 64),
          chill_jax.ChunkwiseChillMask(64, 1), chill_jax.PrefixLMChillMask(96)]


@pytest.mark.parametrize("mask", _MASKS, ids=repr)
@pytest.mark.parametrize("layout", ["BTNH", "BNTH"])
def test_binding_takes_gluon_backward_where_allowed(monkeypatch, mask, layout):
    """One backward launch, no dQ launch: the Gluon kernel computes dQ too."""
    monkeypatch.setattr(_launch, "can_run_gluon", lambda implementation: True)
    assert _chosen_kernels(*_shapes(layout=layout), mask, layout=layout, config=CONFIG) == ["attn_fwd",
                                                                                          "attn_bwd_gluon"]
    assert _chosen_kernels(*_shapes(d=64, t=192, s=384, kv_heads=1), mask, config=_with_bwd(num_stages=3)) == [
        "attn_fwd", "attn_bwd_gluon"]


@pytest.mark.parametrize("case", [
    ("query lengths", dict(q_lengths=np.asarray([256, 100], np.int32)), {}, CausalChillMask()),
    ("key lengths", dict(kv_lengths=np.asarray([256, 100], np.int32)), {}, FullChillMask()),
    ("a mask subclass", {}, {}, _MyCausal()),
    ("a custom mask", {}, {}, LocalWindowMask(32, 32)),
    ("a mask with arrays", {}, {}, chill_jax.DocumentChillMask(np.zeros((2, 256), np.int32))),
    ("float32", {}, dict(dtype=jnp.float32), CausalChillMask()),
    ("head dim 96", {}, dict(d=96), CausalChillMask()),
    ("partial query tile", {}, dict(t=200), FullChillMask()),
    ("partial key tile", {}, dict(s=320), FullChillMask()),
    ("prescale_qk", dict(prescale_qk=True), {}, CausalChillMask()),
    ("not asked for", dict(config=_with_bwd(gluon=False)), {}, FullChillMask()),
    ("3 stages at D=128", dict(config=_with_bwd(num_stages=3)), {}, FullChillMask()),
    ("key lengths, warp-specialized fallback", dict(config=_with_bwd(warp_specialize=True),
                                                   kv_lengths=np.asarray([256, 100], np.int32)), {},
     CausalChillMask()),
], ids=lambda c: c[0])
def test_binding_falls_back(monkeypatch, case):
    """Calls outside the kernel's conditions run the dQ and dK/dV kernels."""
    _, kwargs, shape, mask = case
    monkeypatch.setattr(_launch, "can_run_gluon", lambda implementation: True)
    kwargs = {"config": CONFIG, **kwargs}
    launched = _chosen_kernels(*_shapes(**shape), mask, **kwargs)
    assert "attn_bwd_gluon" not in launched and "attn_bwd_dq" in launched


@pytest.mark.parametrize("lengths, gluon", [(False, True), (True, True), (False, False)])
def test_fallback_tile_where_the_call_refuses_gluon(monkeypatch, lengths, gluon):
    """``KernelConfig.fallback`` on ``bwd_dkdv`` is the dK/dV tile of the
    calls that cannot take the Gluon backward (all of them with
    ``gluon=False``; a warp-specialized Gluon configuration's own tile would
    run at 32x64 with 3 stages); the others still take the Gluon kernel."""
    monkeypatch.setattr(_launch, "can_run_gluon", lambda implementation: True)
    config = _with_bwd(warp_specialize=True, fallback=KernelConfig(32, 128, 4, 2), gluon=gluon)
    kwargs = dict(config=config)
    if lengths:
        kwargs["q_lengths"] = np.asarray([256, 100], np.int32)
    jax.clear_caches()
    q, k, v = _shapes()

    def fb(q, k, v):
        return jax.vjp(lambda q, k, v: chill_jax.attention(q, k, v, CausalChillMask(), implementation="interpret",
                                                           **kwargs), q, k, v)[1](jnp.ones(q.shape, q.dtype))

    launches = [(launch[0].fn.__name__, launch[3].get("BLOCK_M"), launch[3].get("BLOCK_N"), launch[4].num_stages)
                for launch in compile_check.record_launches(fb, q, k, v, execute=False)]
    if gluon and not lengths:
        assert launches[1:] == [("attn_bwd_gluon", 64, 128, 2)]
    else:
        assert launches[1:] == [("attn_bwd_dq", 64, 64, 2), ("attn_bwd_dkdv", 32, 128, 2)]


@pytest.mark.parametrize("head_dim, mask", [
    *((128, mask) for mask in (FullChillMask(), CausalChillMask(), chill_jax.PrefixLMChillMask(512),
                               chill_jax.SlidingWindowChillMask(256, 256), chill_jax.ChunkwiseChillMask(128, 2))),
    *((64, mask) for mask in (FullChillMask(), CausalChillMask(), chill_jax.PrefixLMChillMask(512))),
], ids=str)
def test_hopper_table_takes_gluon_backward(head_dim, mask):
    """D=128 fits 2 stages; at D=64 causal and prefix-LM run 3. Where the
    swept Triton dK/dV tile differs from what the Gluon tile falls back to
    (32x64, 3 stages), the entry names it as its fallback."""
    bwd = default_config("triton", head_dim, 1, mask, generation="hopper").bwd_dkdv
    stages = 3 if head_dim == 64 and type(mask) in (CausalChillMask, chill_jax.PrefixLMChillMask) else 2
    assert bwd.gluon and (bwd.block_m, bwd.block_n, bwd.num_stages) == (64, 128, stages)
    assert bwd.warp_specialize == (stages == 2)
    fallbacks = {(128, "SlidingWindowChillMask"): KernelConfig(64, 64, 4, 2),
                 (64, "FullChillMask"): KernelConfig(64, 64, 4, 3),
                 (64, "CausalChillMask"): KernelConfig(32, 128, 4, 2),
                 (64, "PrefixLMChillMask"): KernelConfig(64, 64, 4, 3)}
    assert bwd.fallback == fallbacks.get((head_dim, type(mask).__name__))


def test_no_gluon_backward_without_a_hopper_gpu(kernel_implementation, rng):
    """Where Gluon cannot run (the interpreter; GPUs other than 9.x) the
    configuration still works, through the other kernels."""
    if _launch.can_run_gluon(kernel_implementation):
        pytest.skip("this GPU runs the Gluon backward (the reference cases below check it)")
    q, k, v = random_qkv(rng, jnp.bfloat16, batch=1, q_len=128, kv_len=128, heads=2, kv_heads=1, head_dim=64)
    mask = CausalChillMask()
    kwargs = dict(config=CONFIG, implementation=kernel_implementation)
    dout = normal(rng, q.shape, q.dtype)
    result = attention_and_grads(q, k, v, mask, dout=dout, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout)


_GPU_CASES = [
    # layout, head dim, heads, kv heads, T, S, dtype, mask, stages (D=128 fits 2 in shared memory)
    ("BTNH", 128, 4, 2, 384, 384, jnp.bfloat16, CausalChillMask(), 2),
    ("BNTH", 128, 3, 1, 256, 512, jnp.bfloat16, FullChillMask(), 2),
    ("BTNH", 128, 2, 2, 512, 256, jnp.float16, CausalChillMask(), 2),
    ("BNTH", 128, 2, 2, 256, 640, jnp.float16, CausalChillMask(), 2),
    ("BTNH", 128, 8, 8, 1024, 1024, jnp.bfloat16, FullChillMask(), 2),
    ("BNTH", 128, 4, 4, 704, 768, jnp.bfloat16, CausalChillMask(), 2),
    ("BTNH", 64, 4, 4, 192, 384, jnp.bfloat16, FullChillMask(), 2),
    ("BNTH", 64, 4, 1, 640, 640, jnp.float16, CausalChillMask(), 3),
    ("BTNH", 64, 4, 2, 512, 256, jnp.bfloat16, CausalChillMask(), 4),
    ("BNTH", 64, 2, 2, 320, 1024, jnp.float16, FullChillMask(), 3),
    ("BTNH", 128, 4, 2, 1024, 1024, jnp.bfloat16, chill_jax.SlidingWindowChillMask(100, 60), 2),
    ("BNTH", 128, 2, 1, 512, 768, jnp.float16, chill_jax.SlidingWindowChillMask(0, 200), 2),
    ("BTNH", 128, 2, 2, 768, 768, jnp.bfloat16, chill_jax.ChunkwiseChillMask(128, 2), 2),
    ("BNTH", 64, 4, 2, 640, 512, jnp.bfloat16, chill_jax.ChunkwiseChillMask(96, 1), 3),
    ("BTNH", 128, 4, 4, 1024, 1024, jnp.bfloat16, chill_jax.PrefixLMChillMask(300), 2),
    ("BNTH", 64, 2, 2, 384, 640, jnp.float16, chill_jax.PrefixLMChillMask(512), 4),
]


@pytest.mark.parametrize("case", _GPU_CASES, ids=lambda c: f"{c[0]}-d{c[1]}-n{c[2]}-kv{c[3]}-t{c[4]}-s{c[5]}-"
                         f"{np.dtype(c[6]).name}-{type(c[7]).__name__}-{c[8]}stages")
def test_gluon_backward_matches_reference(kernel_implementation, rng, case):
    """On a Hopper GPU: the Gluon backward runs (the launch is recorded, and
    no dQ launch), and dQ, dK and dV match the float64 reference for both
    layouts, GQA and MQA, query and key lengths that differ either way
    (causal cross-attention, with key tiles no query reaches), bf16 and
    fp16, head dims 64 and 128, 2 to 4 stages, with an lse cotangent. dK and
    dV are bitwise deterministic; dQ (float32 reductions in any order)
    repeats within rounding."""
    if not _launch.can_run_gluon(kernel_implementation):
        pytest.skip("the Gluon backward needs a GPU of compute capability 9.x")
    layout, d, heads, kv_heads, t, s, dtype, mask, stages = case
    q, k, v = random_qkv(rng, dtype, batch=2, q_len=t, kv_len=s, heads=heads, kv_heads=kv_heads, head_dim=d,
                         layout=layout)
    kwargs = dict(layout=layout, config=_with_bwd(num_stages=stages), implementation=kernel_implementation)
    dout = normal(rng, q.shape, q.dtype)
    dlse = normal(rng, (2, heads, t), jnp.float32)
    jax.clear_caches()
    launched = [launch[0].fn.__name__ for launch in compile_check.record_launches(
        lambda q, k, v: jax.vjp(lambda *a: chill_jax.attention(*a, mask, **kwargs), q, k, v)[1](dout), q, k, v)]
    assert "attn_bwd_gluon" in launched and "attn_bwd_dq" not in launched
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, layout=layout)
    again = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    for name in ("dk", "dv"):
        np.testing.assert_array_equal(np.asarray(again[name]), np.asarray(result[name]), err_msg=name)
    scale = float(jnp.max(jnp.abs(result["dq"].astype(jnp.float32))))
    np.testing.assert_allclose(np.asarray(again["dq"], np.float32), np.asarray(result["dq"], np.float32),
                               atol=2e-2 * scale, rtol=0)


@pytest.mark.parametrize("programs", [1, 5])
@pytest.mark.parametrize("case", _GPU_CASES, ids=lambda c: f"{c[0]}-d{c[1]}-n{c[2]}-kv{c[3]}-t{c[4]}-s{c[5]}-"
                         f"{np.dtype(c[6]).name}-{type(c[7]).__name__}-{c[8]}stages")
def test_persistent_programs_match_reference(monkeypatch, kernel_implementation, rng, case, programs):
    """On a Hopper GPU: the backward is persistent (one program per
    multiprocessor, each taking every P-th key tile). With the count
    pretended to be 1 or 5 each program runs many key tiles, so the Q/dO
    ring, the dS and dQ staging parities and the key/value tiles (reused to
    stage dK and dV) carry over from tile to tile, through tiles no query
    reaches; the gradients still match the float64 reference and the grid
    has the pretended size."""
    if not _launch.can_run_gluon(kernel_implementation):
        pytest.skip("the Gluon backward needs a GPU of compute capability 9.x")
    monkeypatch.setattr(_launch, "multiprocessors", lambda implementation: programs)
    layout, d, heads, kv_heads, t, s, dtype, mask, stages = case
    q, k, v = random_qkv(rng, dtype, batch=2, q_len=t, kv_len=s, heads=heads, kv_heads=kv_heads, head_dim=d,
                         layout=layout)
    kwargs = dict(layout=layout, config=_with_bwd(num_stages=stages), implementation=kernel_implementation)
    dout = normal(rng, q.shape, q.dtype)
    dlse = normal(rng, (2, heads, t), jnp.float32)
    grids = {}
    launch = _launch.launch

    def spy(kernel, *, grid, **launch_kwargs):
        grids[kernel.fn.__name__] = tuple(grid)
        return launch(kernel, grid=grid, **launch_kwargs)

    monkeypatch.setattr(_launch, "launch", spy)
    jax.clear_caches()
    result = attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    assert grids["attn_bwd_gluon"] == (programs,)
    check_against_reference(result, q, k, v, mask, dout=dout, dlse=dlse, layout=layout)
