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
are given. ``args`` is the tuple ``(*constants, *arrays)``: the constants
given to the constructor, then one pointer per runtime array, already
offset to the example being computed.

Masks are JAX pytrees: the arrays are the leaves, the type and constants are
static. So a mask carrying arrays (:class:`DocumentChillMask`'s segment ids,
a per-example prefix length) passes through ``jit``, ``vmap`` and
``shard_map`` like any pytree, and new array values never recompile the
kernels. ``mask_a & mask_b`` and ``mask_a | mask_b`` compose masks.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import triton
import triton.language as tl
from jax import lax
from triton.runtime.jit import JITFunction

from chill_jax import _codegen
from chill_jax.kernels import ARRAY_PACKERS, MAX_MASK_ARGS, MAX_MASK_ARRAYS, PACKERS
from chill_jax.kernels import mask_eval

_REQUIRED = ("mask", "k_range_for_q", "q_range_for_k")
# Mask arrays reach the kernels as pointers of these element types.
ARRAY_DTYPES = ("int32", "float32")


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
class ArraySlot:
    """Stands for a mask array in a mask's static skeleton (hashable).

    Attributes:
      shape: the array's shape, ``[B or 1, ...]``.
      dtype: its dtype name (``"int32"`` or ``"float32"``).
    """

    shape: tuple[int, ...]
    dtype: str

    @property
    def ndim(self) -> int:
        return len(self.shape)


def batch_strides(arrays: tuple) -> tuple[int, ...]:
    """Batch stride in elements of each (C-contiguous) mask array; 0 when its
    leading dim is 1 (one row shared by every example)."""
    return tuple(0 if a.shape[0] == 1 else math.prod(a.shape[1:]) for a in arrays)


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """What a mask gives the kernels: its methods (plain functions), constants
    and the batch strides of its arrays."""

    mask_fn: Callable
    mask_takes_len: bool
    k_range_fn: Callable
    k_continuous: bool
    q_range_fn: Callable
    q_continuous: bool
    full_fn: Callable | None
    args: tuple
    array_batch_strides: tuple = ()

    def with_arrays(self, arrays: tuple) -> "MaskSpec":
        """The spec with the batch strides of the arrays about to be passed."""
        return dataclasses.replace(self, array_batch_strides=batch_strides(arrays))

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


def _check_mask_array(value: Any, where: str) -> Any:
    """A mask array as int32/float32 (JAX arrays and tracers stay JAX)."""
    if isinstance(value, ArraySlot):
        return value
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        if isinstance(value, (list, tuple)):
            value = np.asarray(value)
        else:
            raise TypeError(f"{where} must be an array, got {type(value).__name__}")
    dtype = np.dtype(value.dtype)
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        target = np.int32
    elif np.issubdtype(dtype, np.floating):
        target = np.float32
    else:
        raise TypeError(f"{where} must be an integer, bool or floating array, got dtype {dtype}")
    if np.ndim(value) < 1:
        raise ValueError(f"{where} must have a leading batch dim (shape [batch, ...] or [1, ...]), "
                         f"got a scalar")
    if dtype != target:
        value = value.astype(target)
    return jnp.asarray(value) if isinstance(value, np.ndarray) else value


def _describe(x: Any) -> str:
    """``int32[2, 100]`` for an array, tracer or slot."""
    dtype = x.dtype if isinstance(x, ArraySlot) else np.dtype(x.dtype).name
    return f"{dtype}[{', '.join(str(d) for d in x.shape)}]"


def _slot_of(x: Any) -> ArraySlot:
    if isinstance(x, ArraySlot):
        return x
    return ArraySlot(tuple(int(d) for d in x.shape), np.dtype(x.dtype).name)


def _same_array(x: Any, y: Any) -> bool:
    if isinstance(x, ArraySlot) or isinstance(y, ArraySlot):
        return x == y
    return x is y


class ChillMask:
    """Base class of attention masks.

    Args:
      args: tuple of int/float/bool constants passed to every Triton method
        (at most 16); static: compiled into the kernels.
      arrays: runtime arrays passed to the Triton methods after the
        constants, as pointers (at most 4): a tuple, or a dict from field
        name to array (the names appear in error messages and ``repr``).
        Each is ``[B, ...]`` with one row per example (the methods receive a
        pointer to the row of the example being computed) or ``[1, ...]``,
        one row shared by every example; C-contiguous. Integer and bool
        arrays become int32, floating ones float32. They are JAX pytree
        leaves: new values never retrace or recompile, and they get no
        gradient (float ones included).

    Masks compare and hash by their type, constants and other attributes;
    masks holding arrays compare equal only when they hold the very same
    array objects (never by value, so a mask is a safe static argument).

    Raises:
      TypeError: ``args`` is not a tuple of int/float/bool, or an array has
        an unsupported type.
      ValueError: too many constants or arrays, or an array is a scalar.
    """

    def __init__(self, args: tuple = (), arrays: tuple | dict = ()):
        name = type(self).__name__
        if not isinstance(args, tuple):
            raise TypeError(f"{name}: args must be a tuple of int/float/bool, got {type(args).__name__}")
        if len(args) > MAX_MASK_ARGS:
            raise ValueError(f"{name}: at most {MAX_MASK_ARGS} args, got {len(args)}")
        if isinstance(arrays, dict):
            names, values = tuple(str(k) for k in arrays), tuple(arrays.values())
        elif isinstance(arrays, (tuple, list)):
            names, values = tuple(f"arrays[{i}]" for i in range(len(arrays))), tuple(arrays)
        else:
            raise TypeError(f"{name}: arrays must be a tuple or a dict of arrays, got {type(arrays).__name__}")
        if len(values) > MAX_MASK_ARRAYS:
            raise ValueError(f"{name}: at most {MAX_MASK_ARRAYS} arrays, got {len(values)}")
        self._args = tuple(_check_arg(a, f"{name} args[{i}]") for i, a in enumerate(args))
        self._array_names = names
        self._arrays = tuple(_check_mask_array(v, f"{name} array {n}") for n, v in zip(names, values))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _register_pytree(cls)

    @property
    def args(self) -> tuple:
        """The mask's constants."""
        return self._args

    @property
    def arrays(self) -> tuple:
        """The mask's runtime arrays (its pytree leaves), in ``args`` order."""
        return self._arrays

    def array_fields(self) -> tuple[str, ...]:
        """Names of the arrays for messages, ``"Class.field"``, in order."""
        return tuple(f"{type(self).__name__}.{n}" for n in self._array_names)

    def check_shapes(self, batch: int, q_len: int, kv_len: int) -> None:
        """Optional hook: raise ValueError if the arrays do not fit a call.

        :func:`chill_jax.attention` calls it with the batch size and the
        query/key sequence lengths (after checking every array's leading dim
        is ``batch`` or 1). The default accepts anything.
        """

    # Pytree and identity.

    def _static_state(self) -> tuple:
        state = tuple(sorted((k, v) for k, v in vars(self).items() if k != "_arrays"))
        return state, tuple(type(a) for a in self._args)

    def _static_key(self) -> tuple:
        return (type(self), self._static_state())

    def _tree_flatten(self) -> tuple[tuple, Any]:
        aux = self._static_state()
        try:
            hash(aux)
        except TypeError as e:
            bad = [k for k, v in aux[0] if not _hashable(v)]
            raise TypeError(
                f"{type(self).__name__}: attribute(s) {bad} are not hashable; a mask keeps its arrays in "
                "ChillMask.__init__(arrays=...) and every other attribute must be a hashable constant") from e
        return self._arrays, aux

    @classmethod
    def _tree_unflatten(cls, aux: Any, children: Any) -> "ChillMask":
        obj = object.__new__(cls)
        obj.__dict__.update(aux[0])
        obj._arrays = tuple(children)
        return obj

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChillMask) or self._static_key() != other._static_key():
            return False
        mine, theirs = self.arrays, other.arrays
        return len(mine) == len(theirs) and all(_same_array(x, y) for x, y in zip(mine, theirs))

    def __hash__(self) -> int:
        return hash((self._static_key(), tuple(x if isinstance(x, ArraySlot) else None for x in self.arrays)))

    def __repr__(self) -> str:
        if not self._arrays:
            return f"{type(self).__name__}{self._args!r}"
        parts = [repr(a) for a in self._args]
        parts += [f"{n}={_describe(x)}" for n, x in zip(self._array_names, self._arrays)]
        return f"{type(self).__name__}({', '.join(parts)})"

    # Composition.

    def __and__(self, other: Any) -> "ChillMask":
        if not isinstance(other, ChillMask):
            return NotImplemented
        return ComposedChillMask("&", self, other)

    def __or__(self, other: Any) -> "ChillMask":
        if not isinstance(other, ChillMask):
            return NotImplemented
        return ComposedChillMask("|", self, other)

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
          q_tile, k_tile, seq_len: passed to ``has_full_blocks`` (whose
            ``args`` holds the constants, then an :class:`ArraySlot` per
            array); None asks whether the mask declares full blocks at all.

        Raises:
          TypeError: a required method is missing or has the wrong arity.
        """
        slots = tuple(_slot_of(x) for x in self._arrays)
        spec = _spec_of(type(self), self._args, slots, q_tile, k_tile, seq_len)
        return spec.with_arrays(slots)

    # Evaluation on the host (through Triton's interpreter).

    def _eval_operands(self, example: Any, where: str) -> tuple[list[np.ndarray], int]:
        """The eval kernels' ``M0 .. M3`` operands and batch element."""
        if isinstance(example, bool) or not isinstance(example, numbers.Integral) or example < 0:
            raise ValueError(f"{where}: example must be a non-negative int, got {example!r}")
        arrays = self.arrays
        fields = self.array_fields()
        host = []
        for name, x in zip(fields, arrays):
            if isinstance(x, jax.core.Tracer) or isinstance(x, ArraySlot):
                raise TypeError(f"{where}: {self!r} needs concrete arrays, but {name} is traced or abstract; "
                                "call it outside jit/vmap with the mask built from concrete values")
            host.append(np.ascontiguousarray(np.asarray(x)))
        batch = max((a.shape[0] for a in host), default=1)
        for name, a in zip(fields, host):
            if a.shape[0] not in (1, batch):
                raise ValueError(f"{where}: {self!r}: {name} has leading dim {a.shape[0]}, but another array "
                                 f"has {batch} (each must be the batch size or 1)")
        if host and example >= batch:
            raise ValueError(f"{where}: example must be in [0, {batch}) for {self!r}, got {example}")
        return host + unused_array_slots(MAX_MASK_ARRAYS - len(host)), int(example) if host else 0

    def make_mask(self, q_len: int, kv_len: int | None = None, *, seq_len: int | None = None,
                  example: int = 0) -> np.ndarray:
        """Dense bool ``[q_len, kv_len]`` from the mask's own Triton ``mask`` method.

        Args:
          q_len: number of query positions (>= 1).
          kv_len: number of key positions (default ``q_len``).
          seq_len: the ``seq_len`` the methods receive (default ``kv_len``).
          example: batch element of the mask's arrays to evaluate (masks
            with arrays; they must be concrete).
        """
        q_len, kv_len = _check_sizes(q_len, kv_len, "make_mask")
        seq_len = kv_len if seq_len is None else seq_len
        operands, b = self._eval_operands(example, "make_mask")
        spec = self.spec()
        block = 64
        (out,) = _run_eval(
            mask_eval.eval_dense_mask,
            (triton.cdiv(q_len, block), triton.cdiv(kv_len, block)),
            [seq_len, b, *operands], [((q_len, kv_len), np.int8)],
            dict(Q_LEN=q_len, KV_LEN=kv_len, BLOCK=block, MASK_FN=spec.mask_fn,
                 MASK_TAKES_LEN=spec.mask_takes_len, PACK=PACKERS[len(spec.args)],
                 **_arg_constexprs(spec.args), **_array_constexprs(spec.array_batch_strides)))
        return out.astype(bool)

    def ranges(self, q_len: int, kv_len: int | None = None, *, example: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Raw range methods per position: int32 ``[q_len, 2]`` of
        ``k_range_for_q`` and ``[kv_len, 2]`` of ``q_range_for_k`` (for batch
        element ``example`` of the mask's arrays)."""
        q_len, kv_len = _check_sizes(q_len, kv_len, "ranges")
        operands, b = self._eval_operands(example, "ranges")
        spec = self.spec()
        return tuple(_run_eval(
            mask_eval.eval_ranges, (max(q_len, kv_len),),
            [q_len, kv_len, b, *operands],
            [((q_len, 2), np.int32), ((kv_len, 2), np.int32)],
            dict(Q_LEN=q_len, KV_LEN=kv_len, K_RANGE_FN=spec.k_range_fn,
                 Q_RANGE_FN=spec.q_range_fn, PACK=PACKERS[len(spec.args)],
                 **_arg_constexprs(spec.args), **_array_constexprs(spec.array_batch_strides))))

    def full_blocks(self, q_len: int, kv_len: int | None, q_tile: int, k_tile: int, *,
                    example: int = 0) -> np.ndarray:
        """Bool ``[cdiv(q_len, q_tile), cdiv(kv_len, k_tile)]`` of full-block claims
        (for batch element ``example`` of the mask's arrays)."""
        q_len, kv_len = _check_sizes(q_len, kv_len, "full_blocks")
        operands, b = self._eval_operands(example, "full_blocks")
        spec = self.spec(q_tile, k_tile, kv_len)
        shape = (triton.cdiv(q_len, q_tile), triton.cdiv(kv_len, k_tile))
        if spec.full_fn is None:
            return np.zeros(shape, bool)
        (out,) = _run_eval(
            mask_eval.eval_full_blocks, shape, [kv_len, b, *operands],
            [(shape, np.int8)],
            dict(N_Q_TILES=shape[0], N_K_TILES=shape[1], BLOCK_Q=q_tile, BLOCK_K=k_tile,
                 FULL_FN=spec.full_fn, PACK=PACKERS[len(spec.args)], **_arg_constexprs(spec.args),
                 **_array_constexprs(spec.array_batch_strides)))
        return out.astype(bool)

    def verify(self, q_len: int, kv_len: int | None = None, *, example: int = 0) -> None:
        """Checks the range methods and full-block claims against ``mask``.

        For every position: the range covers every allowed position; where the
        ranges are declared continuous, both ends never decrease; for every
        tile size pair the kernels use, every tile claimed full is all allowed.

        Args:
          q_len, kv_len: the sizes checked (``kv_len`` defaults to ``q_len``).
          example: batch element of the mask's arrays to check (masks with
            arrays; they must be concrete).

        Raises:
          AssertionError: naming the first wrong position and both values.
          ValueError: ``q_len``/``kv_len`` are not positive ints, or
            ``example`` is out of range.
        """
        from chill_jax.configs import all_tile_sizes

        q_len, kv_len = _check_sizes(q_len, kv_len, "verify")
        name = repr(self) if not self.arrays else f"{self!r} (example {example})"
        dense = self.make_mask(q_len, kv_len, example=example)
        k_ranges, q_ranges = self.ranges(q_len, kv_len, example=example)
        spec = self.spec()
        _check_cover(dense, k_ranges, name, "k_range_for_q", "q", "k")
        _check_cover(dense.T, q_ranges, name, "q_range_for_k", "k", "q")
        if spec.k_continuous:
            _check_monotone(k_ranges, name, "k_range_for_q", "q", "k_lims_continuous")
        if spec.q_continuous:
            _check_monotone(q_ranges, name, "q_range_for_k", "k", "q_lims_continuous")
        for q_tile, k_tile in all_tile_sizes():
            claims = self.full_blocks(q_len, kv_len, q_tile, k_tile, example=example)
            for tq, tk in zip(*np.nonzero(claims)):
                block = dense[tq * q_tile:(tq + 1) * q_tile, tk * k_tile:(tk + 1) * k_tile]
                if not block.all():
                    i, j = np.argwhere(~block)[0]
                    raise AssertionError(
                        f"{name}: is_full_block(q={tq * q_tile}, k={tk * k_tile}, q_tile={q_tile}, "
                        f"k_tile={k_tile}) claims a full block, but mask(q={tq * q_tile + i}, "
                        f"k={tk * k_tile + j}) is False")

    def plot(self, q_len: int, kv_len: int | None = None, *, show_full_blocks: bool = False,
             tile: tuple[int, int] = (64, 64), example: int = 0):
        """Matplotlib Figure of the mask with the analytic ranges drawn over it.

        Args:
          q_len, kv_len: size of the plotted region.
          show_full_blocks: outline the tiles ``is_full_block`` claims full.
          tile: (query, key) tile size for the full-block outlines.
          example: batch element of the mask's arrays to draw.
        """
        from chill_jax._plot import plot_mask

        return plot_mask(self, q_len, kv_len, show_full_blocks=show_full_blocks, tile=tile, example=example)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _register_pytree(cls: type) -> None:
    jax.tree_util.register_pytree_node(cls, lambda m: m._tree_flatten(), cls._tree_unflatten)


_register_pytree(ChillMask)


def split_arrays(mask: ChillMask, batch: int, q_len: int, kv_len: int) -> tuple[ChillMask, tuple]:
    """Separates a mask into its static skeleton and its runtime arrays.

    Args:
      mask: the mask of an attention call.
      batch, q_len, kv_len: the call's batch size and sequence lengths.

    Returns:
      ``(skeleton, arrays)``: the mask with each array replaced by an
      :class:`ArraySlot` (hashable, equal for equal static parts and array
      shapes), and the arrays (the mask's pytree leaves).

    Raises:
      TypeError: an array has an unsupported dtype.
      ValueError: an array's leading dim is neither ``batch`` nor 1, or the
        mask's ``check_shapes`` refuses the sizes.
    """
    leaves, treedef = jax.tree_util.tree_flatten(mask)
    fields = mask.array_fields()
    slots = []
    for name, x in zip(fields, leaves):
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise TypeError(f"mask {mask!r}: array {name} must be an array, got {type(x).__name__}")
        dtype = np.dtype(x.dtype).name
        if dtype not in ARRAY_DTYPES:
            raise TypeError(f"mask {mask!r}: array {name} must be one of {ARRAY_DTYPES}, got {dtype}")
        if len(x.shape) < 1 or x.shape[0] not in (batch, 1):
            raise ValueError(f"mask {mask!r}: array {name} has shape {tuple(x.shape)}; its leading dim must be "
                             f"the batch size {batch} (one row per example) or 1 (shared by every example)")
        slots.append(_slot_of(x))
    mask.check_shapes(batch, q_len, kv_len)
    return jax.tree_util.tree_unflatten(treedef, slots), tuple(leaves)


def batched_arrays(arrays: tuple, batch: int) -> tuple:
    """The mask's arrays with one row per example (shared ``[1, ...]`` rows
    broadcast), so that every operand of the attention passes shards and
    folds along the batch like the inputs."""
    return tuple(a if a.shape[0] == batch else jnp.broadcast_to(a, (batch, *a.shape[1:])) for a in arrays)


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


def _spec_of(cls: type, args: tuple, slots: tuple, q_tile, k_tile, seq_len) -> MaskSpec:
    mask_fn, k_fn, q_fn, full_fn = _methods_of(cls)
    has_full = False
    if full_fn is not None:
        if q_tile is None:
            has_full = True
        else:
            has_full = bool(cls.has_full_blocks(q_tile, k_tile, seq_len, args + slots))
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
      prefix_size: prefix length: an int (>= 0, a constant compiled into the
        kernels), or an integer array ``[B]`` (or ``[1]``) of per-example
        prefix lengths, a runtime array (new values never recompile).
    """

    def __new__(cls, prefix_size: Any = 0):
        if cls is PrefixLMChillMask and isinstance(prefix_size, (np.ndarray, jax.Array)):
            cls = _PerExamplePrefixLMChillMask
        return super().__new__(cls)

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


class _PerExamplePrefixLMChillMask(PrefixLMChillMask):
    """:class:`PrefixLMChillMask` with one prefix length per example (an int32
    ``[B]`` array read by the kernels); built by ``PrefixLMChillMask(array)``."""

    def __init__(self, prefix_size: Any):
        if not jnp.issubdtype(prefix_size.dtype, jnp.integer):
            raise TypeError(f"PrefixLMChillMask: prefix_size must be an int or an integer array of shape [batch], "
                            f"got dtype {prefix_size.dtype}")
        if prefix_size.ndim != 1:
            raise ValueError(f"PrefixLMChillMask: prefix_size must be an int or an integer array of shape [batch], "
                             f"got shape {tuple(prefix_size.shape)}")
        ChillMask.__init__(self, (), {"prefix_size": prefix_size})

    def array_fields(self) -> tuple[str, ...]:
        return ("PrefixLMChillMask.prefix_size",)

    def __repr__(self) -> str:
        return f"PrefixLMChillMask(prefix_size={_describe(self.arrays[0])})"

    @staticmethod
    def mask(q, k, seq_len, args):
        (prefix_ptr,) = args
        prefix = tl.load(prefix_ptr)
        return (q[:, None] >= k[None, :]) | (k[None, :] < prefix)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        (prefix_ptr,) = args
        prefix = tl.load(prefix_ptr)
        return 0, min(max(q, prefix - 1), seq_len - 1)

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        (prefix_ptr,) = args
        prefix = tl.load(prefix_ptr)
        return tl.where(k < prefix, 0, k), seq_len - 1

    @staticmethod
    def is_full_block(q, k, q_tile, k_tile, seq_len, args):
        (prefix_ptr,) = args
        prefix = tl.load(prefix_ptr)
        return (k + k_tile - 1 <= q) | (k + k_tile <= prefix)


# DocumentChillMask tables: int32 [B, L, 4] per position of one side:
# segment id, first and last position of the other side that may attend to /
# be attended by it (its range), and the last position of its run of equal
# ids on its own side (for the full-block test).
_ID, _LO, _HI, _RUN_END = 0, 1, 2, 3
_TABLE_WIDTH = 4


def _segment_ids(x: Any, name: str) -> jax.Array:
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        if not isinstance(x, (list, tuple)):
            raise TypeError(f"DocumentChillMask: {name} must be an integer array [batch, seq], "
                            f"got {type(x).__name__}")
        x = np.asarray(x)
    if not (jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
        raise TypeError(f"DocumentChillMask: {name} must be an integer array [batch, seq], got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"DocumentChillMask: {name} must have shape [batch, seq] (or [1, seq], shared by "
                         f"every example), got {tuple(x.shape)}")
    return jnp.asarray(x).astype(jnp.int32)


def _segment_table(src: jax.Array, dst: jax.Array) -> jax.Array:
    """The table of ``src``'s positions against ``dst`` (int32 ``[B, L, 4]``).

    The range of a position is the first to last position of ``dst`` with its
    id (empty for a negative id or an id absent from ``dst``), then widened
    into a monotone cover (``lo`` a suffix minimum, ``hi`` a prefix maximum):
    exactly the documents' spans when each id is one contiguous run and the
    runs come in the same order on both sides, still correct otherwise.
    """
    n_dst = dst.shape[-1]
    order = jnp.argsort(dst, axis=-1, stable=True).astype(jnp.int32)
    sorted_ids = jnp.take_along_axis(dst, order, axis=-1)
    # method="sort": batched sorts keep explicit batch shardings (the default
    # while-loop search does not vmap over explicitly sharded rows).
    search = {side: jax.vmap(functools.partial(jnp.searchsorted, side=side, method="sort"))
              for side in ("left", "right")}
    left = search["left"](sorted_ids, src).astype(jnp.int32)
    right = search["right"](sorted_ids, src).astype(jnp.int32)
    found = (right > left) & (src >= 0)
    first = jnp.take_along_axis(order, jnp.clip(left, 0, n_dst - 1), axis=-1)
    last = jnp.take_along_axis(order, jnp.clip(right - 1, 0, n_dst - 1), axis=-1)
    lo = lax.cummin(jnp.where(found, first, n_dst), axis=1, reverse=True)
    hi = lax.cummax(jnp.where(found, last, -1), axis=1)
    n_src = src.shape[-1]
    pos = jnp.arange(n_src, dtype=jnp.int32)
    run_break = jnp.concatenate([src[:, 1:] != src[:, :-1], jnp.ones_like(src[:, :1], bool)], axis=1)
    run_end = lax.cummin(jnp.where(run_break, pos, n_src), axis=1, reverse=True)
    return jnp.stack([src, lo, hi, run_end], axis=-1).astype(jnp.int32)


@triton.jit
def _table_row(table, pos, length):
    """Pointer to the table row of ``pos`` (clamped into ``0 .. length - 1``:
    the kernels ask about tile padding past the end)."""
    return table + _TABLE_WIDTH_C * tl.minimum(tl.maximum(pos, 0), length - 1)


_TABLE_WIDTH_C = tl.constexpr(_TABLE_WIDTH)


class DocumentChillMask(ChillMask):
    """Packed sequences: a query attends only to keys of its own document.

    Position ``i`` belongs to document ``segment_ids[b, i]``; query ``q``
    attends to key ``k`` when both have the same id, and negative ids are
    padding (attend to nothing, attended by nothing). An id repeated in
    separate runs is one document (its runs attend to each other). Combine
    with ``&`` for causal or windowed attention inside each document, e.g.
    ``DocumentChillMask(ids) & CausalChillMask()``.

    The ranges are each position's document span, derived once per call
    with JAX ops (sort and search, ``O(L log L)``) into per-position tables
    the kernels read, so tiles outside a query's document are never visited,
    and tiles inside one document skip the mask. With non-contiguous or
    reordered ids the ranges widen to stay correct (a monotone cover).

    Args:
      segment_ids: integer ``[B, T]`` document id of every query position
        (``[1, T]``: the same for every example).
      kv_segment_ids: integer ``[B, S]`` ids of the key positions (cross
        attention, ``T != S``); default ``segment_ids``.

    Raises:
      TypeError: the ids are not integer arrays.
      ValueError: the ids are not 2-D, or their batch sizes differ (other
        than 1).
    """

    def __init__(self, segment_ids: Any, kv_segment_ids: Any = None):
        q_ids = _segment_ids(segment_ids, "segment_ids")
        k_ids = q_ids if kv_segment_ids is None else _segment_ids(kv_segment_ids, "kv_segment_ids")
        batch = max(q_ids.shape[0], k_ids.shape[0])
        if {q_ids.shape[0], k_ids.shape[0]} - {1, batch}:
            raise ValueError(f"DocumentChillMask: segment_ids batch {q_ids.shape[0]} and kv_segment_ids batch "
                             f"{k_ids.shape[0]} must be equal (or one of them 1)")
        q_ids = jnp.broadcast_to(q_ids, (batch, q_ids.shape[1]))
        k_ids = jnp.broadcast_to(k_ids, (batch, k_ids.shape[1]))
        q_table = _segment_table(q_ids, k_ids)
        k_table = q_table if kv_segment_ids is None else _segment_table(k_ids, q_ids)
        super().__init__((q_ids.shape[1], k_ids.shape[1]), {"q_table": q_table, "kv_table": k_table})

    def check_shapes(self, batch: int, q_len: int, kv_len: int) -> None:
        t, s = self.args
        if (t, s) != (q_len, kv_len):
            raise ValueError(f"DocumentChillMask: segment ids cover {t} query and {s} key positions, but the "
                             f"call has {q_len} queries and {kv_len} keys (pass kv_segment_ids when they differ)")

    @staticmethod
    def mask(q, k, seq_len, args):
        q_len, kv_len, q_table, kv_table = args
        q_id = tl.load(_table_row(q_table, q, q_len))
        k_id = tl.load(_table_row(kv_table, k, kv_len))
        return (q_id[:, None] == k_id[None, :]) & (q_id[:, None] >= 0)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        q_len, kv_len, q_table, kv_table = args
        row = _table_row(q_table, q, q_len)
        return tl.load(row + 1), tl.load(row + 2)

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        q_len, kv_len, q_table, kv_table = args
        row = _table_row(kv_table, k, kv_len)
        return tl.load(row + 1), tl.load(row + 2)

    @staticmethod
    def has_full_blocks(q_tile, k_tile, seq_len, args):
        return True

    @staticmethod
    def is_full_block(q, k, q_tile, k_tile, seq_len, args):
        # Full when the tile's queries lie in one run of an id, its keys in
        # one run of the same id (positions past the end: the last row).
        q_len, kv_len, q_table, kv_table = args
        q_row = _table_row(q_table, q, q_len)
        k_row = _table_row(kv_table, k, kv_len)
        q_id = tl.load(q_row)
        same = (q_id == tl.load(k_row)) & (q_id >= 0)
        q_inside = tl.load(q_row + 3) >= min(q + q_tile - 1, q_len - 1)
        k_inside = tl.load(k_row + 3) >= min(k + k_tile - 1, kv_len - 1)
        return same & q_inside & k_inside


class ComposedChillMask(ChillMask):
    """``a & b`` (a pair is allowed when both masks allow it) or ``a | b``
    (when either does); built by the ``&`` and ``|`` operators.

    Its Triton methods are generated: ``mask`` combines the two masks';
    ``k_range_for_q``/``q_range_for_k`` are the intersection of their ranges
    for ``&`` and the covering hull for ``|``; the ranges are continuous
    where both masks' are; tiles are full where both masks' are (``&``) or
    where either's is (``|``). Constants and arrays are the two masks'
    together (at most 16 and 4). Compositions nest, and compare and hash by
    (operator, a, b).

    Args:
      op: ``"&"`` or ``"|"``.
      a, b: the masks (built-in, custom, array-carrying or composed).

    Raises:
      TypeError: an operand is not a ChillMask.
      ValueError: more than 16 constants or 4 arrays in all.
    """

    def __init__(self, op: str, a: ChillMask, b: ChillMask):
        if op not in ("&", "|"):
            raise ValueError(f"ComposedChillMask: op must be '&' or '|', got {op!r}")
        for name, side in (("a", a), ("b", b)):
            if not isinstance(side, ChillMask):
                raise TypeError(f"ComposedChillMask: {name} must be a ChillMask instance, got {type(side).__name__}")
        n_args, n_arrays = len(a.args) + len(b.args), len(a.arrays) + len(b.arrays)
        if n_args > MAX_MASK_ARGS:
            raise ValueError(f"{a!r} {op} {b!r}: a composed mask carries at most {MAX_MASK_ARGS} constants "
                             f"in all, these carry {n_args}")
        if n_arrays > MAX_MASK_ARRAYS:
            raise ValueError(f"{a!r} {op} {b!r}: a composed mask carries at most {MAX_MASK_ARRAYS} arrays "
                             f"in all, these carry {n_arrays}")
        self._op, self._a, self._b = op, a, b

    @property
    def op(self) -> str:
        """``"&"`` or ``"|"``."""
        return self._op

    @property
    def operands(self) -> tuple[ChillMask, ChillMask]:
        """The two composed masks ``(a, b)``."""
        return self._a, self._b

    @property
    def args(self) -> tuple:
        return self._a.args + self._b.args

    @property
    def arrays(self) -> tuple:
        return self._a.arrays + self._b.arrays

    def array_fields(self) -> tuple[str, ...]:
        return self._a.array_fields() + self._b.array_fields()

    def check_shapes(self, batch: int, q_len: int, kv_len: int) -> None:
        self._a.check_shapes(batch, q_len, kv_len)
        self._b.check_shapes(batch, q_len, kv_len)

    def _static_key(self) -> tuple:
        return (type(self), self._op, self._a._static_key(), self._b._static_key())

    def _tree_flatten(self) -> tuple[tuple, Any]:
        return (self._a, self._b), self._op

    @classmethod
    def _tree_unflatten(cls, aux: Any, children: Any) -> "ComposedChillMask":
        obj = object.__new__(cls)
        obj._op = aux
        obj._a, obj._b = children
        return obj

    def __repr__(self) -> str:
        return f"({self._a!r} {self._op} {self._b!r})"

    def spec(self, q_tile: int | None = None, k_tile: int | None = None, seq_len: int | None = None) -> MaskSpec:
        sa = self._a.spec(q_tile, k_tile, seq_len)
        sb = self._b.spec(q_tile, k_tile, seq_len)
        full_a, full_b = sa.full_fn, sb.full_fn
        if self._op == "&" and (full_a is None or full_b is None):
            full_a = full_b = None

        def side(s: MaskSpec, full: Callable | None, mask: ChillMask) -> _codegen.Side:
            return _codegen.Side(
                mask_fn=s.mask_fn, mask_takes_len=s.mask_takes_len, k_range_fn=s.k_range_fn,
                q_range_fn=s.q_range_fn, full_fn=full, k_continuous=s.k_continuous,
                q_continuous=s.q_continuous, num_args=len(s.args), num_arrays=len(mask.arrays))

        fns = _codegen.compose(self._op, side(sa, full_a, self._a), side(sb, full_b, self._b))
        return MaskSpec(
            mask_fn=fns.mask_fn, mask_takes_len=True,
            k_range_fn=fns.k_range_fn, k_continuous=sa.k_continuous and sb.k_continuous,
            q_range_fn=fns.q_range_fn, q_continuous=sa.q_continuous and sb.q_continuous,
            full_fn=fns.full_fn, args=sa.args + sb.args,
            array_batch_strides=sa.array_batch_strides + sb.array_batch_strides)
