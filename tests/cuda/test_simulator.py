"""The CUDA simulator itself, as the tests use it: its shared memory must be shared by a block's threads."""
import sys
import threading

import numpy as np
import pytest
from numba import config, cuda, float32

from fastbp.cuda import simulator_fixes

pytestmark = pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="checks Numba's CUDA simulator")


def test_a_blocks_threads_always_get_one_shared_array():
    """Unfixed, 8 threads reaching cuda.shared.array together got two arrays in 8 of 300 trials here (a
    NaN now and then in kernels that read each other's writes); fixed: one, always."""
    from numba.cuda.simulator import kernelapi
    simulator_fixes.apply()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race needs a switch mid-lookup
    try:
        for _ in range(300):
            shared = kernelapi.FakeCUDAShared(0)
            got = [None] * 8
            barrier = threading.Barrier(8)

            def grab(i):
                barrier.wait()
                got[i] = shared.array(16, np.float32)
            threads = [threading.Thread(target=grab, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len({id(a) for a in got}) == 1
    finally:
        sys.setswitchinterval(interval)


@cuda.jit
def _block_sum(out):
    first = cuda.shared.array(8, float32)
    second = cuda.shared.array(8, float32)  # another line: another array
    t = cuda.threadIdx.x
    first[t] = t + 1.0
    second[t] = -1.0
    cuda.syncthreads()
    total = float32(0.0)
    for i in range(8):
        total += first[i] + second[i]
    out[cuda.blockIdx.x * 8 + t] = total


def test_fixed_simulator_keeps_shared_arrays_per_line_and_per_block():
    simulator_fixes.apply()
    out = np.zeros(24, np.float32)
    _block_sum[3, 8](out)
    assert (out == 36 - 8).all()
