"""Shared pytest setup.

Without a CUDA device the Triton kernels run under Triton's interpreter on CPU tensors. TRITON_INTERPRET must be set
before any module defining @triton.jit kernels is imported, hence here, before the tests import opmask_fast. On a GPU
machine it stays unset, so the same tests run the compiled kernels.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_report_header(config):
    """Say which implementation the ops run: the compiled kernels, or the references (and why)."""
    from opmask_fast import _extension

    if _extension.has_C():
        return f"opmask_fast._C: loaded (CUDA kernels: {_extension.cuda_built()})"
    return f"opmask_fast._C: not used, the ops run the pure-PyTorch references ({_extension.load_error()})"


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    """The CUDA kernels built for the CPU emulation of CUDA's block model (tests/cuda_emulation)."""
    from cuda_emulation.emulation import build

    lib = build(str(tmp_path_factory.mktemp("cuda_emulation")))
    if lib is None:
        pytest.skip("needs g++ to build the emulated CUDA kernels")
    return lib
