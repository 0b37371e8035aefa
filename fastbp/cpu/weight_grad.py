"""Kernel 4 (BP3 + BP4): dW = A_prev^T @ delta and db = column sums of delta, as one product.

Shapes (n = batch rows):
    a_prev  (n, fan_in + 1) float32 row-major: A_prev with its column of ones
    delta   (n, fan_out) float32 row-major
    grad    (fan_in + 1, fan_out) float32 output: rows [:fan_in] = dW, row [fan_in] = db
[A_prev, 1]^T @ delta stacks A_prev^T delta on top of 1^T delta, which is exactly db: the bias gradient
costs no extra pass, and BLAS sums it in a fixed order (deterministic).
"""
from numba import njit

from .blas import NO_TRANS, TRANS, gemm


@njit(cache=True, nogil=True)
def weight_gradient(a_prev, delta, n, fan_in, fan_out, grad):
    gemm(TRANS, NO_TRANS, fan_in + 1, fan_out, n, a_prev, fan_in + 1, delta, fan_out, 0.0, grad, fan_out)
