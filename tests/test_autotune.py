# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""``autotune=True`` (timing, the on-disk cache) and the tuned configuration tables."""

import dataclasses
import json
import os
import time
import types

import jax
import jax.numpy as jnp
import pytest

import chill_jax
from chill_jax import (
    AttentionConfig,
    CausalChillMask,
    FullChillMask,
    KernelConfig,
    SlidingWindowChillMask,
    _autotune,
    _launch,
    configs,
)
import compile_check
from testing_utils import attention_and_grads, check_against_reference, normal, random_lengths, random_qkv

BASE = configs.INTERPRET_CONFIG
SMALL = KernelConfig(16, 32, 4, 1)
# Two candidates per pass: the interpreter's default and a small tile.
TINY_CANDIDATES = dict(fwd=(BASE.fwd, SMALL), bwd_dkdv=(BASE.bwd_dkdv, KernelConfig(32, 16, 4, 1)),
                       bwd_dq=(BASE.bwd_dq, KernelConfig(16, 16, 4, 1)))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """A fresh cache directory and in-process state for every test."""
    monkeypatch.setenv(_autotune.CACHE_ENV, str(tmp_path))
    _autotune.clear_memory()
    yield tmp_path
    _autotune.clear_memory()


@pytest.fixture
def timings(monkeypatch):
    """Tiny candidate lists and no key-split step (``test_key_split_step``
    has it); returns a list that grows by one per timed candidate."""
    calls = []
    original = _autotune._time_call

    def counting(fn, args, **kwargs):
        calls.append(fn)
        return original(fn, args, **kwargs)

    monkeypatch.setattr(_autotune, "_time_call", counting)
    monkeypatch.setattr(_autotune, "autotune_candidates", lambda block_d, itemsize: TINY_CANDIDATES)
    monkeypatch.setattr(_autotune, "AUTOTUNE_KV_SPLITS", ())
    return calls


@pytest.fixture
def searches(monkeypatch):
    """Replaces the timing search by an instant one; returns the problems searched."""
    problems = []

    def fake_search(problem, base, candidates=None, *, progress=True):
        problems.append(problem)
        config = AttentionConfig(SMALL, base.bwd_dkdv, base.bwd_dq)
        return config, [_autotune.Measurement(step, config, 1.0) for step in configs.PASSES]

    monkeypatch.setattr(_autotune, "search", fake_search)
    return problems


def _cache(cache_dir) -> dict:
    with open(os.path.join(cache_dir, _autotune.CACHE_FILE), encoding="utf-8") as f:
        return json.load(f)["entries"]


def _call(q, k, v, mask=None, **kwargs):
    return chill_jax.attention(q, k, v, mask, implementation="interpret", autotune=True, **kwargs)


def test_autotune_matches_reference_and_caches(rng, cache_dir, timings):
    """Under jit and grad: correct results, one search of 2 + 2 + 1 timings
    (dQ at its base was timed in the dK/dV step), the winner written to the
    cache file and launched, and no timing on later calls, nor after the
    in-process state is dropped (the file is read back)."""
    mask = SlidingWindowChillMask(10, 3)
    b, t, n = 2, 40, 4
    q, k, v = random_qkv(rng, jnp.float32, batch=b, q_len=t, heads=n, kv_heads=2, head_dim=16)
    dout, dlse = normal(rng, q.shape, jnp.float32), normal(rng, (b, n, t), jnp.float32)
    kwargs = dict(lengths=random_lengths(rng, b, t), implementation="interpret", autotune=True)
    step = jax.jit(lambda q, k, v: attention_and_grads(q, k, v, mask, dout=dout, dlse=dlse, **kwargs))
    check_against_reference(step(q, k, v), q, k, v, mask, dout=dout, dlse=dlse, **kwargs)
    assert len(timings) == 5

    entries = _cache(cache_dir)
    assert len(entries) == 1
    (key, entry), = entries.items()
    for part in ("device=interpret:", "dtype=float32", "head_dim=16", "group=2", "layout=BTNH",
                 "mask=chill_jax.masks.SlidingWindowChillMask(10, 3)", "q_len=64", "kv_len=64", "batch_heads=8"):
        assert part in key
    tuned = configs.attention_config_from_dict(entry, "cache")
    assert entry["ms"]["fwd"] > 0 and entry["ms"]["fwd_bwd"] > 0

    check_against_reference(dict(out=_call(q, k, v, mask)), q, k, v, mask)
    _autotune.clear_memory()
    jax.clear_caches()  # record_launches sees only launches traced anew
    launches = compile_check.record_launches(jax.grad(lambda q: _call(q, k, v, mask).sum()), q)
    assert len(timings) == 5
    used = {kernel.fn.__name__: cfg for kernel, _, _, _, cfg in launches}
    assert used == dict(attn_fwd=tuned.fwd, attn_bwd_dkdv=tuned.bwd_dkdv, attn_bwd_dq=tuned.bwd_dq)


def test_failing_candidates_are_skipped(monkeypatch, rng, timings):
    """A candidate that raises (as one overflowing shared memory does) is
    recorded as failed and never wins."""
    original = _autotune._callables

    def callables(problem, config):
        forward, forward_backward = original(problem, config)
        if config.fwd == BASE.fwd:
            def broken(*args):
                raise RuntimeError("out of resource: shared memory\nmore detail")
            return broken, forward_backward
        return forward, forward_backward

    monkeypatch.setattr(_autotune, "_callables", callables)
    problem = _autotune.Problem("interpret", (1, 24, 1, 16), (1, 24, 1, 16), "float32", CausalChillMask(),
                                "BTNH", 0.25, "ieee")
    best, measurements = _autotune.search(problem, BASE, TINY_CANDIDATES, progress=False)
    assert best.fwd == SMALL
    failed = [m for m in measurements if m.error]
    assert [(m.step, m.config.fwd) for m in failed] == [("fwd", BASE.fwd)]
    assert failed[0].error == "RuntimeError: out of resource: shared memory"


def test_key_split_step(rng, timings):
    """A forward whose query tiles make fewer than two programs per
    multiprocessor (the interpreter counts as 132) also times the winning
    tile with each key-split count up to the key tiles; a long grid does
    not. Whatever wins is launched and right."""
    problem = _autotune.Problem("interpret", (1, 20, 1, 16), (1, 200, 1, 16), "float32", FullChillMask(),
                                "BTNH", 0.25, "ieee")
    best, measurements = _autotune.search(problem, BASE, TINY_CANDIDATES, kv_splits=(1, 2, 4, 8), progress=False)
    forward = [m.config.fwd for m in measurements if m.step == "fwd"]
    tiles = -(-200 // best.fwd.block_n)
    assert forward[:2] == [BASE.fwd, SMALL]
    assert [k.kv_splits for k in forward[2:]] == [c for c in (1, 2, 4, 8) if c <= tiles]
    assert len({(k.block_m, k.block_n) for k in forward[2:]}) == 1
    assert best.fwd in forward
    q, k, v = random_qkv(rng, jnp.float32, batch=1, q_len=20, kv_len=200, heads=1, head_dim=16)
    dout = normal(rng, q.shape, q.dtype)
    result = attention_and_grads(q, k, v, dout=dout, config=best, implementation="interpret", sm_scale=0.25)
    check_against_reference(result, q, k, v, dout=dout, sm_scale=0.25, implementation="interpret")
    long = _autotune.Problem("interpret", (2, 64 * 140, 1, 16), (2, 64 * 140, 1, 16), "float32", FullChillMask(),
                             "BTNH", 0.25, "ieee")
    assert _autotune._split_candidates(long, BASE.fwd, (1, 2, 4)) == []


def test_key_split_candidates_of_a_gluon_forward():
    """A Gluon forward never splits its keys; a split count runs the Triton
    kernels at the fallback's tile, so the candidates carry it there too
    (counts bounded by the fallback's key tiles)."""
    fallback = KernelConfig(64, 64, 4, 3)
    fwd = KernelConfig(128, 128, 4, 2, warp_specialize=True, gluon=True, fallback=fallback)
    problem = _autotune.Problem("interpret", (1, 256, 2, 128), (1, 256, 2, 128), "bfloat16",
                                SlidingWindowChillMask(256, 256), "BTNH", 0.1, "ieee")
    candidates = _autotune._split_candidates(problem, fwd, (1, 2, 4, 8))
    assert [(c.kv_splits, c.fallback.kv_splits) for c in candidates] == [(1, 1), (2, 2), (4, 4)]
    assert all(dataclasses.replace(c, kv_splits=0, fallback=fallback) == fwd for c in candidates)


def test_every_candidate_failing_keeps_the_default(monkeypatch, rng, cache_dir, timings):
    """When no forward candidate runs, the default is used, with a warning,
    and nothing is cached."""

    def broken(*args, **kwargs):
        raise RuntimeError("does not compile")

    monkeypatch.setattr(_autotune, "_time_call", broken)
    q, k, v = random_qkv(rng, jnp.float32, batch=1, q_len=20, heads=1, head_dim=16)
    with pytest.warns(UserWarning, match="every candidate failed"):
        config = _autotune.resolve_config("interpret", q.shape, k.shape, q.dtype, CausalChillMask(),
                                          layout="BTNH", sm_scale=0.25, precision="ieee", autotune=True)
    assert config == BASE
    assert not os.path.exists(os.path.join(cache_dir, _autotune.CACHE_FILE))


def _resolve(shape=(2, 40, 4, 16), kv_shape=None, dtype=jnp.float32, mask=CausalChillMask(), layout="BTNH",
             precision="ieee"):
    return _autotune.resolve_config("interpret", shape, kv_shape or shape, dtype, mask, layout=layout,
                                    sm_scale=0.25, precision=precision, autotune=True)


def test_key_separation(cache_dir, searches):
    """dtype, head dim, mask class and constants, GQA group, layout,
    length and batch x heads buckets and precision each get their own entry;
    lengths in the same power-of-two bucket share one."""
    variants = [
        dict(),
        dict(dtype=jnp.bfloat16),
        dict(shape=(2, 40, 4, 32)),
        dict(mask=FullChillMask()),
        dict(mask=SlidingWindowChillMask(4, 4)),
        dict(mask=SlidingWindowChillMask(4, 5)),
        dict(kv_shape=(2, 40, 2, 16)),
        dict(layout="BNTH", shape=(2, 4, 40, 16)),
        dict(shape=(2, 70, 4, 16)),
        dict(shape=(2, 40, 4, 16), kv_shape=(2, 70, 4, 16)),
        dict(shape=(4, 40, 4, 16)),
        dict(precision="tf32"),
    ]
    for variant in variants:
        _resolve(**variant)
    assert len(searches) == len(variants)
    assert len(_cache(cache_dir)) == len(variants)
    assert len({p.key() for p in searches}) == len(variants)
    _resolve(shape=(2, 50, 4, 16))  # T = 50 shares the bucket 64 with T = 40
    _resolve(shape=(2, 40, 4, 16), mask=SlidingWindowChillMask(4, 4))
    _autotune.clear_memory()
    for variant in variants:
        assert _resolve(**variant).fwd == SMALL
    assert len(searches) == len(variants)


@pytest.mark.parametrize("content", [
    "{not json",
    b"\xff\xfe not UTF-8",
    json.dumps({"schema": 99, "entries": {}}),
    json.dumps(["a list"]),
    "BAD_ENTRY",
])
def test_corrupt_cache_is_tolerated(cache_dir, searches, content):
    """An unreadable cache file, or an invalid entry, warns and is tuned
    again; the file is then rewritten valid."""
    path = os.path.join(cache_dir, _autotune.CACHE_FILE)
    if content == "BAD_ENTRY":
        _resolve()
        entries = _cache(cache_dir)
        (key,) = entries
        entries[key]["fwd"]["block_m"] = 48
        content = json.dumps({"schema": _autotune.CACHE_SCHEMA, "entries": entries})
        _autotune.clear_memory()
        searches.clear()
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())
    with pytest.warns(UserWarning, match="ignoring"):
        config = _resolve()
    assert config.fwd == SMALL and len(searches) == 1
    assert len(_cache(cache_dir)) == 1
    _autotune.clear_memory()
    _resolve()
    assert len(searches) == 1


def test_cache_merges_entries_and_leaves_no_temp_files(cache_dir, searches):
    """Entries written by another process are kept; writes go through a
    temp file that is renamed over the cache."""
    _resolve()
    path = os.path.join(cache_dir, _autotune.CACHE_FILE)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["entries"]["written by another process"] = BASE.to_dict()
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    _resolve(dtype=jnp.float16)
    assert set(_cache(cache_dir)) == {"written by another process", *(p.key() for p in searches)}
    assert os.listdir(cache_dir) == [_autotune.CACHE_FILE]


def test_cache_keeps_gluon_fallback_tiles(cache_dir):
    """A cached winner holding Gluon passes with fallback tiles (the Hopper
    table's own entries can win) is read back whole."""
    table = configs.default_config("triton", 64, 2, CausalChillMask(), generation="hopper")
    assert table.bwd_dkdv.fallback is not None
    path = os.path.join(cache_dir, _autotune.CACHE_FILE)
    _autotune._write_entry(path, "hopper causal", dict(table.to_dict(), ms={"fwd": 1.0, "fwd_bwd": None}))
    entry = _autotune.read_cache(path)["hopper causal"]
    assert configs.attention_config_from_dict(entry, path) == table


def test_cache_location(monkeypatch, tmp_path):
    """``$CHILL_JAX_CACHE_DIR`` first, then ``~/.cache/chill_jax``, then a
    temporary directory when the home directory is not writable."""
    monkeypatch.setenv(_autotune.CACHE_ENV, str(tmp_path / "here"))
    assert _autotune.cache_path() == str(tmp_path / "here" / "autotune.json")
    monkeypatch.delenv(_autotune.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _autotune.cache_path() == str(tmp_path / "home" / ".cache" / "chill_jax" / "autotune.json")
    (tmp_path / "file").write_text("a file, not a directory")
    monkeypatch.setenv("HOME", str(tmp_path / "file"))
    path = _autotune.cache_path()
    assert not path.startswith(str(tmp_path)) and path.endswith(os.path.join("chill_jax-%d" % os.getuid(),
                                                                              "autotune.json"))


def test_unwritable_cache_warns_and_keeps_the_result(monkeypatch, tmp_path, searches):
    """A cache that cannot be written warns; the winner still serves this process."""
    (tmp_path / "file").write_text("a file, not a directory")
    monkeypatch.setenv(_autotune.CACHE_ENV, str(tmp_path / "file" / "sub"))
    with pytest.warns(UserWarning, match="could not write"):
        assert _resolve().fwd == SMALL
    assert _resolve().fwd == SMALL
    assert len(searches) == 1


def test_validation(rng, searches):
    """autotune must be a bool; it excludes an explicit config and the xla
    implementation; with implementation=None on a machine without a CUDA GPU
    (xla) it is ignored."""
    q, k, v = random_qkv(rng, jnp.float32, batch=1, q_len=20, heads=1, head_dim=16)
    with pytest.raises(TypeError, match="autotune must be a bool, got int"):
        chill_jax.attention(q, k, v, implementation="interpret", autotune=1)
    with pytest.raises(ValueError, match="either config or autotune=True"):
        chill_jax.attention(q, k, v, implementation="interpret", autotune=True, config=BASE)
    with pytest.raises(ValueError, match="autotune=True needs a kernel implementation"):
        chill_jax.attention(q, k, v, implementation="xla", autotune=True)
    if not _launch.cuda_available():
        out = chill_jax.attention(q, k, v, autotune=True)
        check_against_reference(dict(out=out), q, k, v)
    assert not searches


def test_make_attention_fn_passes_autotune(rng, searches):
    """``make_attention_fn(..., autotune=True)`` tunes through attention."""
    fn = chill_jax.make_attention_fn(CausalChillMask(), implementation="interpret", autotune=True)
    q, k, v = random_qkv(rng, jnp.float32, batch=1, q_len=20, heads=2, head_dim=16)
    out = fn(q, k, v)
    check_against_reference(dict(out=out), q, k, v, CausalChillMask())
    assert len(searches) == 1


def test_shipped_tables_are_valid():
    """Every shipped table loads; each entry is a valid configuration; the
    fallback covers every head dim and dtype; serialising round-trips."""
    names = configs.table_names()
    assert {"default", "hopper"} <= set(names)
    for name in names:
        table = configs.load_table(name)
        assert table
        for (block_d, dtype, mask), cfg in table.items():
            assert block_d in configs.BLOCK_DS and dtype in configs.DTYPE_CLASSES and isinstance(mask, str)
            assert isinstance(cfg, AttentionConfig)
            assert all(isinstance(getattr(cfg, p), KernelConfig) for p in configs.PASSES)
        text = configs.dump_table(configs.table_entries(table), "round trip")
        assert dict(configs.parse_table(json.loads(text), name)) == dict(table)
    fallback = configs.load_table("default")
    for block_d in configs.BLOCK_DS:
        for dtype in configs.DTYPE_CLASSES:
            assert (block_d, dtype, "*") in fallback


def _doc(**entry_changes):
    entry = {"block_d": 64, "dtype": "bf16/fp16", "mask": "*", **BASE.to_dict()}
    entry.update(entry_changes)
    return {"schema": 1, "entries": [entry]}


@pytest.mark.parametrize("doc,message", [
    ([], "expected a JSON object"),
    ({"schema": 2, "entries": []}, "schema must be 1"),
    ({"schema": 1, "entries": {}}, "entries must be a list"),
    ({"schema": 1, "entries": [], "extra": 1}, r"unknown top-level key\(s\) \['extra'\]"),
    (_doc(block_d=48), r"entries\[0\]\.block_d: expected one of"),
    (_doc(dtype="fp64"), r"entries\[0\]\.dtype: expected one of"),
    (_doc(mask="not a name"), r"entries\[0\]\.mask"),
    (_doc(fwd={"block_m": 48, "block_n": 64, "num_warps": 4, "num_stages": 1}),
     r"entries\[0\]\.fwd: KernelConfig\.block_m must be a power of two"),
    (_doc(fwd={"block_m": 64, "block_n": 64, "num_warps": True, "num_stages": 1}),
     r"entries\[0\]\.fwd\.num_warps: expected an int"),
    (_doc(bwd_dq={"block_m": 64, "block_n": 64, "num_warps": 4}),
     r"entries\[0\]\.bwd_dq: .*missing \['num_stages'\]"),
    (_doc(bwd_dkdv=None), r"entries\[0\]\.bwd_dkdv: expected an object"),
    (_doc(extra=1), r"entries\[0\]: unknown key"),
    ({"schema": 1, "entries": _doc()["entries"] * 2}, r"entries\[1\]: duplicate entry"),
])
def test_table_schema_errors(doc, message):
    """Tables that break the schema raise a ValueError naming the entry and field."""
    with pytest.raises(ValueError, match=message):
        configs.parse_table(doc, "bad.json")


def test_default_config_lookup_order(monkeypatch):
    """The generation's table (mask class name, then ``"*"``) first, then
    the fallback table's; the interpreter keeps its own configuration."""
    a, b, c, d = (AttentionConfig(KernelConfig(m, 16)) for m in (16, 32, 64, 128))
    tables = {
        "hopper": {(64, "bf16/fp16", "CausalChillMask"): a, (64, "bf16/fp16", "*"): b},
        "default": {(64, "bf16/fp16", "*"): c, (128, "bf16/fp16", "FullChillMask"): d,
                    (128, "bf16/fp16", "*"): c, (64, "fp32", "*"): d},
    }
    monkeypatch.setattr(configs, "load_table", tables.__getitem__)
    monkeypatch.setattr(configs, "table_names", lambda: tuple(tables))
    assert configs.default_config("triton", 64, 2, CausalChillMask(), generation="hopper") == a
    assert configs.default_config("triton", 64, 2, "CausalChillMask", generation="hopper") == a
    assert configs.default_config("triton", 64, 2, FullChillMask(), generation="hopper") == b
    assert configs.default_config("triton", 64, 2, None, generation="hopper") == b
    assert configs.default_config("triton", 64, 4, CausalChillMask(), generation="hopper") == d
    assert configs.default_config("triton", 128, 2, FullChillMask(), generation="hopper") == d
    assert configs.default_config("triton", 128, 2, CausalChillMask(), generation="hopper") == c
    assert configs.default_config("triton", 64, 2, CausalChillMask(), generation="default") == c
    assert configs.default_config("triton", 64, 2, CausalChillMask(), generation="volta") == c
    assert configs.default_config("interpret", 64, 2, CausalChillMask()) is configs.INTERPRET_CONFIG
    with pytest.raises(ValueError, match="block_d must be one of"):
        configs.default_config("triton", 48, 2)


class _Unreadable:
    platform = "gpu"

    @property
    def compute_capability(self):
        raise RuntimeError("driver gone")


@pytest.mark.parametrize("device,expected", [
    (types.SimpleNamespace(platform="gpu", compute_capability="9.0", device_kind="NVIDIA H100 80GB HBM3"), "hopper"),
    (types.SimpleNamespace(platform="gpu", compute_capability="8.0", device_kind="NVIDIA A100"), "ampere"),
    (types.SimpleNamespace(platform="gpu", compute_capability="8.9", device_kind="NVIDIA L4"), "ada"),
    (types.SimpleNamespace(platform="gpu", compute_capability="42.1", device_kind="Future GPU"), "default"),
    (types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H200"), "hopper"),
    (types.SimpleNamespace(platform="gpu", compute_capability=None, device_kind="NVIDIA GH200 480GB"), "hopper"),
    (types.SimpleNamespace(platform="gpu", device_kind="Mystery accelerator"), "default"),
    (types.SimpleNamespace(platform="gpu"), "default"),
    (types.SimpleNamespace(platform="cpu", device_kind="cpu"), "default"),
    (_Unreadable(), "default"),
    (object(), "default"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_gpu_generation(device, expected):
    """Compute capability first, then the device name; unknown GPUs and
    other devices get the fallback table, without raising."""
    assert configs.gpu_generation(device) == expected


def test_unknown_gpu_uses_the_fallback_table():
    """A generation without a table of its own (and this machine, unless it
    has a GPU with one) gets ``default.json``'s entries."""
    fallback = configs.load_table("default")
    for block_d in configs.BLOCK_DS:
        for itemsize, dtype in ((2, "bf16/fp16"), (4, "fp32")):
            expected = fallback[(block_d, dtype, "*")]
            assert configs.default_config("triton", block_d, itemsize, generation="ampere") == expected
            assert configs.default_config("triton", block_d, itemsize, generation="no-such-gpu") == expected
            detected = configs.gpu_generation()
            if detected == configs.FALLBACK_TABLE or detected not in configs.table_names():
                assert configs.default_config("triton", block_d, itemsize, CausalChillMask()) == expected


def test_sweep_writes_a_tuned_table(tmp_path, monkeypatch, capsys):
    """``benchmarks/sweep.py --write`` (smoke-tested through the interpreter)
    merges its winners into a table that loads: entries for each swept mask
    class and, with ``--wildcard``, the ``"*"`` entry; other entries kept."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "sweep.py")
    spec = importlib.util.spec_from_file_location("chill_jax_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    table = tmp_path / "tuned.json"
    table.write_text(configs.dump_table(configs.table_entries(configs.load_table("default")), "seed"))
    assert sweep.main(["--out", str(tmp_path / "sweep.csv"), "--tiny", "--implementation", "interpret",
                       "--candidates", "1", "--reps", "1", "--shapes", "D16", "--masks", "causal", "full",
                       "--wildcard", "causal", "--write", str(table)]) == 0
    written = configs.parse_table(json.loads(table.read_text()), str(table))
    assert json.loads(table.read_text())["description"] == "seed"
    assert (16, "bf16/fp16", "CausalChillMask") in written and (16, "bf16/fp16", "FullChillMask") in written
    assert written[(16, "bf16/fp16", "*")] == written[(16, "bf16/fp16", "CausalChillMask")]
    assert len(written) == len(configs.load_table("default")) + 2
    rows = (tmp_path / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("shape,dtype,mask,step") and len(rows) > 6


def test_profile_script_runs_one_case(monkeypatch):
    """``benchmarks/profile.py --tiny`` runs chill_jax's forward+backward at
    the smoke-test shape (through the interpreter here) and refuses an
    implementation that does not take the mask."""
    import importlib.util

    import chill_jax

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "profile.py")
    spec = importlib.util.spec_from_file_location("chill_jax_profile", path)
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    shapes = []
    attention = chill_jax.attention

    def recording(q, k, v, mask, **kwargs):
        shapes.append((q.shape, type(mask).__name__))
        return attention(q, k, v, mask, **kwargs)

    monkeypatch.setattr(chill_jax, "attention", recording)
    monkeypatch.setattr(profile.bench, "SHAPES", dict(profile.bench.SHAPES))
    assert profile.main(["--tiny", "--shape", "S1", "--mask", "causal", "--calls", "2"]) == 0
    assert shapes == [((1, 128, 2, 64), "CausalChillMask")]
    with pytest.raises(SystemExit):
        profile.main(["--tiny", "--mask", "chunkwise_128_2", "--impl", "pallas"])


def test_autotune_array_masks(rng, cache_dir, searches):
    """A mask with arrays tunes once per static part (class, constants,
    composition), whatever the arrays' values; traced arrays cannot be timed:
    a warning and the default configuration, nothing cached."""
    q, k, v = random_qkv(rng, jnp.float32, q_len=40, head_dim=16)
    ids = jnp.zeros((2, 40), jnp.int32)
    with pytest.warns(UserWarning, match="carries traced arrays"):
        jax.jit(lambda q, ids: _call(q, k, v, chill_jax.DocumentChillMask(ids)))(q, ids)
    assert not searches and not os.path.exists(os.path.join(cache_dir, _autotune.CACHE_FILE))
    _call(q, k, v, chill_jax.DocumentChillMask(ids))
    _call(q, k, v, chill_jax.DocumentChillMask(ids + 1))
    assert len(searches) == 1
    _call(q, k, v, CausalChillMask() & FullChillMask())
    _call(q, k, v, CausalChillMask() | FullChillMask())
    assert len(searches) == 3
    assert any("|" in key for key in _cache(cache_dir)) and any("&" in key for key in _cache(cache_dir))


def test_time_call_batches_fast_calls(monkeypatch):
    """Fast calls are timed in back-to-back batches (one wait per sample),
    slow ones one at a time; the result is milliseconds per call. (Samples
    of 50 ms here, so that the fast call's batch stays more than one call
    even when many test workers on one host slow single calls down.)"""
    monkeypatch.setattr(_autotune, "_SAMPLE_MS", 50.0)
    calls = []

    def fast():
        calls.append(1)
        return jnp.float32(len(calls))

    ms = _autotune._time_call(fast, (), warmup=3, reps=5)
    assert len(calls) > 3 + 5 * 2 and 0 < ms < 25.0
    calls.clear()

    def slow():
        calls.append(1)
        time.sleep(0.06)
        return jnp.float32(0)

    ms = _autotune._time_call(slow, (), warmup=1, reps=3)
    assert len(calls) == 1 + 3 and ms >= 60.0
