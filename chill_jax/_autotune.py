# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""``autotune=True``: times candidate kernel configurations and caches the winner on disk.

A problem is identified by the device, the dtype, the head dim, the GQA
group, the layout, the mask (class and constants), power-of-two buckets of
the query and key lengths and of batch x heads, the float32 precision and the
chill-jax version. On a miss the candidates of :func:`chill_jax.configs.
autotune_candidates` (plus the default configuration) are timed on fresh
random arrays of the problem's shapes, in a worker thread so that the
caller's tracing context (``jit``, ``grad``, ``vmap``, ``shard_map``) never
sees them: first the forward kernel by forward time, then the dK/dV kernel
with the dQ kernel fixed, then the dQ kernel, both by forward + backward
time. When the forward's winning tile leaves fewer than two waves of
programs, its key-split counts are timed too, after its tile. The winner
goes to ``$CHILL_JAX_CACHE_DIR/autotune.json`` (default
``~/.cache/chill_jax/autotune.json``, or a temporary directory when the home
directory is not writable), written atomically; later calls, in this
process or another, read it back without timing anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import triton

from chill_jax import _launch
from chill_jax.configs import (
    AUTOTUNE_KV_SPLITS,
    PASSES,
    AttentionConfig,
    KernelConfig,
    attention_config_from_dict,
    autotune_candidates,
    default_config,
)
from chill_jax.masks import ChillMask, ComposedChillMask

CACHE_ENV = "CHILL_JAX_CACHE_DIR"
CACHE_FILE = "autotune.json"
CACHE_SCHEMA = 1
# (warm-up calls, timed calls) per candidate; the interpreter only exercises
# the machinery, its timings say nothing about a GPU.
REPETITIONS = {"triton": (2, 10), "interpret": (1, 1)}

_LOCK = threading.RLock()
_MEMORY: dict[str, AttentionConfig] = {}


@dataclasses.dataclass(frozen=True)
class Problem:
    """The static description of one attention call that autotuning times.

    Attributes:
      implementation: ``"triton"`` or ``"interpret"``.
      q_shape: the query's shape in ``layout``.
      kv_shape: the key's (and value's) shape in ``layout``.
      dtype: the inputs' dtype name (``"bfloat16"``, ...).
      mask: the mask.
      layout: ``"BTNH"`` or ``"BNTH"``.
      sm_scale: logit scale.
      precision: resolved float32 precision (``"ieee"``, ``"tf32"``, ``"tf32x3"``).
      prescale_qk: whether the query is scaled once.
    """

    implementation: str
    q_shape: tuple[int, ...]
    kv_shape: tuple[int, ...]
    dtype: str
    mask: ChillMask
    layout: str
    sm_scale: float
    precision: str
    prescale_qk: bool = False

    def dims(self) -> tuple[int, int, int, int, int, int]:
        """``(batch, q_len, heads, kv_len, kv_heads, head_dim)``."""
        if self.layout == "BTNH":
            (b, t, n, d), (_, s, kh, _) = self.q_shape, self.kv_shape
        else:
            (b, n, t, d), (_, kh, s, _) = self.q_shape, self.kv_shape
        return b, t, n, s, kh, d

    @property
    def block_d(self) -> int:
        """The padded head dim."""
        return max(16, triton.next_power_of_2(self.dims()[-1]))

    @property
    def itemsize(self) -> int:
        """Bytes per input element."""
        return jnp.dtype(self.dtype).itemsize

    def key(self) -> str:
        """The cache key: ``"name=value|..."`` over everything timing depends on."""
        from chill_jax import __version__  # noqa: PLC0415 (the package imports this module)

        b, t, n, s, kh, d = self.dims()
        fields = dict(
            device=device_name(self.implementation), dtype=self.dtype, head_dim=d, group=n // kh,
            layout=self.layout, mask=mask_key(self.mask), q_len=_bucket(t), kv_len=_bucket(s),
            batch_heads=_bucket(b * n), precision=self.precision, chill_jax=__version__)
        return "|".join(f"{k}={v}" for k, v in fields.items())


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One timed candidate.

    Attributes:
      step: ``"fwd"``, ``"bwd_dkdv"`` or ``"bwd_dq"`` (the pass being varied).
      config: the whole configuration timed.
      ms: median milliseconds (forward for ``"fwd"``, forward + backward
        otherwise); NaN when the candidate failed.
      error: why it failed (empty when it ran).
    """

    step: str
    config: AttentionConfig
    ms: float
    error: str = ""


def _bucket(n: int) -> int:
    """The next power of two >= n."""
    return 1 << max(0, int(n) - 1).bit_length()


def device_name(implementation: str) -> str:
    """``"<implementation>:<device kind>"`` of JAX's first device."""
    try:
        kind = jax.devices()[0].device_kind
    except Exception:  # noqa: BLE001 (a key is still needed)
        kind = "unknown"
    return f"{implementation}:{kind}"


def mask_key(mask: ChillMask) -> str:
    """The static part of a mask: its class's qualified name and its constants
    (of each operand, for compositions); never the values of its arrays."""
    if isinstance(mask, ComposedChillMask):
        a, b = mask.operands
        return f"({mask_key(a)} {mask.op} {mask_key(b)})"
    cls = type(mask)
    return f"{cls.__module__}.{cls.__qualname__}{tuple(mask.args)!r}"


def cache_path() -> str:
    """The autotuning cache file.

    ``$CHILL_JAX_CACHE_DIR/autotune.json`` when the variable is set, else
    ``~/.cache/chill_jax/autotune.json`` when that directory can be created
    and written, else ``<tempdir>/chill_jax-<uid>/autotune.json``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return os.path.join(os.path.expanduser(env), CACHE_FILE)
    home = os.path.join(os.path.expanduser("~"), ".cache", "chill_jax")
    try:
        os.makedirs(home, exist_ok=True)
        if os.access(home, os.W_OK):
            return os.path.join(home, CACHE_FILE)
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"chill_jax-{uid}", CACHE_FILE)


def read_cache(path: str, *, warn: bool = True) -> dict[str, dict[str, Any]]:
    """The valid entries of a cache file (empty when it is missing).

    An unreadable or malformed file, and entries that are not valid
    configurations, are skipped with a warning (they are tuned again and
    overwritten).
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as e:
        if warn:
            warnings.warn(f"chill_jax autotune: ignoring unreadable cache {path} ({e}); tuning again",
                          stacklevel=3)
        return {}
    if not isinstance(data, dict) or data.get("schema") != CACHE_SCHEMA or not isinstance(data.get("entries"), dict):
        if warn:
            warnings.warn(f"chill_jax autotune: ignoring cache {path}: expected "
                          f'{{"schema": {CACHE_SCHEMA}, "entries": {{...}}}}; tuning again', stacklevel=3)
        return {}
    entries = {}
    for key, entry in data["entries"].items():
        try:
            attention_config_from_dict(entry, f"{path}: entries[{key!r}]")
        except ValueError as e:
            if warn:
                warnings.warn(f"chill_jax autotune: ignoring a cache entry: {e}", stacklevel=3)
            continue
        entries[key] = entry
    return entries


def _write_entry(path: str, key: str, entry: dict[str, Any]) -> None:
    """Adds one entry to the cache file: re-read, merge, temp file + os.replace."""
    try:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        entries = read_cache(path, warn=False)
        entries[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=".autotune-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"schema": CACHE_SCHEMA, "entries": entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        warnings.warn(f"chill_jax autotune: could not write the cache {path} ({e}); the result is kept for "
                      f"this process only (set {CACHE_ENV} to a writable directory)", stacklevel=3)


def clear_memory() -> None:
    """Forgets the configurations this process has looked up (not the file)."""
    with _LOCK:
        _MEMORY.clear()


def resolve_config(implementation: str, q_shape: Sequence[int], kv_shape: Sequence[int], dtype: Any,
                   mask: ChillMask, *, layout: str, sm_scale: float, precision: str,
                   prescale_qk: bool = False, autotune: bool = False) -> AttentionConfig:
    """The configuration of a kernel launch when the caller gave none.

    Args:
      implementation: ``"triton"`` or ``"interpret"``.
      q_shape, kv_shape: the query's and key's shapes in ``layout``.
      dtype: the inputs' dtype.
      mask, layout, sm_scale, precision, prescale_qk: as in
        :func:`chill_jax.attention` (precision resolved to a string).
      autotune: look the problem up in the cache, tuning it on a miss;
        otherwise the tuned default table's entry.

    Returns:
      The configuration.
    """
    dtype = jnp.dtype(dtype)
    block_d = max(16, triton.next_power_of_2(int(q_shape[-1])))
    base = default_config(implementation, block_d, dtype.itemsize, mask)
    if not autotune:
        return base
    problem = Problem(implementation, tuple(int(x) for x in q_shape), tuple(int(x) for x in kv_shape),
                      dtype.name, mask, layout, float(sm_scale), precision, bool(prescale_qk))
    return tuned_config(problem, base)


def tuned_config(problem: Problem, base: AttentionConfig) -> AttentionConfig:
    """The cached configuration of ``problem``, tuning it (once) on a miss."""
    key = problem.key()
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
        path = cache_path()
        entry = read_cache(path).get(key)
        if entry is not None:
            config = attention_config_from_dict(entry, path)
        elif any(isinstance(a, jax.core.Tracer) for a in problem.mask.arrays):
            warnings.warn(f"chill_jax autotune: {problem.mask!r} carries traced arrays, which cannot be timed "
                          "from inside jit/vmap/grad; using the default configuration. Call attention once "
                          "outside jit with concrete mask arrays (same shapes) to tune and cache it.", stacklevel=3)
            return base
        else:
            config, measurements = _in_fresh_thread(lambda: search(problem, base))
            ok = [m for m in measurements if m.step == "fwd" and not m.error]
            if not ok:
                warnings.warn(f"chill_jax autotune: every candidate failed for {key}; using the default "
                              "configuration (not cached)", stacklevel=3)
                return base
            best = {step: min((m.ms for m in measurements if m.step == step and not m.error), default=math.nan)
                    for step in PASSES}
            ms = {name: None if math.isnan(best[step]) else round(best[step], 4)
                  for name, step in (("fwd", "fwd"), ("fwd_bwd", "bwd_dq"))}
            _write_entry(path, key, dict(config.to_dict(), ms=ms, tuned_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
        _MEMORY[key] = config
        return config


def _in_fresh_thread(fn: Callable[[], Any]) -> Any:
    """Runs ``fn`` in a new thread: JAX's trace state is per thread, so the
    arrays ``fn`` makes are concrete even while the caller is tracing."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            box["error"] = e

    thread = threading.Thread(target=target, name="chill_jax-autotune")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


# Each timing sample runs back-to-back calls for at least this long before it
# waits for the device, so that the host's dispatch of the first call and the
# wait for the last (~50-100 us together) are a small share of the sample:
# with 2 ms, a 1.7 ms call was timed alone, dispatch and wait included, and
# read 17% slow on an H200 (benchmarks/NOTES.md, "The sample length").
_SAMPLE_MS = 20.0


def _time_call(fn: Callable, args: Sequence[Any], *, warmup: int, reps: int) -> float:
    """Median milliseconds per call of ``fn(*args)``, after ``warmup`` calls.

    Each of the ``reps`` samples times ``inner`` calls issued back to back
    (JAX dispatches asynchronously) and one wait for the last result, with
    ``inner`` chosen from the fastest warm-up call (the first one compiles;
    a busy host slows single calls) so that a sample lasts at least
    ``_SAMPLE_MS`` (1 call for slower calls, e.g. under the interpreter).
    """
    fastest = math.inf
    for _ in range(max(1, warmup)):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        fastest = min(fastest, (time.perf_counter() - start) * 1e3)
    inner = max(1, min(100, math.ceil(_SAMPLE_MS / max(fastest, 1e-3))))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner - 1):
            fn(*args)
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3 / inner)
    return statistics.median(times)


def _random_inputs(problem: Problem) -> tuple[jax.Array, ...]:
    """Standard normal query, key, value and output cotangent (never zeros)."""
    keys = jax.random.split(jax.random.key(0x5EED), 4)
    shapes = (problem.q_shape, problem.kv_shape, problem.kv_shape, problem.q_shape)
    return tuple(jax.random.normal(k, s, jnp.dtype(problem.dtype)) for k, s in zip(keys, shapes))


def _callables(problem: Problem, config: AttentionConfig) -> tuple[Callable, Callable]:
    """Jitted forward ``(q, k, v)`` and forward + backward ``(q, k, v, dout)``."""
    from chill_jax.attention import attention  # noqa: PLC0415 (attention imports this module)

    def forward(q, k, v):
        return attention(q, k, v, problem.mask, sm_scale=problem.sm_scale, layout=problem.layout,
                         implementation=problem.implementation, precision=problem.precision,
                         prescale_qk=problem.prescale_qk, config=config)

    def forward_backward(q, k, v, dout):
        return jax.vjp(forward, q, k, v)[1](dout)

    return jax.jit(forward), jax.jit(forward_backward)


def _label(step: str, k: KernelConfig) -> str:
    return (f"{step} {k.block_m}x{k.block_n} w{k.num_warps} s{k.num_stages}"
            + (" ws" if k.warp_specialize else "") + (" gluon" if k.gluon else "")
            + (f" kv_splits={k.kv_splits}" if k.kv_splits else ""))


# Multiprocessors assumed where the implementation has none (the
# interpreter), so that the CPU tests take the key-split step too.
_NOMINAL_MULTIPROCESSORS = 132


def _split_candidates(problem: Problem, fwd: KernelConfig, counts: Sequence[int]) -> list[KernelConfig]:
    """``fwd`` with each key-split count of ``counts`` (at most one part per
    key tile, not its own count), when its query tiles make fewer than two
    programs per multiprocessor; otherwise none. A split forward runs the
    Triton kernels, so a configuration with a ``fallback`` (a Gluon one)
    splits at the fallback's tile: the count goes on both."""
    b, t, n, s, _, _ = problem.dims()
    runs = fwd.fallback or fwd
    multiprocessors = _launch.multiprocessors(problem.implementation) or _NOMINAL_MULTIPROCESSORS
    if triton.cdiv(t, runs.block_m) * b * n >= 2 * multiprocessors:
        return []
    key_tiles = triton.cdiv(s, runs.block_n)
    return [dataclasses.replace(fwd, kv_splits=c,
                                fallback=fwd.fallback and dataclasses.replace(fwd.fallback, kv_splits=c))
            for c in counts if c <= key_tiles and c != runs.kv_splits]


class _Progress:
    """A tqdm bar on stderr; without tqdm, one stderr line rewritten in place
    (on a terminal) or a start and a summary line (in a log)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self._total, self._desc, self._done, self._bar = total, desc, 0, None
        self._enabled = enabled
        self._tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        if not enabled:
            return
        try:
            from tqdm import tqdm  # noqa: PLC0415 (optional dependency)
        except ImportError:
            if not self._tty:
                self._write(f"{desc}: timing {total} configurations\n")
            return
        self._bar = tqdm(total=total, desc=desc, unit="cfg", file=sys.stderr, leave=False, dynamic_ncols=True)

    def _write(self, text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def step(self, text: str) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)
        elif self._tty:
            self._write(f"\r{self._desc}: {self._done}/{self._total} {text}\033[K")

    def grow(self, more: int) -> None:
        """Adds ``more`` configurations to the total."""
        self._total += more
        if self._bar is not None:
            self._bar.total = self._total
            self._bar.refresh()

    def close(self, summary: str) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._tty:
            self._write("\r\033[K")
        if self._enabled:
            self._write(f"{self._desc}: {summary}\n")


def search(problem: Problem, base: AttentionConfig,
           candidates: dict[str, Sequence[KernelConfig]] | None = None, *, kv_splits: Sequence[int] | None = None,
           progress: bool = True,
           repetitions: tuple[int, int] | None = None) -> tuple[AttentionConfig, list[Measurement]]:
    """Coordinate search over the candidates, starting from ``base``.

    The forward candidates are timed by forward time, then the winner with
    each key-split count when its query tiles make fewer than two programs
    per multiprocessor (``_split_candidates``); then, with the forward's
    winner, the dK/dV candidates (dQ at ``base``) and the dQ candidates
    (dK/dV at its winner) by forward + backward time. Each pass's ``base``
    configuration is always a candidate; a candidate that fails (does not
    compile, e.g. too much shared memory) is skipped.

    Args:
      problem: what to time; the arrays are made here (random normal).
      base: the starting configuration, kept for a pass whose candidates
        all fail.
      candidates: per-pass candidates; default
        :func:`chill_jax.configs.autotune_candidates`.
      kv_splits: the forward's key-split counts to try; default
        ``chill_jax.configs.AUTOTUNE_KV_SPLITS``.
      progress: show a progress bar on stderr.
      repetitions: (warm-up calls, timed calls) per candidate; default
        ``REPETITIONS[problem.implementation]``.

    Returns:
      The best configuration and every measurement.
    """
    if candidates is None:
        candidates = autotune_candidates(problem.block_d, problem.itemsize)
    if kv_splits is None:
        kv_splits = AUTOTUNE_KV_SPLITS
    lists = {step: list(dict.fromkeys([getattr(base, step), *candidates[step]])) for step in PASSES}
    warmup, reps = repetitions or REPETITIONS.get(problem.implementation, (1, 3))
    inputs = _random_inputs(problem)
    b, t, n, s, kh, d = problem.dims()
    bar = _Progress(sum(map(len, lists.values())),
                    f"chill_jax autotune {problem.dtype} B{b} T{t} S{s} N{n}/{kh} D{d} {problem.mask!r}", progress)
    measurements: list[Measurement] = []
    timed: dict[AttentionConfig, Measurement] = {}
    best = base
    try:
        for step in PASSES:
            results = []
            for kernel in lists[step]:
                config = dataclasses.replace(best, **{step: kernel})
                if step != "fwd" and config in timed:  # dQ at its base was timed in the dK/dV step
                    m = dataclasses.replace(timed[config], step=step)
                else:
                    m = _measure(problem, config, step, inputs, warmup, reps)
                    if step != "fwd":
                        timed[config] = m
                measurements.append(m)
                results.append(m)
                bar.step(f"{_label(step, kernel)}: " + (f"{m.ms:.3f} ms" if not m.error else "failed"))
            ok = [m for m in results if not m.error]
            if ok:
                best = min(ok, key=lambda m: m.ms).config
            if step == "fwd" and ok:
                split = _split_candidates(problem, best.fwd, kv_splits)
                bar.grow(len(split))
                for kernel in split:
                    m = _measure(problem, dataclasses.replace(best, fwd=kernel), step, inputs, warmup, reps)
                    measurements.append(m)
                    ok.append(m)
                    bar.step(f"{_label(step, kernel)}: " + (f"{m.ms:.3f} ms" if not m.error else "failed"))
                best = min((m for m in ok if not m.error), key=lambda m: m.ms).config
        fwd = min((m.ms for m in measurements if m.step == "fwd" and not m.error), default=math.nan)
        both = min((m.ms for m in measurements if m.step != "fwd" and not m.error), default=math.nan)
        bar.close(", ".join(_label(p, getattr(best, p)) for p in PASSES)
                  + f" (fwd {fwd:.3f} ms, fwd+bwd {both:.3f} ms)")
    except BaseException:
        bar.close("interrupted")
        raise
    return best, measurements


def _measure(problem: Problem, config: AttentionConfig, step: str, inputs: Sequence[jax.Array],
             warmup: int, reps: int) -> Measurement:
    forward, forward_backward = _callables(problem, config)
    try:
        if step == "fwd":
            ms = _time_call(forward, inputs[:3], warmup=warmup, reps=reps)
        else:
            ms = _time_call(forward_backward, inputs, warmup=warmup, reps=reps)
    except Exception as e:  # noqa: BLE001 (a candidate that does not compile or run is skipped)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return Measurement(step, config, math.nan, f"{type(e).__name__}: {first}"[:200])
    return Measurement(step, config, ms)
