"""Kernel 4 (BP3 + BP4): dW = A_prev^T @ delta and db = column sums of delta, as one product.

Shapes (n = batch rows):
    a_prev  (n, fan_in + 1) float32 row-major: A_prev with its column of ones
    delta   (n, fan_out) float32, row stride ld_delta
    grad    (fan_in + 1, fan_out) float32 output: rows [:fan_in] = dW, row [fan_in] = db
[A_prev, 1]^T @ delta stacks A_prev^T delta on top of 1^T delta, which is exactly db: the bias gradient
costs no extra pass. Each thread computes a block of grad over the whole batch, so no partial sums
are combined across threads and the result does not depend on scheduling.
"""
from numba import njit, prange

from .blas import NO_TRANS, TRANS, gemm_block, part, split_rows


@njit(parallel=True, cache=True, nogil=True)
def weight_gradient(a_prev, delta, ld_delta, n, fan_in, fan_out, grad, threads):
    parts, by_rows = split_rows(fan_in + 1, fan_out, threads)
    for p in prange(parts):
        r0, r1, c0, c1 = 0, fan_in + 1, 0, fan_out
        if by_rows:
            r0, r1 = part(fan_in + 1, parts, p)
        else:
            c0, c1 = part(fan_out, parts, p)
        gemm_block(TRANS, NO_TRANS, fan_in + 1, fan_out, n, a_prev, fan_in + 1, delta, ld_delta, grad, fan_out,
                   r0, r1, c0, c1)
