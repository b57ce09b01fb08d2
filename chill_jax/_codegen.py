# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Triton source for composed masks (``mask_a & mask_b``, ``mask_a | mask_b``).

A composition's methods are ordinary Triton functions generated from a
template: each splits the combined ``args`` tuple into the two masks' own
tuples, calls their methods (as ``@triton.jit`` globals, so every path that
handles a hand-written mask handles these too: the GPU compiler inlines
them, the interpreter swaps them for interpreted functions, and the XLA shim
converts them), and combines the results.

Triton reads a function's source with ``inspect``, so every generated source
lives in a module object of its own, registered in ``sys.modules`` with a
loader that returns the source and pre-loaded into ``linecache``: ``inspect``
finds it even after ``linecache.clearcache()``. Each module has a unique
name, so Triton's mangled device-function names never collide.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import linecache
import os
import sys
import threading
import types
from typing import Callable

import triton.language as tl

from chill_jax.kernels import MAX_MASK_ARGS

_SERIAL = itertools.count(1)
_LOCK = threading.Lock()
_GENERATED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_generated")


@dataclasses.dataclass(frozen=True)
class Side:
    """One operand of a composition, as its generated methods see it.

    Attributes:
      mask_fn, k_range_fn, q_range_fn: the operand's Triton methods (plain
        functions).
      mask_takes_len: whether ``mask_fn`` takes ``seq_len``.
      full_fn: its ``is_full_block`` to combine, or None.
      k_continuous, q_continuous: its continuity declarations.
      num_args: number of its constants.
      num_arrays: number of its arrays.
    """

    mask_fn: Callable
    mask_takes_len: bool
    k_range_fn: Callable
    q_range_fn: Callable
    full_fn: Callable | None
    k_continuous: bool
    q_continuous: bool
    num_args: int
    num_arrays: int


@dataclasses.dataclass(frozen=True)
class Composed:
    """Generated methods of one composition (plain functions; None: absent)."""

    mask_fn: Callable
    k_range_fn: Callable
    q_range_fn: Callable
    full_fn: Callable | None


class _SourceLoader:
    """``__loader__`` of a generated module: lets linecache reload its source."""

    def __init__(self, source: str):
        self._source = source

    def get_source(self, name: str) -> str:
        return self._source


def _load_module(tag: str, source: str, scope: dict) -> types.ModuleType:
    """Executes ``source`` as a fresh module whose source ``inspect`` can read."""
    with _LOCK:
        serial = next(_SERIAL)
    name = f"chill_jax._generated.{tag}_{serial}"
    filename = os.path.join(_GENERATED_DIR, f"{tag}_{serial}.py")  # never written: served by the loader
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__loader__ = _SourceLoader(source)
    module.__dict__.update(scope)
    sys.modules[name] = module
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 (our own template)
    return module


def _tuple(indices: list[int]) -> str:
    if not indices:
        return "()"
    return "(" + ", ".join(f"args[{i}]" for i in indices) + ",)"


def _split(a: Side, b: Side) -> tuple[str, str]:
    """Source of the two operands' args tuples: ``(*constants, *arrays)`` each.

    The combined tuple is ``(*a_constants, *b_constants, *a_arrays, *b_arrays)``.
    """
    n_args = a.num_args + b.num_args
    a_idx = list(range(a.num_args)) + list(range(n_args, n_args + a.num_arrays))
    b_idx = (list(range(a.num_args, n_args))
             + list(range(n_args + a.num_arrays, n_args + a.num_arrays + b.num_arrays)))
    return (f"    a_args = {_tuple(a_idx)}\n    b_args = {_tuple(b_idx)}\n")


def _range_body(op: str, continuous: bool) -> str:
    if op == "&":
        return "    return max(a_lo, b_lo), min(a_hi, b_hi)\n"
    if continuous:
        # The hull of two non-decreasing ranges is non-decreasing.
        return "    return min(a_lo, b_lo), max(a_hi, b_hi)\n"
    # Not continuous anyway: ignore an empty side, so the hull stays tight.
    return ("    a_lo = max(a_lo, 0)\n"
            "    a_hi = min(a_hi, seq_len - 1)\n"
            "    b_lo = max(b_lo, 0)\n"
            "    b_hi = min(b_hi, seq_len - 1)\n"
            "    a_none = a_hi < a_lo\n"
            "    b_none = b_hi < b_lo\n"
            "    lo = min(tl.where(a_none, seq_len, a_lo), tl.where(b_none, seq_len, b_lo))\n"
            "    hi = max(tl.where(a_none, -1, a_hi), tl.where(b_none, -1, b_hi))\n"
            "    return lo, hi\n")


@functools.lru_cache(maxsize=None)
def compose(op: str, a: Side, b: Side) -> Composed:
    """The Triton methods of ``a op b`` (cached: equal inputs share functions).

    Args:
      op: ``"&"`` (both allow: ranges intersect, full only where both are
        full) or ``"|"`` (either allows: ranges are the covering hull, full
        where either is).
      a, b: the operands. For ``"&"`` pass ``full_fn`` on both or neither.

    Returns:
      The generated ``mask(q, k, seq_len, args)``, ``k_range_for_q``,
      ``q_range_for_k`` and ``is_full_block`` (None when neither side has
      one to combine).
    """
    if op not in ("&", "|"):
        raise ValueError(f"op must be '&' or '|', got {op!r}")
    if a.num_args + b.num_args > MAX_MASK_ARGS:
        raise ValueError(f"a composition has at most {MAX_MASK_ARGS} constants")
    tag = "and" if op == "&" else "or"
    split = _split(a, b)

    def call_mask(fn: str, side: Side, args: str) -> str:
        return f"{fn}(q, k, seq_len, {args})" if side.mask_takes_len else f"{fn}(q, k, {args})"

    src = [f"# chill_jax: generated methods of a composed mask (A {op} B).\n\n"]
    src.append(
        f"def {tag}_mask(q, k, seq_len, args):\n{split}"
        f"    allowed_a = {call_mask('A_MASK', a, 'a_args')}\n"
        f"    allowed_b = {call_mask('B_MASK', b, 'b_args')}\n"
        f"    return allowed_a.to(tl.int1) {op} allowed_b.to(tl.int1)\n\n\n")
    for method, key, cont in (("k_range_for_q", "K", a.k_continuous and b.k_continuous),
                              ("q_range_for_k", "Q", a.q_continuous and b.q_continuous)):
        src.append(
            f"def {tag}_{method}(pos, seq_len, args):\n{split}"
            f"    a_lo, a_hi = A_{key}(pos, seq_len, a_args)\n"
            f"    b_lo, b_hi = B_{key}(pos, seq_len, b_args)\n"
            f"{_range_body(op, cont)}\n\n")
    full_terms = []
    if a.full_fn is not None:
        full_terms.append("A_FULL(q, k, q_tile, k_tile, seq_len, a_args)")
    if b.full_fn is not None:
        full_terms.append("B_FULL(q, k, q_tile, k_tile, seq_len, b_args)")
    if op == "&" and len(full_terms) == 1:
        raise ValueError("an '&' composition combines is_full_block of both sides or of neither")
    if full_terms:
        src.append(f"def {tag}_is_full_block(q, k, q_tile, k_tile, seq_len, args):\n{split}"
                   f"    return {f' {op} '.join(full_terms)}\n")
    from chill_jax.masks import compiled  # noqa: PLC0415 (masks imports this module)

    scope = dict(tl=tl, A_MASK=compiled(a.mask_fn), B_MASK=compiled(b.mask_fn),
                 A_K=compiled(a.k_range_fn), B_K=compiled(b.k_range_fn),
                 A_Q=compiled(a.q_range_fn), B_Q=compiled(b.q_range_fn))
    if a.full_fn is not None:
        scope["A_FULL"] = compiled(a.full_fn)
    if b.full_fn is not None:
        scope["B_FULL"] = compiled(b.full_fn)
    module = _load_module(tag, "".join(src), scope)
    ns = vars(module)
    return Composed(mask_fn=ns[f"{tag}_mask"], k_range_fn=ns[f"{tag}_k_range_for_q"],
                    q_range_fn=ns[f"{tag}_q_range_for_k"], full_fn=ns.get(f"{tag}_is_full_block"))
