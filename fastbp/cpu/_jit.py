"""Compilation settings and the integer codes shared by every CPU kernel."""
from ..options import ACTIVATIONS, LEAKY_SLOPE, LOSSES, OPTIMIZERS

# contract: fused multiply-add; reassoc: lets LLVM vectorize reductions (the order is fixed at compile
# time, so results stay deterministic); nsz: ignore the sign of zero. No nnan/ninf: a NaN must
# propagate so that divergence is seen, never silently turned into a number.
FASTMATH = {"contract", "reassoc", "nsz"}

# Module-level ints are compile-time constants inside @njit code.
IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID = (ACTIVATIONS[k] for k in
                                             ("identity", "relu", "leaky_relu", "tanh", "sigmoid"))
MSE, CROSS_ENTROPY, BCE, POISSON = (LOSSES[k] for k in ("mse", "cross_entropy", "bce", "poisson"))
SGD, ADAM, ADAMW, ADAGRAD, RMSPROP = (OPTIMIZERS[k] for k in ("sgd", "adam", "adamw", "adagrad", "rmsprop"))
SLOPE = LEAKY_SLOPE
