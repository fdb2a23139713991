"""opmask_fast: a fast, lean PyTorch implementation of OPMask (object mask prior for partially supervised
instance segmentation), with C++/CUDA RoIAlign and NMS and fused Triton kernels for the prior."""

__version__ = "0.1.0"

__all__ = ["Predictor"]


def __getattr__(name: str):
    # Lazy, so `import opmask_fast` stays cheap (no torch, no pycocotools) until the API is used.
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'opmask_fast' has no attribute {name!r}")
