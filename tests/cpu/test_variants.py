"""The entry points (serial.run_steps, step.run) are compiled per variants.Uses, with the parts a network does not
use left out: such a variant compiles none of their code, computes the generic variant's numbers (the one the
rest of the suite runs: see conftest.py), and refuses (rather than silently skips) a part it was compiled
without. The parallel variants take ~15 s each to compile: one configuration runs on that path."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastbp
from conftest import rel_error
from fastbp.cpu import backend
from fastbp.cpu.dropout import Thresholds, threshold
from fastbp.options import ACTIVATIONS, LOSSES, OPTIMIZERS, LossSettings


@pytest.fixture(autouse=True)
def specialized(monkeypatch):
    """Networks built in these tests get their own variants, as users' do."""
    monkeypatch.setenv("FASTBP_SPECIALIZE", "1")


def small_trainer(**options):
    return fastbp.Trainer([5, 8, 3], loss="cross_entropy", seed=0, **options)


def run_one_step(t, settings=None, dropout=None):
    """One training step on 4 rows, through the entry point of the path the test chose (SERIAL_WORK)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 4)
    return t._backend.train_step(X, labels, None, np.arange(4), settings or t._optimizer_settings(), 0,
                                 dropout or t._dropout)


def test_the_variant_follows_the_configuration(monkeypatch):
    monkeypatch.setattr(backend, "COPY_WEIGHTS", False)
    assert small_trainer()._backend._uses == (False, False, False, False, LOSSES["cross_entropy"], True,
                                              OPTIMIZERS["adam"], False)
    monkeypatch.setattr(backend, "COPY_WEIGHTS", True)  # a BLAS that wants W^T copies (backend.copies_weights)
    uses = fastbp.Trainer([5, 8, 4, 3], activation=["relu", "silu"], loss="mse", dropout=0.1, max_norm=2.0,
                          decay_biases=False, weight_decay=0.1, optimizer="adamw")._backend._uses
    assert uses == (True, True, True, True, LOSSES["mse"], False, OPTIMIZERS["adamw"], True)
    assert small_trainer(input_dropout=0.2)._backend._uses.dropout
    assert not small_trainer(activation="tanh")._backend._uses.relu_only
    plain = fastbp.Trainer([5, 3])._backend._uses
    assert plain.relu_only  # no hidden layer: nothing but the output's identity
    assert not plain.copies  # and no delta goes back through a layer


PARTS = ["max_norm", "dropout", "input_dropout", "slopes", "loss", "not_relu", "optimizer", "copies"]


# On the parallel path, every part but the slopes (whose check needs a tanh network's variant: 15 s more
# to compile for the same check in the same kernel, dense_layer, as the serial path's) and the W^T copies
# (the parallel path makes none).
@pytest.mark.parametrize("part, path", [(part, "serial") for part in PARTS]
                         + [(part, "parallel") for part in PARTS if part not in ("slopes", "copies")])
def test_a_variant_refuses_a_part_it_was_compiled_without(monkeypatch, part, path):
    """Each part asked of a variant compiled without it (the backend's fields changed behind its back): a
    ValueError before any update, not a step that silently leaves the part out."""
    monkeypatch.setattr(backend, "SERIAL_WORK", 2 ** 62 if path == "serial" else 0)
    monkeypatch.setattr(backend, "COPY_WEIGHTS", False)
    t = small_trainer(activation="tanh" if part == "slopes" else "relu")
    before = t.state.params.copy()
    settings, dropout = None, None
    if part == "max_norm":
        settings = t._optimizer_settings()._replace(max_norm=1.0)
    elif part == "dropout":
        dropout = Thresholds(threshold(0.5), 0)
    elif part == "input_dropout":
        dropout = Thresholds(0, threshold(0.5))
    elif part == "slopes":
        t._backend.activations = np.array([ACTIVATIONS["gelu"], ACTIVATIONS["identity"]], np.int64)
    elif part == "optimizer":
        settings = t._optimizer_settings()._replace(kind=OPTIMIZERS["sgd"])
    elif part == "not_relu":
        t._backend.activations = np.array([ACTIVATIONS["tanh"], ACTIVATIONS["identity"]], np.int64)
    elif part == "copies":  # a workspace with a W^T copy of the output layer's weights
        monkeypatch.setattr(backend, "copy_beats_transposed", lambda m, n, k: True)
        t._backend._workspaces.get(4)
        t._backend._workspaces._items[4] = backend.Workspace(t.state.dims, t._backend.activations, 4, True)
    else:
        t._backend.loss = LossSettings(LOSSES["mse"], 1.0, 0.0)
    with pytest.raises(ValueError, match="compiled"):
        run_one_step(t, settings, dropout)
    np.testing.assert_array_equal(t.state.params, before)


# Between them, every value of every field of Uses (each configuration compiles a variant: a few seconds).
EQUIVALENT = {
    "relu_ce_adam": ([6, 9, 3], dict(loss="cross_entropy")),
    "relu_mse_nesterov_dropout": ([6, 9, 7, 2], dict(loss="mse", optimizer="sgd", lr=0.05, momentum=0.9,
                                                    nesterov=True, dropout=0.3)),
    "tanh_bce_adamw_masked_max_norm": ([6, 9, 2], dict(activation="tanh", loss="bce", optimizer="adamw",
                                                       weight_decay=0.1, decay_biases=False, max_norm=0.4)),
    "gelu_poisson_adagrad_input_dropout": ([6, 9, 2], dict(activation="gelu", loss="poisson", optimizer="adagrad",
                                                           lr=0.01, input_dropout=0.2)),
    "mixed_huber_rmsprop": ([6, 9, 7, 2], dict(activation=["silu", "elu"], loss="huber", huber_delta=0.5,
                                               optimizer="rmsprop", lr=0.01, momentum=0.5, max_norm=0.5,
                                               dropout=0.2)),
    "leaky_l1_sgd_clip": ([6, 9, 2], dict(activation="leaky_relu", loss="l1", optimizer="sgd", lr=0.05,
                                          clip_norm=0.5)),
}


# On the parallel path, the default network's variant (compiled for the refusals above already): every
# parallel variant is ~15 s of compiling, and the per-configuration code is the same as the serial path's.
@pytest.mark.parametrize("case, path", [(case, "serial") for case in EQUIVALENT] + [("relu_ce_adam", "parallel")])
def test_a_variant_computes_the_generic_variants_numbers(rng, monkeypatch, case, path):
    """A fit in chunks, predict and evaluate through a network's own variant and through the generic one:
    the same parameters, moments, losses and predictions to float32 rounding. Not always bit for bit: LLVM
    contracts and vectorizes the leaner code differently under the kernels' fastmath flags (adamw, adagrad,
    measured: 1 ulp here and there)."""
    sizes, options = EQUIVALENT[case]
    monkeypatch.setattr(backend, "SERIAL_WORK", 2 ** 62 if path == "serial" else 0)
    X = rng.standard_normal((45, sizes[0])).astype(np.float32)
    loss = options["loss"]
    y = (rng.integers(0, sizes[-1], 45) if loss == "cross_entropy"
         else rng.integers(0, 2, (45, sizes[-1])).astype(np.float32) if loss == "bce"
         else rng.random((45, sizes[-1])).astype(np.float32))
    runs = []
    for specialize in ("1", "0"):
        monkeypatch.setenv("FASTBP_SPECIALIZE", specialize)
        t = fastbp.Trainer(sizes, batch_size=8, seed=3, **options)
        assert (t._backend._uses.loss == -1) == (specialize == "0")
        history = t.fit(X, y, epochs=3, verbose=0).history
        runs.append((t, history["loss"], t.predict(X), t.evaluate(X, y)["loss"]))
    (a, *outputs_a), (b, *outputs_b) = runs
    for name in ("params", "moment1", "moment2"):
        assert rel_error(getattr(a.state, name), getattr(b.state, name)) < 1e-5, name
    for out_a, out_b in zip(outputs_a, outputs_b):
        assert rel_error(out_a, out_b) < 1e-5
    assert np.all(np.isfinite(a.state.params))


def test_the_same_step_with_and_without_an_unused_part():
    """A max-norm bound no weight reaches and a dropout rate of ~0 (threshold 0: no unit dropped) take the
    variants compiled with those parts: the same bits as the plain variant."""
    plain, bounded = small_trainer(), small_trainer(max_norm=1e6)
    assert bounded._backend._uses.max_norm and not plain._backend._uses.max_norm
    for t in (plain, bounded):
        run_one_step(t)
    np.testing.assert_array_equal(plain.state.params, bounded.state.params)


def test_a_plain_network_compiles_none_of_the_optional_parts(tmp_path):
    """On an empty kernel cache (its own NUMBA_CACHE_DIR), a first fit and predict of a ReLU network with
    cross_entropy compiles the code of that loss (with exp32, its training steps' exp) and of relu, and none
    of max-norm, dropout, the other activations, the other losses or the W^T copies where the BLAS wants none
    (each is compile time in a first run)."""
    script = textwrap.dedent("""
        import numpy as np
        import fastbp
        from fastbp.cpu import (activations, backend, blas, delta_backward, dense_forward, dropout, loss_delta,
                                max_norm, vector_math)
        backend.COPY_WEIGHTS = False  # a BLAS that runs delta products as fast without W^T copies
        rng = np.random.default_rng(0)
        X = rng.standard_normal((64, 6)).astype(np.float32)
        t = fastbp.Trainer([6, 8, 3], loss="cross_entropy", batch_size=16, seed=0)
        t.fit(X, rng.integers(0, 3, 64), epochs=1, verbose=0)
        t.predict(X)
        kernels = {"max_norm": max_norm.apply_max_norm_serial, "drop_block": dense_forward.drop_block,
                   "gather_row": dense_forward.gather_row, "keeps": dropout.keeps,
                   "undo_dropout": delta_backward.undo_dropout,
                   "activate_row_with_slope": activations.activate_row_with_slope,
                   "exp32": vector_math.exp32, "tanh32": vector_math.tanh32,
                   "multiply_derivative_into": delta_backward.multiply_derivative_into,
                   "multiply_by_derivative": activations.multiply_by_derivative,
                   "mse_row": loss_delta.mse_row, "bce_row": loss_delta.bce_row,
                   "poisson_row": loss_delta.poisson_row, "huber_row": loss_delta.huber_row,
                   "l1_row": loss_delta.l1_row,
                   "activate_row": activations.activate_row, "cross_entropy_row": loss_delta.cross_entropy_row,
                   "cross_entropy_rows": loss_delta.cross_entropy_rows, "relu_rows": dense_forward.relu_rows,
                   "transpose_into": blas.transpose_into}
        for name, kernel in kernels.items():
            print(name, len(kernel.signatures))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTBP_SPECIALIZE="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    compiled = {name: int(count) for name, count in (line.split() for line in out.stdout.splitlines())}
    for used in ("cross_entropy_row", "cross_entropy_rows", "exp32", "relu_rows"):  # what it uses
        assert compiled.pop(used) == 1, used
    assert compiled == dict.fromkeys(compiled, 0)
