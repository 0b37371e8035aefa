"""The fused pieces composed into whole passes, each a single call from Python.

Shapes (N = rows of the data set given, n = rows in this batch, see dense_forward.py for the layouts):
    X        (N, d0) float32 C-contiguous;  rows (n,) int64: the batch is X[rows]
    labels   (N,) int64 (cross_entropy), targets (N, d_L) float32 (mse, bce); the other may be empty
    dims     (L + 1,) int64 layer widths; offsets (L + 1,) int64 block starts in the flat buffers
    acts     flat float32 workspace of activation_offsets(dims, n)[-1] elements; the backward pass
             overwrites each layer's block with its delta (the logits with delta_L, A_l with delta_l)
    scratch  (threads * TILE_ROWS * max hidden width,) float32 tiles for delta propagation
    partials float32 per-thread partial weight gradients (see weight_grad.py)
    row_loss (n,) float64 scratch
    threads  how many blocks to cut each product into: Numba's thread count
"""
import numpy as np
from numba import njit

from .delta_backward import propagate_delta
from .dense_forward import activation_offsets, dense_forward, gather_input
from .loss_delta import loss_and_delta
from .optimizers import optimizer_update
from .weight_grad import weight_gradient


@njit(cache=True, nogil=True)
def forward(X, rows, dims, offsets, activation, params, acts, threads):
    """Fills acts; returns the logits as a flat (n * d_L,) view."""
    act_off = activation_offsets(dims, rows.size)
    gather_input(X, rows, acts[:act_off[1]])
    dense_forward(params, offsets, dims, acts, act_off, rows.size, activation, threads)
    return acts[act_off[-2]:act_off[-1]]


@njit(cache=True, nogil=True)
def forward_loss(X, labels, targets, rows, dims, offsets, activation, loss, params, acts, row_loss, threads):
    """Mean loss of the batch without any gradient work."""
    logits = forward(X, rows, dims, offsets, activation, params, acts, threads)
    return loss_and_delta(logits, rows.size, dims[-1], labels, targets, rows, loss, logits[:0],
                          row_loss, False)


@njit(cache=True, nogil=True)
def forward_backward(X, labels, targets, rows, dims, offsets, activation, loss, params, grads, acts,
                     scratch, partials, row_loss, threads):
    """Forward, BP1-BP4; fills grads (same layout as params) and returns the mean loss."""
    n = rows.size
    n_layers = dims.size - 1
    act_off = activation_offsets(dims, n)
    logits = forward(X, rows, dims, offsets, activation, params, acts, threads)
    value = loss_and_delta(logits, n, dims[-1], labels, targets, rows, loss, logits, row_loss, True)
    for l in range(n_layers - 1, -1, -1):
        fan_in, fan_out = dims[l], dims[l + 1]
        a_prev = acts[act_off[l]:act_off[l + 1]]
        delta = acts[act_off[l + 1]:act_off[l + 2]]
        ld_delta = fan_out if l == n_layers - 1 else fan_out + 1
        block = offsets[l], offsets[l + 1]
        weight_gradient(a_prev, delta, ld_delta, n, fan_in, fan_out, grads[block[0]:block[1]], partials,
                        threads)
        if l > 0:
            propagate_delta(delta, ld_delta, params[block[0]:block[1]], a_prev, n, fan_in, fan_out, activation,
                            scratch, threads)
    return value


@njit(cache=True, nogil=True)
def train_step(X, labels, targets, rows, dims, offsets, activation, loss, params, grads, moment1, moment2,
               settings, acts, scratch, partials, row_loss, threads):
    """One whole training step: forward, loss, backward and the optimizer update. Returns the loss.

    A non-finite loss skips the update, so parameters and moments keep their last finite values.
    """
    value = forward_backward(X, labels, targets, rows, dims, offsets, activation, loss, params, grads, acts,
                             scratch, partials, row_loss, threads)
    if np.isfinite(value):
        optimizer_update(params, grads, moment1, moment2, settings)
    return value
