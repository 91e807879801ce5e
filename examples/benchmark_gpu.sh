#!/usr/bin/env bash
# Issue 6's GPU measurements in one command: examples/benchmark.py under bf16 autocast (what the speed
# targets need), then with the whole model compiled (torch.compile, CUDA graphs), then in fp32; the bf16 and fp32
# runs are compared with the fp32 reference path once (on a CPU copy of the model).
# Writes OUT_DIR/gpu.txt, OUT_DIR/cuda_tests.txt (the CUDA test of PAR's kernels),
# OUT_DIR/bench_{bf16,compiled,none}.json (every figure; compiled: on CUDA only) and .log (the printed tables),
# OUT_DIR/half_precision.txt, and OUT_DIR/status.txt: each measurement's exit status. A measurement that fails
# does not stop the later ones (GPU time is scarce); the script then exits 1, after them all.
#
#   bash examples/benchmark_gpu.sh OUT_DIR [more examples/benchmark.py flags, e.g. --batch_sizes 4,32]
#
# Took 257 s on an H200 before the compiled run was added (2026-12-04, torch 2.11, run 4), which took 204 s on its
# own (run 6); the bf16 run comes first, and each run's log is written as it goes.
# `bash examples/benchmark_gpu.sh /tmp/bench --tiny` runs it on a CPU in seconds.
set -euo pipefail
usage="usage: bash examples/benchmark_gpu.sh OUT_DIR [examples/benchmark.py flags]"
case ${1:-} in
    -h | --help) echo "$usage"; sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "$usage (the first argument is the output folder, got $1)" >&2; exit 2 ;;
esac
out=${1:?$usage}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"; } |
    tee "$out/gpu.txt"
# the versions, and whether CUDA runs (one interpreter start: importing torch and transformers takes seconds)
versions=$("$python" -c "import sys, torch, transformers
print(sys.version.split()[0], torch.__version__, transformers.__version__, int(torch.cuda.is_available()))")
cuda=${versions##* }
echo "${versions% *}" | tee -a "$out/gpu.txt"
statuses=()
failed=0
measure() {  # measure NAME LOG COMMAND...: runs COMMAND, its output shown and written to LOG; notes its exit status
    local name=$1 log=$2 status=0
    shift 2
    PYTHONUNBUFFERED=1 "$@" 2>&1 | tee "$log" || status=$?
    statuses+=("$name: exit $status")
    [ "$status" = 0 ] || failed=$((failed + 1))
}
# PAR's Triton kernels against the eager path on this GPU first
if [ "$cuda" = 1 ]; then
    measure "CUDA test of PAR's kernels" "$out/cuda_tests.txt" "$python" -m pytest -q -p no:cacheprovider \
        tests/test_par_triton.py -k cuda
fi
run() {  # run PRECISION [flags]: one benchmark run, its JSON and log under OUT_DIR
    local precision=$1
    shift
    measure "benchmark $precision" "$out/bench_$precision.log" "$python" examples/benchmark.py --autocast "$precision" \
        --reference_warmup 0 --reference_repeats 1 --output_json "$out/bench_$precision.json" "$@"
}
# everything: training, breakdown, PAR's kernels vs eager, reference, inference, WeCLIP+ next to WeCLIP, and each
# operator's share of a step and the weclip_hf source lines it comes from (torch.profiler, after every timed figure)
run bf16 --method weclip_plus --profile_ops "$@"
# the whole model compiled (torch.compile, CUDA graphs): WeCLIP's training and single-scale inference at 320, on the
# GPU only (each setting compiles on its first run: 204 s on an H200; tests/test_compile.py covers the compiled model
# on a CPU)
if [ "$cuda" = 1 ]; then
    measure "benchmark compiled" "$out/bench_compiled.log" "$python" examples/benchmark.py --autocast bf16 \
        --compile model --no_breakdown --no_reference --infer_sizes 320 --output_json "$out/bench_compiled.json" "$@"
fi
# fp32 for comparison (lighter), PAR's eager iterations compiled
run none --batch_sizes 4,64 --no_breakdown --compile_par --profile_ops "$@"
# native half-precision weights vs float32 (inference time and peak memory), on the GPU only
if [ "$cuda" = 1 ]; then
    measure "half precision" "$out/half_precision.txt" "$python" examples/benchmark_half_precision.py \
        --device cuda --batch_size 16 --repeats 10
else
    echo "no CUDA device: the half-precision comparison is skipped" | tee "$out/half_precision.txt"
fi
echo
printf '%s\n' "Exit status of each measurement:" "${statuses[@]/#/  }" | tee "$out/status.txt"
if [ "$failed" != 0 ]; then
    echo "$failed measurement(s) failed: their logs in $out say why" >&2
    exit 1
fi
