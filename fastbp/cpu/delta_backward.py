"""Kernel 3 (BP2): delta propagated one layer back, delta_prev = (delta @ W^T) * act'(Z_prev).

Shapes (n = batch rows, fan_in/fan_out of the layer the delta comes back through):
    delta       (n, fan_out) float32 row-major
    block       (fan_in + 1, fan_out) float32 row-major: that layer's [W; b]; only W is read
    a_prev      (n, fan_in + 1) float32: the activations A_prev = act(Z_prev) with their ones column
    delta_prev  (n, fan_in) float32 output
act'(Z_prev) is computed from A_prev (relu: A > 0; leaky: 1 or slope; tanh: 1 - A^2; sigmoid: A(1 - A)),
applied as the epilogue of the product, row by row while the row is in cache.
"""
import numpy as np
from numba import njit, prange

from ._jit import FASTMATH, IDENTITY, LEAKY_RELU, RELU, SIGMOID, SLOPE, TANH
from .blas import NO_TRANS, TRANS, gemm


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def multiply_activation_derivative(delta_prev, a_prev, n, width, activation):
    """In place: delta_prev (n, width) *= act'(.) evaluated from a_prev (n, width + 1)."""
    if activation not in (IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID):
        raise ValueError("unknown activation code")
    lda = width + 1
    for i in prange(n):
        d = delta_prev[i * width:(i + 1) * width]
        a = a_prev[i * lda:i * lda + width]
        if activation == RELU:
            for j in range(width):
                d[j] = d[j] if a[j] > 0 else np.float32(0.0)
        elif activation == LEAKY_RELU:
            for j in range(width):
                d[j] = d[j] if a[j] > 0 else d[j] * np.float32(SLOPE)
        elif activation == TANH:
            for j in range(width):
                d[j] *= np.float32(1.0) - a[j] * a[j]
        elif activation == SIGMOID:
            for j in range(width):
                d[j] *= a[j] * (np.float32(1.0) - a[j])


@njit(cache=True, nogil=True)
def propagate_delta(delta, block, a_prev, n, fan_in, fan_out, activation, delta_prev):
    gemm(NO_TRANS, TRANS, n, fan_in, fan_out, delta, fan_out, block, fan_out, 0.0, delta_prev, fan_in)
    multiply_activation_derivative(delta_prev, a_prev, n, fan_in, activation)
