"""Kernels 1-4 fused per thread for narrow networks: each thread takes its slice of the batch, one tile of
rows at a time, through every layer forward (1), the loss (2), and every layer backward (3, 4), with its
own gradient accumulator; then the accumulators are added up in thread order.

Why: in a narrow network (every width <= MAX_WIDTH) each layer's product is small and memory-bound, so
the layer-at-a-time kernels spend their time streaming activations of the whole batch through memory and
waiting at a barrier after every layer. Here a tile's activations for all layers (TILE_ROWS x
sum(d_l + 1) floats, 158 KB for [32, 64, 64, 64, 64, 16]) stay in the core's L2 from the forward pass
to the backward pass, and the threads meet only twice per step.

Shapes (n = batch rows, L layers, dims (L + 1,), P = parameters):
    X, labels, targets, weights, weight_total, rows, params, offsets: as in step.py
    grads      (P,) float32 output: [dW; db] of every layer, summed over the batch (thread 0's accumulator)
    weights_t  (P,) float32 scratch: layer l's W^T (dims[l + 1], dims[l]) row-major at offsets[l], so that
               delta propagation is a plain product (NN: 167 GFLOP/s on one core for a 128-row tile of a
               64-wide layer, against 124 for the same product with W transposed inside BLAS)
    tiles      (threads * tile_floats(dims, activations),) float32: per thread, one tile of activation blocks
               laid out as activation_offsets(dims, TILE_ROWS) (ones columns set by the caller), the tile's
               slope blocks (activations.slope_offsets), then one TILE_ROWS x max-width scratch tile for
               delta @ W^T
    partials   ((threads - 1) * P,) float32: the other threads' accumulators
    row_loss, row_hits (n,) float64
Each tile's rows are batch rows t0 .. t0 + rows - 1: dropout masks and loss rows use those indices, so
the numbers are the layer-at-a-time kernels' up to the order of the batch sums (which depends only on
the thread count and TILE_ROWS: the same inputs give the same bits).
"""
import numpy as np
from numba import njit, prange

from ._jit import FASTMATH, IDENTITY
from .blas import NO_TRANS, TRANS, gemm, gemm_into, part, transpose_into
from .activations import slope_offsets
from .delta_backward import multiply_derivative_into, undo_dropout
from .dense_forward import activate_block, activation_offsets, drop_block, gather_row
from .denormals import flush_denormals, restore
from .loss_delta import clear_weightless_rows, delta_scale, mean_loss, weighted_row_loss_and_delta
from .weight_grad import add_partials

MAX_WIDTH = 128
TILE_ROWS = 128


def fits(dims, n, threads):
    """Whether a batch of n rows takes the per-thread pipeline: narrow layers, and at least two tiles per
    thread (below that the layer-at-a-time kernels already keep everything in cache)."""
    return max(int(d) for d in dims) <= MAX_WIDTH and n >= 2 * TILE_ROWS * threads


def tile_floats(dims, activations):
    """Floats of one thread's tile workspace: every layer's activation block, the slope blocks, then the
    scratch tile."""
    act_off = activation_offsets.py_func(dims, TILE_ROWS)  # as Python: see backend.py's _activation_offsets
    return int(slope_offsets.py_func(dims, activations, TILE_ROWS, act_off[-1])[-1]) + TILE_ROWS * int(max(dims))


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def pipeline_gradients(X, labels, targets, weights, weight_total, rows, dims, offsets, activations, loss, params,
                       grads, dropout_key, dropout_threshold, input_threshold, weights_t, tiles, partials, row_loss,
                       row_hits, threads):
    """Returns the batch's mean loss; fills grads with its gradient."""
    n = rows.size
    n_layers = dims.size - 1
    d0, m = dims[0], dims[-1]
    size = grads.size
    act_off = activation_offsets(dims, TILE_ROWS)
    slope_off = slope_offsets(dims, activations, TILE_ROWS, act_off[-1])
    per_thread = slope_off[-1] + TILE_ROWS * dims.max()
    if tiles.size < threads * per_thread or partials.size < (threads - 1) * size or weights_t.size < size:
        raise IndexError("pipeline workspace too small")
    for l in range(1, n_layers):  # W^T of the layers a delta goes back through
        transpose_into(params[offsets[l]:offsets[l + 1]], dims[l], dims[l + 1], weights_t[offsets[l]:offsets[l + 1]])
    scale = delta_scale(loss, weight_total, m)
    inv_keep = np.float32(2.0 ** 24 / (2.0 ** 24 - dropout_threshold))
    for p in prange(threads):
        fp_state = flush_denormals()
        acts = tiles[p * per_thread:(p + 1) * per_thread]
        scratch = acts[slope_off[-1]:]
        grad = grads if p == 0 else partials[(p - 1) * size:p * size]
        r0, r1 = part(n, threads, p)
        if r1 == r0:
            grad[:] = 0.0
        for t0 in range(r0, r1, TILE_ROWS):
            count = min(TILE_ROWS, r1 - t0)
            beta = np.float32(0.0) if t0 == r0 else np.float32(1.0)  # the first tile starts the accumulator
            for i in range(count):  # [X[rows], 1], the tile's rows t0.. of the batch
                gather_row(X, rows[t0 + i], acts[i * (d0 + 1):(i + 1) * (d0 + 1)], d0, t0 + i, dropout_key,
                           input_threshold)
            # (1) forward, every layer; the output layer is linear and never dropped out.
            for l in range(n_layers):
                fan_in, fan_out = dims[l], dims[l + 1]
                hidden = l < n_layers - 1
                ld_out = fan_out + 1 if hidden else fan_out
                z = acts[act_off[l + 1]:]
                gemm(NO_TRANS, NO_TRANS, count, fan_out, fan_in + 1, acts[act_off[l]:], fan_in + 1,
                     params[offsets[l]:offsets[l + 1]], fan_out, z, ld_out)
                if hidden and activations[l] != IDENTITY:
                    activate_block(z, ld_out, 0, count, 0, fan_out, activations[l], acts[slope_off[l]:], fan_out)
                if hidden and dropout_threshold > 0:
                    drop_block(z, ld_out, 0, count, 0, fan_out, l, dropout_key, dropout_threshold, inv_keep, t0)
            # (2) loss and output delta, written over the logits.
            logits = acts[act_off[n_layers]:]
            for i in range(count):
                z = logits[i * m:(i + 1) * m]
                row_loss[t0 + i], row_hits[t0 + i] = weighted_row_loss_and_delta(loss.kind, z, z, rows[t0 + i], m,
                                                                                 labels, targets, weights, loss, scale,
                                                                                 True)
            if weights.size:
                clear_weightless_rows(acts, act_off, slope_off, dims, rows[t0:t0 + count], weights)
            # (3, 4) backward: the tile's share of [dW; db] into this thread's accumulator, then its delta.
            for l in range(n_layers - 1, -1, -1):
                fan_in, fan_out = dims[l], dims[l + 1]
                ld_delta = fan_out if l == n_layers - 1 else fan_out + 1
                delta = acts[act_off[l + 1]:]
                a_prev = acts[act_off[l]:]
                gemm_into(TRANS, NO_TRANS, fan_in + 1, fan_out, count, a_prev, fan_in + 1, delta, ld_delta, beta,
                          grad[offsets[l]:offsets[l + 1]], fan_out)
                if l > 0:
                    gemm(NO_TRANS, NO_TRANS, count, fan_in, fan_out, delta, ld_delta,
                         weights_t[offsets[l]:offsets[l + 1]], fan_in, scratch, fan_in)
                    if dropout_threshold > 0:
                        undo_dropout(a_prev, scratch, count, fan_in, t0, l - 1, dropout_key, dropout_threshold)
                    multiply_derivative_into(a_prev, scratch, count, fan_in, activations[l - 1],
                                             acts[slope_off[l - 1]:])
        restore(fp_state)
    add_partials(grads, partials, size, threads - 1)  # in thread order
    return mean_loss(row_loss, n, weight_total, m, loss)
