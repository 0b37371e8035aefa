"""The CUDA backend: numba.cuda kernels on the CPU backend's layouts (see backend.py)."""
from . import simulator_fixes

simulator_fixes.apply()  # under Numba's CUDA simulator only (the tests' stand-in for a GPU)
