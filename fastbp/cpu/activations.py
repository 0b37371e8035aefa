"""The hidden activations, elementwise in float32, and their derivatives: the math the forward kernels apply
to a layer's products and the backward kernels multiply the propagated delta by.

Derivatives, and where they come from (reference.py states each in terms of Z):
    identity, relu, leaky_relu, tanh, sigmoid, elu, softplus:  a function of the output A = act(Z), so only A
        is kept (relu: A > 0; leaky: 1 or slope; tanh: 1 - A^2; sigmoid: A (1 - A); elu: 1 or A + 1;
        softplus: 1 - exp(-A) = sigmoid(Z))
    gelu, gelu_tanh, silu:  not monotonic, so A does not determine Z: the forward pass stores act'(Z) in a
        slope block beside A (slope_offsets) and the backward pass multiplies by it.
Formulas chosen so that no finite Z gives a NaN or loses its precision to cancellation:
    gelu       Z Phi(Z), Phi(Z) = erfc(-Z / sqrt 2) / 2 (no 1 + erf(...) cancellation for Z < 0);
               act' = Phi(Z) + Z exp(-Z^2 / 2) / sqrt(2 pi)
    gelu_tanh  0.5 Z (1 + tanh(u)) = Z sigmoid(2u), u = k (Z + c Z^3); u and act' are taken at Z clamped to
               [-12, 12] (beyond it sigmoid(2u) is exactly 0 or 1 in float32, and Z^3 would overflow)
    silu       Z sigmoid(Z); act' = sigmoid(Z) + Z sigmoid(Z) sigmoid(-Z)
    softplus   log1p(exp(Z)), Z itself above 20 (PyTorch's threshold); elu: expm1(Z) for Z <= 0
"""
import math

import numpy as np
from numba import njit

from ._jit import (ELU, FASTMATH, GELU, GELU_TANH, IDENTITY, LEAKY_RELU, RELU, SIGMOID, SILU, SLOPE, SOFTPLUS,
                   TANH)
from .inline_pipeline import InliningCompiler
from .vector_math import exp32, tanh32

KNOWN = (IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, ELU, SOFTPLUS, GELU, GELU_TANH, SILU)
_INV_SQRT2 = np.float32(1.0 / math.sqrt(2.0))
_INV_SQRT_2PI = np.float32(1.0 / math.sqrt(2.0 * math.pi))
_GELU_K = np.float32(math.sqrt(2.0 / math.pi))
_GELU_C = np.float32(0.044715)


@njit(cache=True, nogil=True, inline="always")
def stores_slope(activation):
    """Whether act'(Z) is stored in the forward pass (it is not a function of A)."""
    return activation == GELU or activation == GELU_TANH or activation == SILU


@njit(cache=True, nogil=True, pipeline_class=InliningCompiler)
def slope_offsets(dims, activations, n, start):
    """(L + 1,) int64: layer l's slope block, act'(Z_l) as (n, d_{l+1}) row-major, is [off[l], off[l + 1]),
    empty unless layer l is hidden and stores_slope(activations[l]); off[0] = start (the blocks follow the
    activation blocks in the same workspace), off[L] the workspace's total length."""
    n_layers = dims.size - 1
    off = np.empty(n_layers + 1, np.int64)
    off[0] = start
    for l in range(n_layers):
        hidden = l < n_layers - 1
        off[l + 1] = off[l] + (n * dims[l + 1] if hidden and stores_slope(activations[l]) else 0)
    return off


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _sigmoid(v):
    """1 / (1 + exp(-v)) for v >= 0, e / (1 + e) with e = exp(v) below (no overflow); both sides computed
    and one selected, so that a loop of these vectorizes (vector_math.py)."""
    e = exp32(-abs(v))
    one_plus_e = np.float32(1.0) + e
    return np.float32(1.0) / one_plus_e if v >= 0 else e / one_plus_e


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _sigmoid_product(v):
    """sigmoid(v) sigmoid(-v) = e / (1 + e)^2 with e = exp(-|v|): no 1 - sigmoid(v) cancellation."""
    e = exp32(-abs(v))
    return e / ((np.float32(1.0) + e) * (np.float32(1.0) + e))


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _gelu_with_slope(v):
    phi = np.float32(0.5) * math.erfc(-v * _INV_SQRT2)
    return v * phi, phi + v * np.exp(np.float32(-0.5) * v * v) * _INV_SQRT_2PI


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _gelu_tanh_with_slope(v):
    w = min(max(v, np.float32(-12.0)), np.float32(12.0))
    du = _GELU_K * (np.float32(1.0) + np.float32(3.0) * _GELU_C * w * w)
    two_u = np.float32(2.0) * _GELU_K * (w + _GELU_C * w * w * w)
    s = _sigmoid(two_u)
    return v * s, s + w * np.float32(2.0) * _sigmoid_product(two_u) * du


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _silu_with_slope(v):
    s = _sigmoid(v)
    return v * s, s + v * _sigmoid_product(v)


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False, pipeline_class=InliningCompiler)
def activate_row_with_slope(row, slope, activation):
    """In place on row (k,) float32: act(row), and slope (k,) float32 <- act'(row) for the slope-storing
    activations. The choice of activation is made once per row, outside the loops, so that each loop
    vectorizes (gelu's erfc is a libm call: its loop stays scalar)."""
    if activation == GELU:
        for j in range(row.size):
            row[j], slope[j] = _gelu_with_slope(row[j])
    elif activation == GELU_TANH:
        for j in range(row.size):
            row[j], slope[j] = _gelu_tanh_with_slope(row[j])
    else:  # SILU
        for j in range(row.size):
            row[j], slope[j] = _silu_with_slope(row[j])


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False, pipeline_class=InliningCompiler)
def activate_row(row, activation):
    """In place on row (k,) float32: act(row) for the activations whose derivative is taken from A."""
    if activation == RELU:
        for j in range(row.size):
            row[j] = max(row[j], np.float32(0.0))
    elif activation == LEAKY_RELU:
        for j in range(row.size):
            v = row[j]
            row[j] = v if v > 0 else np.float32(SLOPE) * v
    elif activation == TANH:
        for j in range(row.size):
            row[j] = tanh32(row[j])
    elif activation == SIGMOID:
        for j in range(row.size):
            row[j] = _sigmoid(row[j])
    elif activation == ELU:
        for j in range(row.size):
            v = row[j]
            row[j] = v if v > 0 else math.expm1(v)
    elif activation == SOFTPLUS:
        for j in range(row.size):
            v = row[j]
            row[j] = v if v > np.float32(20.0) else math.log1p(np.exp(v))


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def multiply_by_derivative(a, d, activation):
    """a[j] <- d[j] * act'(Z_j) with A = a[j] = act(Z_j), for the activations whose derivative is taken from
    A (the others' is stored: multiply by their slope block instead). a, d: (k,) float32."""
    if activation == RELU:
        for j in range(a.size):
            a[j] = d[j] if a[j] > 0 else np.float32(0.0)
    elif activation == LEAKY_RELU:
        for j in range(a.size):
            a[j] = d[j] if a[j] > 0 else d[j] * np.float32(SLOPE)
    elif activation == TANH:
        for j in range(a.size):
            a[j] = d[j] * (np.float32(1.0) - a[j] * a[j])
    elif activation == SIGMOID:
        for j in range(a.size):
            a[j] = d[j] * (a[j] * (np.float32(1.0) - a[j]))
    elif activation == ELU:
        for j in range(a.size):
            a[j] = d[j] if a[j] > 0 else d[j] * (a[j] + np.float32(1.0))
    elif activation == SOFTPLUS:
        for j in range(a.size):
            a[j] = -d[j] * math.expm1(-a[j])
    else:
        for j in range(a.size):
            a[j] = d[j]
