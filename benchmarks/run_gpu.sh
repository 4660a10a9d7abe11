#!/usr/bin/env bash
# One command for a CUDA machine (torch + triton installed), most important first: every gpu-marked test
# (kernels, storage, index, selectors, the tiny-llama integration), the one-layer decode benchmark with
# and without the index's bound candidates, the bulk-transfer benchmark (host -> device loads through the
# store), then the kernel benchmark. Logs and JSON go to $OUT (default ./out), and all of it into
# $OUT/gpu_results.tar.gz too. Each step has its own timeout (seconds, env). Exit status: 0 when all passed.
#   bash benchmarks/run_gpu.sh            # extra arguments go to gpu_bench.py
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 ICECACHE_HYPOTHESIS_PROFILE=ci
export OUT="${OUT:-out}"
mkdir -p "$OUT/gpu"
R="$OUT/gpu"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$R/device.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__)" 2>&1 | tee -a "$R/device.txt"
step() {  # step NAME TIMEOUT COMMAND...: run, log to $R/NAME.log, remember the exit status
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$R/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$R/summary.txt"
    tail -n "${TAIL_LINES:-12}" "$R/$name.log"
    return $rc
}
rc=0
# (tests/ only: the example plugin's tests need the plugin installed, and none of them is gpu-marked)
step gpu_tests "${TEST_TIMEOUT:-240}" python3 -m pytest tests -m gpu -q -p no:cacheprovider -rs \
    --timeout 200 || rc=1
DECODE=(python3 -m icecache.cli.main bench decode --device cuda --kernel triton --threads 0
        --contexts "${DECODE_CONTEXTS:-16384,131072,262144}")
step decode "${DECODE_TIMEOUT:-120}" "${DECODE[@]}" --json "$R/decode_cuda.json" || rc=1
step decode_bound0 "${DECODE_TIMEOUT:-120}" "${DECODE[@]}" --json "$R/decode_cuda_bound0.json" \
    --selector-options '{"index_options": {"bound_candidates": 0}}' || rc=1
step transfer "${TRANSFER_TIMEOUT:-120}" python3 -m icecache.cli.main bench transfer \
    --json "$R/transfer_cuda.json" || rc=1
OUT="$R" step gpu_bench "${BENCH_TIMEOUT:-90}" python3 benchmarks/gpu_bench.py "$@" || rc=1
tar -czf "$OUT/gpu_results.tar.gz" -C "$OUT" gpu
cat "$R/summary.txt"
exit $rc
