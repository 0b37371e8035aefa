"""Kernel 3 (BP2): delta propagated one layer back, delta_prev = (delta @ W^T) * act'(Z_prev).

Shapes (n = batch rows, fan_in/fan_out of the layer the delta comes back through):
    delta       (n, fan_out) float32 row-major
    block       (fan_in + 1, fan_out) float32 row-major: that layer's [W; b]; only W is read
    a_prev      (n, fan_in + 1) float32: the activations A_prev = act(Z_prev) with their ones column
    delta_prev  (n, fan_in) float32 output
act'(Z_prev) is computed from A_prev (relu: A > 0; leaky: 1 or slope; tanh: 1 - A^2; sigmoid: A(1 - A)),
applied by each thread to the block of the product it just computed, while that block is in cache.
"""
import numpy as np
from numba import njit, prange

from ._jit import FASTMATH, IDENTITY, LEAKY_RELU, RELU, SIGMOID, SLOPE, TANH
from .blas import NO_TRANS, TRANS, gemm_block, part, split_rows


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def multiply_derivative_block(d, a, width, r0, r1, c0, c1, activation):
    """In place: d[r0:r1, c0:c1] *= act'(.) from a[r0:r1, c0:c1]; d: (n, width), a: (n, width + 1)."""
    for i in range(r0, r1):
        drow = d[i * width + c0:i * width + c1]
        arow = a[i * (width + 1) + c0:i * (width + 1) + c1]
        if activation == RELU:
            for j in range(drow.size):
                drow[j] = drow[j] if arow[j] > 0 else np.float32(0.0)
        elif activation == LEAKY_RELU:
            for j in range(drow.size):
                drow[j] = drow[j] if arow[j] > 0 else drow[j] * np.float32(SLOPE)
        elif activation == TANH:
            for j in range(drow.size):
                drow[j] *= np.float32(1.0) - arow[j] * arow[j]
        elif activation == SIGMOID:
            for j in range(drow.size):
                drow[j] *= arow[j] * (np.float32(1.0) - arow[j])


@njit(parallel=True, cache=True, nogil=True)
def propagate_delta(delta, block, a_prev, n, fan_in, fan_out, activation, delta_prev, threads):
    if activation not in (IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID):
        raise ValueError("unknown activation code")
    parts, by_rows = split_rows(n, fan_in, threads)
    for p in prange(parts):
        r0, r1, c0, c1 = 0, n, 0, fan_in
        if by_rows:
            r0, r1 = part(n, parts, p)
        else:
            c0, c1 = part(fan_in, parts, p)
        # op(B) = W^T: W is the block's first fan_in rows, row stride fan_out.
        gemm_block(NO_TRANS, TRANS, n, fan_in, fan_out, delta, fan_out, block, fan_out, delta_prev, fan_in,
                   r0, r1, c0, c1)
        if activation != IDENTITY:
            multiply_derivative_block(delta_prev, a_prev, fan_in, r0, r1, c0, c1, activation)
