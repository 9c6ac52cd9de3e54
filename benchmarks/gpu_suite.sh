#!/usr/bin/env bash
# Issue 13 on a GPU: the CUDA tests and every GPU benchmark, in parts that each fit one
# device call (under 10 minutes; every step has its own time limit and writes its JSON
# as it goes, so a step cut short still leaves its figures). Results land in $OUT (the
# device machine's result folder), else bench_out/. docs/benchmarks.md says how to call it.
#
#   bash benchmarks/gpu_suite.sh 1     # CUDA tests, inference sweep, training steps + memory, objective cost
#   bash benchmarks/gpu_suite.sh 2     # torch.compile / CUDA graphs, data loading, 520-iteration fp16 and bf16 runs
#   bash benchmarks/gpu_suite.sh 3     # torchrun (NCCL, SyncBatchNorm), then the whole test suite on that torch
#   bash benchmarks/gpu_suite.sh all   # 1, 2 and 3 (about 20 minutes on an H100)
#   SMOKE=1 bash benchmarks/gpu_suite.sh all   # tiny dry run of every step, on any machine (CPU included)
set -u -o pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OUT
SMOKE=${SMOKE:-}
S=${SMOKE:+--smoke}
LIMIT_FACTOR=${LIMIT_FACTOR:-$([ -n "$SMOKE" ] && echo 5 || echo 1)}  # a CPU dry run is slower than a GPU
DATA=${DATA:-/tmp/drmm_jpegs}
CUDA=$($PY -c "import torch; print(int(torch.cuda.is_available()))")

step() {  # step SECONDS command...: run with a time limit (x LIMIT_FACTOR); a failure is reported, not fatal
    local limit=$(($1 * LIMIT_FACTOR))
    shift
    echo "== $(date +%T) $* (limit ${limit}s)"
    timeout -k 10 "$limit" "$@"
    local rc=$?
    [ $rc -eq 0 ] || echo "!! exit $rc: $*"
}

header() {
    echo "== part $1 on $(hostname), $(nproc) cores, $(date -u +%FT%TZ)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
    $PY -c "import pycocotools, scipy, yaml, tqdm, matplotlib, PIL" || echo "!! a dependency is missing: carry .whl (docs/benchmarks.md)"
    df -h /dev/shm | tail -1
}

budget() {  # --budget-s SECONDS: a script starts no new measurement after that (none in a dry run)
    [ -n "$SMOKE" ] || echo --budget-s "$1"
}

train_args() {  # the paper's R50 recipe (configs/drmm_r50.yaml) at batch 2 per GPU, or a tiny stand-in for SMOKE
    local amp=$1 iters=$2
    echo --config configs/drmm_r50.yaml --set train.amp="$amp" --set train.max_iters="$iters" \
        --set train.batch_size=2 --set train.log_interval=1 --set train.eval_interval=0 \
        --set train.checkpoint_interval=0 --set model.pretrained=null
    [ -z "$SMOKE" ] || echo --set model.backbone=resnet18 --set model.num_proposals=20 --set model.num_stages=2 \
        --set model.min_size=64 --set model.max_size=96 --set model.train_min_sizes=[64] --set data.scale=0.1 \
        --set train.num_workers=1
}

part1() {  # about 9 minutes on an H100
    header 1
    if [ -n "$SMOKE" ]; then export DRMM_TEST_DEVICE=${DRMM_TEST_DEVICE:-cpu}; fi
    step 140 $PY -m pytest -q -m gpu tests/test_gpu.py
    step 200 $PY benchmarks/gpu_inference.py --no-compile --runs 15 --warmup 3 --profile $(budget 170) $S
    step 120 $PY benchmarks/gpu_train.py --batches 2,16 --runs 6 --warmup 2 --profile $(budget 100) $S
    step 50 $PY benchmarks/gpu_train.py --batches 2 --size 800x1333 --runs 5 --warmup 2 \
        --name train_memory_800x1333 $(budget 35) $S
    if [ "$CUDA" = 1 ]; then step 40 $PY benchmarks/objective_cost.py --device cuda --runs 20; fi
}

part2() {  # about 9 minutes on an H100
    header 2
    local size n iters amp16
    read -r size n iters amp16 <<< "$(run_sizes)"
    step 140 $PY benchmarks/gpu_inference.py --only-compile --compile-variants cudagraphs \
        --compile-cells bf16:1,fp16:1,fp32:1,bf16:8 --name inference_cudagraphs $(budget 110) $S
    step 80 $PY benchmarks/gpu_inference.py --only-compile --compile-variants compiled,cudagraphs_all \
        --compile-cells bf16:1 --name inference_compiled $(budget 50) $S
    step 40 $PY benchmarks/coco_jpegs.py "$DATA/jpeg_$size" --train "$n" --size "$size"
    step 50 $PY benchmarks/data_loading.py --data "$DATA" --n "$n" --sizes "480x640,$size" --batch 16 \
        --workers "1,4,8,$(nproc)" $S
    # shellcheck disable=SC2046
    step 120 $PY benchmarks/train_run.py --name "${amp16}_$iters" --data "$DATA/jpeg_$size" --timeout 105 -- \
        $(train_args "$amp16" "$iters")
    # shellcheck disable=SC2046
    step 120 $PY benchmarks/train_run.py --name "bf16_$iters" --data "$DATA/jpeg_$size" --timeout 105 -- \
        $(train_args bf16 "$iters")
}

part3() {  # about 6 minutes: torchrun + NCCL + SyncBatchNorm, then the whole test suite on this machine's torch
    header 3
    local size n iters amp16 sync=true dev=""
    read -r size n iters amp16 <<< "$(run_sizes)"
    if [ "$CUDA" != 1 ]; then sync=false dev="--device cpu"; fi  # SyncBatchNorm is GPU-only
    step 40 $PY benchmarks/coco_jpegs.py "$DATA/jpeg_$size" --train "$n" --size "$size"
    # shellcheck disable=SC2046,SC2086
    step 90 $PY benchmarks/train_run.py --name torchrun_nccl_syncbn --torchrun --data "$DATA/jpeg_$size" \
        --timeout 80 -- $(train_args bf16 "$([ -n "$SMOKE" ] && echo 4 || echo 30)") --set train.sync_bn=$sync $dev
    if [ -n "$SMOKE" ]; then step 60 $PY -m pytest -q tests/test_layout.py; else step 400 $PY -m pytest -q; fi
}

run_sizes() {  # image size, images, iterations and the fp16 stand-in of the long runs
    if [ -n "$SMOKE" ]; then echo "120x160 8 4 $([ "$CUDA" = 1 ] && echo fp16 || echo bf16)"
    else echo "800x1333 64 520 $([ "$CUDA" = 1 ] && echo fp16 || echo bf16)"; fi  # the trainer refuses fp16 on a CPU
}

case $PART in
    1) part1 ;;
    2) part2 ;;
    3) part3 ;;
    all) part1; part2; part3 ;;
    *) echo "usage: $0 1|2|3|all" >&2; exit 2 ;;
esac 2>&1 | tee -a "$OUT/suite_part_$PART.log"
echo "== done: $(ls "$OUT" | tr '\n' ' ')"
