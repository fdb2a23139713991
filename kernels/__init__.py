"""Triton kernels of opmask_fast, installed as `opmask_fast.kernels` (setup.py maps this folder with package_dir).

Importing this package does not import Triton; each kernel module does, so CPU users without Triton only lose the
Triton backend. Kernel modules: `object_prior_add` (the fused object mask prior, forward, backward and in place).
"""
