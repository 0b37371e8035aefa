"""Batch assembly on the GPU: a0 (n, d0 + 1) <- [X[rows], 1], the first layer's input with its ones column,
through inverted input dropout when input_threshold > 0 (the CPU's dense_forward.gather_row: layer
INPUT_LAYER's masks, batch row i).

Shapes: X (N * d0,) float32 row-major on the device; rows (n,) int64; a0 (n * (d0 + 1),) float32.
"""
from numba import cuda, float32

from ..cpu.dropout import INPUT_LAYER
from . import device_math as dm


@cuda.jit
def gather_input(X, d0, rows, a0, key, input_threshold):
    idx = cuda.grid(1)
    n = rows.size
    if idx >= n * (d0 + 1):
        return
    i, j = idx // (d0 + 1), idx % (d0 + 1)
    a0[idx] = 1.0 if j == d0 else input_feature(X[rows[i] * d0 + j], key, i, j, input_threshold)


@cuda.jit(device=True, inline=True)
def input_feature(v, key, row, col, input_threshold):
    """One input feature through inverted input dropout (unchanged when input_threshold is 0)."""
    if input_threshold > 0:
        if dm.keeps(key, INPUT_LAYER, row, col, input_threshold):
            return v * dm.inv_keep(input_threshold)
        return float32(0.0)
    return v
