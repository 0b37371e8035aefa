"""Batch assembly on the GPU: a0 (n, d0 + 1) <- [X[rows], 1], the first layer's input with its ones column.

Shapes: X (N * d0,) float32 row-major on the device; rows (n,) int64; a0 (n * (d0 + 1),) float32.
"""
from numba import cuda


@cuda.jit
def gather_input(X, d0, rows, a0):
    idx = cuda.grid(1)
    n = rows.size
    if idx >= n * (d0 + 1):
        return
    i, j = idx // (d0 + 1), idx % (d0 + 1)
    a0[idx] = 1.0 if j == d0 else X[rows[i] * d0 + j]
