"""Kernel 5: the optimizer update, one parallel pass over the flat parameter buffer.

Shapes (P = number of parameters, all layers' [W; b] blocks back to back):
    params, grads, moment1, moment2: (P,) float32; updated in place (grads is read only).
PyTorch's update rules (torch.optim), with t = settings.step (1 for the first update) and g the gradient
times grad_scale (gradient clipping), plus wd p unless noted:
    sgd:     buf = momentum buf + g;  g = g + momentum buf (nesterov) or buf;  p -= lr g
    adam:    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)
    adamw:   p *= 1 - lr wd, then adam without the wd p term (decoupled weight decay)
    adagrad: s += g^2;  p -= lr g / (sqrt(s) + eps)
    rmsprop: v = alpha v + (1-alpha) g^2;  u = g / (sqrt(v) + eps);  buf = momentum buf + u;
             p -= lr buf (momentum > 0) or lr u
Moments: moment1 holds m / the momentum buffer / adagrad's sum / rmsprop's v; moment2 holds v / rmsprop's buffer.
settings: an options.OptimizerSettings.
"""
import numpy as np
from numba import njit, prange

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


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def optimizer_update(params, grads, moment1, moment2, settings, grad_scale):
    if settings.kind not in (SGD, ADAM, ADAMW, ADAGRAD, RMSPROP):
        raise ValueError("unknown optimizer code")
    kind = settings.kind
    lr = np.float32(settings.lr)
    wd = np.float32(settings.weight_decay)
    mu = np.float32(settings.momentum)
    b1 = np.float32(settings.beta1)
    b2 = np.float32(settings.beta2)
    # 1 - beta in float64, then rounded: float32(1) - float32(0.999) is off by 1.3e-5 relative.
    one_minus_b1 = np.float32(1.0 - settings.beta1)
    one_minus_b2 = np.float32(1.0 - settings.beta2)
    alpha = np.float32(settings.alpha)
    one_minus_alpha = np.float32(1.0 - settings.alpha)
    eps = np.float32(settings.eps)
    step_size = np.float32(settings.lr / (1.0 - settings.beta1 ** settings.step))
    inv_sqrt_bc2 = np.float32(1.0 / np.sqrt(1.0 - settings.beta2 ** settings.step))
    decay = np.float32(1.0 - settings.lr * settings.weight_decay)
    # One parallel loop for every optimizer (each extra loop costs a second of first-run compilation);
    # the branches are loop-invariant, so the compiler hoists them out of the loop. Unlike the other
    # kernels this loop does not flush subnormals (denormals.py): splitting it into pieces that could
    # set the mode once each made it 3x slower (0.18 -> 0.6 ms for 636k parameters, measured here).
    for i in prange(params.size):
        p = params[i]
        g = grads[i] * grad_scale
        if kind == ADAMW:
            p *= decay
        else:
            g += wd * p
        if kind == SGD:
            if mu != 0:
                buf = mu * moment1[i] + g
                moment1[i] = buf
                g = g + mu * buf if settings.nesterov else buf
            params[i] = p - lr * g
        elif kind == ADAGRAD:
            total = moment1[i] + g * g
            moment1[i] = total
            params[i] = p - lr * g / (np.sqrt(total) + eps)
        elif kind == RMSPROP:
            v = alpha * moment1[i] + one_minus_alpha * g * g
            moment1[i] = v
            u = g / (np.sqrt(v) + eps)
            if mu != 0:
                u = mu * moment2[i] + u
                moment2[i] = u
            params[i] = p - lr * u
        else:
            m = b1 * moment1[i] + one_minus_b1 * g
            v = b2 * moment2[i] + one_minus_b2 * g * g
            moment1[i] = m
            moment2[i] = v
            params[i] = p - step_size * m / (np.sqrt(v) * inv_sqrt_bc2 + eps)
