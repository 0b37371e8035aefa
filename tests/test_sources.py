"""Data that is not an array in memory (fastbp/sources.py): memory-mapped files and streams of batches."""
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import sources
from fastbp.callbacks import ModelCheckpoint
from test_concurrency import run_script


def flat(t):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in t.params])


def classification(rng, n=300, width=6, classes=3):
    X = rng.standard_normal((n, width))  # float64, as files usually hold
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.8)
    return X, y


def saved(tmp_path, name, array):
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    return np.load(path, mmap_mode="r")


# ---- memory-mapped arrays ----

def test_memory_mapped_data_trains_evaluates_and_predicts_as_the_same_data_in_memory(rng, tmp_path):
    X, y = classification(rng)
    X_map, y_map = saved(tmp_path, "X", X), saved(tmp_path, "y", y)
    assert isinstance(X_map, np.memmap) and sources.wants_on_demand(X_map, None)
    options = dict(sizes=[6, 16, 3], loss="cross_entropy", batch_size=64, seed=0, dropout=0.1)
    in_memory, mapped = fastbp.Trainer(**options), fastbp.Trainer(**options)
    h_memory = in_memory.fit(X, y, epochs=2, validation_split=0.2, verbose=0)
    h_mapped = mapped.fit(X_map, y_map, epochs=2, validation_split=0.2, verbose=0)
    np.testing.assert_array_equal(flat(mapped), flat(in_memory))  # the same batches through the same kernels
    assert h_mapped.history == h_memory.history
    assert mapped.evaluate(X_map, y_map) == pytest.approx(in_memory.evaluate(X, y), rel=1e-12)
    np.testing.assert_array_equal(mapped.predict(X_map), in_memory.predict(X))
    loss_m, grads_m = mapped.gradients(X_map, y_map)
    loss_i, grads_i = in_memory.gradients(X, y)
    assert loss_m == pytest.approx(loss_i, rel=1e-6)
    np.testing.assert_allclose(grads_m[0][0], grads_i[0][0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float16, np.int16, np.uint8, np.float32])
def test_memory_mapped_data_of_any_real_dtype(rng, tmp_path, dtype):
    X = (rng.standard_normal((100, 4)) * 10).astype(dtype)
    y = rng.standard_normal((100, 2)).astype(np.float32)
    t = fastbp.Trainer([4, 8, 2], seed=0)
    reference = fastbp.Trainer([4, 8, 2], seed=0)
    t.fit(saved(tmp_path, "X", X), saved(tmp_path, "y", y), epochs=1, batch_size=30, verbose=0)
    reference.fit(X.astype(np.float32), y, epochs=1, batch_size=30, verbose=0)
    np.testing.assert_array_equal(flat(t), flat(reference))


def test_checks_of_a_memory_mapped_array_run_in_chunks_before_training_and_name_the_first_bad_row(
        rng, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHECK_CHUNK_BYTES", 4096)  # 85 rows of 6 float64 per chunk: many chunks
    X, y = classification(rng, n=1000)
    t = fastbp.Trainer([6, 8, 3], loss="cross_entropy", seed=0)
    before = flat(t)
    bad_X = X.copy()
    bad_X[777, 4] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or infinity \(first at index \(777, 4\)\)"):
        t.fit(saved(tmp_path, "bad_X", bad_X), saved(tmp_path, "y", y), verbose=0)
    bad_y = y.copy()
    bad_y[901] = 3
    with pytest.raises(ValueError, match=r"label 3 out of range \(at row 901\)"):
        t.fit(saved(tmp_path, "X", X), saved(tmp_path, "bad_y", bad_y), verbose=0)
    big = X.copy()
    big[640, 0] = 1e39  # beyond float32
    with pytest.raises(ValueError, match=r"converted to float32\) contains NaN or infinity \(first at index \(640, 0\)"):
        t.fit(saved(tmp_path, "big", big), saved(tmp_path, "y", y), verbose=0)
    np.testing.assert_array_equal(flat(t), before)  # nothing trained
    assert t.step_count == 0


MEMORY_SCRIPT = """
import resource, sys, threading, time
import numpy as np
import fastbp

def anon_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

path, rows = sys.argv[1], int(sys.argv[2])
X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, 64))
for start in range(0, rows, 100_000):  # written in pieces: no copy of it in memory
    block = X[start:start + 100_000]
    block[:] = np.random.default_rng(start).standard_normal(block.shape)
X.flush()
del X, block
y = np.zeros(rows, np.int64)
y[::3] = 1
t = fastbp.Trainer([64, 32, 2], loss="cross_entropy", batch_size=4096, seed=0)
t.fit(np.random.default_rng(0).standard_normal((5000, 64)), y[:5000], verbose=0)  # compiled, warm
X = np.load(path, mmap_mode="r")
baseline = anon_bytes()
# Anonymous memory may grow by the budget below and no more: the file's pages are not anonymous.
budget = 120 * 2 ** 20
resource.setrlimit(resource.RLIMIT_DATA, (baseline + budget + 400 * 2 ** 20,) * 2)
peak, running = [baseline], True
def watch():
    while running:
        peak.append(anon_bytes())
        time.sleep(0.005)
watcher = threading.Thread(target=watch)
watcher.start()
history = t.fit(X, y, epochs=1, verbose=0)
loss, grads = t.gradients(X, y)  # a read of the whole file, a piece at a time, as fit's
running = False
watcher.join()
print("file MB", rows * 64 * 8 // 2 ** 20, "anon growth MB", (max(peak) - baseline) // 2 ** 20,
      "loss", history.history["loss"][0], "gradient loss", loss)
assert max(peak) - baseline < budget, (max(peak) - baseline) // 2 ** 20
"""


def test_an_epoch_over_a_memory_mapped_file_keeps_anonymous_memory_bounded(tmp_path):
    """A 585 MB float64 file, larger than the 520 MB the process's data may grow by (RLIMIT_DATA; file
    pages do not count), trains for an epoch and gives its gradient (gradients(): what lbfgs evaluates)
    with anonymous memory growing by less than 120 MB (measured: 33 MB). A float32 copy of it alone would
    take 293 MB."""
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    rows = 1_200_000
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "X.npy"), str(rows)], capture_output=True,
                          text=True, timeout=600)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "file MB 585" in done.stdout


# ---- streams of batches ----

def batch_list(X, y, size):
    return [(X[i:i + size], y[i:i + size]) for i in range(0, len(X), size)]


def test_a_stream_of_batches_trains_as_the_same_batches_from_arrays(rng):
    X, y = classification(rng, n=250)
    options = dict(sizes=[6, 16, 3], loss="cross_entropy", batch_size=40, seed=0, dropout=0.1)
    arrays, listed, generated = (fastbp.Trainer(**options) for _ in range(3))
    h_arrays = arrays.fit(X, y, epochs=3, shuffle=False, verbose=0)
    h_listed = listed.fit(batch_list(X, y, 40), epochs=3, verbose=0)  # a list starts over every epoch

    def endless():
        while True:
            yield from batch_list(X, y, 40)
    h_generated = generated.fit(endless(), epochs=3, steps_per_epoch=7, verbose=0)  # 7 batches = 250 rows
    for t, h in ((listed, h_listed), (generated, h_generated)):
        np.testing.assert_array_equal(flat(t), flat(arrays))
        assert h.history == h_arrays.history


def test_a_generator_with_a_validation_stream_resumes_from_a_checkpoint(rng, tmp_path):
    X, y = classification(rng, n=200)
    train, val = batch_list(X[:160], y[:160], 32), batch_list(X[160:], y[160:], 16)
    options = dict(sizes=[6, 16, 3], loss="cross_entropy", seed=0)
    def generated():  # 5 batches per pass: an epoch of steps_per_epoch=5 is one pass
        while True:
            yield from train
    straight = fastbp.Trainer(**options)
    h_straight = straight.fit(generated(), epochs=3, steps_per_epoch=5, validation_data=iter_again(val),
                              verbose=0)
    first = fastbp.Trainer(**options)
    first.fit(generated(), epochs=1, steps_per_epoch=5, validation_data=iter_again(val), verbose=0,
              callbacks=[ModelCheckpoint(tmp_path / "stream.npz")])
    resumed = fastbp.Trainer.load(tmp_path / "stream.npz")
    h_resumed = resumed.fit(generated(), epochs=3, initial_epoch=1, steps_per_epoch=5,
                            validation_data=iter_again(val), verbose=0)
    np.testing.assert_array_equal(flat(resumed), flat(straight))
    assert h_resumed.history["val_loss"] == h_straight.history["val_loss"][1:]
    scores = straight.evaluate(X[160:], y[160:])
    assert h_straight.history["val_loss"][-1] == pytest.approx(scores["loss"], rel=1e-6)


class iter_again:
    """A re-iterable over a list of batches (what a data loader is)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_a_bad_batch_in_a_stream_is_named_and_leaves_the_parameters_of_the_batches_before_it(rng):
    X, y = classification(rng, n=200)
    batches = batch_list(X, y, 40)
    t = fastbp.Trainer([6, 16, 3], loss="cross_entropy", seed=0)
    reference = fastbp.Trainer([6, 16, 3], loss="cross_entropy", seed=0)
    reference.fit(batches[:3], verbose=0)
    bad = list(batches)
    X3 = bad[3][0].copy()
    X3[5, 1] = np.inf
    bad[3] = (X3, bad[3][1])
    with pytest.raises(ValueError, match=r"batch 3 of the stream: X of batch 3 contains NaN or infinity "
                                         r"\(first at index \(5, 1\)\)"):
        t.fit(iter(bad), verbose=0)
    np.testing.assert_array_equal(flat(t), flat(reference))
    assert t.step_count == 3
    with pytest.raises(TypeError, match="batch 1 of the stream is not an"):
        fastbp.Trainer([6, 16, 3], loss="cross_entropy").fit(iter([batches[0], X]), verbose=0)
    spent = iter(batches)
    t.fit(spent, verbose=0)
    with pytest.raises(ValueError, match="yielded no batches in epoch 1"):
        t.fit(spent, verbose=0)  # a used-up generator


def test_streams_are_told_from_arrays():
    X = np.zeros((3, 2))
    assert not sources.is_stream(X, np.zeros(3))
    assert not sources.is_stream([[0.0, 1.0]], None)  # a list of rows without y: fit says y is missing
    assert sources.is_stream(iter([]), None) and sources.is_stream((b for b in []), None)
    with pytest.raises(TypeError, match="fit needs y"):
        fastbp.Trainer([2, 1]).fit(X, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch is for streams"):
        fastbp.Trainer([2, 1]).fit(X, np.zeros(3), steps_per_epoch=2, verbose=0)


def test_cli_memory_maps_npy_data_and_labels(rng, tmp_path):
    X, y = classification(rng, n=400, width=8)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    done = subprocess.run([sys.executable, "-m", "fastbp", "train", "--data", str(tmp_path / "X.npy"), "--labels",
                           str(tmp_path / "y.npy"), "--epochs", "2", "--hidden", "16", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "memory-mapped" in done.stdout and "test accuracy" in done.stdout
    missing = subprocess.run([sys.executable, "-m", "fastbp", "train", "--data", str(tmp_path / "X.npy")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "--labels" in missing.stderr


def test_estimators_take_memory_mapped_data_without_converting_it_whole(rng, tmp_path):
    pytest.importorskip("sklearn")
    X, y = classification(rng, n=300)
    X_map = saved(tmp_path, "X16", X.astype(np.float16))  # a dtype scikit-learn would convert to float64
    calls = []
    original = sources.OnDemand.take

    def counting(self, rows):
        calls.append(rows.size)
        return original(self, rows)
    try:
        sources.OnDemand.take = counting
        mapped = fastbp.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, batch_size=50, random_state=0)
        with pytest.warns(Warning):
            mapped.fit(X_map, y)
        probabilities = mapped.predict_proba(X_map)
    finally:
        sources.OnDemand.take = original
    assert calls  # batches were read from the file
    in_memory = fastbp.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, batch_size=50, random_state=0)
    with pytest.warns(Warning):
        in_memory.fit(X.astype(np.float16).astype(np.float32), y)
    np.testing.assert_allclose(probabilities, in_memory.predict_proba(X.astype(np.float16)), rtol=1e-5, atol=1e-7)


def test_arrays_too_large_to_convert_are_read_on_demand_and_small_ones_never_ask():
    huge = np.broadcast_to(np.zeros((1, 64)), (10 ** 8, 64))  # its float32 copy: 25.6 GB
    assert sources.wants_on_demand(huge, 2 ** 30) and not sources.wants_on_demand(huge, 2 ** 40)

    def no_look():
        raise AssertionError("the free memory was read for a small array")
    assert not sources.wants_on_demand(np.zeros((1000, 8)), no_look)
    assert sources.wants_on_demand(huge, lambda: 2 ** 30)


def test_sparse_x_trains_as_its_dense_copy_without_ever_being_densified(rng):
    """CSR or CSC X: the same training, bit for bit, as its dense copy; and a matrix whose dense float32 copy
    would take 400 MB (800 MB as float64) trains and predicts within 300 MB (rows densified per batch and
    per check chunk only; NumPy's allocations are what tracemalloc sees)."""
    import tracemalloc
    sp = pytest.importorskip("scipy.sparse")
    D = rng.standard_normal((300, 20)) * (rng.random((300, 20)) < 0.2)
    y = rng.integers(0, 3, 300)
    dense, sparse = (fastbp.Trainer([20, 16, 3], loss="cross_entropy", seed=0, batch_size=32) for _ in range(2))
    dense.fit(D, y, epochs=2, verbose=0, validation_split=0.2)
    sparse.fit(sp.csc_matrix(D), y, epochs=2, verbose=0, validation_split=0.2)
    np.testing.assert_array_equal(sparse.predict(sp.csr_matrix(D)), dense.predict(D))
    assert sparse.evaluate(sp.csr_matrix(D), y) == dense.evaluate(D, y)
    big = sp.random(20_000, 5_000, density=1e-4, format="csr", random_state=0, dtype=np.float64)
    labels = rng.integers(0, 2, big.shape[0])
    t = fastbp.Trainer([5_000, 8, 2], loss="cross_entropy", seed=0, batch_size=500)
    tracemalloc.start()
    try:
        t.fit(big, labels, epochs=1, verbose=0)
        P = t.predict(big[:5000])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert P.shape == (5000, 2) and np.isfinite(P).all()
    assert peak < 300 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MB: the matrix was densified whole"
    bad = big.copy()
    bad.data[7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        t.fit(bad, labels, epochs=1, verbose=0)


def test_sample_weights_with_memory_mapped_and_sparse_x(rng, tmp_path):
    """Sources read batch by batch carry their rows' weights: the in-memory run's numbers exactly."""
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X, y = classification(rng, n=90)
    X[X < 0.5] = 0.0
    w = rng.random(90) * 2
    runs = []
    for data in (X, saved(tmp_path, "x", X), scipy_sparse.csr_matrix(X)):
        t = fastbp.Trainer([X.shape[1], 8, 3], loss="cross_entropy", seed=1)
        t.fit(data, y, epochs=2, batch_size=20, sample_weight=w, verbose=0)
        runs.append((flat(t), t.evaluate(data, y, sample_weight=w)["loss"]))
    for params, loss in runs[1:]:
        np.testing.assert_array_equal(params, runs[0][0])
        assert loss == runs[0][1]
    with pytest.raises(TypeError, match="sample_weight must hold real numbers, got dtype <U3$"):
        fastbp.Trainer([X.shape[1], 3], loss="cross_entropy").step(X, y, sample_weight=["abc"] * 90)


def test_a_mapped_file_truncated_during_training_is_an_exception_naming_it_not_a_sigbus(tmp_path):
    """The file shrinks between two epochs (another program rewrote it): the next read is refused with an
    OSError naming the file, before any read past its end (which would be a SIGBUS); the checkpoint of the
    epoch before is intact. In a subprocess: a SIGBUS must fail the test, not kill the test run."""
    script = f"""
        import os, numpy as np, fastbp
        from fastbp.callbacks import LambdaCallback, ModelCheckpoint
        path = {str(tmp_path / "X.npy")!r}
        rng = np.random.default_rng(0)
        np.save(path, rng.standard_normal((4096, 16)).astype(np.float32))
        X, y = np.load(path, mmap_mode="r"), rng.integers(0, 3, 4096)
        cut = LambdaCallback(lambda epoch, logs, t: os.truncate(path, 4096) if epoch == 0 else None)
        t = fastbp.Trainer([16, 32, 3], loss="cross_entropy", batch_size=256, seed=0)
        try:
            t.fit(X, y, epochs=3, verbose=0, callbacks=[ModelCheckpoint({str(tmp_path / "last.npz")!r}), cut])
        except OSError as exc:
            print("OSError:", exc)
        print("resumable after epoch", fastbp.Trainer.load({str(tmp_path / "last.npz")!r}).epochs_done)
    """
    out = run_script(script)
    assert f"OSError: {tmp_path / 'X.npy'} shrank from" in out and "to 4,096 bytes" in out
    assert "resumable after epoch 1" in out


def test_a_row_that_went_bad_during_training_is_named_by_its_row_in_the_file(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "X.npy", rng.standard_normal((600, 4)).astype(np.float32))
    X = np.load(tmp_path / "X.npy", mmap_mode="r+")
    y = rng.integers(0, 2, 600)
    t = fastbp.Trainer([4, 8, 2], loss="cross_entropy", batch_size=100, seed=0)
    spoil = fastbp.callbacks.LambdaCallback(lambda epoch, logs, t: X.__setitem__((437, 2), np.nan))
    with pytest.raises(ValueError, match=r"X contains NaN or infinity \(first at index \(437, 2\)\)"):
        t.fit(X, y, epochs=2, verbose=0, callbacks=[spoil])
