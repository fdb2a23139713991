"""Builds the CUDA kernels for the CPU emulation of CUDA's block model (block_model.h; each `*_emulated.cpp` runs
one op family's kernels by their own launch plans) into one shared library, and calls into it with ctypes."""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
P = ctypes.c_void_p
I64 = ctypes.c_int64
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def build(out_dir: str) -> ctypes.CDLL | None:
    """The library (a few seconds of g++), or None without a C++ compiler; a build error raises with its output."""
    from torch.utils.cpp_extension import include_paths, library_paths

    gxx = shutil.which(os.environ.get("CXX", "g++"))
    if gxx is None:
        return None
    out = os.path.join(out_dir, "cuda_emulated.so")
    libdir = library_paths()[0]
    cmd = [gxx, "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-Wall",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}", f"-I{ROOT}/csrc", f"-I{HERE}",
           *(f"-I{p}" for p in include_paths()), *sorted(glob.glob(os.path.join(HERE, "*_emulated.cpp"))),
           "-o", out, f"-L{libdir}", "-lc10", f"-Wl,-rpath,{libdir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError("building the emulated CUDA kernels failed:\n" + done.stderr[-4000:])
    return ctypes.CDLL(out)


def call(fn, *args) -> None:
    """Calls an entry point (its last two arguments are the error buffer and its size); raises with its message."""
    err = ctypes.create_string_buffer(512)
    if fn(*args, err, len(err)) != 0:
        raise RuntimeError(err.value.decode())


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    assert t is None or t.is_contiguous()
    return P(t.data_ptr()) if t is not None else P(None)


def code(dtype: torch.dtype) -> ctypes.c_int:
    return ctypes.c_int(DTYPE_CODES[dtype])


def acc(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of the CUDA kernels (at::opmath_type)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def poisoned(shape, dtype: torch.dtype) -> torch.Tensor:
    """An output buffer whose unwritten elements show: NaN."""
    return torch.full(shape, float("nan"), dtype=dtype)
