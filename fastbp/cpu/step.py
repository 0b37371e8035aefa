"""The fused pieces composed into one compiled entry point: every operation is a single call from Python.

Shapes (N = rows of the data set given, n = rows in this batch, see dense_forward.py for the layouts):
    X        (N, d0) float32 C-contiguous;  rows (n,) int64: the batch is X[rows]
    weights  (N,) float64 sample weights, or empty (every row weighs 1); weight_total: their sum over the
             batch's rows (n without weights), 1 where that is 0 (see loss_delta.py)
    labels   (N,) int64 (cross_entropy), targets (N, d_L) float32 (mse, bce, poisson); the other may be empty. A label
             outside [0, d_L) is never used as an index: that row's loss is NaN (loss_delta.py), so a step
             skips its update
    dims     (L + 1,) int64 layer widths; offsets (L + 1,) int64 block starts in the flat buffers
    params, grads, moment1, moment2   flat float32 buffers (state.py)
    activations  (L,) int64 activation codes, one per layer's output (dense_forward.py)
    loss     options.LossSettings: the loss code and its options (loss_delta.py)
    acts     flat float32 workspace: the activation blocks (activation_offsets(dims, n)), then the slope
             blocks (activations.slope_offsets), slope_offsets(...)[-1] elements in all; the backward pass
             overwrites each layer's block with its delta (the logits with delta_L, A_l with delta_l)
    scratch  (threads * TILE_ROWS * max hidden width,) float32 tiles for delta propagation
    partials float32 per-thread partial weight gradients (see weight_grad.py)
    weight_t_off (L + 1,) int64: layer l's copy of W^T for its delta propagation (delta_backward.py), when
             weight_t_off[l + 1] - weight_t_off[l] = d_l d_{l+1}, lies in acts at slope_offsets(...)[-1] +
             weight_t_off[l]; a block of length 0: the product reads W in place (the same numbers up to the
             BLAS's order of the sums). Chosen for the BLAS by the caller (cpu/backend.weight_t_offsets).
    row_loss (n,) float64 scratch;  row_hits (n,) float64: each row's accuracy (loss_delta.py)
    norm_sums (NORM_CHUNKS,) float64 scratch for gradient clipping
    dropout_key, dropout_threshold, input_threshold  this step's dropout masks (dropout.py) on the hidden
             layers and on the input features; a threshold of 0: no dropout there
    threads  how many blocks to cut each product into: Numba's thread count

Why one entry point: Numba compiles a parallel kernel again for every jitted function that calls it
(about a second each, measured here). The kernels are inlined into this single function instead, so the
first call of a new program compiles each of them once and then serves predict, evaluate, gradients
and training steps alike.
"""
import functools

import numpy as np
from numba import njit

from ._jit import ERROR_MODEL, FASTMATH
from .activations import slope_offsets
from .blas import NO_TRANS, TRANS, transpose_into
from .delta_backward import propagate_delta
from .dense_forward import activation_offsets, dense_forward, gather_input
from .inline_pipeline import InliningCompiler
from .loss_delta import clear_weightless_rows, loss_and_delta
from .max_norm import apply_max_norm
from .optimizers import clip_scale, optimizer_update, optimizer_update_masked
from .pipeline import pipeline_gradients
from .variants import ANY
from .weight_grad import weight_gradient

# What run() does; each mode includes the ones before it.
FORWARD = 0    # logits in the last acts block
LOSS = 1       # + the mean loss (logits kept)
GRADIENTS = 2  # + delta_L in place of the logits, BP1-BP4 into grads
STEP = 3       # + the optimizer update, skipped when the loss is not finite


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def update(params, grads, moment1, moment2, settings, norm_sums, dims, offsets, threads, optimizer, constrained):
    """Clipping (when settings.clip_norm > 0), then the optimizer rule, from the gradient in grads, then the
    max-norm constraint (when settings.max_norm > 0). optimizer: settings.kind or a compile-time constant
    equal to it; constrained: a compile-time constant, False leaves the max-norm code out (variants.py)."""
    scale = clip_scale(grads, settings.clip_norm, norm_sums)
    optimizer_update(params, grads, moment1, moment2, settings, scale, optimizer)
    if constrained:
        apply_max_norm(params, offsets, dims, settings.max_norm, threads)


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def batch_pass(mode, X, labels, targets, weights, weight_total, rows, layout_rows, layout, dims, offsets, activations,
               loss, loss_kind, params, grads, relu_only, slopes_used, dropout_used, copies_used, dropout_key,
               dropout_threshold, input_threshold, acts, scratch, partials, row_loss, row_hits, threads):
    """Modes FORWARD to GRADIENTS of one batch (no update): the body that run() and serial.run_steps share,
    inlined into each, so both compute the same numbers for the same thread count. Returns the (weighted)
    mean loss of the batch (0.0 in FORWARD mode). loss_kind: loss.kind, or a compile-time constant of the
    caller equal to it (then only that loss is compiled); relu_only, slopes_used, dropout_used, copies_used:
    compile-time constants of the caller, True compiles relu alone (every hidden layer must be relu), False
    leaves out the code of the slope-storing activations (there must be none), of dropout (the thresholds
    must be 0) or of the W^T copies (weight_t_off must have none) before compiling (variants.Uses).
    layout_rows >= rows.size: the rows acts is laid out for (its blocks' starts, and the ones columns the
    workspace set there: backend.Workspace); a shorter batch (an epoch's last, in serial.run_steps) uses the
    first rows.size rows of each block. layout: (act_off, slope_off, weight_t_off), activation_offsets and
    slope_offsets for layout_rows and the W^T copies (above), computed once by a caller that runs many
    batches (two allocations a step cost a tenth of a one-row step); weight_t_off is checked by the caller
    (delta_backward.weight_t_offsets_fit). One tuple, not three arguments: a call of more than 30 arguments
    compiles to a call with *args, which Numba's inliner refuses."""
    act_off, slope_off, weight_t_off = layout
    n = rows.size
    if layout_rows < n:
        raise IndexError("batch_pass: the workspace is laid out for fewer rows than the batch has")
    n_layers = dims.size - 1
    if act_off.size != n_layers + 2 or slope_off.size != n_layers + 1 or act_off[1] != layout_rows * (dims[0] + 1):
        raise IndexError("batch_pass: act_off and slope_off are not the offsets of the workspace's layout")
    if acts.size < slope_off[-1] + weight_t_off[-1]:
        raise IndexError("acts workspace too small for the batch")
    gather_input(X, rows, acts[:act_off[1]], dropout_used, dropout_key, input_threshold)
    dense_forward(params, offsets, dims, acts, act_off, slope_off, n, activations, relu_only, slopes_used,
                  dropout_used, dropout_key, dropout_threshold, threads)
    if mode == FORWARD:
        return 0.0
    logits = acts[act_off[-2]:act_off[-1]]
    want_delta = mode >= GRADIENTS
    value = loss_and_delta(logits, n, dims[-1], labels, targets, weights, weight_total, rows, loss, loss_kind, logits,
                           row_loss, row_hits, want_delta)
    if not want_delta:
        return value
    if weights.size:
        clear_weightless_rows(acts, act_off, slope_off, dims, rows, weights)
    for l in range(n_layers - 1, -1, -1):
        fan_in, fan_out = dims[l], dims[l + 1]
        a_prev = acts[act_off[l]:act_off[l + 1]]
        delta = acts[act_off[l + 1]:act_off[l + 2]]
        ld_delta = fan_out if l == n_layers - 1 else fan_out + 1
        block = params[offsets[l]:offsets[l + 1]]
        weight_gradient(a_prev, delta, ld_delta, n, fan_in, fan_out, grads[offsets[l]:offsets[l + 1]], partials,
                        threads)
        if l > 0:
            w, w_trans = block, TRANS
            if copies_used and weight_t_off[l + 1] > weight_t_off[l]:  # this product reads a copy of W^T
                w, w_trans = acts[slope_off[-1] + weight_t_off[l]:slope_off[-1] + weight_t_off[l + 1]], NO_TRANS
                transpose_into(block, fan_in, fan_out, w)
            propagate_delta(delta, ld_delta, w, w_trans, a_prev, acts[slope_off[l - 1]:slope_off[l]], n, fan_in,
                            fan_out, activations[l - 1], l - 1, relu_only, slopes_used, dropout_used, dropout_key,
                            dropout_threshold, scratch, threads)
    return value


def run_for(uses):
    """run (the parallel entry point) compiled for one variants.Uses; one dispatcher per variant in a process.
    Masked weight decay is not run's (a masked update is its own entry point, run_update_masked): networks
    that differ only there share a variant."""
    return _run_for(uses._replace(masked_decay=False, copies=False))


@functools.lru_cache(maxsize=None)
def _run_for(uses):
    _, constrained, dropout, slopes, loss_kind, relu_only, optimizer, _ = uses

    @njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, error_model=ERROR_MODEL,
      pipeline_class=InliningCompiler)
    def run(mode, X, labels, targets, weights, weight_total, rows, dims, offsets, activations, loss, params, grads,
            moment1, moment2, settings, dropout_key, dropout_threshold, input_threshold, acts, scratch, partials,
            row_loss, row_hits, norm_sums, threads):
        """Returns the (weighted) mean loss of the batch (0.0 in FORWARD mode)."""
        # A part this variant was compiled without must not be asked for: it would be skipped silently.
        if not constrained and mode == STEP and settings.max_norm > 0:
            raise ValueError("run: max_norm given to a variant compiled without the constraint")
        if not dropout and (dropout_threshold > 0 or input_threshold > 0):
            raise ValueError("run: dropout given to a variant compiled without it")
        # This variant's loss and optimizer, or the run-time codes in the generic variant (variants.ANY).
        loss_code = loss_kind if loss_kind != ANY else loss.kind
        optimizer_code = optimizer if optimizer != ANY else settings.kind
        act_off = activation_offsets(dims, rows.size)
        slope_off = slope_offsets(dims, activations, rows.size, act_off[-1])
        # No W^T copies on the parallel path: with its tiles of up to TILE_ROWS rows, the copy pays
        # (blas.copy_beats_transposed) only for layers of under 4,096 weights, and saves less than a microsecond.
        no_copies = np.zeros(dims.size, np.int64)
        value = batch_pass(min(mode, GRADIENTS), X, labels, targets, weights, weight_total, rows, rows.size,
                           (act_off, slope_off, no_copies), dims, offsets, activations, loss, loss_code, params, grads,
                           relu_only, slopes, dropout, False, dropout_key, dropout_threshold, input_threshold, acts,
                           scratch, partials, row_loss, row_hits, threads)
        if mode == STEP and np.isfinite(value):
            update(params, grads, moment1, moment2, settings, norm_sums, dims, offsets, threads, optimizer_code,
                   constrained)
        return value

    return run


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, error_model=ERROR_MODEL,
      pipeline_class=InliningCompiler)
def run_update(params, grads, moment1, moment2, settings, norm_sums, dims, offsets, threads):
    """update() as its own entry point, for a gradient that was completed outside the compiled step (summed
    over MPI ranks, distributed.py); compiled only by programs that use it."""
    update(params, grads, moment1, moment2, settings, norm_sums, dims, offsets, threads, settings.kind, True)


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, error_model=ERROR_MODEL,
      pipeline_class=InliningCompiler)
def run_update_masked(params, grads, moment1, moment2, settings, norm_sums, decay_mask, dims, offsets, threads):
    """run_update with weight decay only where decay_mask (P,) bool is True: Trainer(decay_biases=False)'s
    update, after a GRADIENTS call; its own entry point, compiled only by programs that use it."""
    scale = clip_scale(grads, settings.clip_norm, norm_sums)
    optimizer_update_masked(params, grads, moment1, moment2, settings, scale, decay_mask, settings.kind)
    apply_max_norm(params, offsets, dims, settings.max_norm, threads)


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, error_model=ERROR_MODEL,
      pipeline_class=InliningCompiler)
def run_pipeline(mode, X, labels, targets, weights, weight_total, rows, dims, offsets, activations, loss, params,
                 grads, moment1, moment2, settings, dropout_key, dropout_threshold, input_threshold, weights_t, tiles,
                 partials, row_loss, row_hits, norm_sums, threads):
    """run() in modes GRADIENTS and STEP through the per-thread pipeline (pipeline.py): a separate entry
    point, so that networks that never take it never compile it. weights_t and tiles replace run()'s acts
    and scratch (see pipeline.py); after a call the batch's logits are not kept (last_logits needs a
    FORWARD or LOSS call)."""
    value = pipeline_gradients(X, labels, targets, weights, weight_total, rows, dims, offsets, activations, loss,
                               params, grads, dropout_key, dropout_threshold, input_threshold, weights_t, tiles,
                               partials, row_loss, row_hits, threads)
    if mode == STEP and np.isfinite(value):
        update(params, grads, moment1, moment2, settings, norm_sums, dims, offsets, threads, settings.kind, True)
    return value
