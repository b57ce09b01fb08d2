"""Compiles kernels for sm_90 on the host with Triton's own compiler (no GPU)."""

import inspect
import tempfile

import numpy as np
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from chill_jax.masks import compiled

_TYPES = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16", np.dtype(np.int32): "i32", np.dtype(np.int8): "i8"}


def _type_of(x):
    if isinstance(x, (float, np.floating)):
        return "fp32"
    if isinstance(x, (bool, np.bool_)):
        return "i1"
    if isinstance(x, int):
        return "i32"
    name = np.dtype(x.dtype).name
    return "*" + ("bf16" if name == "bfloat16" else _TYPES[np.dtype(x.dtype)])


def compile_sm90(kernel, args, out_dtypes, constexprs, num_warps=4, num_stages=2):
    """Compiles like jax-triton does: arrays are pointers, scalars runtime."""
    sig = {}
    names = kernel.arg_names
    types = [_type_of(a) for a in args] + ["*" + t for t in out_dtypes]
    for name, t in zip(names, types):
        sig[name] = t
    consts = {k: compiled(v) if inspect.isfunction(v) else v for k, v in constexprs.items()}
    for k in consts:
        sig[k] = "constexpr"
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(types) if t.startswith("*")}
    if getattr(kernel, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource

        src = GluonASTSource(kernel, sig, consts, attrs)
    else:
        src = ASTSource(kernel, signature=sig, constexprs=consts, attrs=attrs)
    if not triton.knobs.cache.dir:  # triton.compile needs one (seen unset on a GPU image)
        triton.knobs.cache.dir = tempfile.mkdtemp(prefix="triton-cache-")
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def compile_launch(launch):
    """Compiles one launch recorded by :func:`record_launches` with its
    configuration's warps and stages."""
    kernel, args, out_dtypes, constexprs, config = launch
    out_types = [_type_of(np.empty(0, d))[1:] for d in out_dtypes]
    return compile_sm90(kernel, args, out_types, constexprs, num_warps=config.num_warps,
                        num_stages=config.num_stages)


def record_launches(fn, *args, execute=True):
    """Traces ``fn(*args)`` and returns the kernel launches it makes. With
    ``execute=False`` the launches are not traced into the program (their
    outputs are zeros): for kernels the tracing implementation cannot run,
    such as the Gluon forward on the host."""
    import jax
    import jax.numpy as jnp
    from chill_jax import _launch

    launches = []
    original = _launch.launch

    def spy(kernel, *, grid, args, out_shapes, constexprs, config, implementation, zeroed_outputs=()):
        launches.append((kernel, [a if isinstance(a, (int, float)) else np.empty(0, a.dtype) for a in args],
                         [np.dtype(s.dtype) for s in out_shapes], constexprs, config))
        if not execute:
            return [jnp.zeros(s.shape, s.dtype) for s in out_shapes]
        return original(kernel, grid=grid, args=args, out_shapes=out_shapes, constexprs=constexprs,
                        config=config, implementation=implementation, zeroed_outputs=zeroed_outputs)

    _launch.launch = spy
    try:
        jax.make_jaxpr(fn)(*args)
    finally:
        _launch.launch = original
    return launches
