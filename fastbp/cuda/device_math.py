"""Device functions shared by the CUDA kernels: activations, their derivatives (or stored slopes), dropout masks.

The same formulas as the CPU kernels (cpu/dense_forward.py, cpu/delta_backward.py, cpu/dropout.py), so
both backends draw identical dropout masks and agree to float32 rounding.
"""
import math

import numpy as np
from numba import cuda, float32

from ..options import ACTIVATIONS, LEAKY_SLOPE

RELU, LEAKY_RELU, TANH, SIGMOID, ELU, SOFTPLUS, GELU, GELU_TANH, SILU = (
    ACTIVATIONS[k] for k in ("relu", "leaky_relu", "tanh", "sigmoid", "elu", "softplus", "gelu", "gelu_tanh", "silu"))
SLOPE = LEAKY_SLOPE
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


@cuda.jit(device=True, inline=True)
def stores_slope(activation):
    """cpu/activations.py's stores_slope: act'(Z) is kept from the forward pass (gelu, gelu_tanh, silu)."""
    return activation == GELU or activation == GELU_TANH or activation == SILU


@cuda.jit(device=True, inline=True)
def _sigmoid(v):
    if v >= 0:
        return float32(1.0) / (float32(1.0) + math.exp(-v))
    e = math.exp(v)
    return e / (float32(1.0) + e)


@cuda.jit(device=True, inline=True)
def _sigmoid_product(v):
    """sigmoid(v) sigmoid(-v), without cancellation."""
    e = math.exp(-abs(v))
    return e / ((float32(1.0) + e) * (float32(1.0) + e))


@cuda.jit(device=True, inline=True)
def slope(v, activation):
    """act'(v) of a slope-storing activation at its pre-activation v (cpu/activations.py's formulas)."""
    if activation == GELU:
        return float32(0.5) * math.erfc(-v * float32(_INV_SQRT2)) + v * math.exp(float32(-0.5) * v * v) * float32(
            _INV_SQRT_2PI)
    if activation == GELU_TANH:
        w = min(max(v, float32(-12.0)), float32(12.0))
        du = float32(_GELU_K) * (float32(1.0) + float32(3.0 * _GELU_C) * w * w)
        two_u = float32(2.0 * _GELU_K) * (w + float32(_GELU_C) * w * w * w)
        return _sigmoid(two_u) + w * float32(2.0) * _sigmoid_product(two_u) * du
    return _sigmoid(v) + v * _sigmoid_product(v)  # SILU


@cuda.jit(device=True, inline=True)
def activate(v, activation):
    if activation == RELU:
        return max(v, float32(0.0))
    if activation == LEAKY_RELU:
        return v if v > 0 else float32(SLOPE) * v
    if activation == TANH:
        return math.tanh(v)
    if activation == SIGMOID:
        return _sigmoid(v)
    if activation == ELU:
        return v if v > 0 else math.expm1(v)
    if activation == SOFTPLUS:
        return v if v > float32(20.0) else math.log1p(math.exp(v))
    if activation == GELU:
        return v * float32(0.5) * math.erfc(-v * float32(_INV_SQRT2))
    if activation == GELU_TANH:
        w = min(max(v, float32(-12.0)), float32(12.0))
        return v * _sigmoid(float32(2.0 * _GELU_K) * (w + float32(_GELU_C) * w * w * w))
    if activation == SILU:
        return v * _sigmoid(v)
    return v


@cuda.jit(device=True, inline=True)
def derivative(a, activation):
    """act'(Z) from A = act(Z); for a slope-storing activation, a is the stored act'(Z) itself."""
    if activation == RELU:
        return float32(1.0) if a > 0 else float32(0.0)
    if activation == LEAKY_RELU:
        return float32(1.0) if a > 0 else float32(SLOPE)
    if activation == TANH:
        return float32(1.0) - a * a
    if activation == SIGMOID:
        return a * (float32(1.0) - a)
    if activation == ELU:
        return float32(1.0) if a > 0 else a + float32(1.0)
    if activation == SOFTPLUS:
        return -math.expm1(-a)
    if stores_slope(activation):
        return a
    return float32(1.0)


@cuda.jit(device=True, inline=True)
def keeps(key, layer, row, col, threshold):
    """cpu/dropout.py's keeps(): splitmix64 of (key, layer, row, col), kept if its top 24 bits >= threshold."""
    position = (np.uint64(key) + (np.uint64(row) << np.uint64(24))) & np.uint64(0x7FFFFFFFFFFFFFFF)
    x = (position ^ (np.uint64(layer) << np.uint64(56)) ^ np.uint64(col)) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(40)) >= np.uint64(threshold)


@cuda.jit(device=True, inline=True)
def keep(threshold):
    return float32(1.0 - threshold / 16777216.0)


@cuda.jit(device=True, inline=True)
def inv_keep(threshold):
    return float32(16777216.0 / (16777216.0 - threshold))


@cuda.jit(device=True, inline=True)
def forward_epilogue(v, activation, key, layer, row, col, threshold):
    """A hidden unit's output: act(z), then inverted dropout when threshold > 0."""
    v = activate(v, activation)
    if threshold > 0:
        if keeps(key, layer, row, col, threshold):
            v *= inv_keep(threshold)
        else:
            v = float32(0.0)
    return v


@cuda.jit(device=True, inline=True)
def backward_epilogue(v, stored, activation, key, layer, row, col, threshold):
    """BP2's last factor: v * act'(A) for a stored activation, or v * the stored act'(Z) of a slope-storing
    one (undoing dropout first: a dropped unit passes nothing, a kept one passes v / keep with act' taken
    at A = stored * keep)."""
    if threshold > 0:
        if keeps(key, layer, row, col, threshold):
            v *= inv_keep(threshold)
            if not stores_slope(activation):
                stored *= keep(threshold)
        else:
            return float32(0.0)
    return v * derivative(stored, activation)
