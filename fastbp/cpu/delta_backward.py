"""Kernel 3 (BP2): delta propagated one layer back, delta_prev = (delta @ W^T) * act'(Z_prev).

Shapes (n = batch rows, fan_in/fan_out of the layer the delta comes back through):
    delta    (n, fan_out) float32, row stride ld_delta
    weights  with weights_trans TRANS: that layer's block [W; b], (fan_in + 1, fan_out) float32 row-major, of
             which only W is read; with NO_TRANS: a copy of W^T, (fan_out, fan_in) row-major
             (blas.transpose_into: some BLAS run delta @ W^T faster so, blas.copy_beats_transposed)
    acts     (n, fan_in + 1) float32: on entry A_prev = act(Z_prev) with its ones column; on exit
             columns [:fan_in] hold delta_prev. A_prev has no further use once its delta exists (dW of
             this layer was computed before), so the delta takes its place and needs no memory of its own.
    slopes   (n, fan_in) float32: act'(Z_prev) stored by the forward pass, for the slope-storing activations
             (activations.py); else unused
    scratch  (threads * TILE_ROWS * fan_in,) float32: each thread's tile of delta @ W^T
act'(Z_prev) is computed from A_prev (activations.multiply_by_derivative) or read from slopes.
With dropout the stored activations are D = A * mask / (1 - rate): a dropped unit passes no gradient,
a kept one passes it times 1 / (1 - rate), with act' evaluated at A = D (1 - rate).
Each thread takes a block of rows, tile by tile: the product for the tile lands in its scratch (in
cache) and the epilogue multiplies it by act'(A_prev) while writing it over A_prev.
"""
import numpy as np
from numba import njit, prange

from ._jit import FASTMATH
from .activations import KNOWN, multiply_by_derivative, stores_slope
from .blas import NO_TRANS, TRANS, gemm, part
from .denormals import flush_denormals, restore
from .dropout import keeps
from .inline_pipeline import InliningCompiler

# Rows per tile: big enough that re-packing W for every tile costs little, small enough that a
# tile of the widest layer (256 x 4096 floats = 4 MB) stays near the core.
TILE_ROWS = 256


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def undo_dropout(acts, tile, rows, width, row0, layer, key, threshold):
    """Turns stored D back into A and scales/zeroes the tile's delta by the layer's dropout mask."""
    keep = np.float32(1.0 - threshold / 2.0 ** 24)
    inv_keep = np.float32(2.0 ** 24 / (2.0 ** 24 - threshold))
    for i in range(rows):
        for j in range(width):
            if keeps(key, layer, row0 + i, j, threshold):
                acts[i * (width + 1) + j] *= keep
                tile[i * width + j] *= inv_keep
            else:
                tile[i * width + j] = 0.0


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def multiply_derivative_rows(acts, tile, rows, width, activation):
    """acts[i, :width] <- tile[i, :] * act'(Z[i, :]) for the tile's rows, act' taken from A = acts[i, :width]
    (an activation that does not store act'); acts row stride width + 1, tile row stride width."""
    for i in range(rows):
        multiply_by_derivative(acts[i * (width + 1):i * (width + 1) + width], tile[i * width:(i + 1) * width],
                               activation)


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def relu_derivative_rows(acts, tile, rows, width):
    """multiply_derivative_rows for relu alone: what a network whose hidden layers are all relu compiles."""
    for i in range(rows):
        a = acts[i * (width + 1):i * (width + 1) + width]
        d = tile[i * width:(i + 1) * width]
        for j in range(width):
            a[j] = d[j] if a[j] > 0 else np.float32(0.0)


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False, pipeline_class=InliningCompiler)
def multiply_derivative_into(acts, tile, rows, width, activation, slopes):
    """multiply_derivative_rows for any activation: a slope-storing one's act' is read from slopes (its
    stored act'(Z), row stride width)."""
    if stores_slope(activation):
        for i in range(rows):
            a = acts[i * (width + 1):i * (width + 1) + width]
            d = tile[i * width:(i + 1) * width]
            slope = slopes[i * width:(i + 1) * width]
            for j in range(width):
                a[j] = d[j] * slope[j]
    else:
        multiply_derivative_rows(acts, tile, rows, width, activation)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def weight_t_offsets_fit(dims, weight_t_off):
    """Whether weight_t_off (L + 1,) int64 lays out W^T copies (step.py) for dims: from 0, each layer's block
    either empty or W^T of d_l x d_{l+1} floats, none for the first layer (no delta goes back through it)."""
    if weight_t_off.size != dims.size or weight_t_off[0] != 0 or weight_t_off[1] != 0:
        return False
    for l in range(1, dims.size - 1):
        length = weight_t_off[l + 1] - weight_t_off[l]
        if length != 0 and length != dims[l] * dims[l + 1]:
            return False
    return True


@njit(parallel=True, cache=True, nogil=True, inline="always")
def propagate_delta(delta, ld_delta, weights, weights_trans, acts, slopes, n, fan_in, fan_out, activation, layer,
                    relu_only, slopes_used, dropout_used, dropout_key, dropout_threshold, scratch, threads):
    if activation not in KNOWN:
        raise ValueError("unknown activation code")
    if not slopes_used and stores_slope(activation):
        raise ValueError("a slope-storing activation in a pass compiled without them")
    if stores_slope(activation) and slopes.size < n * fan_in:
        raise IndexError("no slope block for a slope-storing activation")
    if scratch.size < min(threads, n) * TILE_ROWS * fan_in:
        raise IndexError("scratch too small for the delta tiles")
    parts = min(threads, n)
    for p in prange(parts):
        fp_state = flush_denormals()
        r0, r1 = part(n, parts, p)
        tile = scratch[p * TILE_ROWS * fan_in:(p + 1) * TILE_ROWS * fan_in]
        for t0 in range(r0, r1, TILE_ROWS):
            rows = min(TILE_ROWS, r1 - t0)
            # op(B) = W^T: W is the block's first fan_in rows, row stride fan_out; or W^T itself, row stride fan_in.
            gemm(NO_TRANS, weights_trans, rows, fan_in, fan_out, delta[t0 * ld_delta:], ld_delta, weights,
                 fan_out if weights_trans == TRANS else fan_in, tile, fan_in)
            if dropout_used and dropout_threshold > 0:
                undo_dropout(acts[t0 * (fan_in + 1):], tile, rows, fan_in, t0, layer, dropout_key, dropout_threshold)
            if relu_only:
                relu_derivative_rows(acts[t0 * (fan_in + 1):], tile, rows, fan_in)
            elif slopes_used:
                multiply_derivative_into(acts[t0 * (fan_in + 1):], tile, rows, fan_in, activation,
                                         slopes[t0 * fan_in:])
            else:
                multiply_derivative_rows(acts[t0 * (fan_in + 1):], tile, rows, fan_in, activation)
        restore(fp_state)
