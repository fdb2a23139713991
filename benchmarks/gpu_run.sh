#!/usr/bin/env bash
# On a GPU machine (torch, torchvision, nvcc and pytest-benchmark installed, no network): build the extension for
# the local GPU, run the op tests (CUDA ones included), a compute-sanitizer memcheck of the CUDA kernels on a small
# case, and the CUDA benchmarks; print a short table last. Takes a few minutes; bounded well under 10.
#
#   bash benchmarks/gpu_run.sh            # PYTHON=/path/to/python to pick the interpreter
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
PY=${PYTHON:-$(command -v python3 || command -v python)}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
status=0

echo "== environment"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'gpu', torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true

echo "== build (arch of the local GPU unless TORCH_CUDA_ARCH_LIST is set)"
t0=$(date +%s)
FORCE_CUDA=1 timeout 300 "$PY" setup.py build_ext --inplace > /tmp/opmask_fast_build.log 2>&1 || {
  tail -n 60 /tmp/opmask_fast_build.log; echo "build FAILED"; exit 1; }
grep -E "opmask_fast:|warning" /tmp/opmask_fast_build.log | head -n 20
echo "build: $(( $(date +%s) - t0 )) s"
"$PY" -c "import opmask_fast._extension as e; assert e.cuda_built(), e.load_error(); print('CUDA kernels loaded')" || exit 1

echo "== tests"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_roi_align.py tests/test_nms.py \
  tests/test_multi_scale_roi_align.py 2>&1 | tail -n 25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== compute-sanitizer memcheck (small case)"
if command -v "$CUDA_HOME/bin/compute-sanitizer" > /dev/null; then
  timeout 240 "$CUDA_HOME/bin/compute-sanitizer" --tool memcheck --error-exitcode 9 "$PY" - << 'PYEOF' 2>&1 | tail -n 15
import torch
from opmask_fast.ops import roi_align, nms, batched_nms
torch.manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
    x = torch.randn(2, 5, 13, 17, device="cuda", dtype=dtype, requires_grad=True)
    rois = torch.tensor([[0, -5.0, -5.0, 3.0, 4.0], [1, 10.0, 8.0, 40.0, 30.0], [1, 2.0, 2.0, 2.0, 2.0],
                         [0, 0.0, 0.0, 16.0, 12.0], [1, 1.2, 3.4, 1.3, 3.5]], device="cuda")
    m = torch.randn(5, 3, 4, device="cuda", dtype=dtype, requires_grad=True)
    roi_align(x, rois, (3, 4), 1.0, 0, True, roi_map=m).sum().backward()
    roi_align(x, rois, 2, 0.5, 2, False).sum().backward()
b = torch.rand(200, 4, device="cuda") * 100; b[:, 2:] += b[:, :2]
s = torch.rand(200, device="cuda")
nms(b, s, 0.5); batched_nms(b, s, torch.randint(0, 5, (200,), device="cuda"), 0.5); nms(b[:1], s[:1], 0.5)
torch.cuda.synchronize(); print("memcheck case ran")
PYEOF
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "compute-sanitizer reported errors"; status=1; }
else
  echo "compute-sanitizer not found; skipped"
fi

echo "== benchmarks (CUDA)"
timeout 300 "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_roi_align.py benchmarks/bench_nms.py \
  --benchmark-only -k cuda --benchmark-columns=median,min,rounds 2>&1 | grep -A40 "^median ms per call" || status=1
echo "gpu_run: done (status $status)"
exit $status
