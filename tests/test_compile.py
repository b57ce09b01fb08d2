# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Every kernel launch of forward + backward compiles for sm_90 (H100) with the
Hopper table's configurations (chill_jax/tuned/hopper.json) and fits the
per-block shared memory, on the host without a GPU."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import triton

import chill_jax
from chill_jax import CausalChillMask, ChunkwiseChillMask, PrefixLMChillMask, SlidingWindowChillMask
from chill_jax import AttentionConfig, KernelConfig, _launch
from chill_jax.configs import autotune_candidates, default_config, load_table
import compile_check
import custom_masks
from testing_utils import BUILTIN_MASKS, dtype_name, layout_shape

H100_MAX_SHARED = 232448
KERNELS = {"attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq"}


def _case(mask, dtype, head_dim, *, heads=2, kv_heads=2, layout="BTNH", precision=None):
    return pytest.param(mask, dtype, head_dim, heads, kv_heads, layout, precision,
                        id=f"{mask!r}-{dtype_name(dtype)}-D{head_dim}-{heads}q{kv_heads}kv-{layout}"
                           + (f"-{precision}" if precision else ""))


CASES = [
    *[_case(mask, jnp.bfloat16, 64) for mask in BUILTIN_MASKS],
    *[_case(CausalChillMask(), dtype, d) for d in (16, 128, 256) for dtype in (jnp.float32, jnp.bfloat16)],
    _case(CausalChillMask(), jnp.float32, 64),
    _case(PrefixLMChillMask(40), jnp.float16, 256),
    _case(SlidingWindowChillMask(20, 7), jnp.float16, 128, layout="BNTH"),
    _case(ChunkwiseChillMask(32, 1), jnp.float32, 128, heads=4, kv_heads=1),
    _case(SlidingWindowChillMask(200, 200), jnp.bfloat16, 256, heads=4, kv_heads=2),
    _case(CausalChillMask(), jnp.float32, 64, precision="tf32"),
    _case(custom_masks.LocalWindowMask(9, 4), jnp.bfloat16, 64),
    _case(custom_masks.DiscontinuousModuloMask(23), jnp.float16, 32),
    _case(custom_masks.LastKeysMask(10), jnp.bfloat16, 16),
]


@pytest.mark.parametrize("mask,dtype,head_dim,heads,kv_heads,layout,precision", CASES)
def test_compiles_for_sm90(mask, dtype, head_dim, heads, kv_heads, layout, precision):
    """Traces forward + backward with the Hopper config, compiles each launch."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    config = default_config("triton", block_d, jnp.dtype(dtype).itemsize, mask, generation="hopper")
    _check_compiles(mask, dtype, head_dim, heads, kv_heads, layout, precision, config)


_MASKS_BY_NAME = {type(m).__name__: m for m in BUILTIN_MASKS}
HOPPER_ENTRIES = [
    pytest.param(key, cfg, id=f"D{key[0]}-{key[1].replace('/', '_')}-{key[2]}")
    for key, cfg in sorted(load_table("hopper").items(), key=lambda item: str(item[0]))
]


@pytest.mark.parametrize("key,config", HOPPER_ENTRIES)
def test_hopper_table_compiles_for_sm90(key, config):
    """Every entry of chill_jax/tuned/hopper.json compiles for sm_90 and fits
    its shared memory, with the entry's mask (causal for ``"*"`` and for
    classes that are not built in)."""
    block_d, dtype_class, mask_name = key
    dtype = jnp.bfloat16 if dtype_class == "bf16/fp16" else jnp.float32
    mask = _MASKS_BY_NAME.get(mask_name, CausalChillMask())
    _check_compiles(mask, dtype, block_d, 2, 2, "BTNH", None, config)


def _check_compiles(mask, dtype, head_dim, heads, kv_heads, layout, precision, config):
    b, t = 2, 200
    q = jax.ShapeDtypeStruct(layout_shape(layout, b, t, heads, head_dim), dtype)
    kv = jax.ShapeDtypeStruct(layout_shape(layout, b, t, kv_heads, head_dim), dtype)
    lengths = jax.ShapeDtypeStruct((b,), jnp.int32)

    def loss(q, k, v, lengths):
        out, lse = chill_jax.attention(q, k, v, mask, lengths=lengths, return_lse=True, layout=layout,
                                       precision=precision, config=config, implementation="interpret")
        return jnp.sum(out.astype(jnp.float32)) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0))

    jax.clear_caches()  # record_launches sees only launches traced anew
    launches = compile_check.record_launches(jax.grad(loss, argnums=(0, 1, 2)), q, kv, kv, lengths)
    assert {kernel.fn.__name__ for kernel, *_ in launches} == KERNELS
    for launch in launches:
        kernel, kernel_config = launch[0], launch[4]
        compiled = compile_check.compile_launch(launch)
        name = kernel.fn.__name__
        assert compiled.metadata.num_warps == kernel_config.num_warps, name
        assert 0 < compiled.metadata.shared <= H100_MAX_SHARED, (name, compiled.metadata.shared, kernel_config)
        assert "cubin" in compiled.asm, name


def _array_masks():
    ids = np.sort(np.random.default_rng(0).integers(0, 3, size=(2, 200)), axis=1).astype(np.int32)
    return [
        pytest.param(chill_jax.DocumentChillMask(ids) & CausalChillMask(), id="documents&causal"),
        pytest.param(custom_masks.PerExampleWindowMask(jnp.asarray([5, 50])), id="per_example_window"),
        pytest.param(custom_masks.KeyScoreMask(jnp.ones((2, 200), jnp.float32), 0.5), id="key_scores"),
        pytest.param(PrefixLMChillMask(jnp.asarray([3, 70])) | SlidingWindowChillMask(8, 8), id="prefix_array|window"),
        pytest.param(ChunkwiseChillMask(32, 1) & custom_masks.LocalWindowMask(9, 2), id="chunkwise&custom"),
    ]


@pytest.mark.parametrize("mask", _array_masks())
def test_array_and_composed_masks_compile_for_sm90(mask):
    """Masks with runtime arrays (pointer loads in the mask methods) and
    generated composition methods compile for sm_90 in every kernel."""
    config = default_config("triton", 64, 2, mask, generation="hopper")
    _check_compiles(mask, jnp.bfloat16, 64, 2, 2, "BTNH", None, config)


DKDV_CANDIDATES = [
    pytest.param(block_d, cfg, id=f"D{block_d}-{cfg.block_m}x{cfg.block_n}w{cfg.num_warps}s{cfg.num_stages}"
                                  + ("ws" if cfg.warp_specialize else ""))
    for block_d in (64, 128, 256) for cfg in autotune_candidates(block_d, 2)["bwd_dkdv"]
]


@pytest.mark.parametrize("block_d,kernel_config", DKDV_CANDIDATES)
def test_dkdv_autotune_candidates_compile_for_sm90(block_d, kernel_config):
    """Every dK/dV configuration ``autotune=True`` may pick (16-bit inputs)
    compiles for sm_90 and fits the per-block shared memory; a
    warp-specialized one builds ``attn_bwd_dkdv_ws`` (whole tiles)."""
    config = AttentionConfig(fwd=KernelConfig(64, 64, 4, 2), bwd_dkdv=kernel_config, bwd_dq=KernelConfig(64, 64, 4, 2))
    q = jax.ShapeDtypeStruct((2, 256 if kernel_config.warp_specialize else 200, 2, block_d), jnp.bfloat16)
    name = "attn_bwd_dkdv_ws" if kernel_config.warp_specialize else "attn_bwd_dkdv"

    def loss(q, k, v):
        out = chill_jax.attention(q, k, v, CausalChillMask(), config=config, implementation="interpret")
        return jnp.sum(out.astype(jnp.float32))

    jax.clear_caches()  # record_launches sees only launches traced anew
    launches = [launch for launch in compile_check.record_launches(jax.grad(loss, argnums=(0, 1, 2)), q, q, q)
                if launch[0].fn.__name__ == name]
    assert len(launches) == 1
    compiled = compile_check.compile_launch(launches[0])
    assert 0 < compiled.metadata.shared <= H100_MAX_SHARED, (compiled.metadata.shared, kernel_config)


@pytest.mark.parametrize("layout", ["BTNH", "BNTH"])
@pytest.mark.parametrize("mask", BUILTIN_MASKS, ids=repr)
def test_warp_specialized_forward_is_warp_specialized_for_sm90(mask, layout):
    """``attn_fwd_ws`` at the Hopper table's D=128 full-attention tile: Triton
    warp-specializes its key loop (a ``ttg.warp_specialize`` region and
    producer warps added to the requested ones) and the build fits the
    shared memory. A Triton change that silently drops the specialization,
    or a kernel change that stops it (a branch in the loop does), fails here."""
    fwd = default_config("triton", 128, 2, chill_jax.FullChillMask(), generation="hopper").fwd
    assert fwd.warp_specialize
    config = AttentionConfig(fwd=fwd, bwd_dkdv=KernelConfig(64, 64, 4, 2), bwd_dq=KernelConfig(64, 64, 4, 2))
    q = jax.ShapeDtypeStruct(layout_shape(layout, 2, 256, 2, 128), jnp.bfloat16)
    jax.clear_caches()  # record_launches sees only launches traced anew
    launches = compile_check.record_launches(
        lambda q, k, v: chill_jax.attention(q, k, v, mask, layout=layout, config=config, implementation="interpret"),
        q, q, q)
    assert [launch[0].fn.__name__ for launch in launches] == ["attn_fwd_ws"]
    compiled = compile_check.compile_launch(launches[0])
    assert "ttg.warp_specialize" in compiled.asm["ttgir"]
    assert compiled.metadata.num_warps > fwd.num_warps
    assert 0 < compiled.metadata.global_scratch_size
    assert 0 < compiled.metadata.shared <= H100_MAX_SHARED


@pytest.mark.parametrize("layout", ["BTNH", "BNTH"])
@pytest.mark.parametrize("mask", BUILTIN_MASKS, ids=repr)
def test_warp_specialized_dkdv_is_warp_specialized_for_sm90(mask, layout):
    """``attn_bwd_dkdv_ws`` at 64 x 128 (D=128, GQA): Triton warp-specializes
    its loop and the build fits the shared memory."""
    ws = KernelConfig(64, 128, 4, 2, warp_specialize=True)
    config = AttentionConfig(fwd=KernelConfig(64, 64, 4, 2), bwd_dkdv=ws, bwd_dq=KernelConfig(64, 64, 4, 2))
    q = jax.ShapeDtypeStruct(layout_shape(layout, 2, 256, 4, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct(layout_shape(layout, 2, 256, 2, 128), jnp.bfloat16)

    def loss(q, k, v):
        out = chill_jax.attention(q, k, v, mask, layout=layout, config=config, implementation="interpret")
        return jnp.sum(out.astype(jnp.float32))

    jax.clear_caches()  # record_launches sees only launches traced anew
    launches = [launch for launch in compile_check.record_launches(jax.grad(loss, argnums=(0, 1, 2)), q, kv, kv)
                if launch[0].fn.__name__ == "attn_bwd_dkdv_ws"]
    assert len(launches) == 1
    compiled = compile_check.compile_launch(launches[0])
    assert "ttg.warp_specialize" in compiled.asm["ttgir"]
    assert compiled.metadata.num_warps > ws.num_warps
    assert 0 < compiled.metadata.shared <= H100_MAX_SHARED


@pytest.mark.parametrize("mask", [chill_jax.FullChillMask(), chill_jax.CausalChillMask()], ids=repr)
def test_key_split_forwards_compile_for_sm90(mask):
    """The Hopper D=128 forward with its keys split (``attn_fwd_ws``, still
    warp-specialized, writing partial results) and the merge
    (``attn_fwd_combine``) build for sm_90."""
    fwd = default_config("triton", 128, 2, mask, generation="hopper").fwd
    config = AttentionConfig(fwd=dataclasses.replace(fwd, kv_splits=2), bwd_dkdv=KernelConfig(64, 64, 4, 2),
                             bwd_dq=KernelConfig(64, 64, 4, 2))
    q = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 1024, 2, 128), jnp.bfloat16)
    jax.clear_caches()  # record_launches sees only launches traced anew
    launches = compile_check.record_launches(
        lambda q, k, v: chill_jax.attention(q, k, v, mask, config=config, implementation="interpret"), q, kv, kv)
    assert [launch[0].fn.__name__ for launch in launches] == ["attn_fwd_ws", "attn_fwd_combine"]
    compiled = compile_check.compile_launch(launches[0])
    assert "ttg.warp_specialize" in compiled.asm["ttgir"]
    assert compiled.metadata.num_warps > fwd.num_warps
    combine = compile_check.compile_launch(launches[1])
    assert combine.metadata.num_warps == 4


@pytest.mark.parametrize("case", [
    ("BTNH", 128, 1, jnp.bfloat16, chill_jax.FullChillMask()),
    ("BNTH", 128, 2, jnp.bfloat16, chill_jax.CausalChillMask()),
    ("BTNH", 128, 4, jnp.float16, chill_jax.CausalChillMask()),
    ("BNTH", 64, 1, jnp.float16, chill_jax.FullChillMask()),
    ("BTNH", 64, 2, jnp.bfloat16, chill_jax.CausalChillMask()),
    ("BTNH", 128, 2, jnp.bfloat16, chill_jax.SlidingWindowChillMask(100, 60)),
    ("BNTH", 64, 1, jnp.float16, chill_jax.ChunkwiseChillMask(96, 1)),
    ("BTNH", 128, 1, jnp.bfloat16, chill_jax.PrefixLMChillMask(300)),
], ids=lambda c: f"{c[0]}-d{c[1]}-g{c[2]}-{dtype_name(c[3])}-{type(c[4]).__name__}")
def test_gluon_forward_compiles_for_sm90(monkeypatch, case):
    """The Gluon forward (``KernelConfig.gluon``), launched the way the
    binding launches it where the GPU allows it: sm_90 builds with two
    compute warp groups and a loader warp (12 warps from the 4 it is launched
    with), ``wgmma`` fed from registers, register reallocation between the
    partitions, no spills and shared memory within the block's limit."""
    layout, head_dim, group, dtype, mask = case
    monkeypatch.setattr(_launch, "can_run_gluon", lambda implementation: True)
    fwd = KernelConfig(128, 128, 4, 2, gluon=True)
    config = AttentionConfig(fwd=fwd, bwd_dkdv=KernelConfig(64, 64, 4, 2), bwd_dq=KernelConfig(64, 64, 4, 2))
    q = jax.ShapeDtypeStruct(layout_shape(layout, 2, 256, 4, head_dim), dtype)
    kv = jax.ShapeDtypeStruct(layout_shape(layout, 2, 384, 4 // group, head_dim), dtype)
    jax.clear_caches()  # record_launches sees only launches traced anew
    launches = compile_check.record_launches(
        lambda q, k, v: chill_jax.attention(q, k, v, mask, layout=layout, config=config, implementation="interpret"),
        q, kv, kv, execute=False)
    assert [launch[0].fn.__name__ for launch in launches] == ["attn_fwd_gluon"]
    assert launches[0][3]["UNMASKED"] == isinstance(mask, chill_jax.FullChillMask)
    compiled = compile_check.compile_launch(launches[0])
    ptx = compiled.asm["ptx"]
    assert compiled.metadata.num_warps == 12
    assert 0 < compiled.metadata.global_scratch_size
    assert 0 < compiled.metadata.shared <= H100_MAX_SHARED
    assert "wgmma.mma_async" in ptx and "setmaxnreg.inc" in ptx and "setmaxnreg.dec" in ptx
    assert "ld.local" not in ptx and "st.local" not in ptx  # no register spills


@pytest.mark.parametrize("mask", [chill_jax.FullChillMask(), chill_jax.CausalChillMask(),
                                  chill_jax.SlidingWindowChillMask(100, 60), chill_jax.ChunkwiseChillMask(96, 1),
                                  chill_jax.PrefixLMChillMask(300)], ids=repr)
@pytest.mark.parametrize("block_n", [64, 128])
def test_three_group_gluon_forward_compiles_for_sm90(monkeypatch, mask, block_n):
    """The Gluon forward at 192 queries per tile, D=64, with a partial first
    query tile (320 queries): 16 warps (three compute groups and the
    loader's group), the compute groups' registers raised to 160 and 168
    and the loader's lowered to 24 (the 64K between them), shared memory
    within the block's limit."""
    monkeypatch.setattr(_launch, "can_run_gluon", lambda implementation: True)
    fwd = KernelConfig(192, block_n, 4, 2, gluon=True, fallback=KernelConfig(64, 64, 4, 3))
    config = AttentionConfig(fwd=fwd, bwd_dkdv=KernelConfig(64, 64, 4, 2), bwd_dq=KernelConfig(64, 64, 4, 2))
    q = jax.ShapeDtypeStruct((2, 320, 4, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, 384, 2, 64), jnp.bfloat16)
    jax.clear_caches()  # record_launches sees only launches traced anew
    launches = compile_check.record_launches(
        lambda q, k, v: chill_jax.attention(q, k, v, mask, config=config, implementation="interpret"),
        q, kv, kv, execute=False)
    assert [launch[0].fn.__name__ for launch in launches] == ["attn_fwd_gluon"]
    assert launches[0][3]["BLOCK_M"] == 192
    compiled = compile_check.compile_launch(launches[0])
    ptx = compiled.asm["ptx"]
    assert compiled.metadata.num_warps == 16
    assert 0 < compiled.metadata.shared <= H100_MAX_SHARED
    registers = set(re.findall(r"setmaxnreg\.(?:inc|dec)\.sync\.aligned\.u32\s+(\d+);", ptx))
    assert {"160", "168", "24"} <= registers
    assert "wgmma.mma_async" in ptx


@pytest.mark.parametrize("case", [
    ("BTNH", 128, 1, jnp.bfloat16, chill_jax.FullChillMask(), 2),
    ("BNTH", 128, 2, jnp.bfloat16, chill_jax.CausalChillMask(), 2),
    ("BTNH", 128, 4, jnp.float16, chill_jax.CausalChillMask(), 2),
    ("BNTH", 64, 1, jnp.float16, chill_jax.FullChillMask(), 3),
    ("BTNH", 64, 2, jnp.bfloat16, chill_jax.CausalChillMask(), 4),
    ("BTNH", 128, 2, jnp.bfloat16, chill_jax.SlidingWindowChillMask(100, 60), 2),
    ("BNTH", 64, 1, jnp.float16, chill_jax.ChunkwiseChillMask(96, 1), 3),
    ("BTNH", 128, 1, jnp.bfloat16, chill_jax.PrefixLMChillMask(300), 2),
], ids=lambda c: f"{c[0]}-d{c[1]}-g{c[2]}-{dtype_name(c[3])}-{type(c[4]).__name__}-{c[5]}stages")
def test_gluon_backward_compiles_for_sm90(monkeypatch, case):
    """The Gluon one-pass backward (``KernelConfig.gluon`` on ``bwd_dkdv``),
    for the built-in masks without arrays, launched the way the binding
    launches it where the GPU allows it: one
    backward launch (no dQ launch), an sm_90 build with two compute warp
    groups and a loader warp, ``wgmma`` with operands from registers and
    transposed shared memory, lse and delta copied by 1-D TMA with the
    query tiles (no global loads left in the kernel), dQ added by TMA
    reductions, register reallocation between the partitions, and shared
    memory within the block's limit."""
    layout, head_dim, group, dtype, mask, stages = case
    monkeypatch.setattr(_launch, "can_run_gluon", lambda implementation: True)
    config = AttentionConfig(fwd=KernelConfig(64, 64, 4, 2), bwd_dkdv=KernelConfig(64, 128, 4, stages, gluon=True),
                             bwd_dq=KernelConfig(64, 64, 4, 2))
    q = jax.ShapeDtypeStruct(layout_shape(layout, 2, 256, 4, head_dim), dtype)
    kv = jax.ShapeDtypeStruct(layout_shape(layout, 2, 384, 4 // group, head_dim), dtype)

    def fb(q, k, v):
        return jax.vjp(lambda q, k, v: chill_jax.attention(q, k, v, mask, layout=layout, config=config,
                                                           implementation="interpret"), q, k, v)[1](
            jnp.ones(q.shape, q.dtype))

    jax.clear_caches()  # record_launches sees only launches traced anew
    launches = compile_check.record_launches(fb, q, kv, kv, execute=False)
    assert [launch[0].fn.__name__ for launch in launches] == ["attn_fwd", "attn_bwd_gluon"]
    assert launches[1][3]["UNMASKED"] == isinstance(mask, chill_jax.FullChillMask)
    compiled = compile_check.compile_launch(launches[1])
    ptx = compiled.asm["ptx"]
    assert compiled.metadata.num_warps == 12
    assert 0 < compiled.metadata.shared <= H100_MAX_SHARED
    assert "wgmma.mma_async" in ptx and "setmaxnreg.inc" in ptx and "setmaxnreg.dec" in ptx
    assert "cp.reduce.async.bulk.tensor.2d.global.shared::cta.add" in ptx
    assert "cp.async.bulk.tensor.1d.shared::cluster.global" in ptx and "ld.global" not in ptx
