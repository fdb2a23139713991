"""The build: the compiled extension loads, carries the kernels the machine can build, and opmask_fast.kernels is
the top-level kernels/ folder (also for an editable install run from the repository root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import opmask_fast
from opmask_fast import _extension

REPO = Path(__file__).resolve().parents[1]


def test_extension_is_built():
    assert _extension.has_C(), f"opmask_fast._C failed to import: {_extension.load_error()}"
    for op in ("roi_align", "roi_align_backward", "nms", "batched_nms"):
        assert hasattr(torch.ops.opmask_fast, op)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"opmask_fast::{op}", "CPU")


def test_cuda_kernels_compiled_when_possible():
    nvcc = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    can = torch.version.cuda is not None and (nvcc.exists() or shutil.which("nvcc")) and os.environ.get("FORCE_CUDA") != "0"
    if not can:
        pytest.skip("no nvcc or a CPU-only torch: the CUDA sources are not built here")
    assert _extension.cuda_built(), "nvcc and a CUDA torch are present, but the CUDA kernels were not built"
    for op in ("roi_align", "roi_align_backward", "nms", "batched_nms"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"opmask_fast::{op}", "CUDA")


def test_public_ops_are_exported():
    import opmask_fast.ops as ops

    for name in ("roi_align", "multi_scale_roi_align", "nms", "batched_nms"):
        assert callable(getattr(ops, name))
    if (REPO / "opmask_fast" / "ops" / "object_prior_add.py").exists():
        for name in ("object_prior_add", "object_prior", "ObjectMaskPrior"):
            assert hasattr(ops, name)


@pytest.mark.skipif(not (REPO / "kernels" / "__init__.py").exists(), reason="kernels/ is not a package yet")
@pytest.mark.parametrize("cwd", [REPO, Path("/")])
def test_kernels_package_is_the_top_level_folder(cwd):
    code = "import opmask_fast.kernels as k, pathlib; print(pathlib.Path(k.__file__).resolve().parent)"
    # Run without the repository on sys.path (unless cwd is the root): the install must provide the mapping.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == (REPO / "kernels").resolve()


def test_package_imports_without_torchvision():
    code = "import sys; sys.modules['torchvision'] = None; import opmask_fast.ops; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert opmask_fast.__version__
