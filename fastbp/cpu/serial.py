"""Many training steps in one compiled call, with no parallel region per kernel: small networks.

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

Split steps (parts > 1): where a step has enough work for two cores but too little for a parallel region
per kernel, each step's batch is cut into `parts` row ranges, each with its own gradient (part 0 into
grads, the others into part_grads), and the update into `parts` parameter ranges, each adding the parts'
gradients (in part order) and applying the optimizer to its range. Several threads call run_steps at
once on the same arguments (split_threads.py); they claim these tasks in order through shared counters
(claims.py), so that a step costs two hand-offs between threads (about 0.2 us each) instead of a dozen
parallel regions. The numbers depend on `parts` alone, never on the threads or their timing. A thread
that waits about a millisecond for another (descheduled: the CPU is shared) makes every thread but the
first retire, which then runs the rest of the call alone.

Shapes (N = rows of the data set, b = batch_rows, S = n_steps, P = params.size, p = parts, m = ceil(b / p)):
    order    (S * b,) int64: step s trains on rows order[s * b:(s + 1) * b] of X / labels / targets / weights
    lrs      (S,) float64: step s's learning rate (a per-step schedule's, evaluated by the caller)
    key_base int64 in [0, 2^63): step s's dropout key is (key_base + first_step + s) mod 2^63 (Trainer's rule)
    first_step  steps applied before this call (Adam's bias correction counts from first_step + 1)
    decay_mask  (P,) bool in the masked_decay variant's STEP calls (weight decay only where True:
             Trainer(decay_biases=False)), else empty
    acts, scratch, partials, row_loss, row_hits   (p, ...): row r is step.run's workspace for m rows
             (threads = 1) of part r; p = acts.shape[0]. norm_sums (NORM_CHUNKS,) float64: step.run's (one part
             only clips; max-norm's scratch too)
    act_off, slope_off  (L + 2,), (L + 1,) int64: dense_forward.activation_offsets(dims, m) and
             activations.slope_offsets(dims, activations, m, act_off[-1]), the layout of each part's acts
             (backend.Workspace.layout); checked on entry
    weight_t_off (L + 1,) int64: the W^T copies' blocks after the slope blocks in each part's acts (step.py;
             backend.Workspace.layout too); checked on entry
    part_grads (p - 1, P) float32: parts 1 .. p - 1's gradients ((0, 0) with one part)
    part_values (p, 3) float64 scratch: each part's loss, hits and the step's weight
    claims   (CLAIM_SLOTS,) int64: the threads' shared counters (claims.py)
    step_loss, step_hits, step_weight  (S,) float64 outputs: each step's (weighted) mean loss, summed
             hits (sums.sum_first of row_hits, added over the parts) and weight (its rows, or its summed
             sample weights)
    epoch_rows  0: step s trains on order[s * b:(s + 1) * b], as above. > 0: order holds whole epochs of
             epoch_rows rows each (several epochs in one call), each cut into batches of b rows, its last
             one shorter where b does not divide epoch_rows; the call starts at an epoch's first step
    epoch_squares  (S,) float64, or empty for none: with epoch_rows > 0, after each epoch's last step s,
             epoch_squares[s] <- sums.squared_weights of the parameters (the estimators' alpha term); the
             other entries are left as they are
Returns the number of steps applied: S, or the index of the first step whose loss is not finite (its
update is not applied, its loss is in step_loss). Modes FORWARD, LOSS, GRADIENTS run one pass (S = 1, one
part) and update nothing. Clipping and max-norm need the whole gradient or update first: only one part.
"""
import functools

import numpy as np
from numba import njit

from ..options import OptimizerSettings
from ..sums import squared_weights, sum_at, sum_first
from ._jit import ERROR_MODEL, FASTMATH
from .claims import (CLAIM_SLOTS, GRADS_DONE, JOINED, NEXT, RETIRE, STOP, UPDATE_WORK, UPDATES_DONE, fetch_add,
                     load_acquire, wait_for)
from .delta_backward import weight_t_offsets_fit
from .dense_forward import offsets_match
from .denormals import flush_denormals, restore
from .inline_pipeline import InliningCompiler
from .max_norm import apply_max_norm_serial
from .optimizers import NORM_CHUNKS, clip_scale, optimizer_update, optimizer_update_masked
from .step import GRADIENTS, STEP, batch_pass
from .variants import ANY

_LOW63 = np.uint64(2 ** 63 - 1)


@njit(cache=True, nogil=True, inline="always")
def dropout_key(key_base, step_count):
    """(key_base + step_count) mod 2^63: Trainer._dropout_key with key_base = dropout seed x its multiplier."""
    return np.int64((np.uint64(key_base) + np.uint64(step_count)) & _LOW63)


@njit(cache=True, nogil=True, inline="always")
def param_part(size, parts, index):
    """[start, stop) of the index-th of `parts` pieces of range(size), cut at multiples of 16 (64 bytes of
    float32: no two threads write one cache line)."""
    return (index * size // parts) // 16 * 16, size if index == parts - 1 else ((index + 1) * size // parts) // 16 * 16


@functools.lru_cache(maxsize=None)
def run_steps_for(uses):
    """run_steps compiled for one variants.Uses: one dispatcher per variant in a process (Numba's disk cache
    keys each by the closure's constants, so they share the cache index without clashing)."""
    masked_decay, constrained, dropout, slopes, loss_kind, relu_only, optimizer, copies = uses

    # Without Numba's runtime (_nrt=False): run_steps allocates nothing (the caller passes every array, the
    # workspace's layout included), and with the runtime every array argument and every slice of one (a
    # few hundred a step) went through a reference count, even when it counted nothing. Measured without
    # it, train_steps of 4,096 one-row steps (median of 30, interleaved): [8, 32, 1] 327-336 -> 289-294 ns,
    # [8, 32, 32, 1] 742-753 -> 693-724 ns.
    @njit(cache=True, nogil=True, fastmath=FASTMATH, error_model=ERROR_MODEL, pipeline_class=InliningCompiler,
          _nrt=False)
    def run_steps(mode, X, labels, targets, weights, order, batch_rows, n_steps, dims, offsets, activations, loss,
                  params, grads, moment1, moment2, settings, lrs, key_base, first_step, dropout_threshold,
                  input_threshold, decay_mask, acts, scratch, partials, row_loss, row_hits, act_off, slope_off,
                  weight_t_off, norm_sums, step_loss, step_hits, step_weight, epoch_rows, epoch_squares, part_grads,
                  part_values, claims):
        parts = acts.shape[0]
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
        # Every check that could fail in a task is made here, before any task is claimed: a thread that
        # raised halfway would leave the others waiting for its task.
        part_rows = (batch_rows + parts - 1) // parts  # the rows each part's workspace is laid out for
        if not offsets_match(dims, activations, part_rows, act_off, slope_off) \
                or not weight_t_offsets_fit(dims, weight_t_off):
            raise IndexError("run_steps: act_off, slope_off or weight_t_off are not the offsets of a part's "
                             "workspace")
        if parts < 1 or scratch.shape[0] != parts or partials.shape[0] != parts or row_loss.shape[0] != parts \
                or row_hits.shape[0] != parts or row_loss.shape[1] < part_rows or row_hits.shape[1] < part_rows \
                or acts.shape[1] < slope_off[-1] + weight_t_off[-1] \
                or part_grads.shape[0] != parts - 1 or (parts > 1 and part_grads.shape[1] != params.size) \
                or part_values.shape[0] < parts or part_values.shape[1] < 3 or claims.size < CLAIM_SLOTS \
                or norm_sums.size < NORM_CHUNKS:
            raise IndexError("run_steps: a part's workspace does not match the parts and the batch rows")
        if parts > 1 and (mode != STEP or settings.clip_norm > 0 or settings.max_norm > 0):
            raise ValueError("run_steps: a step split into parts takes no gradient clipping or max-norm (both "
                             "need the whole gradient or update first), and only training steps are split")
        # A part this variant was compiled without must not be asked for: it would be skipped silently.
        if not constrained and mode == STEP and settings.max_norm > 0:
            raise ValueError("run_steps: max_norm given to a variant compiled without the constraint")
        if not dropout and (dropout_threshold > 0 or input_threshold > 0):
            raise ValueError("run_steps: dropout given to a variant compiled without it")
        if not copies and weight_t_off[-1] > 0:
            raise ValueError("run_steps: W^T copies laid out for a variant compiled without them")
        # The loss and the optimizer: this variant's constants, or the run-time codes in the generic variant
        # (variants.ANY). Either way the compiled code holds one of the two branches.
        loss_code = loss_kind if loss_kind != ANY else loss.kind
        optimizer_code = optimizer if optimizer != ANY else settings.kind
        if parts == 1:  # called on the caller's thread alone: its own counters
            claims[:] = 0
        # The first thread to enter runs until every task is done; the others stop claiming once a thread
        # waited so long that the CPU is evidently shared with other work (claims.RETIRE).
        first = fetch_add(claims, JOINED, 1) == 0
        # Subnormals flushed for the whole call (denormals.py): the kernels' own flush_denormals/restore pairs
        # then find the mode set and write nothing, where each change of the mode costs about 10 ns in a loop
        # of its own (measured in the step, interleaved: one-row steps of [8, 32, 1] 414-490 -> 395-408 ns,
        # of [8, 32, 32, 1] 1130-1199 -> 864-907 ns).
        fp_state = flush_denormals()
        # Step s is 2 x parts tasks, handed out in order: its gradient parts (rows), then its update parts
        # (parameters). A gradient part waits for the step before to be updated; an update part waits for
        # the step's gradient parts. Every task a thread waits for has been claimed by a thread that is
        # running it, so the call finishes whatever the threads' number or timing (even if one thread runs
        # every task). Each part's arithmetic is fixed by the parts, not by which thread ran it.
        while True:
            if not first and load_acquire(claims, RETIRE) != 0:
                break
            task = fetch_add(claims, NEXT, 1)
            s, r = task // (2 * parts), task % (2 * parts)
            if s >= n_steps:
                break
            start, count = s * batch_rows, batch_rows
            if epoch_rows > 0:
                start = (s // epoch_steps) * epoch_rows + (s % epoch_steps) * batch_rows
                count = min(batch_rows, epoch_rows - (s % epoch_steps) * batch_rows)
            rows = order[start:start + count]
            if r < parts:  # gradient part r: rows [lo, hi) of the step's batch, into grads or part_grads[r - 1]
                if not wait_for(claims, UPDATES_DONE, s):
                    break
                lo, hi = r * count // parts, (r + 1) * count // parts
                weight = sum_at(weights, rows) if weights.size else np.float64(count)
                weight_total = weight if weight > 0 else 1.0  # sample_weights.batch_total
                # Row lo of the batch gets the dropout masks it would get in the whole batch (dropout.keeps).
                key = np.int64((np.uint64(dropout_key(key_base, first_step + s)) + (np.uint64(lo) << np.uint64(24)))
                               & _LOW63)
                part_grad = grads if r == 0 else part_grads[r - 1]
                value, hits = 0.0, 0.0
                if hi > lo:
                    value = batch_pass(min(mode, GRADIENTS), X, labels, targets, weights, weight_total, rows[lo:hi],
                                       part_rows, (act_off, slope_off, weight_t_off), dims, offsets, activations, loss,
                                       loss_code, params, part_grad, relu_only, slopes, dropout, copies, key,
                                       dropout_threshold, input_threshold, acts[r], scratch[r], partials[r],
                                       row_loss[r], row_hits[r], 1)
                    hits = sum_first(row_hits[r], hi - lo)
                else:  # an epoch's last batch with fewer rows than parts: this part adds nothing
                    part_grad[:] = 0.0
                part_values[r, 0], part_values[r, 1], part_values[r, 2] = value, hits, weight
                fetch_add(claims, GRADS_DONE, 1)
                if mode != STEP:
                    step_loss[0], step_hits[0], step_weight[0] = value, hits, weight
                    restore(fp_state)
                    return 1
                continue
            # Update part r - parts: parameters [lo, hi), from the sum of the parts' gradients.
            if not wait_for(claims, GRADS_DONE, (s + 1) * parts):
                break
            value = part_values[0, 0]
            for q in range(1, parts):
                value += part_values[q, 0]
            if np.isfinite(value):
                lo, hi = param_part(params.size, parts, r - parts)
                for q in range(parts - 1):
                    extra = part_grads[q]
                    for i in range(lo, hi):
                        grads[i] += extra[i]
                step_settings = OptimizerSettings(settings.kind, lrs[s], settings.beta1, settings.beta2, settings.eps,
                                                  settings.weight_decay, settings.momentum, settings.nesterov,
                                                  first_step + s + 1, settings.alpha, settings.clip_norm,
                                                  settings.eps_hat, settings.max_norm)
                scale = clip_scale(grads, settings.clip_norm, norm_sums)  # 1 at once without clipping
                if masked_decay:
                    optimizer_update_masked(params[lo:hi], grads[lo:hi], moment1[lo:hi], moment2[lo:hi],
                                            step_settings, scale, decay_mask[lo:hi], optimizer_code)
                else:
                    optimizer_update(params[lo:hi], grads[lo:hi], moment1[lo:hi], moment2[lo:hi], step_settings,
                                     scale, optimizer_code)
                if constrained:  # max_norm > 0 only with one part (checked above)
                    apply_max_norm_serial(params, offsets, dims, settings.max_norm, norm_sums)
            if fetch_add(claims, UPDATE_WORK, 1) == (s + 1) * parts - 1:  # the step's last part to finish
                hits = part_values[0, 1]
                for q in range(1, parts):
                    hits += part_values[q, 1]
                step_loss[s], step_hits[s], step_weight[s] = value, hits, part_values[0, 2]
                if not np.isfinite(value):  # not applied: the call ends before step s + 1
                    claims[STOP] = s + 1
                elif epoch_squares.size and epoch_rows > 0 and (s + 1) % epoch_steps == 0:
                    epoch_squares[s] = squared_weights(params, offsets, dims)
                fetch_add(claims, UPDATES_DONE, 1)
        restore(fp_state)
        stop = load_acquire(claims, STOP)
        return stop - 1 if stop else n_steps

    return run_steps
