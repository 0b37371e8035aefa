"""Kernel 5 on the GPU: one fused pass over the flat parameter buffer, one thread per parameter
(grid-stride), applying update_rules.update, the rule the CPU backend uses too.

Shapes: params, grads, moment1, moment2 (P,) float32. grad_norm_sq (2,) float64 on the device:
[0] is the squared gradient norm (from reduce.sums) when clipping; loss_sum (2,) float64: [0] is the
batch's summed loss, and a non-finite one leaves everything unchanged (the CPU step's rule). Both are
read on the device, so a step needs no host round trip before its update. dims, offsets (L + 1,) int64
on the device: the layer blocks (state.py), read when decay_biases is False to leave each block's bias
row out of weight decay.
"""
import math

from numba import cuda, float32, float64

from .. import update_rules

_update = cuda.jit(device=True, inline=True)(update_rules.update)


@cuda.jit
def optimizer_update(params, grads, moment1, moment2, kind, lr, wd, mu, nesterov, b1, b2, one_minus_b1,
                     one_minus_b2, alpha, one_minus_alpha, eps, step_size, inv_sqrt_bc2, decay, clip_norm,
                     grad_norm_sq, loss_sum, decay_biases, dims, offsets):
    if not math.isfinite(loss_sum[0]):
        return
    scale = float32(1.0)
    if clip_norm > 0:
        scale = float32(min(1.0, clip_norm / (math.sqrt(grad_norm_sq[0]) + 1e-6)))
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, params.size, stride):
        wd_i, decay_i = wd, decay
        if not decay_biases:
            l = 0
            while i >= offsets[l + 1]:  # the layer block holding i (a handful of layers: a short scan)
                l += 1
            if i >= offsets[l] + dims[l] * dims[l + 1]:  # the block's last row: its bias
                wd_i, decay_i = float32(0.0), float32(1.0)
        params[i], moment1[i], moment2[i] = _update(
            kind, params[i], grads[i] * scale, moment1[i], moment2[i], lr, wd_i, mu, nesterov, b1, b2, one_minus_b1,
            one_minus_b2, alpha, one_minus_alpha, eps, step_size, inv_sqrt_bc2, decay_i)


def scalars(settings):
    """The kernel's arguments after the four arrays, from options.OptimizerSettings."""
    return (settings.kind, *update_rules.scalars(settings), float(settings.clip_norm))


@cuda.jit
def apply_max_norm(params, w_base, fan_in, fan_out, max_norm, loss_sum):
    """cpu/max_norm.py on one layer: thread j takes unit j's incoming weights, the column j of W (fan_in,
    fan_out) row-major at params[w_base:], and scales it to norm max_norm when longer; nothing after a step
    whose update was skipped (loss_sum[0] not finite). The norm is summed in float64 in row order, as on
    the CPU."""
    j = cuda.grid(1)
    if j >= fan_out or not math.isfinite(loss_sum[0]):
        return
    total = 0.0
    for i in range(fan_in):
        v = params[w_base + i * fan_out + j]
        total += float64(v) * float64(v)
    norm = math.sqrt(total)
    if norm > max_norm:
        scale = max_norm / norm
        for i in range(fan_in):
            params[w_base + i * fan_out + j] = float32(params[w_base + i * fan_out + j] * scale)
