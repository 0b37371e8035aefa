"""Kernel 5: the optimizer update, one parallel pass over the flat parameter buffer.

Shapes (P = number of parameters, all layers' [W; b] blocks back to back):
    params, grads, moment1, moment2: (P,) float32; updated in place (grads is read only).
    decay_mask (P,) bool (optimizer_update_masked): where weight decay applies (Trainer(decay_biases=False):
    not on the biases).
The rules are update_rules.update (PyTorch's torch.optim), shared with the CUDA backend; g is the
gradient times grad_scale (clip_scale: gradient clipping by global norm). settings: options.OptimizerSettings.
"""
import numpy as np
from numba import njit, prange

from .. import update_rules
from ._jit import ADAGRAD, ADAM, ADAMW, FASTMATH, RMSPROP, SGD


# Fixed chunks for the gradient norm: its summation order never depends on the thread count.
NORM_CHUNKS = 64


@njit(parallel=True, cache=True, nogil=True, inline="always")
def clip_scale(grads, max_norm, partial_sums):
    """min(1, max_norm / (||grads||_2 + 1e-6)), PyTorch's clip_grad_norm_; 1 when max_norm <= 0.

    partial_sums: (NORM_CHUNKS,) float64 scratch."""
    if max_norm <= 0:
        return np.float32(1.0)
    size = grads.size
    for c in prange(NORM_CHUNKS):
        lo, hi = c * size // NORM_CHUNKS, (c + 1) * size // NORM_CHUNKS
        acc = 0.0
        for i in range(lo, hi):
            acc += np.float64(grads[i]) * np.float64(grads[i])
        partial_sums[c] = acc
    total = 0.0
    for c in range(NORM_CHUNKS):
        total += partial_sums[c]
    return np.float32(min(1.0, max_norm / (np.sqrt(total) + 1e-6)))


_update = njit(inline="always", fastmath=FASTMATH)(update_rules.update)
_scalars = njit(inline="always")(update_rules.scalars)


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def optimizer_update(params, grads, moment1, moment2, settings, grad_scale, kind):
    """kind: settings.kind, or a compile-time constant of the caller equal to it (variants.Uses): then only
    that optimizer's rule is compiled."""
    if settings.kind not in (SGD, ADAM, ADAMW, ADAGRAD, RMSPROP):
        raise ValueError("unknown optimizer code")
    if settings.kind != kind:
        raise ValueError("an optimizer other than the one this pass was compiled for")
    (lr, wd, mu, nesterov, b1, b2, one_minus_b1, one_minus_b2, alpha, one_minus_alpha, eps, step_size,
     inv_sqrt_bc2, decay) = _scalars(settings)
    # One parallel loop for every optimizer (each extra loop costs a second of first-run compilation);
    # the branches are loop-invariant, so the compiler hoists them out of the loop. Unlike the other
    # kernels this loop does not flush subnormals (denormals.py): splitting it into pieces that could
    # set the mode once each made it 3x slower (0.18 -> 0.6 ms for 636k parameters, measured here).
    for i in prange(params.size):
        params[i], moment1[i], moment2[i] = _update(
            kind, params[i], grads[i] * grad_scale, moment1[i], moment2[i], lr, wd, mu, nesterov, b1, b2,
            one_minus_b1, one_minus_b2, alpha, one_minus_alpha, eps, step_size, inv_sqrt_bc2, decay)


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def optimizer_update_masked(params, grads, moment1, moment2, settings, grad_scale, decay_mask, kind):
    """optimizer_update with weight decay only where decay_mask (P,) bool is True (decay_masks()).

    Its own function, compiled only by the entry point that needs it (step.run_update_masked): a mask test
    inside optimizer_update's loop, even one never taken, kept it from vectorizing (measured here: 0.95 to
    2.0 ms against 0.34 to 0.47 ms for 636k parameters), and a second loop there adds seconds of compile."""
    if settings.kind not in (SGD, ADAM, ADAMW, ADAGRAD, RMSPROP):
        raise ValueError("unknown optimizer code")
    if settings.kind != kind:
        raise ValueError("an optimizer other than the one this pass was compiled for")
    if decay_mask.size != params.size:
        raise IndexError("decay_mask must have one entry per parameter")
    (lr, wd, mu, nesterov, b1, b2, one_minus_b1, one_minus_b2, alpha, one_minus_alpha, eps, step_size,
     inv_sqrt_bc2, decay) = _scalars(settings)
    no_decay = np.float32(0.0)
    no_shrink = np.float32(1.0)
    for i in prange(params.size):
        decayed = decay_mask[i]
        params[i], moment1[i], moment2[i] = _update(
            kind, params[i], grads[i] * grad_scale, moment1[i], moment2[i], lr, wd if decayed else no_decay, mu,
            nesterov, b1, b2, one_minus_b1, one_minus_b2, alpha, one_minus_alpha, eps, step_size, inv_sqrt_bc2,
            decay if decayed else no_shrink)


def decay_masks(state, config):
    """optimizer_update_masked's decay_mask for a network: empty when weight decay covers every parameter
    (or there is none: optimizer_update serves), else True on each layer's weights and False on its bias
    row (state.py's layout)."""
    if config.decay_biases or not config.weight_decay:
        return np.zeros(0, np.bool_)
    mask = np.ones(state.params.size, np.bool_)
    for l in range(state.n_layers):
        mask[state.offsets[l] + state.sizes[l] * state.sizes[l + 1]:state.offsets[l + 1]] = False
    return mask
