#!/usr/bin/env bash
# The one-call GPU validation, bounded to under 10 minutes (BUDGET_S, default 560 s; a stage that would pass the
# deadline is cut short or skipped, and the table says so):
#   1. build the extension for the local GPU (FORCE_CUDA=1);
#   2. the extension's tests on CUDA (roi_align, nms, multi_scale_roi_align, ...; under pytest-xdist where installed);
#   3. the Triton prior tests on CUDA (tests/test_object_prior_add.py, test_object_prior.py; compiled kernels,
#      fp32/fp16/bf16);
#   4. s/img of OPMask vs its baseline vs torchvision's Mask R-CNN at 800x1333 (R-50, batch 1, fp32 and bf16 autocast,
#      1000 proposals, 100 detections with masks pasted);
#   4b. the static-shape inference path (benchmarks/gpu_static.py) at a trained model's load (classifier scores spread
#      so that about 1000 class candidates per image pass 0.05; candidates per stage printed): host syncs under the
#      sync debug mode; s/img dynamic vs static vs CUDA graph for OPMask and its baseline (fp32, bf16; batch 1 and 8);
#      each stage as its own CUDA graph (GPU ms from CUDA events, host ms beside it);
#   5. object_prior_add at R = 100/512/1024 (fp32, bf16; fwd, fwd+bwd) against the unfused PyTorch path and the memory
#      floor (minimum bytes over the measured copy bandwidth, as in ../shared/notes/performance.md); then the model's
#      own prior path (benchmarks/bench_prior_path.py: RoIAlign + prior, paper recipe and feature_std, fused vs general
#      vs unfused, kernel time from the profiler beside the host time);
#   5b. the prior's share of an R-50 training step: the headline recipe (and with the 7x7 prior) against the baseline
#      with the same box term, the paper's against the plain baseline (benchmarks/gpu_train_step.py; CUDA events);
#   6. a 50-iteration AMP (bf16) training run of the R-50 preset on tiny_coco at full resolution with --weights, then
#      its evaluation on tiny_coco's validation images;
#   7. diagnostics, last so that a slow sanitizer cannot crowd out the measurements and the training: the extension's
#      C++ errors reach Python (cuda-gdb's stack of a process that dies) and compute-sanitizer's memcheck, racecheck
#      and synccheck on small cases, with what the budget leaves them.
# The backbones of 4 and 6 are a torchvision ResNet-50 file with random weights and BatchNorm statistics measured on
# tiny_coco (nothing can be downloaded there); timings do not depend on the values, training stability does.
# The table comes last; the log, JSON results and summary.md go to $OUT (default outputs/gpu_run).
#
# The GPU image has no pycocotools and no network, and ../shared does not travel: first, here,
#   bash benchmarks/gpu_prepare.sh          # fills gpu_carry/ (ignored by git): a pycocotools wheel + tiny_coco
# then on the GPU machine (the device tool: command "bash benchmarks/gpu_run.sh", carry ["gpu_carry"]):
#   bash benchmarks/gpu_run.sh              # PYTHON=... picks the interpreter
#   bash benchmarks/gpu_run.sh --dry        # on a CPU: the same stages at toy sizes (no build, no CUDA-only stage)
# Environment: PYTHON, OUT, BUDGET_S, TINY_COCO, TRAIN_ITERS (50), TRAIN_BATCH (16: the preset's), TORCH_CUDA_ARCH_LIST.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
PY=${PYTHON:-$(command -v python3 || command -v python)}
OUT=${OUT:-$ROOT/outputs/gpu_run}
WORK=$(mktemp -d /tmp/opmask_fast_gpu_run.XXXX)
mkdir -p "$OUT"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PY WORK
START=$(date +%s)
# A CPU (--dry) is slower and often shared: stage limits stretch by SLACK and the budget is larger.
SLACK=$(( DRY ? ${SLACK:-4} : 1 ))
DEADLINE=$(( START + ${BUDGET_S:-$(( DRY ? 2400 : 560 ))} ))
STATUS_FILE="$WORK/status"
echo 0 > "$STATUS_FILE"

stage() {  # stage NAME MAX_SECONDS COMMAND...: run under a timeout that ends before the deadline; record the outcome
  local name=$1 max=$(( $2 * SLACK ))
  shift 2
  local left=$(( DEADLINE - $(date +%s) - 15 ))
  local limit=$(( max < left ? max : left ))
  echo "== $name"
  if [ "$limit" -lt 20 ]; then
    echo "skipped: out of time"; printf '%s\tskipped (out of time)\t0\n' "$name" >> "$OUT/stages.tsv"
    LAST_RC=124; return 0
  fi
  local t0=$(date +%s) rc state
  timeout "$limit" "$@"
  rc=$?
  LAST_RC=$rc
  case $rc in 0) state=ok ;; 124) state="TIMEOUT after ${limit} s" ;; *) state="FAILED (exit $rc)" ;; esac
  [ $rc -eq 0 ] || echo 1 > "$STATUS_FILE"
  printf '%s\t%s\t%s\n' "$name" "$state" "$(( $(date +%s) - t0 ))" >> "$OUT/stages.tsv"
}

skip() { echo "== $1"; echo "skipped: $2"; printf '%s\tskipped (%s)\t0\n' "$1" "$2" >> "$OUT/stages.tsv"; }

build() {
  FORCE_CUDA=1 "$PY" setup.py build_ext --inplace > "$WORK/build.log" 2>&1 || { tail -n 60 "$WORK/build.log"; return 1; }
  grep -E "opmask_fast:|warning" "$WORK/build.log" | head -n 20
  "$PY" -c "import opmask_fast._extension as e; assert e.cuda_built(), e.load_error(); print('CUDA kernels loaded')"
}

error_paths() {  # the extension's own errors reach Python: each case in its own process; a crash gets a native stack
  local rc=0 case
  for case in plain formatted formatted_cuda; do
    [ "$case" = formatted_cuda ] && ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2> /dev/null && continue
    cat > "$WORK/error_path.py" << PYEOF
import torch, opmask_fast._extension as e
assert e.has_C(), e.load_error()
dev = "cuda" if "$case".endswith("cuda") else "cpu"
x = torch.randn(1, 2, 8, 8, device=dev)
rois = torch.tensor([[3.0, 1.0, 1.0, 4.0, 4.0]], device=dev)  # batch index 3 of a batch of 1
try:  # plain: a one-string TORCH_CHECK; formatted: one with numbers in its message (c10::str); on CUDA the C++ op
    # does not read RoI values on the host (no synchronisation: a bad batch index reads nothing), so the user-facing
    # op's Python check is what must refuse it there
    if dev == "cuda":
        from opmask_fast.ops import roi_align
        roi_align(x, rois, 2, 1.0, 0, True)
    else:
        torch.ops.opmask_fast.roi_align(x, rois[:, :4] if "$case" == "plain" else rois, 1.0, 2, 2, 0, True, None)
    raise SystemExit("$case: no error raised")
except (RuntimeError, ValueError) as err:
    print("$case: RuntimeError:", str(err).splitlines()[0])
PYEOF
    if ! "$PY" -X faulthandler "$WORK/error_path.py"; then
      rc=1
      echo "$case: the process died; its native stack:"
      local gdb
      gdb=$(command -v cuda-gdb || echo "${CUDA_HOME:-/usr/local/cuda}/bin/cuda-gdb")
      if [ -x "$gdb" ]; then
        timeout 120 "$gdb" -batch -ex run -ex bt --args "$PY" "$WORK/error_path.py" 2>&1 \
          | grep -v "^\[New Thread\|^\[Thread" | tail -n 40
      else
        echo "(no cuda-gdb here)"
      fi
    fi
  done
  # Controls built the same way, each in its own process, tell the candidate causes apart (benchmarks/error_controls.py).
  # They are diagnostics: a control that dies (c10::str's number formatting does on a GPU image whose C++ runtime
  # differs from the compiler's) shows the hazard csrc/error_message.h's format_message avoids; only the extension's
  # own cases above decide the stage.
  "$PY" benchmarks/error_controls.py || echo "controls: at least one died (diagnostic only; see above)"
  return $rc
}

sanitize() {  # sanitize TOOL: the ops' small cases under compute-sanitizer (memcheck, racecheck: shared memory
  # hazards of the block reductions, synccheck: barriers under divergent branches)
  "$CUDA_HOME/bin/compute-sanitizer" --tool "$1" --error-exitcode 9 "$PY" - << 'PYEOF'
import torch
from opmask_fast.ops import roi_align, nms, batched_nms, nms_topk, multi_level_roi_align, add_weighted_map
torch.manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
    x = torch.randn(2, 5, 13, 17, device="cuda", dtype=dtype, requires_grad=True)
    rois = torch.tensor([[0, -5.0, -5.0, 3.0, 4.0], [1, 10.0, 8.0, 40.0, 30.0], [1, 2.0, 2.0, 2.0, 2.0],
                         [0, 0.0, 0.0, 16.0, 12.0], [1, 1.2, 3.4, 1.3, 3.5]], device="cuda")
    m = torch.randn(5, 3, 4, device="cuda", dtype=dtype, requires_grad=True)
    roi_align(x, rois, (3, 4), 1.0, 0, True, roi_map=m).sum().backward()
    roi_align(x, rois, 2, 0.5, 2, False).sum().backward()
    for weight in ("feature_std", "feature_range"):
        roi_align(x, rois, (3, 4), 1.0, 0, True, roi_map=m, map_weight=weight).sum().backward()
        add_weighted_map(x[:1, :, :3, :4].expand(5, -1, -1, -1), m, weight).sum().backward()
        with torch.no_grad():
            multi_level_roi_align([x, x[:, :, ::2, ::2].contiguous()], rois, torch.tensor([0, 1, 0, 1, 1], device="cuda"),
                                  (3, 4), [1.0, 0.5], roi_map=m, map_weight=weight)
b = torch.rand(200, 4, device="cuda") * 100; b[:, 2:] += b[:, :2]
s = torch.rand(200, device="cuda")
c = torch.randint(0, 5, (200,), device="cuda")
nms(b, s, 0.5); batched_nms(b, s, c, 0.5); nms(b[:1], s[:1], 0.5); nms_topk(b, s, 0.5, 20, c); nms_topk(b, s, 0.5, 300)
torch.cuda.synchronize(); print("sanitizer case ran")
PYEOF
}

train_run() {
  local ann="$TINY/annotations" small=()
  if [ "$DRY" = 1 ]; then
    for s in input.min_size_train=128 input.min_size_test=128 input.max_size=192 rpn.pre_nms_topk_train=100 \
             rpn.post_nms_topk_train=20 rpn.pre_nms_topk_test=50 rpn.post_nms_topk_test=10 \
             roi_heads.batch_size_per_image=8 roi_heads.detections_per_image=5; do small+=(--set "$s"); done
  fi
  "$PY" -m opmask_fast.train --preset opmask_r50_coco --weights "$WORK/r50.pth" --device "$DEVICE" \
    --train-ann "$ann/instances_train2017.json" --train-images "$TINY/train2017" \
    --val-ann "$ann/instances_val2017.json" --val-images "$TINY/val2017" --split voc \
    --iters "$TRAIN_ITERS" --batch-size "$TRAIN_BATCH" --log-period "$LOG_PERIOD" --checkpoint-period 100000 \
    --quiet --output-dir "$WORK/train" ${EVAL_MAX:+--eval-max-images "$EVAL_MAX"} "${small[@]}" || return 1
  cp "$WORK/train/metrics.json" "$OUT/train_metrics.json"
  cp "$WORK/train/metrics.jsonl" "$OUT/train_metrics.jsonl"
}

diagnostics() {  # GPU only, after the measurements: the extension's errors and the sanitizers, which take no
  # number the issues' targets need and can be slow (racecheck); what the budget leaves them they get
  stage "C++ errors reach Python" 150 bash -c error_paths
  if [ -x "$CUDA_HOME/bin/compute-sanitizer" ]; then
    export -f sanitize; export CUDA_HOME
    for tool in memcheck racecheck synccheck; do
      stage "compute-sanitizer $tool" 120 bash -c "sanitize $tool"
    done
  else
    skip "compute-sanitizer" "not installed"
  fi
}

main() {
  : > "$OUT/stages.tsv"
  BUILD_OK=1 LAST_RC=0
  export -f error_paths
  echo "== environment"
  "$PY" -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__,
'torchvision', torchvision.__version__, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  "$PY" -c "import triton; print('triton', triton.__version__)" || true
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader 2> /dev/null || true
  if ! "$PY" -c "import pycocotools" 2> /dev/null; then
    local whl
    whl=$(ls gpu_carry/wheels/pycocotools-*.whl 2> /dev/null | head -n 1)
    if [ -n "$whl" ]; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$whl" \
        && export PYTHONPATH="$PYTHONPATH:$WORK/site" && echo "pycocotools installed from $whl"
    else
      echo "pycocotools is missing and gpu_carry/wheels has no wheel: run benchmarks/gpu_prepare.sh and carry gpu_carry"
    fi
  fi
  TINY=""
  for d in "${TINY_COCO:-}" ../shared/data/tiny_coco gpu_carry/tiny_coco; do
    [ -n "$d" ] && [ -f "$d/annotations/instances_train2017.json" ] && { TINY=$d; break; }
  done
  echo "tiny_coco: ${TINY:-not found}"

  if [ "$DRY" = 1 ]; then
    DEVICE=cpu TRAIN_ITERS=${TRAIN_ITERS:-2} TRAIN_BATCH=${TRAIN_BATCH:-2} LOG_PERIOD=1 EVAL_MAX=2
    MODEL_ARGS=(--device cpu --size 96x128 --proposals 10 --rounds 1 --warmup 1 --dtypes fp32)
    PRIOR_ARGS=(--device cpu --sizes 100 --dtypes fp32 --reps 1)
    WEIGHT_ARGS=(--device cpu --count 2 --side 128)
    STATIC_ARGS=(--device cpu --size 128x128 --batches 1 --rounds 1 --proposals 10)
    STEP_ARGS=(--device cpu --size 128x192 --batch 1 --proposals 50 --rounds 1 --dtypes fp32)
    stage "extension (CPU kernels)" 60 "$PY" -c "import opmask_fast._extension as e; assert e.has_C(), e.load_error()"
    stage "C++ errors reach Python" 60 bash -c error_paths
    skip "CUDA op tests" "no GPU"
    skip "compute-sanitizer" "no GPU"
    stage "Triton prior tests (interpreter, a subset)" 150 "$PY" -m pytest -q -p no:cacheprovider \
      tests/test_object_prior_add.py -k triton_matches_reference
  else
    DEVICE=cuda TRAIN_ITERS=${TRAIN_ITERS:-50} TRAIN_BATCH=${TRAIN_BATCH:-16} LOG_PERIOD=10 EVAL_MAX=""
    MODEL_ARGS=(--device cuda)
    PRIOR_ARGS=(--device cuda)
    WEIGHT_ARGS=(--device cuda)
    STATIC_ARGS=(--device cuda)
    STEP_ARGS=(--device cuda)
    export -f build
    stage "build" 300 bash -c build
    if [ "$LAST_RC" != 0 ]; then
      BUILD_OK=0
      echo "build failed: nothing else can run"
    else
      # pytest-xdist (in the GPU image) replaces a worker that crashes, so one segfault cannot hide the other tests.
      local xdist=()
      "$PY" -c "import xdist" 2> /dev/null && xdist=(-n 4)
      stage "CUDA op tests" 150 "$PY" -m pytest -q -p no:cacheprovider "${xdist[@]}" tests/test_roi_align.py \
        tests/test_nms.py tests/test_multi_scale_roi_align.py tests/test_multi_level_roi_align.py tests/test_nms_topk.py \
        tests/test_roi_align_weighted.py tests/test_add_weighted_map.py
      stage "Triton prior tests (CUDA)" 150 "$PY" -m pytest -q -p no:cacheprovider "${xdist[@]}" \
        tests/test_object_prior_add.py tests/test_object_prior.py
    fi
  fi
  if [ "$BUILD_OK" = 1 ]; then
    stage "weights file (ResNet-50)" 60 "$PY" benchmarks/gpu_validate.py weights --out "$WORK/r50.pth" \
      ${TINY:+--images "$TINY/train2017"} "${WEIGHT_ARGS[@]}"
    stage "s/img: OPMask, baseline, torchvision" 150 "$PY" benchmarks/gpu_validate.py model --weights "$WORK/r50.pth" \
      --json "$OUT/model.json" "${MODEL_ARGS[@]}"
    stage "static path: host syncs, s/img, CUDA graph, stages" 200 "$PY" benchmarks/gpu_static.py --json "$OUT/static.json" \
      ${STATIC_ARGS[@]+"${STATIC_ARGS[@]}"} $( [ "$DRY" = 0 ] && echo --weights "$WORK/r50.pth" )
    stage "object_prior_add vs unfused vs floor" 120 "$PY" benchmarks/gpu_validate.py prior --json "$OUT/prior.json" \
      "${PRIOR_ARGS[@]}"
    stage "the model's prior path: fused vs general vs unfused" 120 "$PY" -m pytest -q -p no:cacheprovider \
      benchmarks/bench_prior_path.py --benchmark-only --benchmark-json "$OUT/prior_path.json" \
      $( [ "$DRY" = 1 ] && echo -k 100-float32 )
    stage "the prior's share of an R-50 training step" 120 "$PY" benchmarks/gpu_train_step.py \
      --json "$OUT/train_step.json" ${STEP_ARGS[@]+"${STEP_ARGS[@]}"} $( [ "$DRY" = 0 ] && echo --weights "$WORK/r50.pth" )
    if [ -n "$TINY" ]; then
      export -f train_run; export DEVICE TRAIN_ITERS TRAIN_BATCH LOG_PERIOD EVAL_MAX TINY DRY OUT
      stage "train R-50 ${TRAIN_ITERS} its (AMP) + eval" 300 bash -c train_run
    else
      skip "train R-50 (AMP) + eval" "no tiny_coco"
    fi
    [ "$DRY" = 0 ] && diagnostics
  fi
  echo
  echo "== summary ($(( $(date +%s) - START )) s in all)"
  "$PY" benchmarks/gpu_validate.py summary --out "$OUT"
  echo "results in $OUT; gpu_run: status $(cat "$STATUS_FILE")"
}

main "$@" 2>&1 | tee "$OUT/gpu_run.log"
status=$(cat "$STATUS_FILE")
rm -rf "$WORK"
exit "$status"
