#!/usr/bin/env bash
# Issue 13 on a GPU: the CUDA tests and every GPU benchmark, in parts that each fit one
# device call (under 10 minutes; every step has its own time limit and writes its JSON
# as it goes, so a step cut short still leaves its figures). Results land in $OUT (the
# device machine's result folder), else bench_out/. docs/benchmarks.md says how to call it.
#
#   bash benchmarks/gpu_suite.sh quick # issue 27: what matters in ONE device call (6.5 min of step limits);
#                                      # then `python benchmarks/gpu_report.py RESULTS` writes docs/benchmarks.md
#   bash benchmarks/gpu_suite.sh 1     # CUDA tests, inference sweep, training steps + memory, objective cost
#   bash benchmarks/gpu_suite.sh 2     # torch.compile / CUDA graphs, data loading, 520-iteration fp16 and bf16 runs
#   bash benchmarks/gpu_suite.sh 3     # torchrun (NCCL, SyncBatchNorm), then the whole test suite on that torch
#   bash benchmarks/gpu_suite.sh all   # 1, 2 and 3 (about 20 minutes on an H100)
#   SMOKE=1 bash benchmarks/gpu_suite.sh all   # tiny dry run of every step, on any machine (CPU included)
#   SMOKE=1 bash benchmarks/gpu_suite.sh quick # the same for the quick part
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
    STEP_RC=$rc  # for a step whose exit status goes into a JSON
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

quick() {  # issue 27: one device call. Step limits sum to 390 s (6.5 min) on an H100; each writes its JSON as it goes.
    # Six result files: suite_part_quick.log and quick_{env,tests,inference,train,runs}.json (the device tool
    # brings back at most 8), read by benchmarks/gpu_report.py.
    header quick
    local tmp sync=true dev="" side=800 n=16
    tmp=$(mktemp -d)
    if [ "$CUDA" != 1 ]; then sync=false dev="--device cpu"; fi  # SyncBatchNorm is GPU-only
    if [ -n "$SMOKE" ]; then export DRMM_TEST_DEVICE=${DRMM_TEST_DEVICE:-cpu}; side=128 n=8; fi
    # 15 s: the report's header (GPU, driver, versions, date, host, command)
    SUITE_COMMAND="${SMOKE:+SMOKE=1 }bash benchmarks/gpu_suite.sh quick" LIMIT_FACTOR=$LIMIT_FACTOR \
        step 15 $PY - "$OUT/quick_env.json" <<'PY'
import datetime, json, os, platform, socket, subprocess, sys
import torch, torchvision
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "hostname": socket.gethostname(), "command": os.environ["SUITE_COMMAND"], "smoke": bool(os.environ.get("SMOKE")),
       "limit_factor": int(os.environ.get("LIMIT_FACTOR", "1")), "commit": run("git", "rev-parse", "--short", "HEAD"),
       "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "cuda_available": torch.cuda.is_available(),
       "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
smi = run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
if smi:
    env["gpu"], env["driver"], env["gpu_memory"] = (x.strip() for x in smi.splitlines()[0].split(","))
elif torch.cuda.is_available():
    env["gpu"] = torch.cuda.get_device_name()
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(env)
PY
    # 100 s: the CUDA tests (14; the R50 forward + backward against a CPU float64 reference takes most)
    step 100 $PY -m pytest -q -rfE -p no:cacheprovider -m gpu tests/test_gpu.py --junitxml "$tmp/tests.xml"
    TESTS_RC=$STEP_RC step 5 $PY - "$tmp/tests.xml" "$OUT/quick_tests.json" <<'PY'
import json, os, sys, xml.etree.ElementTree as ET
res = {"command": "pytest -m gpu tests/test_gpu.py", "returncode": int(os.environ["TESTS_RC"])}
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as e:  # pytest killed by its time limit writes no report
    res["error"] = f"no JUnit report ({type(e).__name__}), exit {res['returncode']}"
else:
    tests = []
    for case in root.iter("testcase"):
        bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
        tests.append({"name": case.get("name"), "seconds": float(case.get("time") or 0),
                      "outcome": {"failure": "failed"}.get(bad[0].tag, bad[0].tag) if bad else "passed",
                      "message": (bad[0].get("message") or "")[:300] if bad else None})
    res.update({k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")},
               total=len(tests), seconds=round(sum(t["seconds"] for t in tests), 1), tests=tests)
json.dump(res, open(sys.argv[2], "w"), indent=1)
print({k: v for k, v in res.items() if k != "tests"})
PY
    # 90 s: inference at 800x1333 as eval/predict run it, D-RMM R50 then its two baselines, batch 1 and 8,
    # fp32 / bf16 / fp16, detections against the plain fp32 model's (no new cell after 70 s)
    # shellcheck disable=SC2046
    step 90 $PY benchmarks/gpu_inference.py --models drmm_r50,sparse_rcnn_r50,faster_rcnn --variants optimized \
        --no-compile --batches 1,8 --dtypes fp32,bf16,fp16 --runs 10 --warmup 2 --name quick_inference \
        $(budget 70) $S
    # 105 s: training steps at 800x1333 (the memory goal's worst case), D-RMM vs Hungarian, batch 2 and 8, bf16
    # and fp16 AMP, 3 warm-up + 10 timed steps each: images/s, peak memory, loss finite (no new cell after 80 s)
    # shellcheck disable=SC2046
    step 105 $PY benchmarks/gpu_train.py --batches 2,8 --dtypes bf16,fp16 --size 800x1333 --runs 10 --warmup 3 \
        --name quick_train $(budget 80) $S
    # 20 s: 16 synthetic 800 x 800 scenes for the torchrun run (`drmm synth`, 5 classes: the check is NCCL + SyncBN)
    step 20 $PY -m drmm synth "$DATA/synth_quick_$side" --train "$n" --val 0 --size "$side"
    # 50 s: torchrun --nproc_per_node=1, NCCL + DDP + SyncBatchNorm, 20 iterations of the R50 recipe in bf16
    # (train_run.py stops it after 45 s and records what it logged)
    # shellcheck disable=SC2046,SC2086
    step 50 $PY benchmarks/train_run.py --name torchrun_nccl_syncbn --json quick_runs --torchrun \
        --data "$DATA/synth_quick_$side" --timeout $((45 * LIMIT_FACTOR)) -- $(train_args bf16 20) \
        --set train.sync_bn=$sync $dev
    # 10 s: the report, printed (a dry run says so). Where the files land:
    # python benchmarks/gpu_report.py RESULTS_DIR writes the GPU section of docs/benchmarks.md
    step 10 $PY benchmarks/gpu_report.py "$OUT" --stdout
    rm -rf "$tmp"
}

run_sizes() {  # image size, images, iterations and the fp16 stand-in of the long runs
    if [ -n "$SMOKE" ]; then echo "120x160 8 4 $([ "$CUDA" = 1 ] && echo fp16 || echo bf16)"
    else echo "800x1333 64 520 $([ "$CUDA" = 1 ] && echo fp16 || echo bf16)"; fi  # the trainer refuses fp16 on a CPU
}

case $PART in
    1) part1 ;;
    2) part2 ;;
    3) part3 ;;
    quick) quick ;;
    all) part1; part2; part3 ;;
    *) echo "usage: $0 quick|1|2|3|all" >&2; exit 2 ;;
esac 2>&1 | tee -a "$OUT/suite_part_$PART.log"
echo "== done: $(ls "$OUT" | tr '\n' ' ')"
