"""Fused Numba CUDA kernels (import them only with numba-cuda installed)."""
