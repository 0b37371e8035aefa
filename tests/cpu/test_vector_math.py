"""vector_math's exp32 and tanh32 against float64 NumPy, rounded: within 1 ulp over a sample of every
float32 range, and exactly right at the special values and the ends of exp's range."""
import numpy as np
import pytest
from numba import njit

from fastbp.cpu._jit import FASTMATH
from fastbp.cpu.vector_math import exp32, tanh32


# Compiled with the kernels' own flags, as the activations call them.
@njit(fastmath=FASTMATH, error_model="numpy")
def _exp_all(x, out):
    for i in range(x.size):
        out[i] = exp32(x[i])


@njit(fastmath=FASTMATH, error_model="numpy")
def _tanh_all(x, out):
    for i in range(x.size):
        out[i] = tanh32(x[i])


def _ordered(bits):
    """float32 bit patterns -> integers in the floats' order, so that a difference counts ulps."""
    as_int = bits.astype(np.int64)
    return np.where(as_int < 0, -(as_int & 0x7FFFFFFF), as_int)


def _ulps(got, want):
    return np.abs(_ordered(got.view(np.int32)) - _ordered(want.view(np.int32)))


def _sample():
    """Every 1009th float32 bit pattern that is finite (4.3 million, every binade of both signs)."""
    x = np.arange(0, 2 ** 32, 1009, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return x[np.isfinite(x)]


@pytest.mark.parametrize("name, ours, exact, low, high", [
    ("exp", _exp_all, np.exp, -87.33654, 88.722832),  # normal results
    ("tanh", _tanh_all, np.tanh, -np.inf, np.inf),
])
def test_within_one_ulp_of_the_rounded_result(name, ours, exact, low, high):
    x = _sample()
    x = x[(x > low) & (x < high)]
    got = np.empty_like(x)
    ours(x, got)
    with np.errstate(over="ignore"):
        want = exact(x.astype(np.float64)).astype(np.float32)
    ulps = _ulps(got, want)
    assert ulps.max() <= 1, f"{name}({x[ulps.argmax()]!r}) is {ulps.max()} ulp off"


def _exp(values):
    x = np.asarray(values, np.float32)
    out = np.empty_like(x)
    _exp_all(x, out)
    return out


def _tanh(values):
    x = np.asarray(values, np.float32)
    out = np.empty_like(x)
    _tanh_all(x, out)
    return out


def test_special_values_and_range_ends():
    top = np.float32(88.72283172607422)  # the largest float32 whose exp is finite in float32
    low = np.float32(-87.3365478515625)  # -126 ln 2 rounded down: exp below the smallest normal number
    with np.errstate(over="ignore"):
        assert np.isfinite(np.exp(np.float64(top)).astype(np.float32))
        assert np.exp(np.float64(np.nextafter(top, np.float32(np.inf)))).astype(np.float32) == np.inf
    got = _exp([np.nan, np.inf, -np.inf, 0.0, -0.0, top, np.nextafter(top, np.float32(np.inf)), low,
                np.nextafter(low, np.float32(0)), -200.0])
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == 0 and got[3] == 1 and got[4] == 1
    assert np.isfinite(got[5]) and _ulps(got[5:6], np.exp(np.float64(top)).astype(np.float32)[None]) <= 1
    assert got[6] == np.inf
    assert got[7] == 0  # would be denormal: flushed, as the kernels flush denormals
    assert got[8] >= np.finfo(np.float32).tiny  # the first input above: a normal number, not garbage bits
    assert got[9] == 0
    t = _tanh([np.nan, np.inf, -np.inf, 0.0, 1e-30, -1e-30, 0.625, -0.625, 9.0, 50.0, -50.0])
    assert np.isnan(t[0]) and t[1] == 1 and t[2] == -1 and t[3] == 0
    assert t[4] == np.float32(1e-30) and t[5] == np.float32(-1e-30)  # no underflow to 0 for tiny inputs
    assert t[6] == -t[7] and 0.55 < t[6] < 0.56
    assert t[9] == 1 and t[10] == -1 and t[8] == np.float32(np.tanh(9.0))
