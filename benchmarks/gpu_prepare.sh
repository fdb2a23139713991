#!/usr/bin/env bash
# Run here, before benchmarks/gpu_run.sh travels to a GPU machine that has no network: fills gpu_carry/ (ignored by git)
# with what that machine lacks, then carry the folder with the call (the device tool's `carry: ["gpu_carry"]`).
#   - a pycocotools wheel for the GPU machine's Python (3.12 in the lent image; GPU_PYTHON_VERSION to change it);
#   - a copy of tiny_coco (the ../shared beside the checkout does not travel).
#
#   bash benchmarks/gpu_prepare.sh            # PYTHON=/path/to/python picks the pip to download with
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
PYVER=${GPU_PYTHON_VERSION:-3.12}
mkdir -p gpu_carry/wheels
if ! ls gpu_carry/wheels/pycocotools-2.0.11-*.whl > /dev/null 2>&1; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d gpu_carry/wheels pycocotools==2.0.11
fi
TINY=${TINY_COCO:-../shared/data/tiny_coco}
if [ -d "$TINY" ] && [ ! -d gpu_carry/tiny_coco ]; then
  cp -r "$TINY" gpu_carry/tiny_coco
fi
du -sh gpu_carry
ls gpu_carry gpu_carry/wheels
