"""Triton kernels for meanshift_gpu, installed as ``meanshift_gpu.kernels``.

Import this subpackage only through ``meanshift_gpu`` (never as a top-level
``kernels`` module: another PyPI package has that name).  Triton is imported
lazily by the kernel modules, so the library works without it.
"""
