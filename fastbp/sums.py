"""Sums of float64 values added one after another in index order, compiled without reassociation.

The epoch's bookkeeping (a batch's summed sample weight, a batch's hits) is computed both in Python
(Trainer.step, micro-batches, MPI) and inside the multi-step kernel (cpu/serial.py); both call these
functions, so the two give the same bits. NumPy's pairwise np.sum and a loop compiled with fastmath
reassociation (free to vectorize the reduction) each add in another order.
"""
from numba import njit


@njit(cache=True, nogil=True)
def sum_at(values, rows):
    """values[rows[0]] + values[rows[1]] + ... as float64, in the order of rows."""
    total = 0.0
    for r in rows:
        total += values[r]
    return total


@njit(cache=True, nogil=True)
def sum_first(values, n):
    """values[0] + ... + values[n - 1] as float64, in index order."""
    total = 0.0
    for i in range(n):
        total += values[i]
    return total
