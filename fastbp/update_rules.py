"""The optimizer update of one parameter, shared by both backends' fused update passes.

A plain function of scalars, compiled with numba.njit into the CPU loop (cpu/optimizers.py) and with
numba.cuda.jit(device=True) into the GPU kernel (cuda/optimizers.py). PyTorch's rules (torch.optim),
with g the (clipped) gradient and t the step count folded into step_size and inv_sqrt_bc2:
    sgd:     g += wd p;  buf = mu buf + g;  g = g + mu buf (nesterov) or buf;  p -= lr g
    adam:    g += wd p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= step_size m / (sqrt(v) inv_sqrt_bc2 + eps)
             (with eps_hat, Kingma and Ba's epsilon hat as Keras and scikit-learn add it, to sqrt(v) before the
             bias correction: p -= lr sqrt(bc2) / bc1 m / (sqrt(v) + eps), which is the line above with
             eps x inv_sqrt_bc2 for eps; scalars() passes that)
    adamw:   p *= decay (= 1 - lr wd), then adam without the wd p term
    adagrad: g += wd p;  s += g^2;  p -= lr g / (sqrt(s) + eps)
    rmsprop: g += wd p;  v = alpha v + (1-alpha) g^2;  u = g / (sqrt(v) + eps);  buf = mu buf + u (mu > 0);
             p -= lr u (or lr buf)
Moments: m1 holds Adam's m / the momentum buffer / Adagrad's sum / RMSprop's v; m2 holds Adam's v /
RMSprop's momentum buffer. Returns the new (p, m1, m2).
"""
import math

import numpy as np

from .options import OPTIMIZERS

SGD, ADAM, ADAMW, ADAGRAD, RMSPROP = (OPTIMIZERS[k] for k in ("sgd", "adam", "adamw", "adagrad", "rmsprop"))


def update(kind, p, g, m1, m2, lr, wd, mu, nesterov, b1, b2, one_minus_b1, one_minus_b2, alpha, one_minus_alpha,
           eps, step_size, inv_sqrt_bc2, decay):
    if kind == ADAMW:
        p *= decay
    else:
        g += wd * p
    if kind == SGD:
        if mu != 0:
            m1 = mu * m1 + g
            g = g + mu * m1 if nesterov else m1
        return p - lr * g, m1, m2
    if kind == ADAGRAD:
        m1 = m1 + g * g
        return p - lr * g / (math.sqrt(m1) + eps), m1, m2
    if kind == RMSPROP:
        m1 = alpha * m1 + one_minus_alpha * g * g
        u = g / (math.sqrt(m1) + eps)
        if mu != 0:
            m2 = mu * m2 + u
            u = m2
        return p - lr * u, m1, m2
    m1 = b1 * m1 + one_minus_b1 * g
    m2 = b2 * m2 + one_minus_b2 * g * g
    return p - step_size * m1 / (math.sqrt(m2) * inv_sqrt_bc2 + eps), m1, m2


def scalars(settings):
    """update()'s hyperparameters from an options.OptimizerSettings, in update()'s order after m2: each
    computed in float64, then rounded to float32 (float32(1) - float32(0.999) is off by 1.3e-5)."""
    f = np.float32
    inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - settings.beta2 ** settings.step)
    eps = settings.eps * inv_sqrt_bc2 if settings.eps_hat else settings.eps
    return (f(settings.lr), f(settings.weight_decay), f(settings.momentum), bool(settings.nesterov),
            f(settings.beta1), f(settings.beta2), f(1.0 - settings.beta1), f(1.0 - settings.beta2),
            f(settings.alpha), f(1.0 - settings.alpha), f(eps),
            f(settings.lr / (1.0 - settings.beta1 ** settings.step)), f(inv_sqrt_bc2),
            f(1.0 - settings.lr * settings.weight_decay))
