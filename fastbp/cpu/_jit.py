"""Compilation settings and the integer codes shared by every CPU kernel."""
from ..options import ACTIVATIONS, LEAKY_SLOPE, LOSSES, OPTIMIZERS

# contract: fused multiply-add; reassoc: lets LLVM vectorize reductions (the order is fixed at compile
# time, so results stay deterministic); nsz: ignore the sign of zero. No nnan/ninf: a NaN must
# propagate so that divergence is seen, never silently turned into a number.
FASTMATH = {"contract", "reassoc", "nsz"}
# For the compiled entry points (the kernels inlined into them take their caller's model): "numpy" divides
# as IEEE does, where Numba's default "python" tests every float division for a zero divisor to raise
# ZeroDivisionError, and that test keeps any loop with a division from vectorizing (measured here: the
# Adam pass at 2.0 ns per parameter, 0.3 with "numpy"). No kernel divides by a value that can be 0 (every
# divisor is a count, a weight total clamped to 1, or has eps added), so no result changes.
ERROR_MODEL = "numpy"

# Module-level ints are compile-time constants inside @njit code.
IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, ELU, SOFTPLUS, GELU, GELU_TANH, SILU = (
    ACTIVATIONS[k] for k in ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "elu", "softplus", "gelu",
                             "gelu_tanh", "silu"))
MSE, CROSS_ENTROPY, BCE, POISSON, HUBER, L1 = (LOSSES[k] for k in ("mse", "cross_entropy", "bce", "poisson", "huber",
                                                                    "l1"))
SGD, ADAM, ADAMW, ADAGRAD, RMSPROP = (OPTIMIZERS[k] for k in ("sgd", "adam", "adamw", "adagrad", "rmsprop"))
SLOPE = LEAKY_SLOPE
