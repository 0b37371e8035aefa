"""The CPU backend: Numba-compiled kernels, one module per fused piece, composed in step.py."""
