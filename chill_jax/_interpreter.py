# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Runs the Triton kernels through Triton's interpreter on host numpy buffers.

Works whatever the process's ``TRITON_INTERPRET`` setting and whatever was
imported first: every launch, under one process-wide lock, swaps the compiled
``@triton.jit`` objects it can reach (Triton's own library helpers, the
kernel's and the mask's helper functions) for interpreter wrappers, upcasts
bf16 dot operands (the interpreter multiplies their raw bits otherwise), and
makes the interpreter's scalar conversion work with numpy >= 2.4, and
restores everything afterwards, so compiled-mode Triton keeps working in the
same process.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import threading
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import triton
import triton.language as tl
from triton.runtime import interpreter as _interp
from triton.runtime.jit import JITFunction

_LOCK = threading.RLock()


class HostBuffer:
    """The torch-like pointer object the interpreter expects, over a numpy array."""

    def __init__(self, array: np.ndarray):
        if not array.flags.c_contiguous:
            raise ValueError("HostBuffer needs a C-contiguous array")
        self.array = array
        self.dtype = array.dtype

    def data_ptr(self) -> int:
        return self.array.ctypes.data

    def untyped_storage(self) -> "HostBuffer":
        return self

    def cpu(self) -> "HostBuffer":
        return self

    def storage_offset(self) -> int:
        return 0

    def size(self) -> tuple[int, ...]:
        return self.array.shape

    def stride(self) -> tuple[int, ...]:
        return tuple(s // self.array.itemsize for s in self.array.strides)

    def new_empty(self, *args, **kwargs) -> "HostBuffer":
        return self

    def set_(self, *args, **kwargs) -> "HostBuffer":
        return self

    def copy_(self, other: "HostBuffer") -> "HostBuffer":
        if other is not self:
            np.copyto(self.array, other.array)
        return self


@functools.lru_cache(maxsize=None)
def _interpreted_of(fn: Callable) -> Any:
    return _interp.InterpretedFunction(fn)


def as_interpreted(obj: Any) -> Any:
    """Interpreter-mode equivalent of a jitted or plain Triton function."""
    if isinstance(obj, _interp.InterpretedFunction):
        return obj
    if isinstance(obj, JITFunction):
        return _interpreted_of(obj.fn)
    if inspect.isfunction(obj):
        langs = [v for v in obj.__globals__.values() if v is tl or v is tl.core]
        # The interpreter wrapper needs triton.language among the globals;
        # a function without it runs as plain Python on interpreter tensors.
        return _interpreted_of(obj) if langs else obj
    return obj


_ORIGINAL_PATCH_TENSOR = _interp._patch_lang_tensor


def _patch_lang_tensor(tensor, scope):
    """Triton's tensor patch, with an ``__index__`` numpy >= 2.4 accepts."""
    _ORIGINAL_PATCH_TENSOR(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))


def _bf16_to_f32(handle):
    bits = handle.data.astype(np.uint32) << 16
    return _interp.TensorHandle(bits.view(np.float32), tl.float32)


_ORIGINAL_DOT = _interp.InterpreterBuilder.create_dot


def _create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    if a.dtype.scalar == tl.bfloat16:
        a = _bf16_to_f32(a)
    if b.dtype.scalar == tl.bfloat16:
        b = _bf16_to_f32(b)
    return _ORIGINAL_DOT(self, a, b, d, input_precision, max_num_imprecise_acc)


class _Restorer:
    """Remembers attributes of modules/classes and dict entries, to put back."""

    def __init__(self):
        self._dicts: list[tuple[dict, dict]] = []
        self._attrs: list[tuple[Any, dict]] = []

    def save_dict(self, d: dict) -> None:
        self._dicts.append((d, dict(d)))

    def save_class(self, cls: type) -> None:
        self._attrs.append((cls, dict(vars(cls))))

    def restore(self) -> None:
        # Names added to module globals stay: the interpreter's cached
        # rewritten functions look them up there on later launches.
        for d, saved in reversed(self._dicts):
            for key, value in saved.items():
                if d.get(key, _Restorer) is not value:
                    d[key] = value
        for cls, saved in reversed(self._attrs):
            for key in [k for k in vars(cls) if k not in saved]:
                delattr(cls, key)
            for key, value in saved.items():
                if vars(cls).get(key, _Restorer) is not value:
                    setattr(cls, key, value)


def _swap_jit_functions(d: dict) -> list[dict]:
    """Replaces JITFunctions in ``d``; returns the globals of those found."""
    found = []
    for key, value in list(d.items()):
        if isinstance(value, JITFunction):
            d[key] = _interpreted_of(value.fn)
            found.append(value.fn.__globals__)
    return found


@contextlib.contextmanager
def interpreter_scope(functions: Iterable[Callable]):
    """Holds the lock and puts Triton in interpreter mode for the block."""
    with _LOCK:
        restorer = _Restorer()
        try:
            lang_modules = [m for name, m in list(sys.modules.items())
                            if m is not None and (name == "triton.language" or name.startswith("triton.language."))]
            for cls in (tl.tensor, tl.dtype, tl.core.tensor_descriptor_base, _interp.InterpreterBuilder):
                restorer.save_class(cls)
            seen: set[int] = set()
            todo = [vars(m) for m in lang_modules]
            todo += [getattr(f, "fn", f).__globals__ for f in functions if hasattr(getattr(f, "fn", f), "__globals__")]
            while todo:
                d = todo.pop()
                if id(d) in seen:
                    continue
                seen.add(id(d))
                restorer.save_dict(d)
                todo.extend(_swap_jit_functions(d))
            for name, value in list(vars(tl.tensor).items()):
                if isinstance(value, JITFunction):
                    setattr(tl.tensor, name, _interpreted_of(value.fn))
            _interp.InterpreterBuilder.create_dot = _create_dot
            restorer.save_dict(vars(_interp))
            _interp._patch_lang_tensor = _patch_lang_tensor
            knobs = triton.knobs.runtime
            old_interpret = knobs.interpret
            knobs.interpret = True
            try:
                yield
            finally:
                knobs.interpret = old_interpret
        finally:
            restorer.restore()


def run(kernel: Any, grid: Sequence[int], args: Sequence[Any],
        out_shapes: Sequence[tuple[tuple[int, ...], np.dtype]],
        constexprs: dict[str, Any], zeroed_outputs: Sequence[int] = ()) -> list[np.ndarray]:
    """Launches ``kernel`` through the interpreter.

    Args:
      kernel: a ``@triton.jit`` kernel whose positional parameters are
        ``args`` followed by one pointer per output.
      grid: launch grid (up to three ints).
      args: numpy arrays (passed as pointers) and Python scalars.
      out_shapes: ``(shape, dtype)`` per output; outputs start filled with NaN
        (floats) or -1 (ints) so unwritten elements show.
      constexprs: the kernel's constexpr parameters; functions among them are
        converted to their interpreter form.
      zeroed_outputs: indices of outputs that start filled with zeros instead.

    Returns:
      The output arrays.
    """
    outs = []
    for i, (shape, dtype) in enumerate(out_shapes):
        dtype = np.dtype(dtype)
        fill = -1 if np.issubdtype(dtype, np.integer) else np.nan
        if i in zeroed_outputs:
            fill = 0
        outs.append(np.full(shape, fill, dtype))
    host_args = [HostBuffer(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args]
    host_args += [HostBuffer(o) for o in outs]
    fn = kernel.fn if isinstance(kernel, (JITFunction, _interp.InterpretedFunction)) else kernel
    functions = [fn] + [v for v in constexprs.values() if callable(v)]
    with interpreter_scope(functions):
        consts = {k: as_interpreted(v) for k, v in constexprs.items()}
        _interpreted_of(fn).run(*host_args, grid=tuple(grid), warmup=False, **consts)
    return outs
