# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Attention masks written as Triton methods, and the built-in masks.

A mask is a :class:`ChillMask` subclass with static Triton methods that the
kernels inline:

* ``mask(q, k, seq_len, args)`` (or ``mask(q, k, args)``): bool
  ``[len(q), len(k)]``, whether query position ``q[i]`` may attend to key
  position ``k[j]``.
* ``k_range_for_q(q, seq_len, args)``: inclusive ``(lo, hi)`` covering every
  key the scalar query position ``q`` may attend to.
* ``q_range_for_k(k, seq_len, args)``: inclusive ``(lo, hi)`` covering every
  query that may attend to the scalar key position ``k``.

Optional: ``k_lims_continuous()`` / ``q_lims_continuous()`` (plain Python,
default True) declare that both ends of ``k_range_for_q`` / ``q_range_for_k``
never decrease as the position grows, so a tile's hull is the first
position's ``lo`` and the last position's ``hi``; return False and the kernels
ask every position of a tile. ``has_full_blocks(q_tile, k_tile, seq_len,
args)`` (plain Python, called before launch) and ``is_full_block(q, k,
q_tile, k_tile, seq_len, args)`` (Triton, ``q``/``k`` are a tile's first
positions) let the kernels skip the mask on tiles where every entry is
allowed.

``seq_len``: ``mask`` and ``k_range_for_q`` receive the key length,
``q_range_for_k`` the query length, each the example's length when lengths
are given. ``args`` is the tuple of constants given to the constructor.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from typing import Any, Callable

import numpy as np
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from chill_jax.kernels import ARRAY_PACKERS, MAX_MASK_ARGS, MAX_MASK_ARRAYS, PACKERS
from chill_jax.kernels import mask_eval

_REQUIRED = ("mask", "k_range_for_q", "q_range_for_k")


def _plain(fn: Any) -> Callable:
    """The Python function behind a static method or a jitted function."""
    if isinstance(fn, staticmethod):
        fn = fn.__func__
    # JITFunction, or the interpreter's InterpretedFunction: both wrap ``.fn``.
    if isinstance(fn, JITFunction) or inspect.isfunction(getattr(fn, "fn", None)):
        fn = fn.fn
    return fn


@functools.lru_cache(maxsize=None)
def compiled(fn: Callable) -> JITFunction:
    """The (cached) ``@triton.jit`` object of a mask method."""
    return triton.jit(fn)


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """What a mask gives the kernels: its methods (plain functions) and constants."""

    mask_fn: Callable
    mask_takes_len: bool
    k_range_fn: Callable
    k_continuous: bool
    q_range_fn: Callable
    q_continuous: bool
    full_fn: Callable | None
    args: tuple
    array_batch_strides: tuple = ()

    def constexprs(self, *, backward_q_ranges: bool = False) -> dict[str, Any]:
        """Kernel constexpr parameters (plain functions; launchers convert)."""
        out = {
            "MASK_FN": self.mask_fn,
            "MASK_TAKES_LEN": self.mask_takes_len,
            "FULL_FN": self.full_fn,
            "PACK": PACKERS[len(self.args)],
        }
        if backward_q_ranges:
            out.update(Q_RANGE_FN=self.q_range_fn, Q_CONTINUOUS=self.q_continuous)
        else:
            out.update(K_RANGE_FN=self.k_range_fn, K_CONTINUOUS=self.k_continuous)
        out.update(_arg_constexprs(self.args))
        out.update(_array_constexprs(self.array_batch_strides))
        return out


def _check_arg(value: Any, where: str) -> int | float | bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
        return value
    raise TypeError(f"{where} must be an int, float or bool, got {type(value).__name__} ({value!r})")


class ChillMask:
    """Base class of attention masks; compares and hashes by (type, constants).

    Args:
      args: tuple of int/float/bool constants passed to every Triton method
        (at most 16).

    Raises:
      TypeError: ``args`` is not a tuple of int/float/bool.
    """

    def __init__(self, args: tuple = ()):
        if not isinstance(args, tuple):
            raise TypeError(f"{type(self).__name__}: args must be a tuple of int/float/bool, got {type(args).__name__}")
        if len(args) > MAX_MASK_ARGS:
            raise ValueError(f"{type(self).__name__}: at most {MAX_MASK_ARGS} args, got {len(args)}")
        self._args = tuple(_check_arg(a, f"{type(self).__name__} args[{i}]") for i, a in enumerate(args))

    @property
    def args(self) -> tuple:
        """The mask's constants."""
        return self._args

    def _key(self) -> tuple:
        return (type(self), tuple((type(a), a) for a in self._args))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChillMask) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._args!r}"

    # Optional plain-Python hints.
    @staticmethod
    def q_lims_continuous() -> bool:
        return True

    @staticmethod
    def k_lims_continuous() -> bool:
        return True

    @staticmethod
    def has_full_blocks(q_tile: int, k_tile: int, seq_len: int, args: tuple) -> bool:
        return False

    # Triton method: only consulted when has_full_blocks() is True.
    is_full_block = None

    def spec(self, q_tile: int | None = None, k_tile: int | None = None, seq_len: int | None = None) -> MaskSpec:
        """Extracts and checks the Triton methods.

        Args:
          q_tile, k_tile, seq_len: passed to ``has_full_blocks``; None asks
            whether the mask declares full blocks at all.

        Raises:
          TypeError: a required method is missing or has the wrong arity.
        """
        return _spec_of(type(self), self._args, q_tile, k_tile, seq_len)

    def make_mask(self, q_len: int, kv_len: int | None = None, *, seq_len: int | None = None) -> np.ndarray:
        """Dense bool ``[q_len, kv_len]`` from the mask's own Triton ``mask`` method.

        Args:
          q_len: number of query positions (>= 1).
          kv_len: number of key positions (default ``q_len``).
          seq_len: the ``seq_len`` the methods receive (default ``kv_len``).
        """
        q_len, kv_len = _check_sizes(q_len, kv_len, "make_mask")
        seq_len = kv_len if seq_len is None else seq_len
        spec = self.spec()
        block = 64
        (out,) = _run_eval(
            mask_eval.eval_dense_mask,
            (triton.cdiv(q_len, block), triton.cdiv(kv_len, block)),
            [seq_len, 0, *unused_array_slots(MAX_MASK_ARRAYS)], [((q_len, kv_len), np.int8)],
            dict(Q_LEN=q_len, KV_LEN=kv_len, BLOCK=block, MASK_FN=spec.mask_fn,
                 MASK_TAKES_LEN=spec.mask_takes_len, PACK=PACKERS[len(spec.args)],
                 **_arg_constexprs(spec.args), **_array_constexprs(())))
        return out.astype(bool)

    def ranges(self, q_len: int, kv_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw range methods per position: int32 ``[q_len, 2]`` of
        ``k_range_for_q`` and ``[kv_len, 2]`` of ``q_range_for_k``."""
        q_len, kv_len = _check_sizes(q_len, kv_len, "ranges")
        spec = self.spec()
        return tuple(_run_eval(
            mask_eval.eval_ranges, (max(q_len, kv_len),),
            [q_len, kv_len, 0, *unused_array_slots(MAX_MASK_ARRAYS)],
            [((q_len, 2), np.int32), ((kv_len, 2), np.int32)],
            dict(Q_LEN=q_len, KV_LEN=kv_len, K_RANGE_FN=spec.k_range_fn,
                 Q_RANGE_FN=spec.q_range_fn, PACK=PACKERS[len(spec.args)],
                 **_arg_constexprs(spec.args), **_array_constexprs(()))))

    def full_blocks(self, q_len: int, kv_len: int | None, q_tile: int, k_tile: int) -> np.ndarray:
        """Bool ``[cdiv(q_len, q_tile), cdiv(kv_len, k_tile)]`` of full-block claims."""
        q_len, kv_len = _check_sizes(q_len, kv_len, "full_blocks")
        spec = self.spec(q_tile, k_tile, kv_len)
        shape = (triton.cdiv(q_len, q_tile), triton.cdiv(kv_len, k_tile))
        if spec.full_fn is None:
            return np.zeros(shape, bool)
        (out,) = _run_eval(
            mask_eval.eval_full_blocks, shape, [kv_len, 0, *unused_array_slots(MAX_MASK_ARRAYS)],
            [(shape, np.int8)],
            dict(N_Q_TILES=shape[0], N_K_TILES=shape[1], BLOCK_Q=q_tile, BLOCK_K=k_tile,
                 FULL_FN=spec.full_fn, PACK=PACKERS[len(spec.args)], **_arg_constexprs(spec.args),
                 **_array_constexprs(())))
        return out.astype(bool)

    def verify(self, q_len: int, kv_len: int | None = None) -> None:
        """Checks the range methods and full-block claims against ``mask``.

        For every position: the range covers every allowed position; where the
        ranges are declared continuous, both ends never decrease; for every
        tile size pair the kernels use, every tile claimed full is all allowed.

        Raises:
          AssertionError: naming the first wrong position and both values.
          ValueError: ``q_len``/``kv_len`` are not positive ints.
        """
        from chill_jax.configs import all_tile_sizes

        q_len, kv_len = _check_sizes(q_len, kv_len, "verify")
        name = repr(self)
        dense = self.make_mask(q_len, kv_len)
        k_ranges, q_ranges = self.ranges(q_len, kv_len)
        spec = self.spec()
        _check_cover(dense, k_ranges, name, "k_range_for_q", "q", "k")
        _check_cover(dense.T, q_ranges, name, "q_range_for_k", "k", "q")
        if spec.k_continuous:
            _check_monotone(k_ranges, name, "k_range_for_q", "q", "k_lims_continuous")
        if spec.q_continuous:
            _check_monotone(q_ranges, name, "q_range_for_k", "k", "q_lims_continuous")
        for q_tile, k_tile in all_tile_sizes():
            claims = self.full_blocks(q_len, kv_len, q_tile, k_tile)
            for tq, tk in zip(*np.nonzero(claims)):
                block = dense[tq * q_tile:(tq + 1) * q_tile, tk * k_tile:(tk + 1) * k_tile]
                if not block.all():
                    i, j = np.argwhere(~block)[0]
                    raise AssertionError(
                        f"{name}: is_full_block(q={tq * q_tile}, k={tk * k_tile}, q_tile={q_tile}, "
                        f"k_tile={k_tile}) claims a full block, but mask(q={tq * q_tile + i}, "
                        f"k={tk * k_tile + j}) is False")

    def plot(self, q_len: int, kv_len: int | None = None, *, show_full_blocks: bool = False,
             tile: tuple[int, int] = (64, 64)):
        """Matplotlib Figure of the mask with the analytic ranges drawn over it.

        Args:
          q_len, kv_len: size of the plotted region.
          show_full_blocks: outline the tiles ``is_full_block`` claims full.
          tile: (query, key) tile size for the full-block outlines.
        """
        from chill_jax._plot import plot_mask

        return plot_mask(self, q_len, kv_len, show_full_blocks=show_full_blocks, tile=tile)


def _check_sizes(q_len: Any, kv_len: Any, where: str) -> tuple[int, int]:
    kv_len = q_len if kv_len is None else kv_len
    for name, value in (("q_len", q_len), ("kv_len", kv_len)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")
    return int(q_len), int(kv_len)


def _arg_constexprs(args: tuple) -> dict[str, Any]:
    return {f"A{i}": args[i] if i < len(args) else None for i in range(MAX_MASK_ARGS)}


def _array_constexprs(batch_strides: tuple) -> dict[str, Any]:
    """``PACK_ARRAYS`` and the batch strides ``MS0 .. MS3`` (0 for unused slots)."""
    out = {"PACK_ARRAYS": ARRAY_PACKERS[len(batch_strides)]}
    for i in range(MAX_MASK_ARRAYS):
        out[f"MS{i}"] = int(batch_strides[i]) if i < len(batch_strides) else 0
    return out


def unused_array_slots(n: int) -> list[np.ndarray]:
    """Placeholders for the kernels' array slots a mask does not use."""
    return [np.zeros((1,), np.int32) for _ in range(n)]


def _run_eval(kernel, grid, args, out_shapes, constexprs):
    from chill_jax import _interpreter

    return _interpreter.run(kernel, grid, args, out_shapes, constexprs)


def _check_cover(dense: np.ndarray, ranges: np.ndarray, name: str, method: str, pos: str, other: str) -> None:
    for i in range(dense.shape[0]):
        allowed = np.flatnonzero(dense[i])
        if allowed.size == 0:
            continue
        lo, hi = int(ranges[i, 0]), int(ranges[i, 1])
        bad = allowed[(allowed < lo) | (allowed > hi)]
        if bad.size:
            raise AssertionError(
                f"{name}: {method}({pos}={i}) = ({lo}, {hi}) but mask allows {other}={int(bad[0])}")


def _check_monotone(ranges: np.ndarray, name: str, method: str, pos: str, hint: str) -> None:
    for end, label in ((0, "lo"), (1, "hi")):
        drops = np.flatnonzero(np.diff(ranges[:, end]) < 0)
        if drops.size:
            i = int(drops[0])
            raise AssertionError(
                f"{name}: {hint}() is True but {method} {label} decreases: {method}({pos}={i})[{end}] = "
                f"{int(ranges[i, end])}, {method}({pos}={i + 1})[{end}] = {int(ranges[i + 1, end])}")


def _arity(fn: Callable) -> int:
    return len(inspect.signature(fn).parameters)


@functools.lru_cache(maxsize=None)
def _methods_of(cls: type) -> tuple:
    name = cls.__name__
    missing = [m for m in _REQUIRED if getattr(cls, m, None) is None]
    if missing:
        raise TypeError(f"mask {name} is missing Triton method(s) {', '.join(missing)}")
    fns = {}
    for method, arities in (("mask", (3, 4)), ("k_range_for_q", (3,)), ("q_range_for_k", (3,))):
        fn = _plain(inspect.getattr_static(cls, method))
        if not inspect.isfunction(fn):
            raise TypeError(f"mask {name}.{method} must be a static method written in Triton, got {fn!r}")
        if _arity(fn) not in arities:
            want = " or ".join(str(a) for a in arities)
            raise TypeError(f"mask {name}.{method} must take {want} parameters, takes {_arity(fn)}")
        fns[method] = fn
    full = getattr(cls, "is_full_block", None)
    full_fn = None
    if full is not None:
        full_fn = _plain(inspect.getattr_static(cls, "is_full_block"))
        if not inspect.isfunction(full_fn) or _arity(full_fn) != 6:
            raise TypeError(f"mask {name}.is_full_block must be a static Triton method of 6 parameters "
                            "(q, k, q_tile, k_tile, seq_len, args)")
    return fns["mask"], fns["k_range_for_q"], fns["q_range_for_k"], full_fn


def _spec_of(cls: type, args: tuple, q_tile, k_tile, seq_len) -> MaskSpec:
    mask_fn, k_fn, q_fn, full_fn = _methods_of(cls)
    has_full = False
    if full_fn is not None:
        if q_tile is None:
            has_full = True
        else:
            has_full = bool(cls.has_full_blocks(q_tile, k_tile, seq_len, args))
    return MaskSpec(
        mask_fn=mask_fn, mask_takes_len=_arity(mask_fn) == 4,
        k_range_fn=k_fn, k_continuous=bool(cls.k_lims_continuous()),
        q_range_fn=q_fn, q_continuous=bool(cls.q_lims_continuous()),
        full_fn=full_fn if has_full else None, args=args)


def _nonneg_int(value: Any, cls: str, name: str, minimum: int = 0) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{cls}: {name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{cls}: {name} must be >= {minimum}, got {value}")
    return int(value)


class FullChillMask(ChillMask):
    """Every query attends to every key."""

    def __init__(self):
        super().__init__(())

    @staticmethod
    def mask(q, k, seq_len, args):
        return (q[:, None] >= 0) & (k[None, :] >= 0)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        return 0, seq_len - 1

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        return 0, seq_len - 1

    @staticmethod
    def has_full_blocks(q_tile, k_tile, seq_len, args):
        return True

    @staticmethod
    def is_full_block(q, k, q_tile, k_tile, seq_len, args):
        return q >= 0


class CausalChillMask(ChillMask):
    """Query ``q`` attends to keys ``k <= q``."""

    def __init__(self):
        super().__init__(())

    @staticmethod
    def mask(q, k, seq_len, args):
        return q[:, None] >= k[None, :]

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        return 0, q

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        return k, seq_len - 1

    @staticmethod
    def has_full_blocks(q_tile, k_tile, seq_len, args):
        return True

    @staticmethod
    def is_full_block(q, k, q_tile, k_tile, seq_len, args):
        return k + k_tile - 1 <= q


class SlidingWindowChillMask(ChillMask):
    """Query ``q`` attends to keys ``q - left_context <= k <= q + right_context``.

    Args:
      left_context: keys before the query (>= 0).
      right_context: keys after the query (>= 0).
    """

    def __init__(self, left_context: int, right_context: int):
        super().__init__((_nonneg_int(left_context, "SlidingWindowChillMask", "left_context"),
                          _nonneg_int(right_context, "SlidingWindowChillMask", "right_context")))

    @staticmethod
    def mask(q, k, seq_len, args):
        left, right = args
        diff = q[:, None] - k[None, :]
        return (diff <= left) & (diff >= -right)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        left, right = args
        return max(0, q - left), min(q + right, seq_len - 1)

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        left, right = args
        return max(0, k - right), min(k + left, seq_len - 1)

    @staticmethod
    def has_full_blocks(q_tile, k_tile, seq_len, args):
        left, right = args
        return left + right + 1 >= q_tile + k_tile - 1

    @staticmethod
    def is_full_block(q, k, q_tile, k_tile, seq_len, args):
        left, right = args
        # Largest q - k in the tile is q + q_tile - 1 - k, smallest q - k_tile + 1 - k.
        return (q + q_tile - 1 - k <= left) & (k + k_tile - 1 - q <= right)


class ChunkwiseChillMask(ChillMask):
    """Chunks of ``context_size``; a query attends to keys of its own chunk and
    of the ``back_contexts`` chunks before it.

    Args:
      context_size: chunk length (>= 1).
      back_contexts: number of preceding chunks attended (>= 0).
    """

    def __init__(self, context_size: int, back_contexts: int):
        super().__init__((_nonneg_int(context_size, "ChunkwiseChillMask", "context_size", 1),
                          _nonneg_int(back_contexts, "ChunkwiseChillMask", "back_contexts")))

    @staticmethod
    def mask(q, k, seq_len, args):
        size, back = args
        q_chunk = q[:, None] // size
        k_chunk = k[None, :] // size
        return (k_chunk <= q_chunk) & (k_chunk >= q_chunk - back)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        size, back = args
        chunk = q // size
        return max(0, (chunk - back) * size), min((chunk + 1) * size - 1, seq_len - 1)

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        size, back = args
        chunk = k // size
        return chunk * size, min((chunk + back + 1) * size - 1, seq_len - 1)

    @staticmethod
    def has_full_blocks(q_tile, k_tile, seq_len, args):
        size, back = args
        return size * (back + 1) >= k_tile

    @staticmethod
    def is_full_block(q, k, q_tile, k_tile, seq_len, args):
        size, back = args
        q_first = q // size
        q_last = (q + q_tile - 1) // size
        k_first = k // size
        k_last = (k + k_tile - 1) // size
        return (k_last <= q_first) & (k_first >= q_last - back)


class PrefixLMChillMask(ChillMask):
    """Bidirectional attention inside the first ``prefix_size`` positions,
    causal elsewhere.

    Args:
      prefix_size: prefix length (>= 0).
    """

    def __init__(self, prefix_size: int):
        super().__init__((_nonneg_int(prefix_size, "PrefixLMChillMask", "prefix_size"),))

    @staticmethod
    def mask(q, k, seq_len, args):
        (prefix,) = args
        return (q[:, None] >= k[None, :]) | (k[None, :] < prefix)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        (prefix,) = args
        return 0, min(max(q, prefix - 1), seq_len - 1)

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        (prefix,) = args
        return tl.where(k < prefix, 0, k), seq_len - 1

    @staticmethod
    def has_full_blocks(q_tile, k_tile, seq_len, args):
        return True

    @staticmethod
    def is_full_block(q, k, q_tile, k_tile, seq_len, args):
        (prefix,) = args
        return (k + k_tile - 1 <= q) | (k + k_tile <= prefix)
