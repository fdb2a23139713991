"""Build of opmask_fast and its compiled extension opmask_fast._C.

The C++ CPU kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are added when torch is a CUDA build and
nvcc is found, or when FORCE_CUDA=1; FORCE_CUDA=0 builds the CPU kernels only. Without a GPU the CUDA sources still
compile (that is how CI checks them); TORCH_CUDA_ARCH_LIST then defaults to "9.0".

    pip install torch                          # first: the extension compiles against the torch installed
    pip install --no-build-isolation .         # (-e for a development install)

pip's default isolated build would see no torch (nothing declares it a build requirement, since a second, build-time
torch could differ from the one the extension runs with): without torch this file stops with a line saying so.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# torch.utils.cpp_extension reads CUDA_HOME at import; guessed from `which nvcc` it becomes /usr/local (no headers).
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch  # noqa: E402
except ImportError:
    sys.exit("opmask_fast: building the extension needs torch installed first (pip install torch), then "
             "`pip install --no-build-isolation .` so the build sees it")
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda() -> tuple[bool, str]:
    force = os.environ.get("FORCE_CUDA")
    if force == "0":
        return False, "FORCE_CUDA=0"
    if force == "1":
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"torch CUDA {torch.version.cuda}, nvcc at {nvcc}"


def _extension():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    with_cuda, reason = _want_cuda()
    # at::parallel_for expands OpenMP pragmas inline: without -fopenmp here the kernels would run single-threaded.
    # -g0: Python's build flags ask for debug info, which makes torch's headers compile about 1.5x slower.
    cxx = ["-O3", "-g0", "-fopenmp", "-Wall", "-Wno-unused-function"]
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])
    if not with_cuda:
        print(f"opmask_fast: building CPU kernels only ({reason}): {len(sources)} C++ files", flush=True)
        return CppExtension("opmask_fast._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # Without a visible GPU torch cannot pick the architectures itself (it fails with IndexError).
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    # ATen/cuda/CUDAContext.h includes cusparse.h, which the CUDA 13 wheels keep under nvidia/cu13/include.
    torch_site = os.path.dirname(os.path.dirname(torch.__file__))
    for sub in ("cu13", "cu12"):
        inc = os.path.join(torch_site, "nvidia", sub, "include")
        if os.path.isdir(inc):
            kwargs["include_dirs"].append(inc)
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xcompiler", "-Wall", "-DOPMASK_FAST_WITH_CUDA"]
    print(
        f"opmask_fast: building CPU + CUDA kernels ({reason}; TORCH_CUDA_ARCH_LIST="
        f"{os.environ.get('TORCH_CUDA_ARCH_LIST', 'auto')}): {len(sources)} C++ + {len(cuda_sources)} CUDA files",
        flush=True,
    )
    return CUDAExtension(
        "opmask_fast._C",
        sources + cuda_sources,
        extra_compile_args={"cxx": cxx + ["-DOPMASK_FAST_WITH_CUDA"], "nvcc": nvcc},
        **kwargs,
    )


# What the package and its commands import (requirements.txt pins the development environment of scripts/setup.sh).
INSTALL_REQUIRES = ["torch>=2.4", "numpy>=1.23", "pycocotools>=2.0.6", "Pillow>=9.1", "matplotlib>=3.6", "scipy>=1.9"]
EXTRAS_REQUIRE = {
    "triton": ["triton>=3.0"],  # the fused prior kernels on CUDA tensors (the reference runs without it)
    "torchvision": ["torchvision>=0.19"],  # opmask_fast.ops.swap_in: the prior in torchvision's Mask R-CNN
}
COMMANDS = ("train", "evaluate", "predict", "compare", "analyze")

packages = find_packages(include=["opmask_fast", "opmask_fast.*"])
if os.path.isdir(os.path.join(ROOT, "kernels")):
    # The Triton kernels live in the top-level kernels/ folder but import as opmask_fast.kernels: a top-level
    # `kernels` package would collide with an unrelated PyPI package of that name.
    packages.append("opmask_fast.kernels")

setup(
    name="opmask_fast",
    version="0.1.0",
    description="OPMask instance segmentation with C++/CUDA RoIAlign and NMS and fused Triton prior kernels",
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    # opmask-train ... opmask-analyze, the same as python -m opmask_fast.<command>
    entry_points={"console_scripts": [f"opmask-{c}=opmask_fast.{c}:console" for c in COMMANDS]},
    packages=packages,
    package_dir={"opmask_fast.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    zip_safe=False,
)
print(f"opmask_fast: setup.py done (python {sys.version.split()[0]}, torch {torch.__version__})", flush=True)
