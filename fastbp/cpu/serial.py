"""Many training steps in one compiled call, on one thread, with no parallel region: small networks.

Where a step is a few microseconds of arithmetic (narrow layers, small batches), what costs is everything
around it: a call from Python per step (argument unboxing, the guard, the schedule, the settings tuple),
and a parallel region per kernel whose thread wake-ups and barriers cost more than the work they share.
run_steps takes a whole chunk of an epoch's steps at once: per step it gathers the batch's rows from the
epoch's order, runs forward, loss, backward (step.batch_pass with threads = 1: the layer kernels'
arithmetic, inlined) and the optimizer update, and writes the step's loss, hits and weight into arrays.
Python runs only between chunks (progress, Ctrl-C, callbacks). The same function serves one step
(Trainer.step), a chunk of fit's steps, and the forward/loss/gradient passes of predict, evaluate and
gradients for networks that take this path, so a step gives the same bits whichever of them ran it, and a
first fit compiles this one non-parallel function instead of the parallel step (seconds instead of ~20 s).

Shapes (N = rows of the data set, b = batch_rows, S = n_steps; see step.py for the rest):
    order    (S * b,) int64: step s trains on rows order[s * b:(s + 1) * b] of X / labels / targets / weights
    lrs      (S,) float64: step s's learning rate (a per-step schedule's, evaluated by the caller)
    key_base int64 in [0, 2^63): step s's dropout key is (key_base + first_step + s) mod 2^63 (Trainer's rule)
    first_step  steps applied before this call (Adam's bias correction counts from first_step + 1)
    decay_mask  (P,) bool in the masked_decay variant's STEP calls (weight decay only where True:
             Trainer(decay_biases=False)), else empty
    acts, scratch, partials, row_loss, row_hits, norm_sums   step.run's workspace for b rows (threads = 1)
    step_loss, step_hits, step_weight  (S,) float64 outputs: each step's (weighted) mean loss, summed
             hits (sums.sum_first of row_hits) and weight (its rows, or its summed sample weights)
    epoch_rows  0: step s trains on order[s * b:(s + 1) * b], as above. > 0: order holds whole epochs of
             epoch_rows rows each (several epochs in one call), each cut into batches of b rows, its last
             one shorter where b does not divide epoch_rows; the call starts at an epoch's first step
    epoch_squares  (S,) float64, or empty for none: with epoch_rows > 0, after each epoch's last step s,
             epoch_squares[s] <- sums.squared_weights of the parameters (the estimators' alpha term); the
             other entries are left as they are
Returns the number of steps applied: S, or the index of the first step whose loss is not finite (its
update is not applied, its loss is in step_loss). Modes FORWARD, LOSS, GRADIENTS run one pass (S = 1) and
update nothing.
"""
import functools

import numpy as np
from numba import njit

from ..options import OptimizerSettings
from ..sums import squared_weights, sum_at, sum_first
from ._jit import ERROR_MODEL, FASTMATH
from .borrow import borrowed
from .max_norm import apply_max_norm_serial
from .optimizers import clip_scale, optimizer_update, optimizer_update_masked
from .step import GRADIENTS, STEP, batch_pass
from .variants import ANY

_LOW63 = np.uint64(2 ** 63 - 1)


@njit(cache=True, nogil=True)
def dropout_key(key_base, step_count):
    """(key_base + step_count) mod 2^63: Trainer._dropout_key with key_base = dropout seed x its multiplier."""
    return np.int64((np.uint64(key_base) + np.uint64(step_count)) & _LOW63)


@functools.lru_cache(maxsize=None)
def run_steps_for(uses):
    """run_steps compiled for one variants.Uses: one dispatcher per variant in a process (Numba's disk cache
    keys each by the closure's constants, so they share the cache index without clashing)."""
    masked_decay, constrained, dropout, slopes, loss_kind, relu_only, optimizer = uses

    @njit(cache=True, nogil=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
    def run_steps(mode, X, labels, targets, weights, order, batch_rows, n_steps, dims, offsets, activations, loss,
                  params, grads, moment1, moment2, settings, lrs, key_base, first_step, dropout_threshold,
                  input_threshold, decay_mask, acts, scratch, partials, row_loss, row_hits, norm_sums, step_loss,
                  step_hits, step_weight, epoch_rows, epoch_squares):
        # Steps per epoch (epoch_rows > 0), and where the last step ends in order.
        epoch_steps = (epoch_rows + batch_rows - 1) // batch_rows if epoch_rows > 0 else 0
        end = n_steps * batch_rows
        if epoch_rows > 0 and n_steps > 0:
            last = n_steps - 1
            end = (last // epoch_steps) * epoch_rows + min(epoch_rows, (last % epoch_steps + 1) * batch_rows)
        if order.size < end or lrs.size < n_steps or step_loss.size < n_steps or step_hits.size < n_steps \
                or step_weight.size < n_steps or 0 < epoch_squares.size < n_steps:
            raise IndexError("run_steps: order, lrs or the step outputs are shorter than n_steps")
        if decay_mask.size != (params.size if masked_decay and mode == STEP else 0):
            raise IndexError("decay_mask must have one entry per parameter in the masked variant's steps, and "
                             "none otherwise")
        # A part this variant was compiled without must not be asked for: it would be skipped silently.
        if not constrained and mode == STEP and settings.max_norm > 0:
            raise ValueError("run_steps: max_norm given to a variant compiled without the constraint")
        if not dropout and (dropout_threshold > 0 or input_threshold > 0):
            raise ValueError("run_steps: dropout given to a variant compiled without it")
        # The loss and the optimizer: this variant's constants, or the run-time codes in the generic variant
        # (variants.ANY). Either way the compiled code holds one of the two branches.
        loss_code = loss_kind if loss_kind != ANY else loss.kind
        optimizer_code = optimizer if optimizer != ANY else settings.kind
        # Every array below is the caller's for the whole call: views without reference counting (borrow.py).
        X, labels, targets, weights, order = borrowed(X), borrowed(labels), borrowed(targets), borrowed(weights), \
            borrowed(order)
        params, grads, moment1, moment2 = borrowed(params), borrowed(grads), borrowed(moment1), borrowed(moment2)
        acts, scratch, partials, row_loss, row_hits = borrowed(acts), borrowed(scratch), borrowed(partials), \
            borrowed(row_loss), borrowed(row_hits)
        dims, offsets, decay_mask, lrs = borrowed(dims), borrowed(offsets), borrowed(decay_mask), borrowed(lrs)
        activations = borrowed(activations)
        for s in range(n_steps):
            start, count = s * batch_rows, batch_rows
            if epoch_rows > 0:
                start = (s // epoch_steps) * epoch_rows + (s % epoch_steps) * batch_rows
                count = min(batch_rows, epoch_rows - (s % epoch_steps) * batch_rows)
            rows = order[start:start + count]
            weight = sum_at(weights, rows) if weights.size else np.float64(count)
            weight_total = weight if weight > 0 else 1.0  # sample_weights.batch_total
            key = dropout_key(key_base, first_step + s)
            value = batch_pass(min(mode, GRADIENTS), X, labels, targets, weights, weight_total, rows, batch_rows,
                               dims, offsets, activations, loss, loss_code, params, grads, relu_only, slopes,
                               dropout, key, dropout_threshold, input_threshold, acts, scratch, partials, row_loss,
                               row_hits, 1)
            step_loss[s] = value
            step_hits[s] = sum_first(row_hits, count)
            step_weight[s] = weight
            if mode != STEP:
                return 1
            if not np.isfinite(value):
                return s
            step_settings = OptimizerSettings(settings.kind, lrs[s], settings.beta1, settings.beta2, settings.eps,
                                              settings.weight_decay, settings.momentum, settings.nesterov,
                                              first_step + s + 1, settings.alpha, settings.clip_norm,
                                              settings.eps_hat, settings.max_norm)
            scale = clip_scale(grads, settings.clip_norm, norm_sums)
            if masked_decay:
                optimizer_update_masked(params, grads, moment1, moment2, step_settings, scale, decay_mask,
                                        optimizer_code)
            else:
                optimizer_update(params, grads, moment1, moment2, step_settings, scale, optimizer_code)
            if constrained:
                apply_max_norm_serial(params, offsets, dims, settings.max_norm)
            if epoch_squares.size and epoch_rows > 0 and (s + 1) % epoch_steps == 0:
                epoch_squares[s] = squared_weights(params, offsets, dims)
        return n_steps

    return run_steps
