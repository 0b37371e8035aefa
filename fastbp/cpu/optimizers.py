"""Kernel 5: the optimizer update, one parallel pass over the flat parameter buffer.

Shapes (P = number of parameters, all layers' [W; b] blocks back to back):
    params, grads, moment1, moment2: (P,) float32; updated in place (grads is read only).
    dims, offsets (L + 1,) int64: layer widths and block starts, for settings.decay_biases=False.
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
def optimizer_update(params, grads, moment1, moment2, settings, grad_scale, dims, offsets):
    """dims (L + 1,), offsets (L + 1,) int64: the layer blocks (state.py), read when settings.decay_biases
    is False to leave each block's bias row out of weight decay."""
    if settings.kind not in (SGD, ADAM, ADAMW, ADAGRAD, RMSPROP):
        raise ValueError("unknown optimizer code")
    kind = settings.kind
    (lr, wd, mu, nesterov, b1, b2, one_minus_b1, one_minus_b2, alpha, one_minus_alpha, eps, step_size,
     inv_sqrt_bc2, decay) = _scalars(settings)
    # One pass over the whole buffer; without bias decay, one per weight block and one per bias row (wd = 0
    # there). The same parallel loop either way: each extra loop costs a second of first-run compilation.
    # The branches are loop-invariant, so the compiler hoists them out of the loop. Unlike the other
    # kernels this loop does not flush subnormals (denormals.py): splitting it into pieces that could
    # set the mode once each made it 3x slower (0.18 -> 0.6 ms for 636k parameters, measured here).
    segments = 1 if settings.decay_biases or wd == 0 else 2 * (dims.size - 1)
    for s in range(segments):
        lo, hi, seg_wd, seg_decay = 0, params.size, wd, decay
        if segments > 1:
            l = s // 2
            weights_end = offsets[l] + dims[l] * dims[l + 1]
            if s % 2 == 0:
                lo, hi = offsets[l], weights_end
            else:
                lo, hi, seg_wd, seg_decay = weights_end, offsets[l + 1], np.float32(0.0), np.float32(1.0)
        for i in prange(lo, hi):
            params[i], moment1[i], moment2[i] = _update(
                kind, params[i], grads[i] * grad_scale, moment1[i], moment2[i], lr, seg_wd, mu, nesterov, b1, b2,
                one_minus_b1, one_minus_b2, alpha, one_minus_alpha, eps, step_size, inv_sqrt_bc2, seg_decay)
