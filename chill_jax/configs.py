# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Kernel launch configurations (tile sizes, warps, pipeline stages).

The GPU defaults are data: ``chill_jax/tuned/<generation>.json`` holds the
tuned configurations of one GPU generation (``hopper.json`` for sm_90) and
``default.json`` the fallback for every other GPU and for the entries a
generation's table lacks. Each entry is keyed by the padded head dim
(``block_d``), a dtype class (``"bf16/fp16"`` or ``"fp32"``) and a mask class
name (``"*"`` matches every mask), and gives the three passes' tiling::

    {"schema": 1, "description": "...", "entries": [
      {"block_d": 64, "dtype": "bf16/fp16", "mask": "*",
       "fwd": {"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 3},
       "bwd_dkdv": {...}, "bwd_dq": {...}}]}

A pass may add ``"warp_specialize"``, ``"kv_splits"``, ``"gluon"`` and a
``"fallback"`` object (the Triton kernels' tiling of the calls the Gluon
kernel does not take; see :class:`KernelConfig`).

Tables are validated when first loaded; ``default.json`` must have a ``"*"``
entry for every head dim and dtype class.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import re
import types
from typing import Any, Iterable, Mapping

SCHEMA_VERSION = 1
PASSES = ("fwd", "bwd_dkdv", "bwd_dq")
DTYPE_CLASSES = ("bf16/fp16", "fp32")
BLOCK_DS = (16, 32, 64, 128, 256)
WILDCARD = "*"
FALLBACK_TABLE = "default"
_KERNEL_FIELDS = ("block_m", "block_n", "num_warps", "num_stages")
_OPTIONAL_KERNEL_FIELDS = ("warp_specialize", "kv_splits", "gluon", "fallback")
# (block_m, block_n) of the Gluon kernels: the forward's (two or three
# compute warp groups of 64 queries), the backward's one.
_GLUON_TILES = ((128, 64), (128, 128), (192, 64), (192, 128), (64, 128))
_ENTRY_FIELDS = ("block_d", "dtype", "mask", *PASSES)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tiling of one kernel launch.

    Attributes:
      block_m: query tile size (a power of two, >= 16).
      block_n: key tile size (a power of two, >= 16).
      num_warps: warps per program (GPU only).
      num_stages: software-pipelining depth (GPU only).
      warp_specialize: forward and dK/dV (ignored for dQ): run
        ``attn_fwd_ws`` / ``attn_bwd_dkdv_ws``, which read their tiles
        through tensor descriptors (TMA) in one warp-specialized loop,
        where Triton adds producer warps to the ``num_warps`` that compute.
        Needs ``num_stages == 2`` (Triton 3.6's warp-specialized Hopper
        builds gave NaNs at 3 stages, measured on an H200). Taken
        when the call allows it: 16-bit inputs, no key lengths, a mask
        without arrays, a power-of-two head dim, whole key tiles, and on
        CUDA GPUs of compute capability 9.0 or newer a binding that can
        launch such kernels (``_launch.can_warp_specialize``). Otherwise the
        forward runs ``attn_fwd`` with at most 64 keys per tile. dK/dV also
        needs no query lengths, whole query tiles of at most 64 queries
        (Triton 3.6 fails to build 128) and no ``prescale_qk``; otherwise
        it runs ``attn_bwd_dkdv`` with at most 32x64 tiles and 3 stages.
        The interpreter runs both kernels too (without warp
        specialization), so the CPU tests check them.
      kv_splits: forward and dQ (ignored for dK/dV): split each query
        tile's key tiles into this many parts run by separate programs,
        whose partial results a second launch merges (the forward) or a
        sum adds up (dQ, float32). 0 (the default) decides per call: splits
        only when the query tiles are too few to fill the GPU
        (``attention.kv_splits``); 1 never splits. ``autotune=True`` times
        explicit forward counts for such calls (``AUTOTUNE_KV_SPLITS``).
      gluon: forward and dK/dV (not dQ): run the Hopper kernels whose warp
        specialization is written out by hand (Gluon): ``attn_fwd_gluon``
        (persistent, one program per SM; two or three compute warp groups
        of 64 queries each and a TMA loader warp, ``kernels/forward_gluon.py``;
        needs ``block_m`` 128 or 192 and ``block_n`` 64 or 128; 192, not a
        power of two, also needs a ``fallback``) or ``attn_bwd_gluon`` (one pass computing dK,
        dV and dQ, two compute warp groups of 64 keys each and a loader warp,
        ``kernels/backward_gluon.py``; needs ``block_m == 64`` and ``block_n
        == 128``; it replaces the dQ launch, so ``bwd_dq`` is then unused,
        and its dQ is summed in float32 by TMA reductions in whatever
        order they land, so dQ is not bitwise deterministic; dK and dV
        are). Both need ``num_warps == 4``. Taken when the call
        allows it: a GPU of compute capability 9.x, a built-in mask without
        arrays (``FullChillMask``, ``CausalChillMask``,
        ``SlidingWindowChillMask``, ``ChunkwiseChillMask``,
        ``PrefixLMChillMask``; not subclasses), 16-bit inputs, head dim 64 or 128, no query or
        key lengths, sequence lengths that are multiples of the tiles, no
        ``prescale_qk``, no key split (forward), and the tiles within
        shared memory. Otherwise the pass runs as ``fallback`` says, or
        without one as the other fields say (``warp_specialize`` included).
      fallback: the configuration the Triton kernels run at instead of
        this one: the calls the Gluon kernel does not take (query or key
        lengths, partial tiles, ``prescale_qk``, ...), whose best tile is
        seldom the Gluon kernel's, or every call when ``gluon`` is False (so
        ``dataclasses.replace(config, gluon=False)`` on a tuned Gluon entry
        runs the entry's Triton tile). None (the default): this
        configuration's own fields. It must not set ``gluon`` or a fallback
        of its own.
    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    warp_specialize: bool = False
    kv_splits: int = 0
    gluon: bool = False
    fallback: KernelConfig | None = None

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if name == "block_m" and value == 192 and self.gluon is True:
                continue
            if not isinstance(value, int) or value < 16 or value & (value - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two >= 16 (or 192 for the Gluon forward), "
                                 f"got {value!r}")
        if not isinstance(self.num_warps, int) or self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"KernelConfig.num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"KernelConfig.num_stages must be a positive int, got {self.num_stages!r}")
        if not isinstance(self.warp_specialize, bool):
            raise ValueError(f"KernelConfig.warp_specialize must be a bool, got {self.warp_specialize!r}")
        if isinstance(self.kv_splits, bool) or not isinstance(self.kv_splits, int) or not 0 <= self.kv_splits <= 64:
            raise ValueError(f"KernelConfig.kv_splits must be an int from 0 (automatic) to 64, got {self.kv_splits!r}")
        if not isinstance(self.gluon, bool):
            raise ValueError(f"KernelConfig.gluon must be a bool, got {self.gluon!r}")
        if self.gluon and ((self.block_m, self.block_n) not in _GLUON_TILES or self.num_warps != 4):
            raise ValueError("KernelConfig.gluon needs num_warps == 4 and block_m x block_n 128x64, 128x128, "
                             "192x64 or 192x128 (forward: two or three compute warp groups of 64 queries) or "
                             f"64x128 (dK/dV: two of 64 keys), got {self.block_m}x{self.block_n} with "
                             f"{self.num_warps} warps")
        if self.block_m == 192 and self.fallback is None:
            raise ValueError("KernelConfig with block_m 192 (the three-group Gluon forward) needs a fallback: the "
                             "Triton kernels run power-of-two tiles for the calls the Gluon kernel does not take")
        if self.warp_specialize and self.num_stages != 2:
            raise ValueError("KernelConfig.warp_specialize needs num_stages == 2 (Triton 3.6's warp-specialized "
                             f"Hopper builds gave NaNs at 3 stages), got num_stages={self.num_stages}")
        if self.fallback is not None:
            if not isinstance(self.fallback, KernelConfig):
                raise TypeError(f"KernelConfig.fallback must be a KernelConfig or None, got "
                                f"{type(self.fallback).__name__}")
            if self.fallback.gluon or self.fallback.fallback is not None:
                raise ValueError("KernelConfig.fallback must not set gluon or a fallback of its own (it configures "
                                 "the Triton kernels)")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as the JSON object of the tuned tables
        (``warp_specialize``, ``kv_splits``, ``gluon`` and ``fallback`` only
        when set)."""
        data: dict[str, Any] = {name: getattr(self, name) for name in _KERNEL_FIELDS}
        if self.warp_specialize:
            data["warp_specialize"] = True
        if self.kv_splits:
            data["kv_splits"] = self.kv_splits
        if self.gluon:
            data["gluon"] = True
        if self.fallback is not None:
            data["fallback"] = self.fallback.to_dict()
        return data


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Configurations of the three passes: forward, dK/dV and dQ."""

    fwd: KernelConfig = KernelConfig()
    bwd_dkdv: KernelConfig = KernelConfig()
    bwd_dq: KernelConfig = KernelConfig()

    def __post_init__(self):
        if self.fwd.gluon and self.fwd.block_m not in (128, 192):
            raise ValueError(f"AttentionConfig.fwd: gluon needs block_m 128 or 192 (the Gluon forward's tiles are "
                             f"128 or 192 by 64 or 128), got {self.fwd.block_m}x{self.fwd.block_n}")
        if self.bwd_dkdv.gluon and (self.bwd_dkdv.block_m, self.bwd_dkdv.block_n) != (64, 128):
            raise ValueError("AttentionConfig.bwd_dkdv: gluon needs block_m == 64 and block_n == 128 (the Gluon "
                             f"backward's tile), got {self.bwd_dkdv.block_m}x{self.bwd_dkdv.block_n}")
        if self.bwd_dq.gluon:
            raise ValueError("AttentionConfig.bwd_dq: there is no Gluon dQ kernel; set gluon on bwd_dkdv, whose "
                             "Gluon kernel computes dQ too")

    def to_dict(self) -> dict[str, dict[str, int]]:
        """``{"fwd": {...}, "bwd_dkdv": {...}, "bwd_dq": {...}}``."""
        return {name: getattr(self, name).to_dict() for name in PASSES}


# The interpreter costs a few milliseconds per (program x tile) step whatever
# the tile size, so wide tiles are fastest there.
INTERPRET_CONFIG = AttentionConfig(
    fwd=KernelConfig(64, 64, 4, 1),
    bwd_dkdv=KernelConfig(64, 64, 4, 1),
    bwd_dq=KernelConfig(64, 64, 4, 1),
)


def kernel_config_from_dict(data: Any, where: str) -> KernelConfig:
    """Parses ``{"block_m", "block_n", "num_warps", "num_stages"}`` and the
    optional fields (``"fallback"`` a nested object of the same form).

    Args:
      data: the decoded JSON value.
      where: location used in error messages, e.g. ``"hopper.json: entries[2].fwd"``.

    Raises:
      ValueError: a missing, unknown or invalid field, naming ``where``.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object with keys {list(_KERNEL_FIELDS)}, "
                         f"got {type(data).__name__}")
    missing = [k for k in _KERNEL_FIELDS if k not in data]
    unknown = sorted(set(data) - set(_KERNEL_FIELDS) - set(_OPTIONAL_KERNEL_FIELDS))
    if missing or unknown:
        raise ValueError(f"{where}: expected keys {list(_KERNEL_FIELDS)} (optional "
                         f"{list(_OPTIONAL_KERNEL_FIELDS)}), missing {missing}, unknown {unknown}")
    for name in _KERNEL_FIELDS:
        if isinstance(data[name], bool) or not isinstance(data[name], int):
            raise ValueError(f"{where}.{name}: expected an int, got {data[name]!r}")
    if "warp_specialize" in data and not isinstance(data["warp_specialize"], bool):
        raise ValueError(f"{where}.warp_specialize: expected true or false, got {data['warp_specialize']!r}")
    if "gluon" in data and not isinstance(data["gluon"], bool):
        raise ValueError(f"{where}.gluon: expected true or false, got {data['gluon']!r}")
    if "kv_splits" in data and (isinstance(data["kv_splits"], bool) or not isinstance(data["kv_splits"], int)):
        raise ValueError(f"{where}.kv_splits: expected an int, got {data['kv_splits']!r}")
    fields = {name: data[name] for name in (*_KERNEL_FIELDS, *_OPTIONAL_KERNEL_FIELDS) if name in data}
    if "fallback" in data:
        fields["fallback"] = kernel_config_from_dict(data["fallback"], f"{where}.fallback")
    try:
        return KernelConfig(**fields)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def attention_config_from_dict(data: Any, where: str) -> AttentionConfig:
    """Parses an object holding ``"fwd"``, ``"bwd_dkdv"`` and ``"bwd_dq"``
    kernel configurations (other keys are the caller's to check).

    Raises:
      ValueError: a missing or invalid pass, naming ``where``.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    missing = [p for p in PASSES if p not in data]
    if missing:
        raise ValueError(f"{where}: missing pass(es) {missing}; expected {list(PASSES)}")
    passes = {p: kernel_config_from_dict(data[p], f"{where}.{p}") for p in PASSES}
    try:
        return AttentionConfig(**passes)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


@dataclasses.dataclass(frozen=True)
class TunedEntry:
    """One row of a tuned table: the configuration for a (head dim, dtype, mask).

    Attributes:
      block_d: padded head dim, one of ``BLOCK_DS``.
      dtype: ``"bf16/fp16"`` or ``"fp32"``.
      mask: a mask class name, or ``"*"`` for every mask.
      config: the three passes' configurations.
    """

    block_d: int
    dtype: str
    mask: str
    config: AttentionConfig

    @property
    def key(self) -> tuple[int, str, str]:
        """``(block_d, dtype, mask)``."""
        return self.block_d, self.dtype, self.mask


def parse_table(data: Any, source: str) -> Mapping[tuple[int, str, str], AttentionConfig]:
    """Validates a decoded tuned table.

    Args:
      data: the decoded JSON document.
      source: its name, for error messages.

    Returns:
      A read-only mapping ``(block_d, dtype, mask) -> AttentionConfig``.

    Raises:
      ValueError: the document does not follow the schema (the message names
        the entry and field).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"schema", "description", "entries"})
    if unknown:
        raise ValueError(f"{source}: unknown top-level key(s) {unknown}; expected schema, description, entries")
    if data.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{source}: schema must be {SCHEMA_VERSION}, got {data.get('schema')!r}")
    if not isinstance(data.get("description", ""), str):
        raise ValueError(f"{source}: description must be a string")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise ValueError(f"{source}: entries must be a list, got {type(entries).__name__}")
    table: dict[tuple[int, str, str], AttentionConfig] = {}
    for i, entry in enumerate(entries):
        where = f"{source}: entries[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(_ENTRY_FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; expected {list(_ENTRY_FIELDS)}")
        block_d = entry.get("block_d")
        if isinstance(block_d, bool) or block_d not in BLOCK_DS:
            raise ValueError(f"{where}.block_d: expected one of {BLOCK_DS}, got {block_d!r}")
        dtype = entry.get("dtype")
        if dtype not in DTYPE_CLASSES:
            raise ValueError(f"{where}.dtype: expected one of {DTYPE_CLASSES}, got {dtype!r}")
        mask = entry.get("mask")
        if not isinstance(mask, str) or not (mask == WILDCARD or mask.isidentifier()):
            raise ValueError(f"{where}.mask: expected a mask class name or {WILDCARD!r}, got {mask!r}")
        key = (block_d, dtype, mask)
        if key in table:
            raise ValueError(f"{where}: duplicate entry for block_d={block_d}, dtype={dtype!r}, mask={mask!r}")
        table[key] = attention_config_from_dict(entry, where)
    return types.MappingProxyType(table)


def table_names() -> tuple[str, ...]:
    """Names of the tuned tables shipped with the package (file stems)."""
    root = importlib.resources.files("chill_jax") / "tuned"
    return tuple(sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json")))


@functools.lru_cache(maxsize=None)
def load_table(name: str) -> Mapping[tuple[int, str, str], AttentionConfig]:
    """Loads and validates ``chill_jax/tuned/<name>.json`` (cached).

    Raises:
      ValueError: no such table, or it does not follow the schema; the
        fallback table also lacks a ``"*"`` entry for some head dim and
        dtype class.
    """
    if name not in table_names():
        raise ValueError(f"no tuned table named {name!r}; shipped tables: {list(table_names())}")
    source = f"chill_jax/tuned/{name}.json"
    text = (importlib.resources.files("chill_jax") / "tuned" / f"{name}.json").read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not valid JSON: {e}") from None
    table = parse_table(data, source)
    if name == FALLBACK_TABLE:
        missing = [(d, t) for d in BLOCK_DS for t in DTYPE_CLASSES if (d, t, WILDCARD) not in table]
        if missing:
            raise ValueError(f"{source}: the fallback table needs a mask '*' entry for every (block_d, dtype); "
                             f"missing {missing}")
    return table


def dump_table(entries: Iterable[TunedEntry], description: str = "") -> str:
    """Serialises entries in the tuned-table schema, one entry per few lines.

    Entries are sorted by dtype class, head dim and mask (``"*"`` first).
    The result passes :func:`parse_table`.
    """
    order = {d: i for i, d in enumerate(DTYPE_CLASSES)}
    rows = []
    for e in sorted(entries, key=lambda e: (order[e.dtype], e.block_d, e.mask != WILDCARD, e.mask)):
        passes = ",\n".join(f'     "{p}": {json.dumps(getattr(e.config, p).to_dict())}' for p in PASSES)
        rows.append(f'    {{"block_d": {e.block_d}, "dtype": {json.dumps(e.dtype)}, "mask": {json.dumps(e.mask)},\n'
                    f"{passes}}}")
    text = (f'{{\n  "schema": {SCHEMA_VERSION},\n  "description": {json.dumps(description)},\n'
            f'  "entries": [\n' + ",\n".join(rows) + "\n  ]\n}\n")
    parse_table(json.loads(text), "dump_table output")
    return text


def table_entries(table: Mapping[tuple[int, str, str], AttentionConfig]) -> list[TunedEntry]:
    """The rows of a loaded table, for editing and :func:`dump_table`."""
    return [TunedEntry(d, t, m, cfg) for (d, t, m), cfg in table.items()]


# GPU generation by CUDA compute capability major version; 8.9 is Ada.
_GENERATION_BY_MAJOR = {7: "volta", 8: "ampere", 9: "hopper", 10: "blackwell", 12: "blackwell"}
# Used when a device reports no compute capability; first match wins.
_GENERATION_BY_NAME = (
    (re.compile(r"\b(GH200|H100|H200|H800|H20)\b", re.I), "hopper"),
    (re.compile(r"\b(GB200|GB300|B100|B200|B300)\b", re.I), "blackwell"),
    (re.compile(r"\b(A100|A800|A10G?|A30|A40)\b", re.I), "ampere"),
    (re.compile(r"\b(L4|L40S?)\b", re.I), "ada"),
)


def gpu_generation(device: Any = None) -> str:
    """The GPU generation of a JAX device, naming its tuned table.

    Reads the device's CUDA compute capability (``"9.0"`` is ``"hopper"``)
    or, when it has none, its ``device_kind`` (``"NVIDIA H100 80GB HBM3"``).

    Args:
      device: a ``jax.Device``; None means ``jax.devices()[0]``.

    Returns:
      ``"hopper"``, ``"ampere"``, ... or ``"default"`` for a non-GPU device or
      a GPU this table does not know (never raises).
    """
    if device is None:
        return _detected_generation()
    try:
        if getattr(device, "platform", None) != "gpu":
            return FALLBACK_TABLE
        capability = getattr(device, "compute_capability", None)
        if capability:
            major, _, minor = str(capability).partition(".")
            if major.isdigit():
                if (int(major), minor) == (8, "9"):
                    return "ada"
                return _GENERATION_BY_MAJOR.get(int(major), FALLBACK_TABLE)
        kind = str(getattr(device, "device_kind", "") or "")
        for pattern, generation in _GENERATION_BY_NAME:
            if pattern.search(kind):
                return generation
    except Exception:  # noqa: BLE001 (a device that cannot describe itself gets the fallback)
        return FALLBACK_TABLE
    return FALLBACK_TABLE


@functools.lru_cache(maxsize=None)
def _detected_generation() -> str:
    import jax  # noqa: PLC0415 (keeps this module importable without initialising JAX)

    try:
        device = jax.devices()[0]
    except Exception:  # noqa: BLE001 (no usable backend: fallback table)
        return FALLBACK_TABLE
    return gpu_generation(device)


def dtype_class(itemsize: int) -> str:
    """``"bf16/fp16"`` for 2-byte dtypes, ``"fp32"`` for 4-byte ones."""
    return "bf16/fp16" if itemsize <= 2 else "fp32"


def mask_name(mask: Any) -> str:
    """The table key of a mask: its class name (``"*"`` for None)."""
    if mask is None:
        return WILDCARD
    return mask if isinstance(mask, str) else type(mask).__name__


def default_config(implementation: str, block_d: int, itemsize: int, mask: Any = None, *,
                   generation: str | None = None) -> AttentionConfig:
    """The default configuration for an implementation, head dim, dtype and mask.

    Args:
      implementation: ``"interpret"`` gets :data:`INTERPRET_CONFIG`; anything
        else the GPU tables.
      block_d: padded head dim, one of ``BLOCK_DS``.
      itemsize: bytes per input element (2 or 4).
      mask: a mask instance, a mask class name, or None (only ``"*"``
        entries match).
      generation: tuned table to look in first; None detects it from
        ``jax.devices()[0]`` (see :func:`gpu_generation`).

    Returns:
      The first match of: the generation's table for the mask's class name,
      then its ``"*"`` entry, then the same two in ``default.json``.

    Raises:
      ValueError: ``block_d`` is not one of ``BLOCK_DS``.
    """
    if implementation == "interpret":
        return INTERPRET_CONFIG
    if isinstance(block_d, bool) or block_d not in BLOCK_DS:
        raise ValueError(f"block_d must be one of {BLOCK_DS} (the padded head dim), got {block_d!r}")
    generation = gpu_generation() if generation is None else generation
    tables = [load_table(generation)] if generation != FALLBACK_TABLE and generation in table_names() else []
    tables.append(load_table(FALLBACK_TABLE))
    dtype, name = dtype_class(itemsize), mask_name(mask)
    for table in tables:
        for wanted in (name, WILDCARD):
            found = table.get((block_d, dtype, wanted))
            if found is not None:
                return found
    raise AssertionError("unreachable: the fallback table covers every (block_d, dtype)")


def _kernel_configs(*rows: tuple) -> tuple[KernelConfig, ...]:
    return tuple(KernelConfig(*row) for row in rows)


_SMALL_D = dict(
    fwd=_kernel_configs((128, 64, 4, 3), (128, 128, 4, 3), (128, 128, 8, 3), (128, 32, 4, 4), (64, 64, 4, 3),
                        (128, 128, 4, 2), (64, 128, 4, 3)),
    bwd_dkdv=_kernel_configs((64, 128, 8, 2), (32, 128, 4, 2), (32, 128, 8, 2), (64, 64, 4, 2), (64, 64, 8, 2),
                             (32, 64, 4, 2), (64, 64, 4, 3), (32, 64, 4, 3), (32, 64, 4, 4)),
    bwd_dq=_kernel_configs((128, 64, 8, 2), (128, 32, 4, 2), (128, 128, 8, 2), (64, 64, 4, 2), (64, 128, 8, 2),
                           (64, 32, 4, 2), (64, 64, 4, 3), (64, 32, 4, 3), (64, 64, 4, 4)),
)
# Autotuning candidates by padded head dim, for 16-bit inputs; float32 inputs
# use the next larger head dim's list (twice the bytes per element). dK/dV
# holds two float32 accumulators of its key tile: the tiles whose sm_90
# build spills hundreds of bytes (128 key rows, or 4 warps with wide tiles
# at D=128) were the slowest of every H200 sweep and are left out; the
# 8-warp tiles that replaced them do not spill but lost to the 4-warp
# winners too (benchmarks/NOTES.md, "dK/dV without spills, measured"). The
# D=128 forward's 128x64/4-warp/2-stage tile stopped spilling with the
# branch-free kernels (NOTES, v7) and won the H200 sweeps since. The 3- and
# 4-stage backward tiles (deeper pipelines of the streamed tiles) build
# without spills on sm_90 and leave room for two programs per SM (at most
# 99 KB of shared memory at D=128); the D=128 dQ tile 128x64/8w/3s
# (FlexAttention's, 160 KB, one program per SM) won at full and causal.
# The warp-specialized D=128 forward (128x128/4w/2s; Triton builds it with 12
# warps) ran the S2 forward in 4.03 ms against 4.61 for full attention and
# 2.40 against 2.48 for causal (H200, NOTES, sixth session); where a call
# cannot take it, it runs attn_fwd with 64 keys. The Gluon forward
# (KernelConfig.gluon) ran them in 3.86 and 2.04 ms against 4.21 and 2.40
# for attn_fwd_ws (ninth session, same process); made persistent (one
# program per SM, eleventh session) it runs the D=128 sliding-window and
# chunkwise forwards too. At D=64 its three-group tile (192 queries) ran
# the S1 forward in 1.18 ms full and 0.71 causal against 1.35 and 0.79 for
# the Triton tiles, the 128-query tile prefix-LM in 0.73 against 0.79
# (fifteenth session), and its 192x64 tile the sliding window in 0.26
# against 0.28 (sixteenth); all three are candidates there. The Gluon
# one-pass backward (bwd_dkdv gluon) ran the S2 f+b in 15.81 and 8.63 ms
# against 17.82 and 9.55 (full, causal; tenth session); at D=64 it won at full
# (S1 5.43 against 5.60 ms) and lost at causal (3.19 against 3.06), so there
# it is a candidate.
AUTOTUNE_CANDIDATES: dict[int, dict[str, tuple[KernelConfig, ...]]] = {
    16: _SMALL_D,
    32: _SMALL_D,
    64: dict(_SMALL_D, fwd=_SMALL_D["fwd"] + _kernel_configs((128, 128, 4, 2, False, 0, True),
                                                            (128, 128, 4, 3, False, 0, True))
             + (KernelConfig(192, 128, 4, 2, gluon=True, fallback=KernelConfig(128, 128, 4, 3)),
                KernelConfig(192, 64, 4, 3, gluon=True, fallback=KernelConfig(64, 64, 4, 3))),
             bwd_dkdv=_SMALL_D["bwd_dkdv"] + _kernel_configs((64, 128, 4, 2, False, 0, True),
                                                             (64, 128, 4, 3, False, 0, True))),
    128: dict(
        fwd=_kernel_configs((128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3),
                            (64, 128, 4, 2), (128, 64, 8, 2), (128, 64, 4, 2), (128, 128, 4, 2, True),
                            (128, 128, 4, 2, True, 0, True), (128, 64, 4, 3, False, 0, True)),
        bwd_dkdv=_kernel_configs((64, 64, 4, 2), (64, 128, 8, 2), (32, 128, 8, 2), (64, 64, 8, 2), (32, 64, 4, 2),
                                 (64, 32, 4, 2), (32, 64, 8, 2), (32, 64, 4, 3), (32, 64, 4, 4), (32, 128, 8, 3),
                                 (64, 128, 4, 2, True), (64, 128, 4, 2, True, 0, True)),
        bwd_dq=_kernel_configs((64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 4, 2), (64, 128, 8, 2), (64, 32, 4, 2),
                               (32, 64, 4, 2), (128, 128, 8, 1), (64, 32, 4, 3), (64, 32, 4, 4), (128, 64, 8, 3)),
    ),
    256: dict(
        fwd=_kernel_configs((64, 32, 4, 2), (64, 64, 4, 2), (64, 64, 8, 2), (128, 32, 8, 2), (32, 64, 4, 2),
                            (128, 64, 8, 1)),
        bwd_dkdv=_kernel_configs((32, 32, 4, 1), (32, 32, 8, 2), (64, 32, 4, 2), (64, 64, 8, 1), (32, 32, 4, 2),
                                 (32, 64, 8, 2)),
        bwd_dq=_kernel_configs((32, 32, 4, 1), (64, 32, 4, 2), (32, 64, 4, 2), (64, 64, 8, 1), (32, 32, 4, 2),
                               (64, 16, 4, 2)),
    ),
}


# Key-split counts (KernelConfig.kv_splits) that autotune=True times for the
# forward when its winning tile leaves fewer than two waves of programs: the
# automatic count misses some of those (decoding with GQA ran 36% faster at
# 4 splits than unsplit, where the automatic count does not split; H200,
# benchmarks/NOTES.md, eighth session).
AUTOTUNE_KV_SPLITS = (1, 2, 4, 8, 16)


def autotune_candidates(block_d: int, itemsize: int) -> dict[str, tuple[KernelConfig, ...]]:
    """The configurations ``autotune=True`` times, per pass.

    Args:
      block_d: padded head dim, one of ``BLOCK_DS``.
      itemsize: bytes per input element.

    Returns:
      ``{"fwd": (...), "bwd_dkdv": (...), "bwd_dq": (...)}``.
    """
    key = block_d if itemsize <= 2 else min(256, block_d * 2)
    return AUTOTUNE_CANDIDATES[max(16, key)]


def all_tile_sizes() -> tuple[tuple[int, int], ...]:
    """Every (query tile, key tile) pair a default configuration or an
    autotuning candidate uses."""
    configs = [INTERPRET_CONFIG]
    for name in table_names():
        configs.extend(load_table(name).values())
    pairs = set()
    for cfg in configs:
        for k in (cfg.fwd, cfg.bwd_dkdv, cfg.bwd_dq):
            pairs.add((k.block_m, k.block_n))
    for per_pass in AUTOTUNE_CANDIDATES.values():
        for candidates in per_pass.values():
            pairs.update((k.block_m, k.block_n) for k in candidates)
    return tuple(sorted(pairs))
