# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Kernel launchers: jax-triton on CUDA, the Triton interpreter on the host."""

from __future__ import annotations

import functools
import inspect
import os
import threading
import types
from typing import Any, Sequence

import jax
import numpy as np

from chill_jax import _interpreter
from chill_jax.configs import KernelConfig
from chill_jax.masks import compiled

IMPLEMENTATIONS = ("triton", "interpret")


@functools.lru_cache(maxsize=None)
def _jax_triton():
    # jax-triton's import sets TRITON_CACHE_DIR to "" for the whole process,
    # which breaks every later triton.compile there (torch.compile and
    # FlexAttention among them: "Could not create or locate cache dir"). Its
    # own compiles do not use Triton's cache, so the caller's value is put back.
    saved = os.environ.get("TRITON_CACHE_DIR")
    try:
        import jax_triton  # noqa: PLC0415 (needs a CUDA jaxlib)
    except ImportError as e:  # jax-triton raises ImportError on CPU-only jaxlib
        raise RuntimeError(
            "implementation='triton' needs jax-triton and a CUDA jaxlib "
            f"(pip install 'chill-jax[cuda]'): {e}") from e
    finally:
        if saved is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = saved
    _pass_compile_metadata(jax_triton)
    return jax_triton


_COMPILE = threading.local()
_PATCHED: list[bool] = []
_GLUON_ROUTED: list[bool] = []


def _pass_compile_metadata(jax_triton) -> None:
    """Makes jax-triton launch kernels with the warps and global scratch
    buffer their compilation asks for.

    jax-triton 0.3.1 launches with the requested ``num_warps`` and no global
    scratch, while a warp-specialized kernel has more warps than requested
    (Triton adds producer warps) and a kernel that makes tensor descriptors
    needs a scratch buffer to build them in. jaxlib 0.11 takes both
    (``TritonKernel(..., global_scratch_size=, global_scratch_align=)``).
    This records each compilation's metadata (``make_llir`` sets it) and
    hands it to the ``TritonKernel`` that jax-triton makes right after, in
    the same thread; kernels that need neither are launched as before.
    Nothing is changed where jaxlib lacks the parameters or jax-triton's
    internals differ, and then :func:`can_warp_specialize` is False. The
    change applies to every jax-triton launch in the process once chill-jax
    has launched on the GPU: other kernels get the warps and scratch their
    own compilation asked for too.
    """
    try:
        from jax_triton import triton_lib  # noqa: PLC0415
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: PLC0415
        real = triton_lib.triton_kernel_call_lib
        if "global_scratch_size" not in (real.TritonKernel.__init__.__doc__ or ""):
            return
        if not callable(getattr(triton_lib, "get_or_create_triton_kernel", None)):
            return
    except (ImportError, AttributeError):
        return
    if _PATCHED:
        return
    make_llir = CUDABackend.make_llir

    def recording_make_llir(self, src, metadata, options, capability):
        out = make_llir(self, src, metadata, options, capability)
        _COMPILE.metadata = metadata  # make_ptx adds the name later
        return out

    def kernel_with_metadata(name, num_warps, num_ctas, shared_mem_bytes, binary, ttir, capability):
        meta = getattr(_COMPILE, "metadata", None) or {}
        _COMPILE.metadata = None
        if meta.get("name") != name:
            return real.TritonKernel(name, num_warps, num_ctas, shared_mem_bytes, binary, ttir, capability)
        return real.TritonKernel(name, meta.get("num_warps", num_warps), num_ctas, shared_mem_bytes, binary,
                                 ttir, capability, global_scratch_size=meta.get("global_scratch_size") or 0,
                                 global_scratch_align=meta.get("global_scratch_align") or 1)

    proxy = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    proxy.TritonKernel = kernel_with_metadata
    CUDABackend.make_llir = recording_make_llir
    triton_lib.triton_kernel_call_lib = proxy
    _compile_gluon(triton_lib)
    _PATCHED.append(True)


def _is_gluon(fn) -> bool:
    return bool(getattr(fn, "is_gluon", lambda: False)())


def _compile_gluon(triton_lib) -> None:
    """Lets jax-triton compile Gluon kernels (``@gluon.jit``, hand-written
    layouts and warp specialization; ``kernels/forward_gluon.py``).

    jax-triton 0.3.1 builds every kernel as Triton source: ``ast_to_ttir``
    on an ``ASTSource``, then ``make_ttir`` and ``make_ttgir``. A Gluon
    kernel is generated at the TritonGPU level by a ``GluonASTSource`` and
    then only needs the backend's ``gluon_to_ttgir`` passes. This routes
    Gluon kernels through those two steps and leaves everything else, the
    specialization, cache, ``make_llir`` (which records the warps and
    scratch that :func:`_pass_compile_metadata` hands on), PTX and launch,
    to jax-triton. Other kernels compile exactly as before.
    """
    try:
        from triton.backends.compiler import GPUTarget  # noqa: PLC0415
        from triton.experimental.gluon._runtime import GluonASTSource  # noqa: PLC0415

        code_gen, compile_ttir, get_kernel = (triton_lib.code_gen, triton_lib.compile_ttir_inplace,
                                              triton_lib.get_or_create_triton_kernel)
        if not callable(getattr(triton_lib, "CompilationResult", None)):
            return
    except (ImportError, AttributeError):
        return

    def ast_to_ttir(fn, src, *, options, codegen_fns, context, module_map):
        if not _is_gluon(fn):
            return code_gen.ast_to_ttir(fn, src, options=options, codegen_fns=codegen_fns, context=context,
                                        module_map=module_map)
        gluon_src = GluonASTSource(fn, src.signature, None, src.attrs)
        gluon_src.constants = src.constants
        return gluon_src.make_ir(_COMPILE.target, options, codegen_fns, module_map, context)

    def compile_ttir_inplace(module, backend, options, compute_capability, platform):
        if not getattr(_COMPILE, "gluon", False):
            return compile_ttir(module, backend, options, compute_capability, platform)
        metadata: dict[str, Any] = {}
        ttgir = backend.gluon_to_ttgir(module, metadata, options, compute_capability)
        llir = backend.make_llir(ttgir, metadata, options, compute_capability)
        ptx = backend.make_ptx(llir, metadata, options, compute_capability)
        return triton_lib.CompilationResult(binary=ptx, name=metadata["name"], shared_mem_bytes=metadata["shared"],
                                            ttgir=None, llir=None)

    def get_or_create_triton_kernel(backend_init_func, platform, fn, *args, compute_capability, **kwargs):
        if not _is_gluon(fn):
            return get_kernel(backend_init_func, platform, fn, *args, compute_capability=compute_capability,
                              **kwargs)
        if compute_capability is None:
            compute_capability = triton_lib.triton_kernel_call_lib.get_compute_capability(0)
        _COMPILE.gluon, _COMPILE.target = True, GPUTarget("cuda", compute_capability, 32)
        try:
            return get_kernel(backend_init_func, platform, fn, *args, compute_capability=compute_capability,
                              **kwargs)
        finally:
            _COMPILE.gluon = False

    triton_lib.code_gen = types.SimpleNamespace(**{**vars(code_gen), "ast_to_ttir": ast_to_ttir})
    triton_lib.compile_ttir_inplace = compile_ttir_inplace
    triton_lib.get_or_create_triton_kernel = get_or_create_triton_kernel
    _GLUON_ROUTED.append(True)


@functools.lru_cache(maxsize=None)
def can_warp_specialize(implementation: str) -> bool:
    """Whether ``implementation`` runs warp-specialized tensor-descriptor
    kernels: ``"triton"`` on a GPU of compute capability 9.0 or newer, with a
    jaxlib that launches them (see :func:`_pass_compile_metadata`)."""
    if implementation != "triton" or not cuda_available():
        return False
    try:
        _jax_triton()
    except RuntimeError:
        return False
    if not _PATCHED:
        return False
    major = str(getattr(jax.devices("gpu")[0], "compute_capability", "") or "").partition(".")[0]
    return major.isdigit() and int(major) >= 9


@functools.lru_cache(maxsize=None)
def can_run_gluon(implementation: str) -> bool:
    """Whether ``implementation`` runs the Gluon forward
    (``kernels/forward_gluon.py``, Hopper ``wgmma``): ``"triton"`` on a GPU
    of compute capability 9.x with a binding that launches warp-specialized
    kernels and compiles Gluon ones (see :func:`_compile_gluon`)."""
    if not can_warp_specialize(implementation) or not _GLUON_ROUTED:
        return False
    major = str(getattr(jax.devices("gpu")[0], "compute_capability", "") or "").partition(".")[0]
    return major == "9"


@functools.lru_cache(maxsize=None)
def multiprocessors(implementation: str) -> int | None:
    """The streaming-multiprocessor count of the GPU that ``implementation``
    launches on (JAX's first GPU), or None (the interpreter, or unknown)."""
    if implementation != "triton" or not cuda_available():
        return None
    count = getattr(jax.devices("gpu")[0], "core_count", None)
    return count if isinstance(count, int) and count > 0 else None


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    """Whether the default JAX backend is a CUDA GPU."""
    try:
        return jax.default_backend() == "gpu" and any(
            "cuda" in d.client.platform_version.lower() or d.platform == "gpu" for d in jax.devices("gpu"))
    except RuntimeError:
        return False


def _compiled_constexprs(constexprs: dict[str, Any]) -> dict[str, Any]:
    return {k: compiled(v) if inspect.isfunction(v) else v for k, v in constexprs.items()}


def _varying_axes(x) -> frozenset:
    """shard_map mesh axes along which ``x`` varies (empty outside shard_map)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))


def restore_varying(outs: list, args: Sequence[Any]) -> list:
    """Gives outputs the inputs' varying manual axes back.

    Custom calls and host callbacks produce outputs typed as invariant across
    shard_map's manual axes, which breaks their transpose (grad); the outputs
    of a per-shard kernel vary exactly as its inputs do.
    """
    axes = frozenset().union(*(_varying_axes(a) for a in args if hasattr(a, "aval") or isinstance(a, jax.Array)))
    if not axes:
        return outs
    fixed = []
    for out in outs:
        missing = tuple(sorted(axes - _varying_axes(out), key=str))
        fixed.append(jax.lax.pcast(out, missing, to="varying") if missing else out)
    return fixed


def launch(kernel, *, grid: Sequence[int], args: Sequence[Any],
           out_shapes: Sequence[jax.ShapeDtypeStruct], constexprs: dict[str, Any],
           config: KernelConfig, implementation: str, zeroed_outputs: Sequence[int] = ()) -> list[jax.Array]:
    """Launches a Triton kernel on JAX arrays.

    Args:
      kernel: ``@triton.jit`` kernel with positional parameters ``args`` then
        one pointer per output, then keyword constexprs.
      grid: the launch grid.
      args: JAX arrays and Python scalars, in kernel order.
      out_shapes: shape/dtype of each output.
      constexprs: constexpr parameters (mask methods as plain functions).
      config: warps and stages (GPU).
      implementation: ``"triton"`` or ``"interpret"``.
      zeroed_outputs: indices of outputs that hold zeros when the kernel
        starts (for kernels that accumulate into them); the others start
        undefined (poisoned in the interpreter).

    Returns:
      The outputs, as JAX arrays.
    """
    if implementation == "triton":
        jt = _jax_triton()
        # jax-triton passes Python floats as fp64; the kernels take fp32.
        args = [np.float32(a) if isinstance(a, float) else a for a in args]
        outs = jt.triton_call(
            *args, kernel=kernel, out_shape=list(out_shapes), grid=tuple(grid),
            num_warps=config.num_warps, num_stages=config.num_stages, zeroed_outputs=tuple(zeroed_outputs),
            **_compiled_constexprs(constexprs))
        return restore_varying(list(outs), args)
    if implementation == "interpret":
        arrays = [a for a in args if isinstance(a, jax.Array) or hasattr(a, "aval")]
        positions = [i for i, a in enumerate(args) if isinstance(a, jax.Array) or hasattr(a, "aval")]

        def host(*host_arrays):
            full_args = list(args)
            for i, a in zip(positions, host_arrays):
                full_args[i] = np.asarray(a)
            return tuple(_interpreter.run(
                kernel, grid, full_args, [(s.shape, s.dtype) for s in out_shapes], constexprs,
                zeroed_outputs=zeroed_outputs))

        outs = jax.pure_callback(host, tuple(out_shapes), *arrays)
        return restore_varying(list(outs), arrays)
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
