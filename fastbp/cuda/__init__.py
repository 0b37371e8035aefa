"""The CUDA backend: numba.cuda kernels on the CPU backend's layouts (see backend.py)."""
