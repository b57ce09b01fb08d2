# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""The interpreter works whatever was imported first and whatever
``TRITON_INTERPRET`` says, and leaves compiled-mode Triton intact.

Each case runs in a fresh interpreter (``sys.executable -c``) since import
order and the environment only matter at first import.
"""

import json
import os
import subprocess
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

_PRELUDE = {
    "triton_first": "import triton.language as tl\nimport chill_jax",
    "chill_jax_first": "import chill_jax\nimport triton.language as tl",
}

_BODY = r"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import triton
from triton.runtime.jit import JITFunction

sys.path.insert(0, {tests_dir!r})
import testing_utils

before = dict(max=tl.max, sum=tl.sum, where=tl.where, tensor_sum=tl.tensor.sum,
              interpret=triton.knobs.runtime.interpret)
rng = np.random.default_rng(7)
mask = chill_jax.SlidingWindowChillMask(20, 7)
q, k, v = testing_utils.random_qkv(rng, jnp.float32, batch=2, q_len=100, heads=2, head_dim=32)
dout = testing_utils.normal(rng, q.shape, jnp.float32)
lengths = jnp.asarray([100, 61], jnp.int32)
result = testing_utils.attention_and_grads(q, k, v, mask, dout=dout, lengths=lengths, implementation="interpret")
testing_utils.check_against_reference(result, q, k, v, mask, dout=dout, lengths=lengths)
after = dict(max=tl.max, sum=tl.sum, where=tl.where, tensor_sum=tl.tensor.sum,
             interpret=triton.knobs.runtime.interpret)
report = dict(
    unchanged=[name for name in before if after[name] is before[name]],
    max_type=type(tl.max).__name__,
    max_is_jit=isinstance(tl.max, JITFunction),
    sum_is_jit=isinstance(tl.sum, JITFunction),
    interpret_knob=bool(triton.knobs.runtime.interpret),
)
if {compile_after}:
    import compile_check
    compiled = compile_check.compile_launch(compile_check.record_launches(
        lambda q: chill_jax.attention(q, q, q, implementation="interpret"), q)[0])
    report["compiled_asm"] = sorted(compiled.asm)
print("REPORT" + json.dumps(report))
"""


def _run(order: str, interpret_env: bool) -> dict:
    """Runs the body in a fresh Python and returns its report."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["JAX_PLATFORMS"] = "cpu"
    if interpret_env:
        env["TRITON_INTERPRET"] = "1"
    code = _PRELUDE[order] + _BODY.format(tests_dir=TESTS_DIR, compile_after=not interpret_env)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    line = [line for line in proc.stdout.splitlines() if line.startswith("REPORT")][-1]
    return json.loads(line[len("REPORT"):])


@pytest.mark.parametrize("order", _PRELUDE)
def test_compiled_mode_intact_after_interpreted_launch(order):
    """Matches the reference whichever is imported first; afterwards Triton's
    library functions are the same JITFunction objects and a kernel still
    compiles for sm_90."""
    report = _run(order, interpret_env=False)
    assert report["unchanged"] == ["max", "sum", "where", "tensor_sum", "interpret"], report
    assert report["max_is_jit"] and report["sum_is_jit"], report
    assert not report["interpret_knob"]
    assert "ptx" in report["compiled_asm"] and "cubin" in report["compiled_asm"], report


@pytest.mark.parametrize("order", _PRELUDE)
def test_with_triton_interpret_env(order):
    """With TRITON_INTERPRET=1 in the environment, results still match the
    reference and Triton's objects and interpret setting are left as found."""
    report = _run(order, interpret_env=True)
    assert report["unchanged"] == ["max", "sum", "where", "tensor_sum", "interpret"], report
    assert report["interpret_knob"] and report["max_type"] == "InterpretedFunction", report
