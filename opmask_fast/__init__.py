"""opmask_fast: a fast, lean PyTorch implementation of OPMask (object mask prior for partially supervised
instance segmentation), with C++/CUDA RoIAlign and NMS and fused Triton kernels for the prior."""

__version__ = "0.1.0"
