"""exp and tanh in float32 that LLVM vectorizes: the activations' transcendental functions without a libm call.

A call to libm's tanhf or expf inside a loop keeps the loop scalar: a tanh layer of 150 x 100 took 130 us
a step on one core where relu took under 1 (measured here), and fastbp's MLPClassifier(activation="tanh")
ran slower than scikit-learn's, whose NumPy tanh is vectorized. These are plain arithmetic, compares and
selects, inlined into the caller's loop, so that loop becomes SIMD code.

    exp32(x)   Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for exp(r)
               (Cephes' expf coefficients) and n added to the result's exponent bits. exp(x) = inf above
               88.722832 (float32 overflows), 0 at or below -126 ln 2 (there the result would be denormal,
               which the kernels flush to zero anyway: denormals.py), NaN for NaN.
    tanh32(x)  Cephes' tanhf: an odd polynomial for |x| < 0.625, 1 - 2 / (exp32(2|x|) + 1) with the sign of
               x above; NaN for NaN.
Both are within 1 ulp of the correctly rounded float32 result on every input tried (one float32 in 61
across the whole range, 70 million: tests/cpu/test_vector_math.py checks a sparser sample), as libm's are.

Every lane computes both sides of a choice and a select keeps one (no branch in the loop).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# Fused multiply-adds, nothing more: reassociation would merge exp's two-part ln 2 (n ln2_hi + n ln2_lo)
# back into one rounded constant, 5 ulp off at x = 88 (measured). Not inline="always" (Numba would compile
# the inlined body with the caller's flags): LLVM inlines these small functions into the caller's loop,
# keeping their own flags, and vectorizes it.
_FLAGS = {"contract"}
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)  # ln 2 = _LN2_HI + _LN2_LO; n * _LN2_HI is exact for |n| < 2^9
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_HIGH = np.float32(88.72283172607422)  # the largest float32 whose exp rounds to a finite float32
# -126 ln 2 rounded down: at or below it exp(x) is under float32's smallest normal number.
_EXP_LOW = np.float32(-87.3365479)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the low 32 bits of the integer `bits` (a reinterpretation, not a
    conversion; Numba widens int32 arithmetic to int64, hence the truncation)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def _bits_of_float32(typingctx, value):
    """The IEEE bits of the float32 `value` as an int32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@njit(cache=True, nogil=True, fastmath=_FLAGS)
def _exp_reduced(r):
    """exp(r) for |r| <= ln 2 / 2 (Cephes' expf polynomial)."""
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return p * (r * r) + r + np.float32(1.0)


@njit(cache=True, nogil=True, fastmath=_FLAGS)
def exp32(x):
    """exp(x) for float32 x (see the module's docstring)."""
    # Reduced on a clamped copy (NaN taken as 0), so that n is always a valid integer; the selects below
    # give the out-of-range and NaN results.
    xc = min(max(x, _EXP_LOW), _EXP_HIGH) if x == x else np.float32(0.0)
    n = np.floor(xc * _LOG2E + np.float32(0.5))
    r = xc - n * _LN2_HI - n * _LN2_LO
    # exp(r) 2^n by adding n to exp(r)'s exponent field: integer arithmetic, which the callers' fastmath
    # flags cannot reorder (2^n as a float would overflow at n = 128, where the product is still finite).
    # Within the clamped range the sum is a normal number's exponent, 1 to 254: r >= 0 where n = -126,
    # r <= 0 where n = 128.
    y = _float32_from_bits(_bits_of_float32(_exp_reduced(r)) + (np.int32(n) << 23))
    y = np.float32(np.inf) if x > _EXP_HIGH else y
    y = np.float32(0.0) if x <= _EXP_LOW else y
    return y if x == x else x


@njit(cache=True, nogil=True, fastmath=_FLAGS)
def tanh32(x):
    """tanh(x) for float32 x (see the module's docstring)."""
    z = x * x
    p = np.float32(-5.70498872745e-3)
    p = p * z + np.float32(2.06390887954e-2)
    p = p * z - np.float32(5.37397155531e-2)
    p = p * z + np.float32(1.33314422036e-1)
    p = p * z - np.float32(3.33332819422e-1)
    small = p * z * x + x
    a = abs(x)
    large = np.float32(1.0) - np.float32(2.0) / (exp32(a + a) + np.float32(1.0))  # 1 once exp(2|x|) is inf
    large = large if x >= 0 else -large
    return small if a < np.float32(0.625) else large  # NaN: a < 0.625 is False, and large is NaN
