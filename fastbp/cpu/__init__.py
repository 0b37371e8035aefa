"""The CPU backend: Numba-compiled kernels, one module per fused piece, composed in step.py."""
from . import threading_layer

# Before any kernel is compiled: compiling a parallel function starts Numba's threads.
threading_layer.configure()
