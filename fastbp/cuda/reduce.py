"""Deterministic sums on the GPU: one block, each thread a strided sequential sum, then a fixed tree.

The order of every addition depends only on the array's length, never on scheduling, so results
are the same bits on every run (no atomics). Used for the batch loss, the accuracy count and the
gradient norm; the arrays are at most a few million elements, so one block is enough.
"""
from numba import cuda, float64

_kernels = {}


def make_sums(threads):
    """The kernel for one block of `threads` threads (a power of two); launch it as kernel[1, threads]."""
    if threads in _kernels:
        return _kernels[threads]

    @cuda.jit
    def sums(x, y, out, squares):
        """out[0] = sum(x) (or sum(x^2) when squares), out[1] = sum(y); float64 accumulation."""
        partial_x = cuda.shared.array(threads, float64)
        partial_y = cuda.shared.array(threads, float64)
        tid = cuda.threadIdx.x
        sx = float64(0.0)
        sy = float64(0.0)
        for i in range(tid, x.size, threads):
            v = float64(x[i])
            sx += v * v if squares else v
        for i in range(tid, y.size, threads):
            sy += float64(y[i])
        partial_x[tid] = sx
        partial_y[tid] = sy
        cuda.syncthreads()
        stride = threads // 2
        while stride > 0:
            if tid < stride:
                partial_x[tid] += partial_x[tid + stride]
                partial_y[tid] += partial_y[tid + stride]
            cuda.syncthreads()
            stride //= 2
        if tid == 0:
            out[0] = partial_x[0]
            out[1] = partial_y[0]

    _kernels[threads] = sums
    return sums
