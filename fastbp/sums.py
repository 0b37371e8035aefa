"""Sums of float64 values added in a fixed order, compiled without reassociation.

The epoch's bookkeeping (a batch's summed sample weight, a batch's hits, the squared weights of the
estimators' alpha term) is computed both in Python (Trainer.step, micro-batches, MPI, an epoch's end) and
inside the multi-step kernel (cpu/serial.py); both call these functions, so the two give the same bits. NumPy's pairwise np.sum and a loop compiled with fastmath
reassociation (free to vectorize the reduction) each add in another order.
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True, _nrt=False)
def sum_at(values, rows):
    """values[rows[0]] + values[rows[1]] + ... as float64, in the order of rows."""
    total = 0.0
    for r in rows:
        total += values[r]
    return total


@njit(cache=True, nogil=True, _nrt=False)
def sum_first(values, n):
    """values[0] + ... + values[n - 1] as float64, in index order."""
    total = 0.0
    for i in range(n):
        total += values[i]
    return total


@njit(cache=True, nogil=True, _nrt=False)
def squared_weights(params, offsets, dims):
    """The sum of every layer's squared weights, not its biases, as float64: params (P,) float32 holds
    layer l's (dims[l] + 1, dims[l + 1]) block at offsets[l], its last row the biases. Four running sums
    over each layer's weights, element i into sum i mod 4 (independent chains: four times a single sum's
    speed, in a fixed order), then added layer after layer."""
    total = 0.0
    for l in range(dims.size - 1):
        start, stop = offsets[l], offsets[l] + dims[l] * dims[l + 1]
        s0 = s1 = s2 = s3 = 0.0
        i = start
        while i + 4 <= stop:
            s0 += np.float64(params[i]) * np.float64(params[i])
            s1 += np.float64(params[i + 1]) * np.float64(params[i + 1])
            s2 += np.float64(params[i + 2]) * np.float64(params[i + 2])
            s3 += np.float64(params[i + 3]) * np.float64(params[i + 3])
            i += 4
        while i < stop:
            s0 += np.float64(params[i]) * np.float64(params[i])
            i += 1
        total += (s0 + s1) + (s2 + s3)
    return total
