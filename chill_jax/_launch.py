# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Kernel launchers: jax-triton on CUDA, the Triton interpreter on the host."""

from __future__ import annotations

import functools
import inspect
import os
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
    return jax_triton


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
           config: KernelConfig, implementation: str) -> list[jax.Array]:
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

    Returns:
      The outputs, as JAX arrays.
    """
    if implementation == "triton":
        jt = _jax_triton()
        # jax-triton passes Python floats as fp64; the kernels take fp32.
        args = [np.float32(a) if isinstance(a, float) else a for a in args]
        outs = jt.triton_call(
            *args, kernel=kernel, out_shape=list(out_shapes), grid=tuple(grid),
            num_warps=config.num_warps, num_stages=config.num_stages,
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
                kernel, grid, full_args, [(s.shape, s.dtype) for s in out_shapes], constexprs))

        outs = jax.pure_callback(host, tuple(out_shapes), *arrays)
        return restore_varying(list(outs), arrays)
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
