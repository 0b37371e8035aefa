"""A fix for a race in Numba's CUDA simulator, which the test suite uses in place of a GPU.

The simulator runs a block's threads as Python threads. `cuda.shared.array` there looks the array up
by its source line and creates it when missing, in two steps (dict.get, then a store) with no lock:
two threads of a block that reach the line together can each create their own "shared" array, and
then read the other's writes as uninitialised memory (np.empty), which shows up as NaN now and then.
A real GPU has one shared array per block by construction, so this is the simulator's bug, not the
kernels'; with the fix, a NaN under the simulator points at the kernels again.

apply() wraps the lookup in a lock; it is idempotent and does nothing outside the simulator.
"""
import threading

import numba

_lock = threading.Lock()
_applied = False


def apply():
    global _applied
    if _applied or not numba.config.ENABLE_CUDASIM:
        return
    import sys
    import traceback

    import numpy as np
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support
    static_or_dynamic = kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:  # errors and dynamic shared memory: as the simulator does
            return static_or_dynamic(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]  # the kernel's line, as the simulator keys it
        with _lock:  # one lookup-or-create step: every thread of the block gets the same array
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array
    _applied = True
