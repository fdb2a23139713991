"""Shared pytest setup.

Without a CUDA device the Triton kernels run under Triton's interpreter on CPU tensors. TRITON_INTERPRET must be set
before any module defining @triton.jit kernels is imported, hence here, before the tests import opmask_fast. On a GPU
machine it stays unset, so the same tests run the compiled kernels.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
