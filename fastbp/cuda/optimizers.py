"""Kernel 5 on the GPU: one fused pass over the flat parameter buffer, the CPU kernel's update rules
(cpu/optimizers.py: sgd, adam, adamw, adagrad, rmsprop), one thread per parameter, grid-stride.

Shapes: params, grads, moment1, moment2 (P,) float32. grad_norm_sq (2,) float64 on the device:
[0] is the squared gradient norm (from reduce.sums) when clipping, so no host round trip is needed.
"""
import math

import numpy as np
from numba import cuda, float32

from ..options import OPTIMIZERS

SGD, ADAM, ADAMW, ADAGRAD, RMSPROP = (OPTIMIZERS[k] for k in ("sgd", "adam", "adamw", "adagrad", "rmsprop"))


@cuda.jit
def optimizer_update(params, grads, moment1, moment2, kind, lr, wd, mu, nesterov, b1, b2, one_minus_b1,
                     one_minus_b2, alpha, one_minus_alpha, eps, step_size, inv_sqrt_bc2, decay, clip_norm,
                     grad_norm_sq):
    scale = float32(1.0)
    if clip_norm > 0:
        scale = float32(min(1.0, clip_norm / (math.sqrt(grad_norm_sq[0]) + 1e-6)))
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, params.size, stride):
        p = params[i]
        g = grads[i] * scale
        if kind == ADAMW:
            p *= decay
        else:
            g += wd * p
        if kind == SGD:
            if mu != 0:
                buf = mu * moment1[i] + g
                moment1[i] = buf
                g = g + mu * buf if nesterov else buf
            params[i] = p - lr * g
        elif kind == ADAGRAD:
            total = moment1[i] + g * g
            moment1[i] = total
            params[i] = p - lr * g / (math.sqrt(total) + eps)
        elif kind == RMSPROP:
            v = alpha * moment1[i] + one_minus_alpha * g * g
            moment1[i] = v
            u = g / (math.sqrt(v) + eps)
            if mu != 0:
                u = mu * moment2[i] + u
                moment2[i] = u
            params[i] = p - lr * u
        else:
            m = b1 * moment1[i] + one_minus_b1 * g
            v = b2 * moment2[i] + one_minus_b2 * g * g
            moment1[i] = m
            moment2[i] = v
            params[i] = p - step_size * m / (math.sqrt(v) * inv_sqrt_bc2 + eps)


def scalars(settings):
    """The kernel's float32 scalars from options.OptimizerSettings, computed in float64 first."""
    f = np.float32
    return (settings.kind, f(settings.lr), f(settings.weight_decay), f(settings.momentum), bool(settings.nesterov),
            f(settings.beta1), f(settings.beta2), f(1.0 - settings.beta1), f(1.0 - settings.beta2),
            f(settings.alpha), f(1.0 - settings.alpha), f(settings.eps),
            f(settings.lr / (1.0 - settings.beta1 ** settings.step)),
            f(1.0 / math.sqrt(1.0 - settings.beta2 ** settings.step)),
            f(1.0 - settings.lr * settings.weight_decay), float(settings.clip_norm))
