#!/usr/bin/env bash
# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
#
# On a CUDA machine with jax, jaxlib (CUDA), triton, jax-triton and the test
# dependencies installed, and chill-jax installed editable: runs the test
# suite with implementation="triton" only, then the kernels under
# compute-sanitizer (memcheck, racecheck). Logs go to $OUT (default ./gpu-logs).
#
# Usage: bash .ci/gpu_check.sh [pytest args...]
# Environment: PYTEST_TARGETS (default "tests"), PYTEST_WORKERS (default 12),
# SANITIZER=0 skips compute-sanitizer.
set -uo pipefail
out="${OUT:-gpu-logs}"
mkdir -p "$out"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$(mktemp -d)}"
export PYTHONUNBUFFERED=1
export CHILL_JAX_FAILURE_LOG="$out/failures.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

echo "== pytest (triton)"
# No preallocation: many worker processes share the GPU, and a kernel launch
# needs free device memory for its local (spill) memory.
CHILL_JAX_TEST_IMPLEMENTATIONS=triton XLA_PYTHON_CLIENT_PREALLOCATE=false \
  python3 -m pytest ${PYTEST_TARGETS:-tests} -q -n "${PYTEST_WORKERS:-12}" -p no:cacheprovider "$@" 2>&1 | tee "$out/pytest_triton.log" | tail -40
echo "pytest status: ${PIPESTATUS[0]}"

[ "${SANITIZER:-1}" = 0 ] && exit 0
# racecheck reports two errors in each warp-specialized kernel (attn_fwd_ws,
# attn_bwd_dkdv_ws): Triton's warp-dispatch code, barrier-ordered; a plain
# Triton warp-specialized matmul gets the same (docs/gpu_checks.md). Any
# hazard in another kernel is a finding.
for tool in memcheck racecheck; do
  echo "== compute-sanitizer $tool"
  XLA_PYTHON_CLIENT_PREALLOCATE=false compute-sanitizer --tool "$tool" --kernel-name kns=attn_ \
    --error-exitcode 3 python3 tests/sanitizer_check.py > "$out/sanitizer_$tool.log" 2>&1
  echo "compute-sanitizer $tool status: $?"
  tail -12 "$out/sanitizer_$tool.log"
done
