"""Kernel 5: the optimizer update, one parallel pass over the flat parameter buffer.

Shapes (P = number of parameters, all layers' [W; b] blocks back to back):
    params, grads, moment1, moment2: (P,) float32; updated in place (grads is read only).
PyTorch's update rules, with t = settings.step (1 for the first update):
    sgd:   g += wd p;  buf = momentum buf + g;  g = g + momentum buf (nesterov) or buf;  p -= lr g
    adam:  g += wd p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
           p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    adamw: p *= 1 - lr wd, then adam without the L2 term (decoupled weight decay)
settings: an options.OptimizerSettings.
"""
import numpy as np
from numba import njit, prange

from ._jit import ADAM, ADAMW, FASTMATH, SGD


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def optimizer_update(params, grads, moment1, moment2, settings):
    if settings.kind not in (SGD, ADAM, ADAMW):
        raise ValueError("unknown optimizer code")
    lr = np.float32(settings.lr)
    wd = np.float32(settings.weight_decay)
    mu = np.float32(settings.momentum)
    b1 = np.float32(settings.beta1)
    b2 = np.float32(settings.beta2)
    # 1 - beta in float64, then rounded: float32(1) - float32(0.999) is off by 1.3e-5 relative.
    one_minus_b1 = np.float32(1.0 - settings.beta1)
    one_minus_b2 = np.float32(1.0 - settings.beta2)
    eps = np.float32(settings.eps)
    step_size = np.float32(settings.lr / (1.0 - settings.beta1 ** settings.step))
    inv_sqrt_bc2 = np.float32(1.0 / np.sqrt(1.0 - settings.beta2 ** settings.step))
    decay = np.float32(1.0 - settings.lr * settings.weight_decay)
    is_sgd = settings.kind == SGD
    decoupled = settings.kind == ADAMW
    # One parallel loop for every optimizer (each extra loop costs a second of first-run compilation);
    # the branches are loop-invariant, so the compiler hoists them out of the loop.
    for i in prange(params.size):
        p = params[i]
        g = grads[i]
        if is_sgd:
            g += wd * p
            if mu != 0:
                buf = mu * moment1[i] + g
                moment1[i] = buf
                g = g + mu * buf if settings.nesterov else buf
            params[i] = p - lr * g
        else:
            if decoupled:
                p *= decay
            else:
                g += wd * p
            m = b1 * moment1[i] + one_minus_b1 * g
            v = b2 * moment2[i] + one_minus_b2 * g * g
            moment1[i] = m
            moment2[i] = v
            params[i] = p - step_size * m / (np.sqrt(v) * inv_sqrt_bc2 + eps)
