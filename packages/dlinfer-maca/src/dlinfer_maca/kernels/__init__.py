"""Triton kernels of the maca backend (one module per op family)."""
