#!/usr/bin/env bash
# Creates .venv in the repository, installs the pinned environment (requirements.txt) and builds opmask_fast with
# its compiled extension: C++ CPU kernels always, CUDA kernels when nvcc is found (FORCE_CUDA=0/1 overrides).
# Idempotent: a second run reuses the venv, pip skips what is installed, and the build is skipped when the
# extension is newer than every source and imports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python

# A first install writes about 6 GB (torch's wheel is a CUDA build); say so up front rather than fail half-way.
if ! compgen -G ".venv/lib/python*/site-packages/torch/__init__.py" > /dev/null; then  # a file test: no torch import
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $((6 * 1024 * 1024)) ]; then
    echo "setup: error: $(( free_kb / 1024 )) MiB free on the disk of $ROOT; installing requirements.txt needs about 6 GiB" >&2
    exit 2
  fi
fi
echo "setup: installing requirements.txt"
# --no-compile: pip would byte-compile every module of torch (about 30% of the install's time); Python compiles and
# caches the ones a run imports instead.
"$PY" -m pip install --disable-pip-version-check -q --no-compile -r requirements.txt
# ...but where PYTHONDONTWRITEBYTECODE is set (containers and CI images often set it), Python caches nothing and every
# process compiles torch's sources again on import (import torch 4-5 s instead of 2 here; the main job starts 4 such
# processes, the tests dozens). So one import of what the runs load writes the bytecode of just those modules into
# the venv (pip's default would compile every module it installs).
env -u PYTHONDONTWRITEBYTECODE "$PY" -c "import torch, torch._dynamo, torch.optim, torch.utils.data, numpy, scipy.stats, pycocotools.cocoeval, PIL.PngImagePlugin, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot" > /dev/null

# CUDA build settings (see the environment notes): torch guesses CUDA_HOME=/usr/local from `which nvcc` and finds
# no headers; without a visible GPU it cannot pick architectures by itself.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
if [ "${FORCE_CUDA:-}" != 0 ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    export TORCH_CUDA_ARCH_LIST="9.0"  # compile check for H100; set it yourself for other GPUs
  fi
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

# The CUDA kernels are expected when nvcc is present (unless FORCE_CUDA=0) or when FORCE_CUDA=1.
want_cuda=0
if [ "${FORCE_CUDA:-}" = 1 ] || { [ "${FORCE_CUDA:-}" != 0 ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; }; then
  want_cuda=1
fi
so=$(ls opmask_fast/_C*.so 2>/dev/null | head -n1 || true)
stale=1
if [ -n "$so" ] && [ -z "$(find csrc setup.py -newer "$so" -type f | head -n1)" ]; then
  # Import from outside the repository so the installed mapping (not the working directory) is what is tested.
  if (cd / && "$ROOT/$PY" -c "
import sys, opmask_fast._extension as e
sys.exit(0 if e.has_C() and (e.cuda_built() or not $want_cuda) else 1)") 2>/dev/null; then
    stale=0
  fi
fi
if [ "$stale" = 1 ]; then
  echo "setup: building opmask_fast (CUDA_HOME=${CUDA_HOME:-unset} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-auto} FORCE_CUDA=${FORCE_CUDA:-auto})"
  # -v shows every compiler invocation and warning; a broken .cu file fails here and fails CI.
  "$PY" -m pip install --disable-pip-version-check --no-build-isolation --no-deps -v -e .
else
  echo "setup: opmask_fast._C is up to date ($so)"
fi
env -u PYTHONDONTWRITEBYTECODE "$PY" -c "
import opmask_fast._extension as e
assert e.has_C(), e.load_error()
print('setup: opmask_fast._C loaded, CUDA kernels:', e.cuda_built())
import opmask_fast.train, opmask_fast.evaluate, opmask_fast.compare, opmask_fast.analyze, opmask_fast.predict"
