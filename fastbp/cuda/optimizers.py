"""Kernel 5 on the GPU: one fused pass over the flat parameter buffer, one thread per parameter
(grid-stride), applying update_rules.update, the rule the CPU backend uses too.

Shapes: params, grads, moment1, moment2 (P,) float32. grad_norm_sq (2,) float64 on the device:
[0] is the squared gradient norm (from reduce.sums) when clipping; loss_sum (2,) float64: [0] is the
batch's summed loss, and a non-finite one leaves everything unchanged (the CPU step's rule). Both are
read on the device, so a step needs no host round trip before its update.
"""
import math

from numba import cuda, float32

from .. import update_rules

_update = cuda.jit(device=True, inline=True)(update_rules.update)


@cuda.jit
def optimizer_update(params, grads, moment1, moment2, kind, lr, wd, mu, nesterov, b1, b2, one_minus_b1,
                     one_minus_b2, alpha, one_minus_alpha, eps, step_size, inv_sqrt_bc2, decay, clip_norm,
                     grad_norm_sq, loss_sum):
    if not math.isfinite(loss_sum[0]):
        return
    scale = float32(1.0)
    if clip_norm > 0:
        scale = float32(min(1.0, clip_norm / (math.sqrt(grad_norm_sq[0]) + 1e-6)))
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, params.size, stride):
        params[i], moment1[i], moment2[i] = _update(
            kind, params[i], grads[i] * scale, moment1[i], moment2[i], lr, wd, mu, nesterov, b1, b2, one_minus_b1,
            one_minus_b2, alpha, one_minus_alpha, eps, step_size, inv_sqrt_bc2, decay)


def scalars(settings):
    """The kernel's arguments after the four arrays, from options.OptimizerSettings."""
    return (settings.kind, *update_rules.scalars(settings), float(settings.clip_norm))
