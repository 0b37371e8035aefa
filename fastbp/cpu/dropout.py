"""Inverted dropout masks, recomputed rather than stored.

Whether unit (row, col) of hidden layer `layer` is kept in a step is a hash of (key + row, layer, col):
the forward pass and the backward pass compute the same mask independently, no mask is kept in
memory, and the result does not depend on how rows are shared among threads. The key changes every
step (see Trainer), so a checkpoint resumes with exactly the masks an uninterrupted run would use.
Kept units are scaled by 1 / (1 - rate), so nothing changes at predict time (PyTorch's convention).
"""
from typing import NamedTuple

import numpy as np
from numba import njit

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_LOW63 = np.uint64(2 ** 63 - 1)


@njit(cache=True, nogil=True)
def keeps(key, layer, row, col, threshold):
    """True if the unit survives; threshold = rate * 2^24 (units whose 24-bit hash falls below drop)."""
    # The row enters by addition, so that offset_key(key, k) gives row i the mask of row k + i. With rows
    # and columns below 2^24 each, distinct units of a step are distinct inputs to the hash.
    position = (np.uint64(key) + (np.uint64(row) << np.uint64(24))) & _LOW63
    x = (position ^ (np.uint64(layer) << np.uint64(56)) ^ np.uint64(col)) + _M1
    x = (x ^ (x >> np.uint64(30))) * _M2  # splitmix64's finaliser
    x = (x ^ (x >> np.uint64(27))) * _M3
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(40)) >= np.uint64(threshold)


# The layer id of the input features' masks (Trainer(input_dropout=...)); hidden layers are 0 .. L - 2.
INPUT_LAYER = 255


def offset_key(key, first_row):
    """The key under which row i of a part of a batch gets the mask of row first_row + i of the whole batch
    (an MPI rank's part, a micro-batch): keys and rows add modulo 2^63 in keeps()."""
    return (int(key) + (int(first_row) << 24)) % 2 ** 63


def threshold(rate):
    return int(round(rate * 2 ** 24))


class Thresholds(NamedTuple):
    """A step's dropout: the hidden layers' threshold and the input features' (Trainer(input_dropout=...));
    0 where nothing is dropped."""
    hidden: int = 0
    inputs: int = 0


NO_DROPOUT = Thresholds()


@njit(cache=True, nogil=True)
def mask(key, layer, n, width, threshold):
    """(n, width) float32 of 0/1: the mask of one hidden layer for a batch of n rows (tests, reference)."""
    out = np.zeros((n, width), np.float32)
    for i in range(n):
        for j in range(width):
            if keeps(key, layer, i, j, threshold):
                out[i, j] = 1.0
    return out
