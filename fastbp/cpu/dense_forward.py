"""Kernel 1: dense + bias + activation forward, for every layer of the network.

Shapes (n = batch rows, d_l = sizes[l], L = number of layers):
    acts     flat float32 workspace; layer l's block starts at act_off[l]:
             l < L: (n, d_l + 1) row-major, last column all ones (the bias input of layer l + 1);
             l = L: (n, d_L) logits.
    params   flat float32; layer l's block at offsets[l] is (d_l + 1, d_{l+1}): rows W, last row b.
    slopes   layer l's act'(Z_l), (n, d_{l+1}) row-major, in the acts workspace at slope_off[l]
             (activations.slope_offsets): only for the activations whose derivative A does not give.
    activations  (L,) int64 codes: entry l is applied to layer l's output (the last is IDENTITY).
Z_l = [A_{l-1}, 1] @ [W_l; b_l] is one SGEMM (the bias rides along) written straight into A_l's block.
Each thread computes one block of Z_l and applies the activation to it while it is still in cache.
"""
import numpy as np
from numba import njit, prange

from ._jit import FASTMATH, IDENTITY, RELU
from .activations import KNOWN, activate_row, activate_row_with_slope, stores_slope
from .blas import NO_TRANS, gemm_block, part, split_rows
from .denormals import flush_denormals, restore
from .dropout import INPUT_LAYER, keeps
from .inline_pipeline import InliningCompiler


@njit(cache=True, nogil=True)
def activation_offsets(dims, n):
    """Start of each layer's activation block in the acts workspace, plus its total length (L + 2,)."""
    n_layers = dims.size - 1
    off = np.zeros(n_layers + 2, np.int64)
    for l in range(n_layers):
        off[l + 1] = off[l] + n * (dims[l] + 1)
    off[n_layers + 1] = off[n_layers] + n * dims[n_layers]
    return off


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def offsets_match(dims, activations, n, act_off, slope_off):
    """Whether act_off and slope_off are activation_offsets(dims, n) and slope_offsets(dims, activations, n,
    act_off[-1]), checked without allocating (for callers compiled without Numba's runtime)."""
    n_layers = dims.size - 1
    if act_off.size != n_layers + 2 or slope_off.size != n_layers + 1 or activations.size != n_layers \
            or act_off[0] != 0 or slope_off[0] != act_off[n_layers + 1]:
        return False
    for l in range(n_layers + 1):
        if act_off[l + 1] != act_off[l] + n * (dims[l] + (1 if l < n_layers else 0)):
            return False
    for l in range(n_layers):
        hidden = l < n_layers - 1
        if slope_off[l + 1] != slope_off[l] + (n * dims[l + 1] if hidden and stores_slope(activations[l]) else 0):
            return False
    return True


@njit(cache=True, nogil=True, _nrt=False)
def copy_row(X, src, a0_row, d0):
    """a0_row (d0 + 1,) <- [X[src], 1]."""
    for j in range(d0):
        a0_row[j] = X[src, j]
    a0_row[d0] = 1.0


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def gather_row(X, src, a0_row, d0, row, key, input_threshold):
    """a0_row (d0 + 1,) <- [X[src], 1], through inverted dropout on the features (layer INPUT_LAYER's masks,
    batch row `row`) when input_threshold > 0."""
    if input_threshold > 0:
        inv_keep = np.float32(2.0 ** 24 / (2.0 ** 24 - input_threshold))
        for j in range(d0):
            a0_row[j] = X[src, j] * inv_keep if keeps(key, INPUT_LAYER, row, j, input_threshold) else 0.0
        a0_row[d0] = 1.0
    else:
        copy_row(X, src, a0_row, d0)


@njit(parallel=True, cache=True, nogil=True, inline="always")
def gather_input(X, rows, a0, dropout_used, key, input_threshold):
    """a0 (n, d0 + 1) <- [X[rows], 1]; X: (N, d0) float32 C-contiguous, rows: (n,) int64 in [0, N); input
    dropout when input_threshold > 0 (the weight gradient of layer 0 then reads the dropped inputs, and
    nothing propagates further back, so the forward pass is all that changes). dropout_used: a compile-time
    constant of the caller (step.batch_pass); False leaves the dropout code out (input_threshold must be 0)."""
    d0 = X.shape[1]
    if dropout_used:
        for i in prange(rows.size):
            gather_row(X, rows[i], a0[i * (d0 + 1):(i + 1) * (d0 + 1)], d0, i, key, input_threshold)
    else:
        for i in prange(rows.size):
            copy_row(X, rows[i], a0[i * (d0 + 1):(i + 1) * (d0 + 1)], d0)


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def activate_rows(z, ld, r0, r1, c0, c1, activation):
    """In place on z (rows, ld) row-major: z[r0:r1, c0:c1] <- act(z[r0:r1, c0:c1]), for an activation that
    does not store act'(Z) (activations.activate_row)."""
    for i in range(r0, r1):
        activate_row(z[i * ld + c0:i * ld + c1], activation)


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def relu_rows(z, ld, r0, r1, c0, c1):
    """activate_rows for relu alone: what a network whose hidden layers are all relu compiles instead."""
    for i in range(r0, r1):
        row = z[i * ld + c0:i * ld + c1]
        for j in range(row.size):  # from 0: an index that cannot be negative lets the loop vectorize
            row[j] = max(row[j], np.float32(0.0))


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False, pipeline_class=InliningCompiler)
def activate_block(z, ld, r0, r1, c0, c1, activation, slopes, ld_slope):
    """activate_rows for any activation; for a slope-storing one also slopes[r0:r1, c0:c1] (row stride
    ld_slope) <- act'(z[r0:r1, c0:c1])."""
    if stores_slope(activation):
        for i in range(r0, r1):
            activate_row_with_slope(z[i * ld + c0:i * ld + c1], slopes[i * ld_slope + c0:i * ld_slope + c1],
                                    activation)
    else:
        activate_rows(z, ld, r0, r1, c0, c1, activation)


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def drop_block(z, ld, r0, r1, c0, c1, layer, key, threshold, inv_keep, row0):
    """In place: inverted dropout on z[r0:r1, c0:c1] (see dropout.py); z's row i is batch row row0 + i."""
    for i in range(r0, r1):
        for j in range(c0, c1):
            if keeps(key, layer, row0 + i, j, threshold):
                z[i * ld + j] *= inv_keep
            else:
                z[i * ld + j] = 0.0


@njit(parallel=True, cache=True, nogil=True, inline="always")
def dense_layer(a_prev, block, n, fan_in, fan_out, z, ld_out, slopes, activation, layer, relu_only, slopes_used,
                dropout_used, dropout_key, dropout_threshold, threads):
    """z[:, :fan_out] (row stride ld_out) <- act([a_prev, 1] @ block); a_prev: (n, fan_in + 1); slopes:
    (n, fan_out) for a slope-storing activation, else unused.

    With dropout_threshold > 0 the activations then go through inverted dropout (hidden layers only).
    relu_only, slopes_used and dropout_used are compile-time constants of the caller (step.batch_pass): True
    compiles relu alone; False leaves out the code of the slope-storing activations and of dropout."""
    if activation not in KNOWN:
        raise ValueError("unknown activation code")
    if not slopes_used and stores_slope(activation):
        raise ValueError("a slope-storing activation in a pass compiled without them")
    if relu_only and activation != RELU and activation != IDENTITY:
        raise ValueError("an activation other than relu in a pass compiled for relu alone")
    if stores_slope(activation) and slopes.size < n * fan_out:
        raise IndexError("no slope block for a slope-storing activation")
    parts, by_rows = split_rows(n, fan_out, threads)
    for p in prange(parts):
        fp_state = flush_denormals()
        r0, r1, c0, c1 = 0, n, 0, fan_out
        if by_rows:
            r0, r1 = part(n, parts, p)
        else:
            c0, c1 = part(fan_out, parts, p)
        gemm_block(NO_TRANS, NO_TRANS, n, fan_out, fan_in + 1, a_prev, fan_in + 1, block, fan_out, z, ld_out,
                   r0, r1, c0, c1)
        if activation != IDENTITY:
            if relu_only:
                relu_rows(z, ld_out, r0, r1, c0, c1)
            elif slopes_used:
                activate_block(z, ld_out, r0, r1, c0, c1, activation, slopes, fan_out)
            else:
                activate_rows(z, ld_out, r0, r1, c0, c1, activation)
        if dropout_used and dropout_threshold > 0:
            drop_block(z, ld_out, r0, r1, c0, c1, layer, dropout_key, dropout_threshold,
                       np.float32(2.0 ** 24 / (2.0 ** 24 - dropout_threshold)), 0)
        restore(fp_state)


@njit(cache=True, nogil=True, inline="always")
def dense_forward(params, offsets, dims, acts, act_off, slope_off, n, activations, relu_only, slopes_used,
                  dropout_used, dropout_key, dropout_threshold, threads):
    """All layers forward; acts block 0 must already hold [X, 1]. Leaves the logits in block L.

    The output layer is linear (its activation lives in the loss) and never dropped out."""
    n_layers = dims.size - 1
    for l in range(n_layers):
        fan_in, fan_out = dims[l], dims[l + 1]
        is_output = l == n_layers - 1
        dense_layer(acts[act_off[l]:act_off[l + 1]], params[offsets[l]:offsets[l + 1]], n, fan_in, fan_out,
                    acts[act_off[l + 1]:act_off[l + 2]], fan_out if is_output else fan_out + 1,
                    acts[slope_off[l]:slope_off[l + 1]], IDENTITY if is_output else activations[l], l, relu_only,
                    slopes_used, dropout_used, dropout_key, 0 if is_output else dropout_threshold, threads)
