"""Micro-batches (Trainer(micro_batch=...), memory_budget): a step cut into chunks is the unchunked step.

Each case trains two Trainers from the same seed on the same batches, one unchunked (the fused compiled
step) and one in micro-batches (gradients summed on the host, then one update), and compares every
parameter; both are checked against the float64 reference in tests/test_training_loop.py and
tests/cpu, so equality here carries that over.
"""
import warnings

import numpy as np
import pytest

import fastbp
from conftest import LOSSES, make_targets

OPTIMIZERS = ["sgd", "adam", "adamw", "adagrad", "rmsprop"]


def flat(t):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in t.params])


def assert_same_training(a, b, bound=1e-5):
    """Every parameter within bound x the largest one's magnitude (measured here: 1e-8 to 3e-7)."""
    pa, pb = flat(a), flat(b)
    assert np.abs(pa - pb).max() <= bound * np.abs(pb).max()
    assert a.step_count == b.step_count


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("loss", LOSSES)
def test_micro_batched_steps_equal_unchunked_ones(rng, loss, optimizer):
    """Every loss x optimizer, with dropout and gradient clipping, batches of 50 in chunks of 7 (the last
    chunk of each batch shorter, the epoch's last batch shorter still)."""
    sizes = [5, 33, 3]
    X = rng.standard_normal((130, sizes[0])).astype(np.float32)
    y = make_targets(rng, loss, 130, sizes[-1])
    options = dict(sizes=sizes, loss=loss, optimizer=optimizer, lr=0.01, batch_size=50, seed=1, dropout=0.2,
                   clip_norm=0.5, momentum=0.9 if optimizer in ("sgd", "rmsprop") else 0.0)
    whole, chunked = fastbp.Trainer(**options), fastbp.Trainer(**options, micro_batch=7)
    h_whole = whole.fit(X, y, epochs=3, verbose=0)
    h_chunked = chunked.fit(X, y, epochs=3, verbose=0)
    # Adagrad's first steps move each parameter by about lr x sign(g): a gradient entry that is a small
    # difference of large terms keeps only a few correct bits, and the update carries them at lr's scale
    # (measured: 2.9e-5 for mse, against 1e-8 to 3e-7 for every other pair).
    assert_same_training(chunked, whole, 1e-4 if optimizer == "adagrad" else 1e-5)
    np.testing.assert_allclose(h_chunked.history["loss"], h_whole.history["loss"], rtol=1e-5)
    if loss in ("cross_entropy", "bce"):
        np.testing.assert_allclose(h_chunked.history["accuracy"], h_whole.history["accuracy"], rtol=1e-12)


def test_micro_batches_with_one_activation_per_layer(rng):
    """Stored slopes (gelu, silu) and slopes from A (softplus) in micro-batches of 7 under dropout, input
    dropout and max-norm (applied after the update the micro-batches' summed gradient makes)."""
    sizes = [5, 33, 9, 7, 3]
    X = rng.standard_normal((130, sizes[0])).astype(np.float32)
    y = rng.integers(0, 3, 130)
    options = dict(sizes=sizes, activation=["gelu", "softplus", "silu"], loss="cross_entropy", lr=0.01,
                   batch_size=50, seed=1, dropout=0.2, input_dropout=0.1, max_norm=1.0)
    whole, chunked = fastbp.Trainer(**options), fastbp.Trainer(**options, micro_batch=7)
    whole.fit(X, y, epochs=3, verbose=0)
    chunked.fit(X, y, epochs=3, verbose=0)
    assert_same_training(chunked, whole)


def test_micro_batches_through_the_per_thread_pipeline(rng):
    """A narrow network over long batches: the unchunked step and 600-row chunks both take the pipeline,
    200-row chunks the layer-at-a-time kernels."""
    sizes = [6, 19, 19, 3]
    X = rng.standard_normal((2100, sizes[0])).astype(np.float32)
    y = rng.integers(0, 3, 2100)
    options = dict(sizes=sizes, loss="cross_entropy", lr=0.01, batch_size=1061, seed=2, dropout=0.1)
    whole = fastbp.Trainer(**options)
    whole.fit(X, y, epochs=2, verbose=0)
    for micro in (600, 200):
        chunked = fastbp.Trainer(**options, micro_batch=micro)
        chunked.fit(X, y, epochs=2, verbose=0)
        assert_same_training(chunked, whole)


def test_gradients_in_micro_batches_equal_the_whole_batchs(rng):
    X = rng.standard_normal((77, 4)).astype(np.float32)
    y = rng.standard_normal((77, 2)).astype(np.float32)
    whole = fastbp.Trainer([4, 9, 2], seed=0, dropout=0.3)
    chunked = fastbp.Trainer([4, 9, 2], seed=0, dropout=0.3, micro_batch=10)
    for training in (False, True):
        loss_w, grads_w = whole.gradients(X, y, training=training)
        loss_c, grads_c = chunked.gradients(X, y, training=training)
        assert loss_c == pytest.approx(loss_w, rel=1e-6)
        for (dW_c, db_c), (dW_w, db_w) in zip(grads_c, grads_w):
            np.testing.assert_allclose(dW_c, dW_w, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(db_c, db_w, rtol=1e-5, atol=1e-7)


def test_a_batch_over_the_memory_budget_is_micro_batched_and_said_once(rng):
    X = rng.standard_normal((300, 8)).astype(np.float32)
    y = rng.integers(0, 4, 300)
    options = dict(sizes=[8, 64, 4], loss="cross_entropy", batch_size=300, seed=4)
    whole = fastbp.Trainer(**options)
    whole.fit(X, y, epochs=2, verbose=0)
    one_row = 4 * (8 + 9 + 65 + 4) + 16  # workspaces.batch_bytes for one row
    limited = fastbp.Trainer(**options, memory_budget=100 * one_row)
    with pytest.warns(ResourceWarning, match="micro-batches of 100 rows") as caught:
        limited.fit(X, y, epochs=2, verbose=0)
    assert len([w for w in caught if issubclass(w.category, ResourceWarning)]) == 1
    assert_same_training(limited, whole)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per Trainer: not again
        limited.step(X, y)


def test_micro_batch_must_be_a_positive_integer():
    for bad, error in ((0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="micro_batch"):
            fastbp.Trainer([2, 2], micro_batch=bad)
    with pytest.raises(ValueError, match="memory_budget"):
        fastbp.Trainer([2, 2], memory_budget=0)


def test_micro_batches_on_the_cuda_backend(rng):
    pytest.importorskip("numba.cuda")
    X = rng.standard_normal((45, 6)).astype(np.float32)
    y = rng.integers(0, 3, 45)
    options = dict(sizes=[6, 10, 3], loss="cross_entropy", lr=0.01, batch_size=20, seed=3, dropout=0.2)
    cpu = fastbp.Trainer(**options)
    cpu.fit(X, y, epochs=2, verbose=0)
    gpu = fastbp.Trainer(**options, device="cuda", micro_batch=6)
    gpu.fit(X, y, epochs=2, verbose=0)
    assert_same_training(gpu, cpu, 1e-5)


@pytest.mark.parametrize("loss", LOSSES)
def test_sample_weighted_micro_batches_equal_unchunked_steps(rng, loss):
    """Chunks of a weighted batch add up by their weights' sums, not their rows (a chunk of zero weight
    adds nothing), so chunked training, evaluate and gradients are the unchunked ones."""
    sizes = [5, 33, 3]
    X = rng.standard_normal((130, sizes[0])).astype(np.float32)
    y = make_targets(rng, loss, 130, sizes[-1])
    w = rng.random(130) * 2
    w[14:21] = 0.0  # a whole chunk of zero weight
    options = dict(sizes=sizes, loss=loss, optimizer="sgd", lr=0.05, momentum=0.9, batch_size=50, seed=1)
    whole, chunked = fastbp.Trainer(**options), fastbp.Trainer(**options, micro_batch=7)
    h_whole = whole.fit(X, y, epochs=2, verbose=0, sample_weight=w, shuffle=False)
    h_chunked = chunked.fit(X, y, epochs=2, verbose=0, sample_weight=w, shuffle=False)
    assert_same_training(chunked, whole)
    np.testing.assert_allclose(h_chunked.history["loss"], h_whole.history["loss"], rtol=1e-5)
    assert chunked.evaluate(X, y, sample_weight=w)["loss"] == pytest.approx(
        whole.evaluate(X, y, sample_weight=w)["loss"], rel=1e-5)
    assert whole.evaluate(X, y, sample_weight=w)["loss"] != pytest.approx(whole.evaluate(X, y)["loss"], rel=1e-3)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_without_biases_in_micro_batches(rng, optimizer):
    """decay_biases=False takes its own update entry point (cpu/step.run_update_masked), after the fused
    gradient or after the chunks' summed gradient alike."""
    X = rng.standard_normal((100, 5)).astype(np.float32)
    y = rng.integers(0, 3, 100)
    options = dict(sizes=[5, 17, 3], loss="cross_entropy", optimizer=optimizer, lr=0.05, weight_decay=0.3,
                   decay_biases=False, batch_size=50, seed=2)
    whole, chunked = fastbp.Trainer(**options), fastbp.Trainer(**options, micro_batch=9)
    whole.fit(X, y, epochs=2, verbose=0)
    chunked.fit(X, y, epochs=2, verbose=0)
    assert_same_training(chunked, whole)
    decayed = fastbp.Trainer(**dict(options, decay_biases=True))
    decayed.fit(X, y, epochs=2, verbose=0)
    assert not np.allclose(flat(decayed), flat(whole), rtol=1e-4)
