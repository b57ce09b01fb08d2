# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Pure-JAX (XLA) blockwise flash attention driven by a mask's own methods.

:func:`xla_attention` computes the same thing as the Triton kernels with
plain JAX ops, so it runs on any XLA backend (CPU included) and composes with
``jit``, ``grad`` and ``vmap`` natively.

How the mask is evaluated. The mask's Triton static methods are the single
source of truth. Each method's Python function is re-created
(``types.FunctionType``) with its ``triton.language`` global replaced by a
small shim that implements the part of ``triton.language`` masks use on JAX
arrays, and with the builtins ``max``/``min`` replaced by elementwise
versions (Triton's frontend does the same). Positions and lengths reach the
methods as int32 arrays wrapped in :class:`_Tensor`, which follows Triton's
integer semantics: ``//`` and ``%`` on integer tensors truncate toward zero
(C semantics, like Triton on the GPU and in its interpreter), ``.to(dtype)``
casts (to ``tl.int1`` as ``!= 0``), and Python ``if``/``while``/``int()``/
``bool()`` on a tensor raise. Supported ``triton.language`` names:
``where minimum maximum clamp abs cdiv arange full zeros zeros_like
broadcast_to reshape expand_dims trans permute sum max min exp exp2 log log2
sqrt floor ceil fma load constexpr static_range static_assert static_print
device_assert tensor`` and the integer/float dtypes, also through
``tl.math``; helper functions decorated with ``@triton.jit`` that a method
calls are converted the same way. As in the kernels, ``mask`` gets int32
position vectors (``[block_q]``, ``[block_k]``) and the example's key length;
the range methods get one scalar position (vectors of positions go through
``jax.vmap``) and the example's key (``k_range_for_q``) or query
(``q_range_for_k``) length. The lengths are traced, so changing them never
retraces.

A mask's runtime arrays reach the methods as pointers to the example's row
(a flat JAX array and an offset): ``ptr + offsets`` and ``tl.load(ptr,
mask=..., other=...)`` gather from it (offsets clamped into the row).

Fallback. When a mask uses anything else (stores, Python control flow on
positions, ...), the conversion is detected once per mask by tracing the
methods abstractly and a warning is issued; the methods then run through
Triton's interpreter (``ChillMask.make_mask`` / ``ChillMask.ranges``) from
a ``jax.pure_callback``, once per distinct (query length, key length) pair
of an example and cached (32 pairs; masks with arrays: once per example and
call, uncached). That costs about 1 ms per 64 x 64 tile
of the mask (a second per new length pair at 2048 x 2048) and materializes a
bool ``[B, T, S]`` mask per call, so it is meant for experimenting only.

Algorithm. Inputs are split into query blocks of ``block_q`` and key blocks
of ``block_k`` positions (padded internally; padding is masked). The forward
pass scans over (example, query block) pairs and, for each, loops over only
the key blocks in the hull of ``k_range_for_q`` over the block's valid
queries (``lo`` of the first and ``hi`` of the last query when
``k_lims_continuous()``, else the min/max over the block), with an online
softmax in float32. The query heads of a key/value head are stacked into
the rows of one tile (GQA without copying K/V per query head). The backward
pass (``jax.custom_vjp``; residuals are only q, k, v, out and lse) scans over
(example, key block) pairs, loops over the query blocks in the hull of
``q_range_for_k``, recomputes the probabilities per tile and accumulates
dK/dV in the loop carry and dQ into a float32 ``[B, N, T, D]`` buffer (one
pass, five tile matmuls). Work is proportional to the number of visited tiles
and memory to ``O((T + S) * N * D + N * block_q * block_k)``; no ``T x S``
array is formed (outside the fallback). Both passes carry a
``custom_vmap`` rule that folds a vmapped axis into the batch axis, so
``vmap`` keeps the per-example tile skipping instead of running every
example for the union of the loop bounds.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import operator
import types
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import triton
import triton.language as tl
from jax import lax
from triton.runtime.jit import JITFunction

from chill_jax import _launch, _sharding
from chill_jax.masks import ChillMask, batched_arrays, split_arrays

LAYOUTS = ("BTNH", "BNTH")
_FALLBACK_CACHE_SIZE = 32


class MaskShimError(Exception):
    """A mask method used something the JAX shim of ``triton.language`` lacks."""


# --------------------------------------------------------------------------
# The triton.language shim.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _DType:
    """Stand-in for a ``triton.language`` dtype (``tl.int32`` etc.)."""

    name: str
    np_dtype: Any

    def is_floating(self) -> bool:
        return jnp.issubdtype(self.np_dtype, jnp.floating)

    def is_int(self) -> bool:
        return jnp.issubdtype(self.np_dtype, jnp.integer) or self.np_dtype == jnp.bool_

    def __repr__(self) -> str:
        return f"tl.{self.name}"


_DTYPES = {
    "int1": jnp.bool_, "int8": jnp.int8, "int16": jnp.int16, "int32": jnp.int32, "int64": jnp.int64,
    "uint8": jnp.uint8, "uint16": jnp.uint16, "uint32": jnp.uint32, "uint64": jnp.uint64,
    "float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32, "float64": jnp.float64,
}
_DTYPE_OBJS = {name: _DType(name, dt) for name, dt in _DTYPES.items()}


def _unwrap(x: Any) -> Any:
    """The JAX array (or Python scalar) behind a shim value."""
    if isinstance(x, _Tensor):
        return x.a
    if isinstance(x, (tuple, list)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _as_array(x: Any) -> jax.Array:
    x = _unwrap(x)
    return x if isinstance(x, jax.Array) else jnp.asarray(x)


def _is_int(x: Any) -> bool:
    x = _unwrap(x)
    if isinstance(x, (bool, np.bool_)):
        return True
    if isinstance(x, (int, np.integer)):
        return True
    return hasattr(x, "dtype") and (jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_)


def _promote(a: Any, b: Any) -> tuple[jax.Array, jax.Array]:
    """Two operands as same-dtype, same-shape arrays (JAX weak-type promotion)."""
    a, b = _unwrap(a), _unwrap(b)
    dtype = jnp.result_type(a, b)
    a = jnp.asarray(a).astype(dtype)
    b = jnp.asarray(b).astype(dtype)
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    return jnp.broadcast_to(a, shape), jnp.broadcast_to(b, shape)


def _floordiv(a: Any, b: Any) -> "_Tensor":
    if _is_int(a) and _is_int(b):
        x, y = _promote(a, b)
        return _Tensor(lax.div(x, y))
    return _Tensor(jnp.floor_divide(_unwrap(a), _unwrap(b)))


def _mod(a: Any, b: Any) -> "_Tensor":
    # Triton: srem for signed ints, frem for floats; both take the sign of
    # the dividend, like lax.rem.
    x, y = _promote(a, b)
    return _Tensor(lax.rem(x, y))


def _binary(op: Callable) -> Callable:
    def method(self, other):
        if not isinstance(other, (_Tensor, int, float, bool, np.number, np.bool_, jax.Array)):
            return NotImplemented
        return _Tensor(op(self.a, _unwrap(other)))

    def rmethod(self, other):
        if not isinstance(other, (_Tensor, int, float, bool, np.number, np.bool_, jax.Array)):
            return NotImplemented
        return _Tensor(op(_unwrap(other), self.a))

    return method, rmethod


class _Tensor:
    """A JAX array with Triton tensor semantics, as the mask methods see it.

    Attributes:
      a: the wrapped JAX array.
    """

    __slots__ = ("a",)
    __array_priority__ = 1000

    def __init__(self, a: Any):
        self.a = a if isinstance(a, jax.Array) else jnp.asarray(a)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.a.shape

    @property
    def dtype(self) -> _DType:
        for obj in _DTYPE_OBJS.values():
            if jnp.dtype(obj.np_dtype) == self.a.dtype:
                return obj
        raise MaskShimError(f"no Triton dtype for {self.a.dtype}")

    @property
    def T(self) -> "_Tensor":
        return _Tensor(self.a.T)

    def to(self, dtype: Any, fp_downcast_rounding: Any = None, bitcast: bool = False) -> "_Tensor":
        dtype = _np_dtype(dtype)
        if bitcast:
            return _Tensor(lax.bitcast_convert_type(self.a, dtype))
        if dtype == jnp.bool_ and self.a.dtype != jnp.bool_:
            return _Tensor(self.a != 0)
        return _Tensor(self.a.astype(dtype))

    def __getitem__(self, idx: Any) -> "_Tensor":
        return _Tensor(self.a[_unwrap(idx)])

    def __bool__(self):
        raise MaskShimError("Python control flow (if/while/and/or/not) on a tensor")

    def __index__(self):
        raise MaskShimError("a tensor used as a Python int")

    __int__ = __index__

    def __float__(self):
        raise MaskShimError("a tensor used as a Python float")

    def __iter__(self):
        raise MaskShimError("iterating over a tensor")

    def __len__(self):
        raise MaskShimError("len() of a tensor")

    def __neg__(self) -> "_Tensor":
        return _Tensor(-self.a)

    def __pos__(self) -> "_Tensor":
        return self

    def __invert__(self) -> "_Tensor":
        return _Tensor(~self.a)

    def __abs__(self) -> "_Tensor":
        return _Tensor(jnp.abs(self.a))

    def __floordiv__(self, other):
        return _floordiv(self, other)

    def __rfloordiv__(self, other):
        return _floordiv(other, self)

    def __mod__(self, other):
        return _mod(self, other)

    def __rmod__(self, other):
        return _mod(other, self)

    def __truediv__(self, other):
        return _Tensor(jnp.true_divide(self.a, _unwrap(other)))

    def __rtruediv__(self, other):
        return _Tensor(jnp.true_divide(_unwrap(other), self.a))

    __add__, __radd__ = _binary(operator.add)
    __sub__, __rsub__ = _binary(operator.sub)
    __mul__, __rmul__ = _binary(operator.mul)
    __pow__, __rpow__ = _binary(operator.pow)
    __and__, __rand__ = _binary(operator.and_)
    __or__, __ror__ = _binary(operator.or_)
    __xor__, __rxor__ = _binary(operator.xor)
    __lshift__, __rlshift__ = _binary(operator.lshift)
    __rshift__, __rrshift__ = _binary(operator.rshift)
    __lt__, _unused_lt = _binary(operator.lt)
    __le__, _unused_le = _binary(operator.le)
    __gt__, _unused_gt = _binary(operator.gt)
    __ge__, _unused_ge = _binary(operator.ge)
    __eq__, _unused_eq = _binary(operator.eq)
    __ne__, _unused_ne = _binary(operator.ne)
    __hash__ = None

    def __repr__(self) -> str:
        return f"_Tensor({self.a!r})"


class _Pointer:
    """A pointer into one example's row of a mask array, for ``tl.load``.

    The kernels give a mask method a pointer to the row of the example being
    computed; here that row is a flat JAX array and the pointer an int32
    offset into it (any shape: ``ptr + offsets`` broadcasts).
    """

    def __init__(self, base: jax.Array, offset: Any = 0):
        self.base = base
        self.offset = offset

    def __add__(self, other: Any) -> "_Pointer":
        if isinstance(other, _Pointer):
            raise MaskShimError("adding two pointers")
        if not _is_int(other):
            raise MaskShimError("pointer offsets must be integers")
        return _Pointer(self.base, _as_array(self.offset).astype(jnp.int32) + _as_array(other).astype(jnp.int32))

    __radd__ = __add__

    def __sub__(self, other: Any) -> "_Pointer":
        return self + (-_as_array(other))

    def __bool__(self):
        raise MaskShimError("a pointer used as a Python bool")


def _load(pointer: Any, mask: Any = None, other: Any = None, **unused: Any) -> "_Tensor":
    """``tl.load``: the elements at the pointer's offsets (clamped into the
    row; masked-off elements are ``other``, default 0)."""
    if not isinstance(pointer, _Pointer):
        raise MaskShimError(f"tl.load of {type(pointer).__name__}, expected a mask array pointer")
    offset = _as_array(pointer.offset).astype(jnp.int32)
    values = jnp.take(pointer.base, jnp.clip(offset, 0, pointer.base.shape[0] - 1))
    if mask is not None:
        fill = jnp.zeros((), values.dtype) if other is None else jnp.asarray(_unwrap(other), values.dtype)
        values = jnp.where(_as_array(mask).astype(jnp.bool_), values, fill)
    return _Tensor(values)


def _np_dtype(dtype: Any) -> Any:
    """The JAX dtype of a Triton dtype (64-bit ones narrow without jax_enable_x64)."""
    if isinstance(dtype, _DType):
        return jax.dtypes.canonicalize_dtype(dtype.np_dtype)
    name = getattr(dtype, "name", None)
    if isinstance(dtype, tl.dtype) and name in _DTYPES:
        return jax.dtypes.canonicalize_dtype(_DTYPES[name])
    raise MaskShimError(f"unsupported dtype {dtype!r}")


def _shape(shape: Any) -> tuple[int, ...]:
    shape = _unwrap(shape)
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _reduce(fn: Callable) -> Callable:
    def reducer(x, axis=None, keep_dims=False, **unused):
        return _Tensor(fn(_as_array(x), axis=_unwrap(axis), keepdims=keep_dims))

    return reducer


def _unary(fn: Callable) -> Callable:
    return lambda x, *unused, **unused_kw: _Tensor(fn(_as_array(x)))


def _elementwise_max(*args: Any) -> Any:
    return functools.reduce(lambda x, y: _Tensor(jnp.maximum(_unwrap(x), _unwrap(y))), args)


def _elementwise_min(*args: Any) -> Any:
    return functools.reduce(lambda x, y: _Tensor(jnp.minimum(_unwrap(x), _unwrap(y))), args)


def _builtin_max(*args: Any, **kwargs: Any) -> Any:
    """``max`` as Triton's frontend reads it: elementwise on tensors."""
    if len(args) < 2 or kwargs or not any(isinstance(a, _Tensor) for a in args):
        return builtins.max(*args, **kwargs)
    return _elementwise_max(*args)


def _builtin_min(*args: Any, **kwargs: Any) -> Any:
    """``min`` as Triton's frontend reads it: elementwise on tensors."""
    if len(args) < 2 or kwargs or not any(isinstance(a, _Tensor) for a in args):
        return builtins.min(*args, **kwargs)
    return _elementwise_min(*args)


def _static_assert(cond: Any, msg: str = "") -> None:
    if isinstance(cond, _Tensor):
        raise MaskShimError("static_assert on a tensor")
    assert cond, msg


class _Language(types.SimpleNamespace):
    """The subset of ``triton.language`` the mask methods may use, on JAX arrays."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise MaskShimError(f"triton.language.{name} is not supported by the XLA mask shim")


_LANG = _Language(
    where=lambda c, x, y: _Tensor(jnp.where(_unwrap(c), _unwrap(x), _unwrap(y))),
    minimum=lambda x, y, *unused, **unused_kw: _elementwise_min(x, y),
    maximum=lambda x, y, *unused, **unused_kw: _elementwise_max(x, y),
    clamp=lambda x, lo, hi, *unused, **unused_kw: _elementwise_min(_elementwise_max(x, lo), hi),
    abs=_unary(jnp.abs),
    cdiv=lambda x, d: _floordiv(_Tensor(_unwrap(x)) + _unwrap(d) - 1, d),
    arange=lambda start, end, **unused: _Tensor(jnp.arange(int(start), int(end), dtype=jnp.int32)),
    full=lambda shape, value, dtype, **unused: _Tensor(jnp.full(_shape(shape), _unwrap(value), _np_dtype(dtype))),
    zeros=lambda shape, dtype, **unused: _Tensor(jnp.zeros(_shape(shape), _np_dtype(dtype))),
    zeros_like=lambda x, **unused: _Tensor(jnp.zeros_like(_as_array(x))),
    broadcast_to=lambda x, *shape, **unused: _Tensor(jnp.broadcast_to(
        _as_array(x), _shape(shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape))),
    reshape=lambda x, *shape, **unused: _Tensor(jnp.reshape(
        _as_array(x), _shape(shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape))),
    expand_dims=lambda x, axis: _Tensor(jnp.expand_dims(_as_array(x), _unwrap(axis))),
    trans=lambda x, *dims: _Tensor(jnp.transpose(_as_array(x), dims or None)),
    permute=lambda x, *dims: _Tensor(jnp.transpose(
        _as_array(x), dims[0] if len(dims) == 1 and not isinstance(dims[0], int) else dims)),
    sum=_reduce(jnp.sum),
    max=_reduce(jnp.max),
    min=_reduce(jnp.min),
    exp=_unary(jnp.exp),
    exp2=_unary(jnp.exp2),
    log=_unary(jnp.log),
    log2=_unary(jnp.log2),
    sqrt=_unary(jnp.sqrt),
    floor=_unary(jnp.floor),
    ceil=_unary(jnp.ceil),
    fma=lambda x, y, z: _Tensor(_unwrap(x) * _unwrap(y) + _unwrap(z)),
    load=_load,
    constexpr=lambda value=None: value,
    static_range=range,
    static_assert=_static_assert,
    static_print=lambda *unused, **unused_kw: None,
    device_assert=lambda *unused, **unused_kw: None,
    tensor=_Tensor,
    **_DTYPE_OBJS,
)
_LANG.math = _LANG
_TRITON = _Language(language=_LANG, cdiv=_LANG.cdiv)


def _shim(fn: Callable, memo: dict[int, Callable] | None = None) -> Callable:
    """A copy of a Triton function that runs on JAX arrays (see the module doc).

    Args:
      fn: a plain Python function (a mask method or a ``@triton.jit`` helper).
      memo: conversions already made in this call tree (helpers may recurse).

    Returns:
      The converted function; same code, new globals.
    """
    memo = {} if memo is None else memo
    if id(fn) in memo:
        return memo[id(fn)]
    lang_ids = {id(tl), id(tl.math), id(tl.core)}
    lang_fns = {id(getattr(tl, name)): getattr(_LANG, name) for name in vars(_LANG) if hasattr(tl, name)}
    new_globals: dict[str, Any] = {}
    new_fn = types.FunctionType(fn.__code__, new_globals, fn.__name__, fn.__defaults__, fn.__closure__)
    new_fn.__kwdefaults__ = fn.__kwdefaults__
    memo[id(fn)] = new_fn
    for name, value in fn.__globals__.items():
        if id(value) in lang_ids:
            value = _LANG
        elif value is triton:
            value = _TRITON
        elif isinstance(value, JITFunction):
            value = _shim(value.fn, memo)
        elif id(value) in lang_fns:
            value = lang_fns[id(value)]
        elif isinstance(value, tl.constexpr):
            value = value.value
        new_globals[name] = value
    new_globals["max"] = _builtin_max
    new_globals["min"] = _builtin_min
    return new_fn


# --------------------------------------------------------------------------
# Mask evaluators: the shim (fast, traced) and the interpreter fallback.
# --------------------------------------------------------------------------


def _broadcast_int(x: Any, shape: tuple[int, ...]) -> jax.Array:
    x = _as_array(x)
    if not (jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
        x = jnp.trunc(x)
    return jnp.broadcast_to(x.astype(jnp.int32), shape)


class _ShimEvaluator:
    """Evaluates the mask's methods on traced JAX arrays through the shim."""

    def __init__(self, mask: ChillMask):
        spec = mask.spec()
        self.args = spec.args
        self.slots = mask.arrays
        self.takes_len = spec.mask_takes_len
        self.k_continuous = spec.k_continuous
        self.q_continuous = spec.q_continuous
        self._mask_fn = _shim(spec.mask_fn)
        self._k_fn = _shim(spec.k_range_fn)
        self._q_fn = _shim(spec.q_range_fn)

    def prepare(self, q_lens, kv_lens, t, s, tp, sp, arrays=()) -> tuple:
        """The mask arrays as flat rows, ``[B, size]`` each."""
        return tuple(a.reshape(a.shape[0], -1) for a in arrays)

    def _args(self, data) -> tuple:
        """The methods' ``args``: constants, then a pointer to each array's row."""
        return self.args + tuple(_Pointer(row) for row in (data or ()))

    def allowed(self, data, q0, k0, bq: int, bk: int, kv_len) -> jax.Array:
        """Bool ``[bq, bk]``: ``mask(q0 + arange(bq), k0 + arange(bk), kv_len)``."""
        q = _Tensor(q0 + jnp.arange(bq, dtype=jnp.int32))
        k = _Tensor(k0 + jnp.arange(bk, dtype=jnp.int32))
        if self.takes_len:
            res = self._mask_fn(q, k, _Tensor(kv_len), self._args(data))
        else:
            res = self._mask_fn(q, k, self._args(data))
        res = _as_array(res)
        if res.dtype != jnp.bool_:
            res = res != 0
        return jnp.broadcast_to(res, (bq, bk))

    def _range(self, fn, data, pos, other_len) -> tuple[jax.Array, jax.Array]:
        # The methods are written for one scalar position (as the kernels call
        # them); vectors of positions go through vmap, never into the method.
        if pos.ndim:
            return jax.vmap(lambda p: self._range(fn, data, p, other_len))(pos)
        lo, hi = fn(_Tensor(pos), _Tensor(other_len), self._args(data))
        return _broadcast_int(lo, ()), _broadcast_int(hi, ())

    def k_range(self, data, pos, kv_len) -> tuple[jax.Array, jax.Array]:
        """Raw ``k_range_for_q(pos, kv_len)`` for int32 positions (scalar or vector)."""
        return self._range(self._k_fn, data, pos, kv_len)

    def q_range(self, data, pos, q_len) -> tuple[jax.Array, jax.Array]:
        """Raw ``q_range_for_k(pos, q_len)`` for int32 positions (scalar or vector)."""
        return self._range(self._q_fn, data, pos, q_len)

    def probe(self) -> None:
        """Traces every method abstractly; raises what the shim cannot handle."""
        i32 = jax.ShapeDtypeStruct((), jnp.int32)
        rows = tuple(jax.ShapeDtypeStruct((max(1, int(np.prod(slot.shape[1:]))),), slot.dtype)
                     for slot in self.slots)

        def run(q0, k0, n, data):
            return [self.allowed(data, q0, k0, 16, 8, n), self.k_range(data, q0, n),
                    self.q_range(data, k0, n)]

        jax.eval_shape(run, i32, i32, i32, rows)


@functools.lru_cache(maxsize=_FALLBACK_CACHE_SIZE)
def _interpreted_tables(mask: ChillMask, q_len: int, kv_len: int):
    """Dense mask and raw ranges of one example's lengths, via the interpreter."""
    dense = mask.make_mask(q_len, kv_len, seq_len=kv_len)
    k_ranges, q_ranges = mask.ranges(q_len, kv_len)
    return dense, k_ranges, q_ranges


class _InterpreterEvaluator:
    """Evaluates the mask's methods through Triton's interpreter (host callback)."""

    def __init__(self, mask: ChillMask):
        spec = mask.spec()
        self.mask = mask
        self.k_continuous = spec.k_continuous
        self.q_continuous = spec.q_continuous

    def prepare(self, q_lens, kv_lens, t, s, tp, sp, arrays=()):
        """Per-example tables: bool ``[B, tp, sp]``, int32 ``[B, tp, 2]``, ``[B, sp, 2]``."""
        treedef = jax.tree_util.tree_structure(self.mask)

        def host(q_lens, kv_lens, *host_arrays):
            q_lens, kv_lens = np.asarray(q_lens), np.asarray(kv_lens)
            lead = q_lens.shape
            # With arrays: the mask of these values, each example its own row.
            concrete = jax.tree_util.tree_unflatten(
                treedef, [np.asarray(a).reshape(-1, *a.shape[len(lead):]) for a in host_arrays])
            dense = np.zeros((q_lens.size, tp, sp), bool)
            kr = np.zeros((q_lens.size, tp, 2), np.int32)
            qr = np.zeros((q_lens.size, sp, 2), np.int32)
            for e, (ql, kl) in enumerate(zip(q_lens.reshape(-1), kv_lens.reshape(-1))):
                ql, kl = int(np.clip(ql, 0, t)), int(np.clip(kl, 0, s))
                if ql > 0 and kl > 0:
                    if host_arrays:
                        d = concrete.make_mask(ql, kl, seq_len=kl, example=e)
                        k_r, q_r = concrete.ranges(ql, kl, example=e)
                    else:
                        d, k_r, q_r = _interpreted_tables(self.mask, ql, kl)
                    dense[e, :ql, :kl] = d
                    kr[e, :ql] = k_r
                    qr[e, :kl] = q_r
            return (dense.reshape(*lead, tp, sp), kr.reshape(*lead, tp, 2), qr.reshape(*lead, sp, 2))

        b = q_lens.shape[0]
        shapes = (jax.ShapeDtypeStruct((b, tp, sp), jnp.bool_), jax.ShapeDtypeStruct((b, tp, 2), jnp.int32),
                  jax.ShapeDtypeStruct((b, sp, 2), jnp.int32))
        return jax.pure_callback(host, shapes, q_lens, kv_lens, *arrays, vmap_method="broadcast_all")

    def allowed(self, data, q0, k0, bq: int, bk: int, kv_len) -> jax.Array:
        return lax.dynamic_slice(data[0], (q0, k0), (bq, bk))

    def k_range(self, data, pos, kv_len):
        row = jnp.take(data[1], jnp.clip(pos, 0, data[1].shape[0] - 1), axis=0)
        return row[..., 0], row[..., 1]

    def q_range(self, data, pos, q_len):
        row = jnp.take(data[2], jnp.clip(pos, 0, data[2].shape[0] - 1), axis=0)
        return row[..., 0], row[..., 1]


@functools.lru_cache(maxsize=None)
def _evaluator(mask: ChillMask):
    """The shim evaluator of ``mask``, or the interpreter fallback (with a warning)."""
    mask.spec()  # A malformed mask raises here, not in the fallback.
    try:
        ev = _ShimEvaluator(mask)
        ev.probe()
        return ev
    except Exception as e:  # noqa: BLE001 (any failure means: use the interpreter)
        warnings.warn(
            f"chill_jax xla attention: the methods of {mask!r} cannot be evaluated in JAX "
            f"({type(e).__name__}: {e}); falling back to Triton's interpreter through a host "
            "callback (slow: ~1 ms per 64x64 mask tile per new length pair, and a [B, T, S] "
            "mask in memory)", stacklevel=3)
        return _InterpreterEvaluator(mask)


# --------------------------------------------------------------------------
# Blocking helpers.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Static:
    """Static (hashable) parameters of one call."""

    mask: ChillMask
    sm_scale: float
    layout: str
    block_q: int
    block_k: int
    precision: Any

    # Folding vmapped axes into the batch (the rule of ``_sharding.sharded``)
    # matters here: under plain vmap the loops' per-example bounds would be
    # batched and every iteration would select over the loop-carried state.
    implementation = "xla"

    def forward(self, q, k, v, q_lens, kv_lens, *arrays):
        return _forward(self, q, k, v, q_lens, kv_lens, arrays)

    def backward(self, q, k, v, out, lse, dout, dlse, q_lens, kv_lens, *arrays):
        return _backward(self, q, k, v, out, lse, dout, dlse, q_lens, kv_lens, arrays)


@dataclasses.dataclass(frozen=True)
class _Geo:
    """Shapes of one call: sizes, block sizes and padded lengths."""

    b: int
    t: int
    s: int
    n: int
    kh: int
    g: int
    d: int
    bq: int
    bk: int
    nq: int
    nk: int

    @property
    def tp(self) -> int:
        return self.nq * self.bq

    @property
    def sp(self) -> int:
        return self.nk * self.bk


def _block_size(length: int, block: int) -> tuple[int, int]:
    """(number of blocks, block size): blocks of at most ~``block``, balanced,
    a multiple of 8 (or the whole length rounded up to 8)."""
    n = -(-length // block)
    size = -(-length // n)
    size = -(-size // 8) * 8
    return -(-length // size), size


def _geometry(static: _Static, q_shape, k_shape) -> _Geo:
    if static.layout == "BTNH":
        b, t, n, d = q_shape
        _, s, kh, _ = k_shape
    else:
        b, n, t, d = q_shape
        _, kh, s, _ = k_shape
    nq, bq = _block_size(t, static.block_q)
    nk, bk = _block_size(s, static.block_k)
    return _Geo(b=b, t=t, s=s, n=n, kh=kh, g=n // kh, d=d, bq=bq, bk=bk, nq=nq, nk=nk)


def _to_bnth(x: jax.Array, layout: str) -> jax.Array:
    return x if layout == "BNTH" else x.transpose(0, 2, 1, 3)


def _zero_past(x: jax.Array, lens: jax.Array) -> jax.Array:
    """``[B, H, L, D]`` with positions at/after ``lens[b]`` zeroed, like the
    kernels' masked loads (so NaN/inf padding cannot leak through 0 * x)."""
    pos = jnp.arange(x.shape[2], dtype=jnp.int32)
    return jnp.where((pos[None, :] < lens[:, None])[:, None, :, None], x, 0.0)


def _block_rows(x: jax.Array, geo: _Geo, layout: str, lens: jax.Array) -> jax.Array:
    """Query-side ``[B, T, N, D]``/``[B, N, T, D]`` -> f32 ``[B * nq, K, G * bq, D]``,
    zero at/after ``lens``."""
    x = _zero_past(_to_bnth(x, layout).astype(jnp.float32), lens)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, geo.tp - geo.t), (0, 0)))
    x = x.reshape(geo.b, geo.kh, geo.g, geo.nq, geo.bq, geo.d).transpose(0, 3, 1, 2, 4, 5)
    return x.reshape(geo.b * geo.nq, geo.kh, geo.g * geo.bq, geo.d)


def _unblock_rows(x: jax.Array, geo: _Geo, layout: str) -> jax.Array:
    """Inverse of :func:`_block_rows` (dtype kept)."""
    x = x.reshape(geo.b, geo.nq, geo.kh, geo.g, geo.bq, geo.d).transpose(0, 2, 3, 1, 4, 5)
    x = x.reshape(geo.b, geo.n, geo.tp, geo.d)[:, :, :geo.t]
    return x if layout == "BNTH" else x.transpose(0, 2, 1, 3)


def _block_stats(x: jax.Array, geo: _Geo, fill: float) -> jax.Array:
    """Row statistics ``[B, N, T]`` -> f32 ``[B * nq, K, G * bq]``."""
    x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, 0), (0, geo.tp - geo.t)), constant_values=fill)
    x = x.reshape(geo.b, geo.kh, geo.g, geo.nq, geo.bq).transpose(0, 3, 1, 2, 4)
    return x.reshape(geo.b * geo.nq, geo.kh, geo.g * geo.bq)


def _unblock_stats(x: jax.Array, geo: _Geo) -> jax.Array:
    x = x.reshape(geo.b, geo.nq, geo.kh, geo.g, geo.bq).transpose(0, 2, 3, 1, 4)
    return x.reshape(geo.b, geo.n, geo.tp)[:, :, :geo.t]


def _block_keys(x: jax.Array, geo: _Geo, layout: str, lens: jax.Array) -> jax.Array:
    """Key-side ``[B, S, K, D]``/``[B, K, S, D]`` -> f32 ``[B * nk, K, bk, D]``,
    zero at/after ``lens``."""
    x = _zero_past(_to_bnth(x, layout).astype(jnp.float32), lens)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, geo.sp - geo.s), (0, 0)))
    x = x.reshape(geo.b, geo.kh, geo.nk, geo.bk, geo.d).transpose(0, 2, 1, 3, 4)
    return x.reshape(geo.b * geo.nk, geo.kh, geo.bk, geo.d)


def _unblock_keys(x: jax.Array, geo: _Geo, layout: str) -> jax.Array:
    x = x.reshape(geo.b, geo.nk, geo.kh, geo.bk, geo.d).transpose(0, 2, 1, 3, 4)
    x = x.reshape(geo.b, geo.kh, geo.sp, geo.d)[:, :, :geo.s]
    return x if layout == "BNTH" else x.transpose(0, 2, 1, 3)


def _hull(range_fn, continuous: bool, data, start, count, size: int, other_len, other_block: int):
    """Blocks of the other side a tile must visit.

    Args:
      range_fn: ``(data, positions, other_len) -> (lo, hi)`` raw ranges.
      continuous: both ends never decrease (use the first lo, the last hi).
      data: the evaluator's per-example tables.
      start: first position of the tile; count: its valid positions (may be
        <= 0: nothing to do).
      size: the tile size.
      other_len: the other side's length (clips the hull; seq_len of range_fn).
      other_block: the other side's block size.

    Returns:
      ``(first, end)``: int32 block indices, ``first <= end``; empty when
      nothing may be attended.
    """
    if continuous:
        lo, _unused = range_fn(data, start, other_len)
        _unused, hi = range_fn(data, start + jnp.maximum(count, 1) - 1, other_len)
    else:
        pos = start + jnp.arange(size, dtype=jnp.int32)
        lo_v, hi_v = range_fn(data, pos, other_len)
        valid = jnp.arange(size) < count
        lo = jnp.min(jnp.where(valid, lo_v, jnp.iinfo(jnp.int32).max))
        hi = jnp.max(jnp.where(valid, hi_v, -1))
    lo = jnp.maximum(lo, 0)
    hi = jnp.minimum(hi, other_len - 1)
    first = lo // other_block
    end = jnp.where((hi >= lo) & (count > 0), hi // other_block + 1, first)
    return first, end


def _dot(spec: str, a, b, precision):
    return jnp.einsum(spec, a, b, precision=precision, preferred_element_type=jnp.float32)


# --------------------------------------------------------------------------
# Forward and backward passes.
# --------------------------------------------------------------------------


def _clamped_lengths(q_lens, kv_lens, geo: _Geo):
    return (jnp.clip(q_lens.astype(jnp.int32), 0, geo.t), jnp.clip(kv_lens.astype(jnp.int32), 0, geo.s))


def _tile_mask(ev, data_b, q0, k0, geo: _Geo, kv_len) -> jax.Array:
    """Bool ``[bq, bk]``: the mask within the key length."""
    allowed = ev.allowed(data_b, q0, k0, geo.bq, geo.bk, kv_len)
    return allowed & (k0 + jnp.arange(geo.bk, dtype=jnp.int32) < kv_len)[None, :]


def _forward(static: _Static, q, k, v, q_lens, kv_lens, arrays=()):
    """Output (like ``q``) and lse (f32 ``[B, N, T]``)."""
    geo = _geometry(static, q.shape, k.shape)
    ev = _evaluator(static.mask)
    q_lens, kv_lens = _clamped_lengths(q_lens, kv_lens, geo)
    data = ev.prepare(q_lens, kv_lens, geo.t, geo.s, geo.tp, geo.sp, arrays)
    qb = _block_rows(q, geo, static.layout, q_lens) * static.sm_scale
    kb = _block_keys(k, geo, static.layout, kv_lens)
    vb = _block_keys(v, geo, static.layout, kv_lens)
    kh, rows, bq, bk = geo.kh, geo.g * geo.bq, geo.bq, geo.bk
    prec = static.precision

    def per_block(_, xs):
        idx, q_blk = xs
        b, i = idx // geo.nq, idx % geo.nq
        q_len, kv_len = q_lens[b], kv_lens[b]
        data_b = jax.tree.map(lambda x: x[b], data)
        q0 = i * bq
        first, end = _hull(ev.k_range, ev.k_continuous, data_b, q0, jnp.minimum(q_len - q0, bq), bq,
                           kv_len, bk)

        def body(j, carry):
            m, l, acc = carry
            k0 = j * bk
            k_blk = kb[b * geo.nk + j]
            v_blk = vb[b * geo.nk + j]
            scores = _dot("kqd,ksd->kqs", q_blk, k_blk, prec).reshape(kh, geo.g, bq, bk)
            allowed = _tile_mask(ev, data_b, q0, k0, geo, kv_len)
            scores = jnp.where(allowed, scores, -jnp.inf).reshape(kh, rows, bk)
            m_new = jnp.maximum(m, scores.max(-1))
            m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            alpha = jnp.exp(m - m_use)
            p = jnp.exp(scores - m_use[..., None])
            l = l * alpha + p.sum(-1)
            acc = acc * alpha[..., None] + _dot("kqs,ksd->kqd", p, v_blk, prec)
            return m_new, l, acc

        init = (jnp.full((kh, rows), -jnp.inf, jnp.float32), jnp.zeros((kh, rows), jnp.float32),
                jnp.zeros((kh, rows, geo.d), jnp.float32))
        # Under shard_map the carries must vary over the manual axes like the inputs.
        init = tuple(_launch.restore_varying(list(init), [q_blk, q_len, kv_len]))
        m, l, acc = lax.fori_loop(first, end, body, init)
        pos = q0 + jnp.tile(jnp.arange(bq, dtype=jnp.int32), geo.g)
        ok = (pos < q_len)[None, :] & (l > 0)
        safe_l = jnp.where(ok, l, 1.0)
        out = jnp.where(ok[..., None], acc / safe_l[..., None], 0.0)
        lse = jnp.where(ok, m + jnp.log(safe_l), -jnp.inf)
        return None, (out.astype(q.dtype), lse)

    idx = jnp.arange(geo.b * geo.nq, dtype=jnp.int32)
    _, (out, lse) = lax.scan(per_block, None, (idx, qb))
    return _unblock_rows(out, geo, static.layout), _unblock_stats(lse, geo)


def _backward(static: _Static, q, k, v, out, lse, dout, dlse, q_lens, kv_lens, arrays=()):
    """dq, dk, dv (like q, k, v) for output cotangent ``dout`` and lse cotangent ``dlse``."""
    geo = _geometry(static, q.shape, k.shape)
    ev = _evaluator(static.mask)
    q_lens, kv_lens = _clamped_lengths(q_lens, kv_lens, geo)
    data = ev.prepare(q_lens, kv_lens, geo.t, geo.s, geo.tp, geo.sp, arrays)
    scale = static.sm_scale
    prec = static.precision
    kh, rows, bq, bk = geo.kh, geo.g * geo.bq, geo.bq, geo.bk
    qb = _block_rows(q, geo, static.layout, q_lens)
    dob = _block_rows(dout, geo, static.layout, q_lens)
    delta = jnp.sum(_to_bnth(out, static.layout).astype(jnp.float32)
                    * _to_bnth(dout, static.layout).astype(jnp.float32), -1) - dlse.astype(jnp.float32)
    # Rows without keys have p = 0; a non-finite cotangent there must not turn 0 into NaN.
    delta = jnp.where(lse == -jnp.inf, 0.0, delta)
    deltab = _block_stats(delta, geo, 0.0)
    # Rows without keys (lse = -inf) get +inf, so exp(s - lse) = 0 there.
    lseb = _block_stats(jnp.where(lse == -jnp.inf, jnp.inf, lse), geo, jnp.inf)
    kb = _block_keys(k, geo, static.layout, kv_lens)
    vb = _block_keys(v, geo, static.layout, kv_lens)

    def per_block(dq_acc, xs):
        idx, k_blk, v_blk = xs
        b, j = idx // geo.nk, idx % geo.nk
        q_len, kv_len = q_lens[b], kv_lens[b]
        data_b = jax.tree.map(lambda x: x[b], data)
        k0 = j * bk
        first, end = _hull(ev.q_range, ev.q_continuous, data_b, k0, jnp.minimum(kv_len - k0, bk), bk,
                           q_len, bq)
        k_scaled = k_blk * scale

        def body(i, carry):
            dq_acc, dk, dv = carry
            q0 = i * bq
            row = b * geo.nq + i
            q_blk, do_blk = qb[row], dob[row]
            scores = _dot("kqd,ksd->kqs", q_blk, k_scaled, prec)
            p = jnp.exp(scores - lseb[row][..., None]).reshape(kh, geo.g, bq, bk)
            allowed = _tile_mask(ev, data_b, q0, k0, geo, kv_len)
            p = jnp.where(allowed, p, 0.0).reshape(kh, rows, bk)
            dv = dv + _dot("kqs,kqd->ksd", p, do_blk, prec)
            dp = _dot("kqd,ksd->kqs", do_blk, v_blk, prec)
            ds = p * (dp - deltab[row][..., None])
            dk = dk + _dot("kqs,kqd->ksd", ds, q_blk, prec)
            dq_acc = dq_acc.at[row].add(_dot("kqs,ksd->kqd", ds, k_scaled, prec))
            return dq_acc, dk, dv

        zeros, = _launch.restore_varying([jnp.zeros((kh, bk, geo.d), jnp.float32)], [k_blk, q_len, kv_len])
        dq_acc, dk, dv = lax.fori_loop(first, end, body, (dq_acc, zeros, zeros))
        return dq_acc, ((dk * scale).astype(k.dtype), dv.astype(v.dtype))

    idx = jnp.arange(geo.b * geo.nk, dtype=jnp.int32)
    dq_acc, = _launch.restore_varying([jnp.zeros((geo.b * geo.nq, kh, rows, geo.d), jnp.float32)],
                                      [qb, kb, q_lens, kv_lens])
    dq_acc, (dk, dv) = lax.scan(per_block, dq_acc, (idx, kb, vb))
    dq = _unblock_rows(dq_acc.astype(q.dtype), geo, static.layout)
    return dq, _unblock_keys(dk, geo, static.layout), _unblock_keys(dv, geo, static.layout)


_PRECISIONS = {
    None: lax.Precision.HIGHEST, "ieee": lax.Precision.HIGHEST, "tf32x3": lax.Precision.HIGH,
    "tf32": lax.Precision.DEFAULT,
}


def default_blocks(group: int) -> tuple[int, int]:
    """Default (block_q, block_k) for ``group`` query heads per key/value head.

    Tuned on CPU (2-core x86, float32, head dims 64/128): 64 x 64 tiles, with
    the query block shrunk so a tile stacks at most 256 query rows (GQA).
    """
    return max(16, min(64, 256 // group)), 64


def xla_attention(q, k, v, q_lens=None, kv_lens=None, *, mask: ChillMask, sm_scale: float, layout: str,
                  block_q: int | None = None, block_k: int | None = None,
                  precision: Any = None) -> tuple[jax.Array, jax.Array]:
    """Blockwise attention in plain JAX with the Triton kernels' semantics.

    Args:
      q: ``[B, T, N, D]`` (layout ``"BTNH"``) or ``[B, N, T, D]`` (``"BNTH"``).
      k: ``[B, S, K, D]`` / ``[B, K, S, D]``, ``N % K == 0``: query head ``h``
        uses key/value head ``h // (N // K)``.
      v: same shape as ``k``.
      q_lens: int ``[B]`` valid query lengths (clamped to ``[0, T]``), or
        None for ``T``. Queries at or after it give 0 and lse ``-inf``.
      kv_lens: int ``[B]`` valid key lengths (clamped to ``[0, S]``), or None
        for ``S``. Keys at or after it are never attended.
      mask: the :class:`ChillMask`; ``mask`` and ``k_range_for_q`` receive
        the example's key length as ``seq_len``, ``q_range_for_k`` its query
        length.
      sm_scale: logit scale.
      layout: ``"BTNH"`` or ``"BNTH"`` (of q, k, v and the output).
      block_q, block_k: target query/key block sizes (balanced to the
        lengths, rounded up to multiples of 8); None: :func:`default_blocks`.
      precision: dot precision: None/``"ieee"`` (full float32), ``"tf32x3"``,
        ``"tf32"`` or a ``jax.lax.Precision``.

    Returns:
      ``(out, lse)``: ``out`` shaped and typed like ``q`` (0 on rows at or
      after the query length or with no allowed key); ``lse`` float32
      ``[B, N, T]``, natural log, ``-inf`` on those rows. Differentiable in
      ``q``, ``k``, ``v`` (with cotangents on both outputs).

    Raises:
      ValueError: bad layout, shapes or block sizes.
      TypeError: ``mask`` is not a :class:`ChillMask`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not isinstance(mask, ChillMask):
        raise TypeError(f"mask must be a ChillMask instance, got {type(mask).__name__}")
    if q.ndim != 4 or k.ndim != 4 or tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"q, k, v must be 4-D with k.shape == v.shape, got {q.shape}, {k.shape}, {v.shape}")
    n, kh = (q.shape[2], k.shape[2]) if layout == "BTNH" else (q.shape[1], k.shape[1])
    if kh < 1 or n % kh or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1] or 0 in q.shape + k.shape:
        raise ValueError(f"incompatible q {q.shape} and k {k.shape} for layout {layout}")
    default_q, default_k = default_blocks(n // kh)
    block_q = default_q if block_q is None else block_q
    block_k = default_k if block_k is None else block_k
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"{name} must be a positive int, got {block!r}")
    static = _Static(mask=mask, sm_scale=float(sm_scale), layout=layout, block_q=block_q, block_k=block_k,
                     precision=_PRECISIONS.get(precision, precision))
    geo = _geometry(static, q.shape, k.shape)
    skeleton, arrays = split_arrays(mask, geo.b, geo.t, geo.s)
    static = dataclasses.replace(static, mask=skeleton)
    q_lens = jnp.full((geo.b,), geo.t, jnp.int32) if q_lens is None else jnp.asarray(q_lens)
    kv_lens = jnp.full((geo.b,), geo.s, jnp.int32) if kv_lens is None else jnp.asarray(kv_lens)
    for name, lens in (("q_lens", q_lens), ("kv_lens", kv_lens)):
        if lens.shape != (geo.b,) or not jnp.issubdtype(lens.dtype, jnp.integer):
            raise ValueError(f"{name} must be an integer array of shape ({geo.b},), got {lens.dtype}{lens.shape}")
    q_lens, kv_lens = _clamped_lengths(q_lens, kv_lens, geo)
    return _sharding.attention_op(static, q, k, v, q_lens, kv_lens, *batched_arrays(arrays, geo.b))
