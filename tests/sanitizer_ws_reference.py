# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""A warp-specialized Triton matmul with no chill-jax code, for racecheck (not a pytest file).

Computes ``C = A @ B`` (bf16, 512^3) with tensor descriptors and one
``tl.range(..., warp_specialize=True)`` loop, launched by Triton's own
launcher (needs torch with CUDA). Under ``compute-sanitizer --tool
racecheck`` it shows the same error as this library's warp-specialized
kernels: the worker warps' read of their partition number against the
default warp group's writes of it, which Triton's warp-specialization code
orders with CTA-wide barriers (see ``docs/gpu_checks.md``)::

    compute-sanitizer --tool racecheck python3 tests/sanitizer_ws_reference.py

Prints whether Triton warp-specialized the loop and the largest error
against a float32 matmul.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def matmul_ws(A, B, C, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """``C[M, N] = A[M, K] @ B[K, N]``, one ``[BM, BN]`` tile per program."""
    pm, pn = tl.program_id(0), tl.program_id(1)
    a_desc = tl.make_tensor_descriptor(A, [M, K], [K, 1], [BM, BK])
    b_desc = tl.make_tensor_descriptor(B, [K, N], [N, 1], [BK, BN])
    acc = tl.zeros([BM, BN], tl.float32)
    for kk in tl.range(0, K // BK, warp_specialize=True):
        acc += tl.dot(a_desc.load([pm * BM, kk * BK]), b_desc.load([kk * BK, pn * BN]))
    offs_m = pm * BM + tl.arange(0, BM)
    offs_n = pn * BN + tl.arange(0, BN)
    tl.store(C + offs_m[:, None] * N + offs_n[None, :], acc.to(C.dtype.element_ty))


def main() -> None:
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    m = n = k = 512
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
    c = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    compiled = matmul_ws[(m // 128, n // 128)](a, b, c, m, n, k, 128, 128, 64, num_warps=4, num_stages=2)
    torch.cuda.synchronize()
    err = float((c.float() - a.float() @ b.float()).abs().max())
    print("warp-specialized:", "ttg.warp_specialize" in compiled.asm["ttgir"], "max error:", err)


if __name__ == "__main__":
    main()
