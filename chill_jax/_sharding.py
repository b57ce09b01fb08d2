# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Multi-device execution: per-device kernels for sharded inputs, and vmap.

Attention is independent per (example, head), so when ``q``/``k``/``v`` are
sharded over the batch and/or head axes every device can run the kernels on
its own shard, with no communication. :func:`sharded` wraps the forward or
backward pass (``attention._forward`` / ``attention._backward``) so that this
happens however the caller shards:

- Inside a ``shard_map`` over every mesh axis (all axes manual), the pass
  runs as is on the local blocks (``_launch`` restores the varying axes).
- Explicit sharding (``jax.make_mesh``'s default axis type): the shardings
  are part of the arrays' types at trace time, so the pass is wrapped in an
  internal ``jax.shard_map`` over the mesh's free axes.
- Automatic sharding (``AxisType.Auto`` meshes, ``jax.sharding.Mesh``, or
  ``in_shardings`` / ``device_put`` handled by the compiler): the shardings
  are only known when XLA partitions the program, so the pass is a
  ``jax.experimental.custom_partitioning`` op. Its Shardy sharding rule makes
  the batch, leading (vmapped) and head dims pass-through factors (query and
  key/value heads are one factor without GQA, two otherwise), and its
  ``partition`` callback (also used by the GSPMD partitioner, with
  ``infer_sharding_from_operands``) receives the operands' shardings and
  returns a per-device function. On a single device, or inside a
  fully-manual ``shard_map``, the op is inlined.
- A ``shard_map`` manual over some axes with automatic axes left raises a
  ``NotImplementedError`` (the partitioner cannot hand over those shardings).
- Eager calls (no ``jit``) are compiled, so that sharded arrays are not
  dispatched op by op to one device.

In both sharded cases one plan (:func:`_make_plan`) decides the per-device
layout from the inputs' shardings:

- Leading (vmapped) dims and the batch dim keep the mesh axes they have.
- Query heads keep theirs (``P`` devices). Key/value heads (``K`` of them,
  ``N = K * G`` query heads) use the same axes when ``K % P == 0``. When each
  device's ``N / P`` query heads lie inside one key/value group
  (``G % (N / P) == 0``, e.g. multi-query attention), ``k``/``v`` stay
  replicated over the head axes (or over the trailing ones; a leading run of
  the head axes that divides ``K`` may shard them), each device slices its
  one key/value head, and the backward pass sums dK/dV over those axes (an
  all-reduce: each key/value head's gradient comes from query heads on
  several devices). Otherwise the heads are gathered (with a warning).
- The sequence axes (``T``, ``S``) and the head dim cannot be split by these
  kernels (a query needs every key; see docs/sequence_parallelism.md). If an
  input is sharded along one of them it is all-gathered along it and a
  ``UserWarning`` says so; results come back with the input's sharding. The
  same happens (with a warning) for a dim whose size the mesh axes do not
  divide.

vmap is handled here too (a ``custom_vmap`` rule): vmapped axes become extra
leading dims of the partitioned op, merged into the batch only on each
device, so a vmapped axis keeps its own sharding and no global reshape
(which would need communication when the batch is sharded) is made.

``implementation="interpret"`` runs the kernels from host callbacks. A
``jax.pure_callback`` cannot appear in the per-device function of a
``custom_partitioning`` op (it is lowered into a separate module whose host
callbacks XLA never registers; the process crashes). There, the callbacks are
re-emitted as calls to an XLA FFI target, ``chill_jax_host_call``, whose
handler is a ctypes callback into Python (:func:`host_call`); it works on the
CPU backend only.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import itertools
import math
import threading
import traceback
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
from jax._src import core as _jax_core  # get_axis_env: no public equivalent
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import AxisType, NamedSharding, PartitionSpec

# Argument and result roles of the two passes. "q": [B, T, N, D] (or BNTH),
# "kv": [B, S, K, D], "lse": [B, N, T], "b": [B]. The mask's arrays follow
# the arguments, role "m<i>.<ndim>": [B, ...] (batch dim, then dims of their
# own that are never split).
_ROLES = {
    "fwd": (("q", "kv", "kv", "b", "b"), ("q", "lse")),
    "bwd": (("q", "kv", "kv", "q", "lse", "q", "lse", "b", "b"), ("q", "kv", "kv")),
}
_PARTITIONED_IMPLEMENTATIONS = ("triton", "interpret", "xla")


def _roles(which: str, array_ndims: Sequence[int] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(argument roles, result roles) of a pass with mask arrays of these ranks."""
    args, results = _ROLES[which]
    return args + tuple(f"m{i}.{nd}" for i, nd in enumerate(array_ndims)), results


def _array_ndims(which: str, shapes: Sequence[tuple[int, ...]], nlead: int) -> tuple[int, ...]:
    """Ranks (without leading dims) of the mask arrays among a pass's operands."""
    return tuple(len(shape) - nlead for shape in shapes[len(_ROLES[which][0]):])


def _dim_names(role: str, layout: str, nlead: int) -> tuple[str, ...]:
    lead = tuple(f"l{i}" for i in range(nlead))
    if role.startswith("m"):
        index, ndim = role[1:].split(".")
        return lead + ("b",) + tuple(f"x{index}_{j}" for j in range(1, int(ndim)))
    if role == "q":
        dims = ("b", "t", "n", "d") if layout == "BTNH" else ("b", "n", "t", "d")
    elif role == "kv":
        dims = ("b", "s", "k", "d") if layout == "BTNH" else ("b", "k", "s", "d")
    elif role == "lse":
        dims = ("b", "n", "t")
    else:
        dims = ("b",)
    return lead + dims


_DIM_WORDS = {"t": "query sequence", "s": "key/value sequence", "d": "head_dim"}


# ----------------------------------------------------------------------------
# The plan: which mesh axes shard which dim on every device.


@dataclasses.dataclass(frozen=True)
class _Plan:
    lead: tuple[tuple[str, ...], ...]  # mesh axes of each leading (vmapped) dim
    batch: tuple[str, ...]
    heads: tuple[str, ...]  # mesh axes of the query heads
    kv_heads: tuple[str, ...]  # mesh axes of the key/value heads: a prefix of `heads`
    q_heads_local: int  # query heads per device
    kv_heads_local: int  # key/value heads per device before slicing
    group: int  # query heads per key/value head (G)

    @property
    def slice_kv(self) -> bool:
        """Whether each device slices its one key/value head out of its local ones."""
        return self.heads != self.kv_heads

    def spec(self, role: str, layout: str, nlead: int) -> PartitionSpec:
        entries = []
        for name in _dim_names(role, layout, nlead):
            if name.startswith("l"):
                axes = self.lead[int(name[1:])]
            else:
                axes = {"b": self.batch, "n": self.heads, "k": self.kv_heads}.get(name, ())
            entries.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
        return PartitionSpec(*entries)


def _spec_axes(spec: PartitionSpec, ndim: int) -> list[tuple[str, ...]]:
    """Per-dim tuples of mesh axes of a PartitionSpec (padded to ``ndim``)."""
    out = []
    for i in range(ndim):
        entry = spec[i] if i < len(spec) else None
        if entry is None or entry is PartitionSpec.UNCONSTRAINED:
            out.append(())
        elif isinstance(entry, str):
            out.append((entry,))
        else:
            out.append(tuple(entry))
    return out


def _make_plan(specs: Sequence[PartitionSpec], shapes: Sequence[tuple[int, ...]], which: str, layout: str,
               nlead: int, axis_sizes: dict[str, int]) -> _Plan:
    """Chooses the per-device layout from the operands' proposed shardings.

    Warns (once per call) about everything it has to gather.
    """
    roles = _roles(which, _array_ndims(which, shapes, nlead))[0]
    gathered = []
    proposals: dict[str, list[tuple[str, ...]]] = {}
    for i, (role, spec, shape) in enumerate(zip(roles, specs, shapes)):
        names = _dim_names(role, layout, nlead)
        for dim, (name, axes) in enumerate(zip(names, _spec_axes(spec, len(shape)))):
            if not axes:
                continue
            if name in _DIM_WORDS or name.startswith("x"):
                word = _DIM_WORDS.get(name, "mask array")
                gathered.append(f"operand {i} ({word} dim {dim}) is sharded over mesh axes {axes}")
                continue
            proposals.setdefault(name, []).append(axes)

    q_shape, kv_shape = shapes[0], shapes[1]
    qn = _dim_names("q", layout, nlead)
    kn = _dim_names("kv", layout, nlead)
    n_heads, kv_heads = q_shape[qn.index("n")], kv_shape[kn.index("k")]
    group = n_heads // kv_heads
    sizes = {f"l{i}": q_shape[i] for i in range(nlead)}
    sizes["b"] = q_shape[nlead]

    used: set[str] = set()

    def choose(key: str, size: int, candidates: list[tuple[str, ...]]) -> tuple[str, ...]:
        for axes in candidates:
            axes = tuple(a for a in axes if a not in used)
            if not axes:
                continue
            count = math.prod(axis_sizes[a] for a in axes)
            if size % count:
                gathered.append(f"dim '{key}' of size {size} is not divisible by mesh axes {axes} ({count} devices)")
                continue
            used.update(axes)
            return axes
        return ()

    lead = tuple(choose(f"l{i}", sizes[f"l{i}"], proposals.get(f"l{i}", [])) for i in range(nlead))
    batch = choose("b", sizes["b"], proposals.get("b", []))
    heads = choose("n", n_heads, proposals.get("n", []) + proposals.get("k", []))
    # Key/value heads: a prefix of the query-head axes that divides them
    # (devices along the remaining axes slice the one key/value head their
    # query heads use, and sum dK/dV). Prefer the longest prefix that k itself
    # is sharded over, so no k/v (or dK/dV) sharding changes; then the longest.
    q_local = n_heads // math.prod(axis_sizes[a] for a in heads)
    k_axes = _spec_axes(specs[1], len(shapes[1]))[kn.index("k")]
    prefixes = [heads[:j] for j in range(len(heads), -1, -1)]
    shared = [p for p in prefixes if k_axes[:len(p)] == p]
    kv_axes = next((p for p in shared + prefixes if kv_heads % math.prod(axis_sizes[a] for a in p) == 0
                    and (p == heads or group % q_local == 0)), None)
    if kv_axes is None:
        gathered.append(f"{n_heads} query heads over mesh axes {heads} would give a device query heads of "
                        f"several key/value heads it does not hold ({kv_heads} key/value heads)")
        heads, kv_axes, q_local = (), (), n_heads
    if gathered:
        warnings.warn(
            "chill_jax.attention: cannot keep the input sharding, gathering instead: " + "; ".join(gathered)
            + ". The kernels split work over batch and heads only; shard those (heads on the same mesh axes "
            "for queries and keys/values) to avoid the all-gather. See docs/sequence_parallelism.md.",
            UserWarning, stacklevel=2)
    return _Plan(lead=lead, batch=batch, heads=heads, kv_heads=kv_axes, q_heads_local=q_local,
                 kv_heads_local=kv_heads // math.prod(axis_sizes[a] for a in kv_axes), group=group)


# ----------------------------------------------------------------------------
# The per-device function.


def _local_fn(fn: Callable, which: str, layout: str, nlead: int, plan: _Plan | None) -> Callable:
    """``fn`` on local blocks with ``nlead`` leading dims (and key/value head slicing)."""
    kv_axis = nlead + (2 if layout == "BTNH" else 1)

    def body(*args):
        args = list(args)
        if plan is not None and plan.slice_kv:
            rest = plan.heads[len(plan.kv_heads):]
            # Global key/value head of this device's query heads, minus the
            # first one of its local key/value shard.
            j = jax.lax.axis_index(plan.heads) * plan.q_heads_local // plan.group
            if plan.kv_heads:
                j = j - jax.lax.axis_index(plan.kv_heads) * plan.kv_heads_local
            for i in (1, 2):
                args[i] = jax.lax.dynamic_slice_in_dim(args[i], j, 1, axis=kv_axis)
        lead_shape = args[0].shape[:nlead + 1]
        folded = [a.reshape((-1, *a.shape[nlead + 1:])) if nlead else a for a in args]
        outs = [o.reshape((*lead_shape, *o.shape[1:])) if nlead else o for o in fn(*folded)]
        if plan is not None and plan.slice_kv and which == "bwd":
            for i in (1, 2):  # dk, dv: partial sums over this device's query heads
                o = outs[i]
                full = jnp.zeros((*o.shape[:kv_axis], plan.kv_heads_local, *o.shape[kv_axis + 1:]), jnp.float32)
                full = jax.lax.dynamic_update_slice_in_dim(full, o.astype(jnp.float32), j, axis=kv_axis)
                outs[i] = jax.lax.psum(full, rest).astype(o.dtype)
        return tuple(outs)

    return body


# ----------------------------------------------------------------------------
# Host calls through the XLA FFI (interpreter inside custom_partitioning).

_c = ctypes


class _ExtBase(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("type", _c.c_int), ("next", _c.c_void_p)]


class _ApiVersion(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("ext", _c.c_void_p), ("major", _c.c_int), ("minor", _c.c_int)]


class _Metadata(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("api_version", _ApiVersion), ("traits", _c.c_uint32)]


class _MetadataExt(_c.Structure):
    _fields_ = [("base", _ExtBase), ("metadata", _c.POINTER(_Metadata))]


class _Buffer(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("ext", _c.c_void_p), ("dtype", _c.c_int), ("data", _c.c_void_p),
                ("rank", _c.c_int64), ("dims", _c.POINTER(_c.c_int64))]


class _Buffers(_c.Structure):  # XLA_FFI_Args / XLA_FFI_Rets
    _fields_ = [("struct_size", _c.c_size_t), ("ext", _c.c_void_p), ("size", _c.c_int64), ("types", _c.c_void_p),
                ("items", _c.POINTER(_c.POINTER(_Buffer)))]


class _Attrs(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("ext", _c.c_void_p), ("size", _c.c_int64), ("types", _c.c_void_p),
                ("names", _c.c_void_p), ("attrs", _c.c_void_p)]


class _ErrorCreateArgs(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("ext", _c.c_void_p), ("message", _c.c_char_p), ("errc", _c.c_int)]


class _Api(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("ext", _c.c_void_p), ("api_version", _ApiVersion),
                ("internal_api", _c.c_void_p),
                ("error_create", _c.CFUNCTYPE(_c.c_void_p, _c.POINTER(_ErrorCreateArgs)))]


class _CallFrame(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("ext", _c.POINTER(_ExtBase)), ("api", _c.POINTER(_Api)),
                ("ctx", _c.c_void_p), ("stage", _c.c_int), ("args", _Buffers), ("rets", _Buffers),
                ("attrs", _Attrs), ("future", _c.c_void_p)]


_FFI_TARGET = "chill_jax_host_call"
_XLA_FFI_EXTENSION_METADATA = 1
_XLA_FFI_STAGE_EXECUTE = 3
_XLA_FFI_ERROR_INTERNAL = 13
_HOST_CALLS: dict[int, tuple[Callable, list, list]] = {}
_HOST_KEYS = itertools.count(1)
_REGISTER_LOCK = threading.Lock()


def _host_view(buf: _Buffer, shape, dtype) -> np.ndarray:
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.frombuffer((_c.c_char * nbytes).from_address(buf.data), dtype=dtype).reshape(shape)


def _ffi_handler(frame_ptr) -> int | None:
    """XLA_FFI_Handler: runs ``_HOST_CALLS[key](*inputs)`` into the result buffers."""
    frame = frame_ptr.contents
    try:
        if frame.ext and frame.ext.contents.type == _XLA_FFI_EXTENSION_METADATA:
            metadata = _c.cast(frame.ext, _c.POINTER(_MetadataExt)).contents.metadata.contents
            version = frame.api.contents.api_version
            metadata.api_version = _ApiVersion(_c.sizeof(_ApiVersion), None, version.major, version.minor)
            metadata.traits = 0
            return None
        if frame.stage != _XLA_FFI_STAGE_EXECUTE:
            return None
        key = int(_host_view(frame.args.items[0].contents, (), np.int32))
        fn, in_avals, out_avals = _HOST_CALLS[key]
        ins = [np.array(_host_view(frame.args.items[i + 1].contents, a.shape, a.dtype))
               for i, a in enumerate(in_avals)]
        outs = list(fn(*ins))
        if len(outs) != len(out_avals):
            raise RuntimeError(f"host call returned {len(outs)} results, expected {len(out_avals)}")
        for j, aval in enumerate(out_avals):
            out = np.asarray(outs[j])
            if out.shape != tuple(aval.shape) or out.dtype != np.dtype(aval.dtype):
                raise RuntimeError(f"host call result {j}: expected {aval.str_short()}, "
                                   f"got {out.dtype}{list(out.shape)}")
            np.copyto(_host_view(frame.rets.items[j].contents, aval.shape, aval.dtype), out)
        return None
    except BaseException as e:  # noqa: BLE001 (reported to XLA as the call's error)
        message = ("chill_jax host call failed:\n" + "".join(traceback.format_exception(e))).encode("utf-8", "replace")
        args = _ErrorCreateArgs(_c.sizeof(_ErrorCreateArgs), None, message, _XLA_FFI_ERROR_INTERNAL)
        return frame.api.contents.error_create(_c.byref(args))


_FFI_HANDLER = _c.CFUNCTYPE(_c.c_void_p, _c.POINTER(_CallFrame))(_ffi_handler)


@functools.lru_cache(maxsize=None)
def _register_ffi_target() -> None:
    with _REGISTER_LOCK:
        jax.ffi.register_ffi_target(_FFI_TARGET, jax.ffi.pycapsule(_c.cast(_FFI_HANDLER, _c.c_void_p).value),
                                    platform="cpu")


def host_call(fn: Callable, out_avals: Sequence[Any], *args) -> list[jax.Array]:
    """``fn(*numpy_args) -> results`` on the host, as an XLA FFI custom call (CPU).

    Unlike ``jax.pure_callback`` it needs no host-callback registration with
    the executable, so it also works in the per-device function of a
    ``custom_partitioning`` op.
    """
    _register_ffi_target()
    key = next(_HOST_KEYS)
    _HOST_CALLS[key] = (fn, [jax.typeof(a) for a in args], list(out_avals))
    outs = jax.ffi.ffi_call(_FFI_TARGET, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in out_avals])(
        np.int32(key), *args)
    return list(outs)


def _has_callback(jaxpr) -> bool:
    return any(eqn.primitive.name == "pure_callback" or any(_has_callback(sub) for sub in _sub_jaxprs(eqn))
               for eqn in jaxpr.eqns)


def _sub_jaxprs(eqn) -> list:
    subs = []
    for param in eqn.params.values():
        for p in param if isinstance(param, (tuple, list)) else (param,):
            if isinstance(p, jex_core.ClosedJaxpr):
                subs.append(p.jaxpr)
            elif isinstance(p, jex_core.Jaxpr):
                subs.append(p)
    return subs


_INLINABLE = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "custom_vmap_call": "call"}


def _eval_with_host_calls(jaxpr, consts, args) -> list:
    """Evaluates a jaxpr, re-emitting ``pure_callback`` equations as :func:`host_call`."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "pure_callback":
            outs = host_call(eqn.params["callback"], eqn.params["result_avals"], *invals)
        elif name in _INLINABLE and _has_callback(_sub_jaxprs(eqn)[0]):
            sub = eqn.params[_INLINABLE[name]]
            sub_consts = sub.consts if isinstance(sub, jex_core.ClosedJaxpr) else ()
            outs = _eval_with_host_calls(getattr(sub, "jaxpr", sub), sub_consts, invals)
        else:
            if any(_has_callback(sub) for sub in _sub_jaxprs(eqn)):
                raise NotImplementedError(f"host callback nested in a '{name}' equation")
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            if not eqn.primitive.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _with_host_calls(f: Callable) -> Callable:
    def g(*args):
        closed = jax.make_jaxpr(f)(*args)
        return tuple(_eval_with_host_calls(closed.jaxpr, closed.consts, args))

    return g


# ----------------------------------------------------------------------------
# The three ways to run one call.


def _free_mesh(args) -> tuple[Any, tuple[str, ...], str]:
    """(abstract mesh, its non-manual axes, "local" | "explicit" | "auto")."""
    mesh = None
    for a in args:
        m = jax.typeof(a).sharding.mesh
        if not m.empty:
            mesh = m
            break
    if mesh is None:
        return None, (), "auto"  # plain jit: shardings are decided by the compiler
    # Axes taken by an enclosing vmap of an explicitly sharded axis are not free.
    taken = getattr(_jax_core.get_axis_env(), "explicit_mesh_axis_names", frozenset())
    free = tuple(n for n, t in zip(mesh.axis_names, mesh.axis_types) if t != AxisType.Manual and n not in taken)
    if not free:
        return mesh, free, "local"
    types = {n: t for n, t in zip(mesh.axis_names, mesh.axis_types)}
    if all(types[n] == AxisType.Explicit for n in free):
        return mesh, free, "explicit"
    if any(t == AxisType.Manual for t in types.values()):
        raise NotImplementedError(
            "chill_jax.attention inside a jax.shard_map that leaves automatic mesh axes "
            f"{tuple(n for n in free if types[n] != AxisType.Explicit)} unmapped is not supported: the kernels' "
            "sharding over those axes cannot be read there. Make the shard_map manual over every mesh axis "
            "(the default axis_names), or make the remaining axes AxisType.Explicit.")
    return mesh, free, "auto"


def _run_explicit(fn, which, layout, nlead, mesh, free, args):
    roles, out_roles = _roles(which, _array_ndims(which, [a.shape for a in args], nlead))
    specs = [jax.typeof(a).sharding.spec for a in args]
    plan = _make_plan(specs, [a.shape for a in args], which, layout, nlead,
                      {n: s for n, s in zip(mesh.axis_names, mesh.axis_sizes)})
    in_specs = tuple(plan.spec(r, layout, nlead) for r in roles)
    out_specs = tuple(plan.spec(r, layout, nlead) for r in out_roles)
    args = [jax.sharding.reshard(a, NamedSharding(mesh, s)) for a, s in zip(args, in_specs)]
    body = _local_fn(fn, which, layout, nlead, plan)
    outs = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, axis_names=set(free))(*args)
    # Results get the shardings their inputs had (a no-op unless the plan
    # gathered something); dq/dk/dv must have exactly q/k/v's types.
    sources = (0, 0) if which == "fwd" else (0, 1, 2)
    return tuple(jax.sharding.reshard(o, NamedSharding(mesh, _natural_spec(r, roles[i], specs[i], layout, nlead)))
                 for o, r, i in zip(outs, out_roles, sources))


def _natural_spec(role: str, source_role: str, source: PartitionSpec, layout: str, nlead: int) -> PartitionSpec:
    """The sharding of a ``role`` result that follows its source operand's sharding."""
    names = _dim_names(source_role, layout, nlead)
    axes = dict(zip(names, _spec_axes(source, len(names))))
    return PartitionSpec(*(None if not axes[n] else axes[n][0] if len(axes[n]) == 1 else axes[n]
                           for n in _dim_names(role, layout, nlead)))


def _sharding_rule(which: str, layout: str, nlead: int, group: int, array_ndims: Sequence[int] = ()) -> str:
    """Shardy rule: batch, leading and head dims pass through.

    With ``group > 1`` the query and key/value heads are independent factors
    (a compound query-head factor ``(k g)`` lets Shardy split a mesh axis
    into sub-axes, which custom_partitioning cannot hand to ``partition``);
    ``partition`` puts them on the same axes itself.
    """
    heads_kv = "n" if group == 1 else "k"
    roles, out_roles = _roles(which, array_ndims)

    def mapping(role):
        return " ".join(heads_kv if n == "k" else n for n in _dim_names(role, layout, nlead))

    return ", ".join(mapping(r) for r in roles) + " -> " + ", ".join(mapping(r) for r in out_roles)


def _partitioned_op(fn, which, layout, implementation, nlead, group, array_ndims=()):
    roles, out_roles = _roles(which, array_ndims)

    def plan_for(mesh, arg_shapes):
        # Never raise here: under the GSPMD partitioner an exception in a
        # partitioning callback aborts the process. An operand without a
        # readable sharding counts as replicated.
        specs = []
        for a in arg_shapes:
            if isinstance(a.sharding, NamedSharding):
                specs.append(a.sharding.spec)
            else:
                if a.sharding is not None and not a.sharding.is_fully_replicated:
                    warnings.warn(f"chill_jax.attention: cannot read the operand sharding {a.sharding}; "
                                  "treating it as replicated (gathered)", UserWarning, stacklevel=2)
                specs.append(PartitionSpec())
        return _make_plan(specs, [a.shape for a in arg_shapes], which, layout, nlead, dict(mesh.shape))

    def shardings(mesh, plan, which_roles):
        return tuple(NamedSharding(mesh, plan.spec(r, layout, nlead)) for r in which_roles)

    def partition(mesh, arg_shapes, result_shape):
        plan = plan_for(mesh, arg_shapes)
        lower = _local_fn(fn, which, layout, nlead, plan)
        if implementation == "interpret":
            platforms = {d.platform for d in mesh.devices.flat}
            if platforms != {"cpu"}:
                raise NotImplementedError(
                    "implementation='interpret' with automatically partitioned inputs runs only on CPU devices; "
                    "use implementation='triton', explicit sharding or jax.shard_map")
            lower = _with_host_calls(lower)
        return mesh, lower, shardings(mesh, plan, out_roles), shardings(mesh, plan, roles)

    def infer(mesh, arg_shapes, result_shape):
        # GSPMD only: results follow their source operand's sharding (the
        # partitioner slices the plan's results to it, without communication).
        specs = [a.sharding.spec if isinstance(a.sharding, NamedSharding) else PartitionSpec() for a in arg_shapes]
        sources = (0, 0) if which == "fwd" else (0, 1, 2)
        return tuple(NamedSharding(mesh, _natural_spec(r, roles[i], specs[i], layout, nlead))
                     for r, i in zip(out_roles, sources))

    op = custom_partitioning(_local_fn(fn, which, layout, nlead, None))
    op.def_partition(partition=partition, infer_sharding_from_operands=infer,
                     sharding_rule=_sharding_rule(which, layout, nlead, group, array_ndims))
    return op


def sharded(fn: Callable, which: str, layout: str, implementation: str) -> Callable:
    """The pass ``fn(*arrays) -> tuple`` with vmap and multi-device rules.

    Args:
      fn: the forward (``q, k, v, q_lens, kv_lens, *mask_arrays -> out,
        lse``) or backward (``q, k, v, out, lse, dout, dlse, q_lens,
        kv_lens, *mask_arrays -> dq, dk, dv``) pass on unbatched arrays of
        one device; each mask array is ``[B, ...]``.
      which: ``"fwd"`` or ``"bwd"``.
      layout: ``"BTNH"`` or ``"BNTH"``.
      implementation: the pass's implementation; partitioning is applied to
        ``"triton"``, ``"interpret"`` and ``"xla"``, anything else only gets
        the vmap rule.

    Returns:
      A function of the same arrays: under vmap, the vmapped axes are folded
      into the batch on each device; with sharded inputs, each device runs
      ``fn`` on its own shard (see the module docstring).
    """
    levels: dict[int, Callable] = {}
    ops: dict[tuple[int, int], Any] = {}

    def run(nlead: int, args):
        mesh, free, mode = _free_mesh(args)
        if mode == "local" or implementation not in _PARTITIONED_IMPLEMENTATIONS:
            return _local_fn(fn, which, layout, nlead, None)(*args)
        if mode == "explicit":
            return _run_explicit(fn, which, layout, nlead, mesh, free, args)
        qn, kn = _dim_names("q", layout, nlead), _dim_names("kv", layout, nlead)
        key = (nlead, args[0].shape[qn.index("n")] // args[1].shape[kn.index("k")],
               _array_ndims(which, [a.shape for a in args], nlead))
        if key not in ops:
            ops[key] = _partitioned_op(fn, which, layout, implementation, *key)
        return ops[key](*args)

    def level(nlead: int) -> Callable:
        if nlead not in levels:
            @jax.custom_batching.custom_vmap
            def call(*args):
                return run(nlead, args)

            @call.def_vmap
            def rule(axis_size, in_batched, *args):
                args = [a if bat else jnp.broadcast_to(a[None], (axis_size, *a.shape))
                        for a, bat in zip(args, in_batched)]
                outs = level(nlead + 1)(*args)
                return outs, tuple(True for _ in outs)

            levels[nlead] = call
        return levels[nlead]

    top = level(0)
    compiled = jax.jit(top)

    def entry(*args):
        if any(isinstance(a, jax.core.Tracer) for a in args):
            return top(*args)
        # Eagerly, the ops would be dispatched one by one and unpartitioned
        # (a host callback pinned to one device): compile the pass instead.
        return compiled(*args)

    return entry


@functools.lru_cache(maxsize=None)
def _pass(static: Any, which: str) -> Callable:
    fn = static.forward if which == "fwd" else static.backward
    return sharded(fn, which, static.layout, static.implementation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def attention_op(static: Any, q, k, v, q_lens, kv_lens, *mask_arrays):
    """Differentiable attention from a pair of per-device passes.

    Args:
      static: hashable description of the call with ``layout``,
        ``implementation`` and the unbatched passes ``forward(q, k, v,
        q_lens, kv_lens, *mask_arrays) -> (out, lse)`` and ``backward(q, k,
        v, out, lse, dout, dlse, q_lens, kv_lens, *mask_arrays) -> (dq, dk,
        dv)``.
      q, k, v, q_lens, kv_lens: the arrays.
      *mask_arrays: the mask's runtime arrays, ``[B, ...]`` each.

    Returns:
      ``(out, lse)``; gradients flow to q, k, v through ``backward`` (no
      residuals beyond q, k, v, out, lse and the integer/mask operands; the
      lengths and mask arrays get none), with the vmap and multi-device
      rules of :func:`sharded` on both passes.
    """
    return _pass(static, "fwd")(q, k, v, q_lens, kv_lens, *mask_arrays)


def _attention_op_fwd(static, q, k, v, q_lens, kv_lens, *mask_arrays):
    out, lse = _pass(static, "fwd")(q, k, v, q_lens, kv_lens, *mask_arrays)
    return (out, lse), (q, k, v, out, lse, q_lens, kv_lens, mask_arrays)


def _attention_op_bwd(static, residuals, cotangents):
    q, k, v, out, lse, q_lens, kv_lens, mask_arrays = residuals
    dout, dlse = cotangents
    dq, dk, dv = _pass(static, "bwd")(q, k, v, out, lse, dout, dlse, q_lens, kv_lens, *mask_arrays)
    return (dq, dk, dv, None, None, *(None for _ in mask_arrays))


attention_op.defvjp(_attention_op_fwd, _attention_op_bwd)
