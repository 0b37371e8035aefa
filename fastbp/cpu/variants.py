"""What a network's training uses, for compiling the entry points per configuration.

The entry points (serial.run_steps, one thread; step.run, parallel) inline every kernel, and each kernel
branches on the activation, the loss, the optimizer, dropout and max-norm. Branches on run-time values
compile every case, and a case a network never takes is compile time in its first run all the same. So
each entry point is compiled once per Uses (serial.run_steps_for, step.run_for): its fields are constants
of the compiled function, and Numba's dead-branch pruning removes the untaken cases before it types and
compiles them (the flags travel as arguments through the inlined kernels: dense_forward.dense_layer,
delta_backward.propagate_delta, loss_delta.loss_and_delta, optimizers.optimizer_update). A variant
refuses, with a ValueError, a part it was compiled without, rather than skipping it. (The per-thread
pipeline, step.run_pipeline, and the update-only entry points stay generic: fewer networks take them.)

The generic variant (generic_uses) compiles every case, with the loss and the optimizer read at run time:
one compile serves every configuration. A process that trains many configurations (a search over
activations, losses and optimizers; this project's test suite) sets FASTBP_SPECIALIZE=0 to compile it
alone, instead of one variant for each configuration. Both compute the same numbers to float32 rounding
(the variants only leave out code that a configuration never runs), though not always the same bits:
LLVM contracts and vectorizes the leaner code differently under the kernels' fastmath flags
(tests/cpu/test_variants.py). A Trainer uses one variant for all of its passes, so its steps,
chunked or not, and its predictions stay bit for bit reproducible.

Measured on an empty kernel cache, interleaved with the code before the variants (README, "Small
networks"): a new process's import, first fit and predict of [64, 100, 10] (serial path) 6.4-6.6 s
against 8.2-8.7 s; of [784, 800, 10] with batch 128 (parallel path) 17.5-20 s against 25-26 s.
"""
import os
from typing import NamedTuple

import numpy as np

from ..options import ACTIVATIONS, OPTIMIZERS
from .activations import stores_slope

ANY = -1  # a loss or optimizer code read at run time (the generic variant)


class Uses(NamedTuple):
    masked_decay: bool  # weight decay only where decay_mask is True (Trainer(decay_biases=False), estimators)
    max_norm: bool      # the max-norm constraint after every update (settings.max_norm > 0)
    dropout: bool       # dropout on the hidden layers or the input features (either threshold > 0)
    slopes: bool        # a hidden activation that stores act'(Z) (gelu, gelu_tanh, silu: activations.py)
    loss: int           # the loss code (options.LOSSES), or ANY: only that loss's row function is compiled
    relu_only: bool     # every hidden layer is relu (the default): relu's code alone, not every activation's
    optimizer: int      # the optimizer code (options.OPTIMIZERS), or ANY: only its update rule is compiled
    copies: bool        # delta products may read copies of W^T (step.py: where the BLAS runs them faster)


def specialize():
    """Whether networks get their own variant: unless the environment sets FASTBP_SPECIALIZE=0."""
    return os.environ.get("FASTBP_SPECIALIZE", "1") != "0"


def generic_uses(masked_decay):
    """The variant that serves every configuration (with this kind of weight decay)."""
    return Uses(masked_decay=masked_decay, max_norm=True, dropout=True, slopes=True, loss=ANY, relu_only=False,
                optimizer=ANY, copies=True)


def uses_of(config, activations, loss, decay_mask, copies):
    """The Uses of a network: its options.Config, activation codes (L,) int64 (the last, the output's, is
    identity), options.LossSettings and optimizers.decay_masks array, and whether its BLAS wants W^T copies
    (backend.copies_weights(): a network with a hidden layer then gets their code); the generic variant when
    not specialize()."""
    if not specialize():
        return generic_uses(bool(decay_mask.size))
    hidden = activations[:-1]
    return Uses(masked_decay=bool(decay_mask.size), max_norm=bool(config.max_norm),
                dropout=config.dropout > 0 or config.input_dropout > 0,
                slopes=any(stores_slope(code) for code in hidden), loss=int(loss.kind),
                relu_only=bool(np.all(hidden == ACTIVATIONS["relu"])), optimizer=OPTIMIZERS[config.optimizer],
                copies=bool(copies) and hidden.size > 0)
