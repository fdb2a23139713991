"""Triton kernels of opmask_fast, installed as `opmask_fast.kernels` (setup.py maps this folder with package_dir).

Importing this package does not import Triton; each kernel module does, so CPU users without Triton only lose the
Triton backend. Kernel modules: `object_prior_add` (the fused object mask prior's launchers: forward, backward and
in place) and `object_prior_add_jit` (its Triton programs).
"""
