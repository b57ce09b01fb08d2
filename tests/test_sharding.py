# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Multi-device execution on 4 forced host devices.

The checks need ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before
JAX initialises, which pytest's process has already done, so this file runs
itself as a script in a subprocess (``python test_sharding.py worker``) that
computes every case once and prints one JSON line per case; the tests assert
on those lines.

Each case compares the forward output, the lse and the gradients of a loss of
both (with respect to q, k and v) on sharded inputs with the same computed on
unsharded copies, and inspects the compiled HLO of the sharded program: no
``all-gather`` or ``all-to-all`` when the inputs are sharded over batch and/or
heads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

B, T, N, D = 4, 64, 4, 16
# Relative max error against the unsharded run: the same kernels on the same
# data, except that dK/dV summed over devices (k/v heads shared by query heads
# on several devices) round differently.
TOLERANCES = {"float32": 1e-5, "bfloat16": 2e-2}
SEQ_WARNING = "cannot keep the input sharding, gathering instead"

# name: what the worker runs. Keys: kind ("auto": AxisType.Auto mesh,
# "explicit": AxisType.Explicit, jax.make_mesh's default), mesh (axis sizes
# in order of the names x, y), qspec/kvspec (PartitionSpec entries of q and
# k/v), heads/kv_heads, layout, mode ("jit": jax.jit over sharded arrays,
# "shard_map": the user's shard_map, "vmap": jit of vmap over a leading axis
# of size 2, "in_shardings": unsharded arrays and jit in_shardings, "eager":
# no jit), expect_gather (sequence-sharded cases), mask ("document": a
# DocumentChillMask & CausalChillMask built inside the step from segment ids
# sharded like the lengths; default a sliding window).
CASES = {
    "batch_auto": dict(kind="auto", mesh=(4,), qspec=("x",), kvspec=("x",)),
    "batch_explicit": dict(kind="explicit", mesh=(4,), qspec=("x",), kvspec=("x",)),
    "heads_auto": dict(kind="auto", mesh=(4,), qspec=(None, None, "x"), kvspec=(None, None, "x")),
    "heads_explicit": dict(kind="explicit", mesh=(4,), qspec=(None, None, "x"), kvspec=(None, None, "x")),
    "batch_heads_2x2_auto": dict(kind="auto", mesh=(2, 2), qspec=("x", None, "y"), kvspec=("x", None, "y")),
    "batch_heads_2x2_explicit": dict(kind="explicit", mesh=(2, 2), qspec=("x", None, "y"),
                                     kvspec=("x", None, "y")),
    "gqa_heads_auto": dict(kind="auto", mesh=(2,), qspec=(None, None, "x"), kvspec=(None, None, "x"), kv_heads=2),
    "gqa_heads_explicit": dict(kind="explicit", mesh=(2,), qspec=(None, None, "x"), kvspec=(None, None, "x"),
                               kv_heads=2),
    # 8 query heads over 4 devices, 2 kv heads: k/v replicated, each device
    # slices its kv head; dK/dV are summed over the devices (all-reduce).
    "gqa_replicated_kv_auto": dict(kind="auto", mesh=(4,), qspec=(None, None, "x"), kvspec=(), heads=8,
                                   kv_heads=2),
    "gqa_replicated_kv_explicit": dict(kind="explicit", mesh=(4,), qspec=(None, None, "x"), kvspec=(), heads=8,
                                       kv_heads=2),
    "mqa_heads_auto": dict(kind="auto", mesh=(4,), qspec=(None, None, "x"), kvspec=(), kv_heads=1),
    "bnth_auto": dict(kind="auto", mesh=(2, 2), qspec=("x", "y"), kvspec=("x", "y"), layout="BNTH"),
    "bnth_explicit": dict(kind="explicit", mesh=(2, 2), qspec=("x", "y"), kvspec=("x", "y"), layout="BNTH"),
    "bnth_gqa_auto": dict(kind="auto", mesh=(2, 2), qspec=("x", "y"), kvspec=("x", "y"), layout="BNTH",
                          kv_heads=2),
    "shard_map_auto": dict(kind="auto", mesh=(2, 2), qspec=("x", None, "y"), kvspec=("x", None, "y"),
                           mode="shard_map"),
    "shard_map_explicit": dict(kind="explicit", mesh=(2, 2), qspec=("x", None, "y"), kvspec=("x", None, "y"),
                               mode="shard_map"),
    # vmap: the specs include the vmapped leading axis.
    "vmap_axis_sharded_auto": dict(kind="auto", mesh=(2, 2), qspec=("x", "y"), kvspec=("x", "y"), mode="vmap"),
    "vmap_batch_sharded_auto": dict(kind="auto", mesh=(4,), qspec=(None, "x"), kvspec=(None, "x"), mode="vmap"),
    "vmap_batch_heads_explicit": dict(kind="explicit", mesh=(2, 2), qspec=(None, "x", None, "y"),
                                      kvspec=(None, "x", None, "y"), mode="vmap"),
    "in_shardings_auto": dict(kind="auto", mesh=(2, 2), qspec=("x", None, "y"), kvspec=("x", None, "y"),
                              mode="in_shardings"),
    "eager_auto": dict(kind="auto", mesh=(4,), qspec=("x",), kvspec=("x",), mode="eager"),
    "eager_explicit": dict(kind="explicit", mesh=(2, 2), qspec=("x", None, "y"), kvspec=("x", None, "y"),
                           mode="eager"),
    "gqa_replicated_kv_2axes_auto": dict(kind="auto", mesh=(2, 2), qspec=(None, None, ("x", "y")), kvspec=(),
                                         heads=8, kv_heads=2),
    "batch_heads_2x2_bf16_auto": dict(kind="auto", mesh=(2, 2), qspec=("x", None, "y"), kvspec=("x", None, "y"),
                                      dtype="bfloat16"),
    "mqa_heads_bf16_auto": dict(kind="auto", mesh=(4,), qspec=(None, None, "x"), kvspec=(), kv_heads=1,
                                dtype="bfloat16"),
    # The GSPMD partitioner (jax_use_shardy_partitioner=False) instead of Shardy.
    "batch_heads_2x2_gspmd": dict(kind="auto", mesh=(2, 2), qspec=("x", None, "y"), kvspec=("x", None, "y"),
                                  gspmd=True),
    "gqa_replicated_kv_gspmd": dict(kind="auto", mesh=(4,), qspec=(None, None, "x"), kvspec=(), heads=8,
                                    kv_heads=2, gspmd=True),
    # Sequence-sharded: gathered along the sequence, with a warning.
    "xla_batch_heads_2x2_auto": dict(kind="auto", mesh=(2, 2), qspec=("x", None, "y"), kvspec=("x", None, "y"),
                                     implementation="xla"),
    "xla_gqa_heads_explicit": dict(kind="explicit", mesh=(2,), qspec=(None, None, "x"), kvspec=(None, None, "x"),
                                   kv_heads=2, implementation="xla"),
    "xla_shard_map_auto": dict(kind="auto", mesh=(2, 2), qspec=("x", None, "y"), kvspec=("x", None, "y"),
                               mode="shard_map", implementation="xla"),
    "xla_vmap_batch_sharded_auto": dict(kind="auto", mesh=(4,), qspec=(None, "x"), kvspec=(None, "x"), mode="vmap",
                                        implementation="xla"),
    # Packed documents: the mask's segment-id tables are batch-sharded operands.
    "document_batch_auto": dict(kind="auto", mesh=(4,), qspec=("x",), kvspec=("x",), mask="document"),
    "document_batch_heads_explicit": dict(kind="explicit", mesh=(2, 2), qspec=("x", None, "y"),
                                          kvspec=("x", None, "y"), mask="document"),
    "document_shard_map_auto": dict(kind="auto", mesh=(2, 2), qspec=("x", None, "y"), kvspec=("x", None, "y"),
                                    mode="shard_map", mask="document"),
    "document_vmap_auto": dict(kind="auto", mesh=(4,), qspec=(None, "x"), kvspec=(None, "x"), mode="vmap",
                               mask="document"),
    "xla_document_batch_heads_auto": dict(kind="auto", mesh=(2, 2), qspec=("x", None, "y"),
                                          kvspec=("x", None, "y"), mask="document", implementation="xla"),
    "seq_auto": dict(kind="auto", mesh=(4,), qspec=(None, "x"), kvspec=(None, "x"), expect_gather=True),
    "seq_explicit": dict(kind="explicit", mesh=(2, 2), qspec=("x", "y"), kvspec=("x", "y"), expect_gather=True),
    "seq_gspmd": dict(kind="auto", mesh=(4,), qspec=(None, "x"), kvspec=(None, "x"), expect_gather=True, gspmd=True),
}


# ----------------------------------------------------------------------------
# Worker (runs in the subprocess).


def _worker(names: list[str]) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    import chill_jax

    assert jax.device_count() == 4, jax.devices()
    mask = chill_jax.SlidingWindowChillMask(24, 8)

    def run_case(name: str, case: dict) -> dict:
        layout = case.get("layout", "BTNH")
        heads, kv_heads = case.get("heads", N), case.get("kv_heads", case.get("heads", N))
        mode = case.get("mode", "jit")
        rng = np.random.default_rng(sum(map(ord, name)))
        lead = (2,) if mode == "vmap" else ()

        def shape(h):
            return (*lead, B, T, h, D) if layout == "BTNH" else (*lead, B, h, T, D)

        def normal(s):
            return jnp.asarray(rng.standard_normal(s, dtype=np.float32)).astype(case.get("dtype", "float32"))

        q, k, v = normal(shape(heads)), normal(shape(kv_heads)), normal(shape(kv_heads))
        q_lens = jnp.asarray(rng.integers(T // 2, T + 1, size=(*lead, B)), jnp.int32)
        kv_lens = jnp.asarray(rng.integers(T // 2, T + 1, size=(*lead, B)), jnp.int32)
        segment_ids = jnp.asarray(np.sort(rng.integers(0, 4, size=(*lead, B, T)), axis=-1), jnp.int32)

        def loss(q, k, v, q_lens, kv_lens, segment_ids):
            if case.get("mask") == "document":
                case_mask = chill_jax.DocumentChillMask(segment_ids) & chill_jax.CausalChillMask()
            else:
                case_mask = mask
            out, lse = chill_jax.attention(q, k, v, case_mask, q_lengths=q_lens, kv_lengths=kv_lens,
                                           return_lse=True, layout=layout,
                                           implementation=case.get("implementation", "interpret"))
            value = jnp.sum(out.astype(jnp.float32) ** 2) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * 0.1)
            return value, (out, lse)

        step = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
        if mode == "vmap":
            step = jax.vmap(step)

        def flat(result):
            (value, (out, lse)), (dq, dk, dv) = result
            return out, lse, dq, dk, dv

        ref = flat(jax.jit(step)(q, k, v, q_lens, kv_lens, segment_ids))

        axis_type = AxisType.Auto if case["kind"] == "auto" else AxisType.Explicit
        names_ = ("x", "y")[:len(case["mesh"])]
        mesh = jax.make_mesh(case["mesh"], names_, axis_types=(axis_type,) * len(names_))
        qspec, kvspec = P(*case["qspec"]), P(*case["kvspec"])
        batch_axis = len(lead)
        lens_spec = P(*[case["qspec"][i] if i < len(case["qspec"]) else None for i in range(batch_axis + 1)])
        specs = (qspec, kvspec, kvspec, lens_spec, lens_spec, P(*lens_spec, None))
        arrays = (q, k, v, q_lens, kv_lens, segment_ids)
        placed = tuple(jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(arrays, specs))

        hlo = None
        jax.config.update("jax_use_shardy_partitioner", not case.get("gspmd", False))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", message="Conversion of an array with ndim > 0")
            if mode == "shard_map":
                def body(*args):
                    (value, aux), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(*args)
                    return (jax.lax.psum(value, ("x", "y")), aux), grads

                lse_spec = P(case["qspec"][0], case["qspec"][2])
                fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=specs,
                                           out_specs=((P(), (qspec, lse_spec)), (qspec, kvspec, kvspec))))
            elif mode == "in_shardings":
                fn = jax.jit(step, in_shardings=tuple(NamedSharding(mesh, s) for s in specs))
                placed = arrays
            else:
                fn = jax.jit(step)
            if mode == "eager":
                with jax.set_mesh(mesh):  # eager grad with explicit axes needs it (JAX, not chill_jax)
                    got = flat(step(*placed))
            else:
                compiled = fn.lower(*placed).compile()
                got = flat(compiled(*placed))
                hlo = compiled.as_text()

        jax.config.update("jax_use_shardy_partitioner", True)
        # lse [.., B, N, T] follows q's batch, heads and sequence shardings.
        q_entries = dict(zip(("b", "t", "n", "d") if layout == "BTNH" else ("b", "n", "t", "d"),
                             (tuple(case["qspec"]) + (None,) * 8)[len(lead):len(lead) + 4]))
        lse_entries = (*case["qspec"][:len(lead)], q_entries["b"], q_entries["n"], q_entries["t"])
        errors = []
        for a, b in zip(ref, got):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            finite = np.isfinite(a)
            assert np.array_equal(finite, np.isfinite(b)), name
            scale = max(float(np.max(np.abs(a[finite]), initial=0.0)), 1e-6)
            errors.append(float(np.max(np.abs(a[finite] - b[finite]), initial=0.0)) / scale)

        def spec_of(x):
            entries = list(x.sharding.spec)
            while entries and entries[-1] is None:
                entries.pop()
            return [list(e) if isinstance(e, tuple) else e for e in entries]

        def trimmed(spec):
            entries = list(spec)
            while entries and entries[-1] is None:
                entries.pop()
            return [list(e) if isinstance(e, tuple) else e for e in entries]

        return dict(
            case=name, max_rel_error=max(errors),
            all_gather=None if hlo is None else ("all-gather" in hlo or "all-to-all" in hlo),
            out_spec=spec_of(got[0]), lse_spec=spec_of(got[1]), dq_spec=spec_of(got[2]), dk_spec=spec_of(got[3]),
            q_spec=trimmed(qspec), kv_spec=trimmed(kvspec), expected_lse_spec=trimmed(P(*lse_entries)),
            warnings=[str(w.message) for w in caught])

    for name in names:
        try:
            result = run_case(name, CASES[name])
        except Exception as e:  # noqa: BLE001 (reported to the test)
            result = dict(case=name, exception=f"{type(e).__name__}: {e}"[:2000])
        print("RESULT " + json.dumps(result), flush=True)

    # A shard_map that leaves an automatic axis unmapped: a clear error.
    mesh = jax.make_mesh((2, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
    q = jnp.ones((B, T, N, D), jnp.float32)
    f = jax.shard_map(lambda q: chill_jax.attention(q, q, q, implementation="interpret"), mesh=mesh,
                      in_specs=P("x"), out_specs=P("x"),
                      axis_names={"x"})
    try:
        jax.jit(f).lower(q)
        message = ""
    except NotImplementedError as e:
        message = str(e)
    print("RESULT " + json.dumps(dict(case="partial_manual_auto", message=message)), flush=True)


# ----------------------------------------------------------------------------
# Tests (pytest's process).


# The tests share one subprocess, which takes minutes: under pytest-xdist
# they run on one worker (``--dist loadfile``).
@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "worker", *CASES], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line[len("RESULT "):] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    found = {r["case"]: r for r in map(json.loads, lines)}
    if proc.returncode != 0 or len(found) != len(CASES) + 1:
        pytest.fail(f"worker failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return found


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_matches_unsharded(results, name):
    """Forward, lse and gradients on sharded inputs equal the unsharded ones;
    outputs keep the inputs' sharding; no all-gather unless the sequence is
    sharded, and then a warning says so."""
    case, r = CASES[name], results[name]
    assert "exception" not in r, r.get("exception")
    assert r["max_rel_error"] <= TOLERANCES[case.get("dtype", "float32")], r
    gather_warnings = [w for w in r["warnings"] if SEQ_WARNING in w]
    if case.get("expect_gather"):
        assert gather_warnings, r
        assert "sequence" in gather_warnings[0], gather_warnings
        if r["all_gather"] is not None:
            assert r["all_gather"], "a sharded sequence must be gathered"
    else:
        assert not gather_warnings, gather_warnings
        if r["all_gather"] is not None:
            assert not r["all_gather"], f"{name}: all-gather/all-to-all in the compiled HLO"
    # The output and dq keep q's sharding, dk keeps k's.
    if case.get("mode") != "shard_map":
        assert r["out_spec"] == r["q_spec"], r
        assert r["dq_spec"] == r["q_spec"], r
        assert r["dk_spec"] == r["kv_spec"], r
        assert r["lse_spec"] == r["expected_lse_spec"], r


def test_partial_manual_shard_map_with_automatic_axes_raises(results):
    assert "unmapped is not supported" in results["partial_manual_auto"]["message"]


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(sys.argv[2:])
