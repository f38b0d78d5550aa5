"""Fused Numba CPU kernels."""
