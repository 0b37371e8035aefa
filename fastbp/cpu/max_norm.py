"""Kernel 6 (optional): the max-norm constraint, right after the optimizer update (Trainer(max_norm=c)).

Every unit's incoming weight vector, the column W[:, j] of each layer's W (fan_in, fan_out), is scaled back
to Euclidean norm c when its norm exceeds c (Srivastava et al. 2014, section 5.1; Keras' MaxNorm(c, axis=0)
up to its epsilon); biases are not constrained. Norms are summed in float64 in row order, so the result
does not depend on how the columns are shared among threads.

Shapes: params (P,) float32, layer l's block at offsets[l] is (dims[l] + 1, dims[l + 1]) row-major, its
first dims[l] rows W; dims (L + 1,) int64.
"""
import numpy as np
from numba import njit, prange

from ._jit import FASTMATH
from .blas import part


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def constrain_columns(W, fan_in, fan_out, c0, c1, max_norm, scales):
    """Columns c0 .. c1 - 1 of W (fan_in, fan_out) row-major, in place; scales: (>= c1 - c0,) float64
    scratch."""
    scales[:c1 - c0] = 0.0
    for i in range(fan_in):
        row = W[i * fan_out + c0:i * fan_out + c1]
        for j in range(c1 - c0):
            scales[j] += np.float64(row[j]) * np.float64(row[j])
    needed = False
    for j in range(c1 - c0):
        norm = np.sqrt(scales[j])
        scales[j] = max_norm / norm if norm > max_norm else 1.0
        needed |= norm > max_norm
    if not needed:
        return
    for i in range(fan_in):
        row = W[i * fan_out + c0:i * fan_out + c1]
        for j in range(c1 - c0):
            row[j] = np.float32(row[j] * scales[j])


@njit(cache=True, nogil=True, _nrt=False)
def apply_max_norm_serial(params, offsets, dims, max_norm, scales):
    """apply_max_norm on one thread, called rather than inlined (serial.run_steps): no parallel region, and
    compiled once on its own instead of into every caller (each inlined copy is compile time). scales:
    (k,) float64 scratch, k >= 1: the columns go k at a time (each column's norm is the same sum in the
    same order however the columns are grouped, so the numbers are apply_max_norm's)."""
    if max_norm <= 0:
        return
    for l in range(dims.size - 1):
        fan_in, fan_out = dims[l], dims[l + 1]
        for c0 in range(0, fan_out, scales.size):
            constrain_columns(params[offsets[l]:offsets[l] + fan_in * fan_out], fan_in, fan_out, c0,
                              min(c0 + scales.size, fan_out), max_norm, scales)


@njit(parallel=True, cache=True, nogil=True, inline="always")
def apply_max_norm(params, offsets, dims, max_norm, threads):
    """Every layer's columns held to norm <= max_norm; nothing when max_norm <= 0."""
    if max_norm <= 0:
        return
    for l in range(dims.size - 1):
        fan_in, fan_out = dims[l], dims[l + 1]
        W = params[offsets[l]:offsets[l] + fan_in * fan_out]
        parts = min(threads, fan_out)
        for p in prange(parts):
            c0, c1 = part(fan_out, parts, p)
            constrain_columns(W, fan_in, fan_out, c0, c1, max_norm, np.empty(c1 - c0, np.float64))
