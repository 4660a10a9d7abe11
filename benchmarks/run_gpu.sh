#!/usr/bin/env bash
# One command for a CUDA machine (torch + triton installed): the kernel benchmark, the bulk-transfer
# benchmark (host -> device loads through the store), then the gpu-marked kernel and storage tests. Output and JSON go to $OUT (default ./out). Exit status: 0 when both passed.
#   bash benchmarks/run_gpu.sh            # extra arguments go to gpu_bench.py
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export OUT="${OUT:-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/gpu_bench.py "$@" 2>&1 | tee "$OUT/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
timeout "${TRANSFER_TIMEOUT:-180}" python3 -m icecache.cli.main bench transfer --json "$OUT/transfer_cuda.json" \
    2>&1 | tee "$OUT/transfer.log"
transfer_rc=${PIPESTATUS[0]}
timeout "${TEST_TIMEOUT:-180}" python3 -m pytest tests/kernels tests/storage -m gpu -q -p no:cacheprovider 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -25
test_rc=${PIPESTATUS[0]}
echo "gpu_bench exit $bench_rc, transfer exit $transfer_rc, gpu tests exit $test_rc"
[ "$bench_rc" -eq 0 ] && [ "$transfer_rc" -eq 0 ] && [ "$test_rc" -eq 0 ]
