# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""chill-jax in a few lines: masked attention, a gradient, a reference check.

Runs anywhere: on a CUDA GPU (with jax-triton) the kernels are compiled, on a
CPU they run through Triton's interpreter (a few seconds at these sizes).

Run: python examples/quickstart.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

import chill_jax


def main():
    batch, seq, heads, head_dim = 2, 256, 4, 64
    rng = np.random.default_rng(0)
    # Layout "BTNH" (the default): [batch, seq, heads, head_dim].
    q, k, v = (jnp.asarray(rng.standard_normal((batch, seq, heads, head_dim)), jnp.float32)
               for _ in range(3))
    print(f"JAX backend: {jax.default_backend()}; q/k/v: {q.shape} {q.dtype}")

    masks = [
        chill_jax.CausalChillMask(),
        chill_jax.SlidingWindowChillMask(left_context=32, right_context=0),
    ]
    for mask in masks:
        # The mask is a static, hashable object: close over it (or mark it static).
        attend = jax.jit(lambda q, k, v, mask=mask: chill_jax.attention(q, k, v, mask))

        def loss(q, k, v, mask=mask):
            return jnp.sum(chill_jax.attention(q, k, v, mask) ** 2)

        grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

        start = time.perf_counter()
        out = attend(q, k, v).block_until_ready()
        dq, dk, dv = jax.block_until_ready(grad_fn(q, k, v))
        seconds = time.perf_counter() - start

        # float64 numpy reference; d(sum(out**2))/d(out) = 2 * out.
        ref = chill_jax.reference_attention(q, k, v, mask, dout=2.0 * np.asarray(out))
        errors = {name: float(np.abs(np.asarray(x, np.float64) - ref[name]).max())
                  for name, x in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv))}
        print(f"{mask!r:<40} first call {seconds:5.2f}s  max abs error: "
              + "  ".join(f"{name} {err:.1e}" for name, err in errors.items()))
        assert all(err < 1e-4 for err in errors.values()), errors

    # Per-example lengths and the log-sum-exp ([batch, heads, seq], float32).
    lengths = jnp.array([seq, 100], jnp.int32)
    out, lse = chill_jax.attention(q, k, v, masks[0], lengths=lengths, return_lse=True)
    ref = chill_jax.reference_attention(q, k, v, masks[0], lengths=lengths)
    print(f"lengths={lengths.tolist()}: out error {np.abs(np.asarray(out) - ref['out']).max():.1e}, "
          f"lse {lse.shape}; rows past the length: max |out| {float(jnp.abs(out[1, 100:]).max())}, "
          f"lse {float(lse[1, 0, 100])}")


if __name__ == "__main__":
    main()
