"""Data-parallel training on MPI (fastbp/distributed.py): P ranks against one process, and the faults.

The ranks run tests/distributed_worker.py under `mpiexec -n P` (P = 2 and 3: 3 splits batches unevenly),
each in a subprocess with a timeout, so that a deadlock fails the test instead of hanging the suite. The
worker's files are compared here with each other (the ranks must agree bitwise) and with one process
trained in this process on the same data. Needs the [mpi] extra (mpi4py and an MPI with mpiexec).
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fastbp
from fastbp import distributed

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from distributed_worker import problem, sample_weights  # noqa: E402  (the worker's data set, rebuilt here)


def _mpiexec():
    beside_python = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside_python if os.path.exists(beside_python) else shutil.which("mpiexec")


try:
    import mpi4py  # noqa: F401  (not initialised here: MPI in this process would follow it into forks)
    MPIEXEC = _mpiexec()
except ImportError:
    MPIEXEC = None
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpi4py and mpiexec: pip install 'fastbp[mpi]'")
TIMEOUT_S = 180


def launch(scenario, out, ranks, timeout=TIMEOUT_S, env=None):
    """Runs the worker's scenario on `ranks` ranks (None: without mpiexec); returns (completed process,
    seconds)."""
    command = [sys.executable, os.path.join(HERE, "distributed_worker.py"), scenario, str(out)]
    if ranks is not None:
        command = [MPIEXEC, "-n", str(ranks), *command]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    return done, time.perf_counter() - start


def results(out, name, ranks):
    """[(arrays, values) for each rank]."""
    found = []
    for r in range(ranks):
        with np.load(os.path.join(out, f"{name}-rank{r}.npz")) as arrays:
            found.append(({k: arrays[k] for k in arrays.files},
                          json.load(open(os.path.join(out, f"{name}-rank{r}.json")))))
    return found


def flat(t):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in t.params])


def single_process(**options):
    settings = dict(sizes=[7, 33, 3], loss="cross_entropy", optimizer="adam", lr=0.01, batch_size=50, seed=3)
    settings.update(options)
    return fastbp.Trainer(**settings)


def assert_same_on_every_rank(found, key):
    for arrays, _ in found[1:]:
        np.testing.assert_array_equal(arrays[key], found[0][0][key])


def assert_close_to(actual, expected, bound=1e-4):
    """Every parameter within bound x the largest parameter's magnitude (the issue's measure)."""
    assert np.abs(actual - expected).max() <= bound * np.abs(expected).max()


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def main_run(request, tmp_path_factory):
    """The worker's main scenarios (exact, sharded, api, errors, callback_fails) on P ranks, run once."""
    if MPIEXEC is None:
        pytest.skip("needs mpi4py and mpiexec: pip install 'fastbp[mpi]'")
    out = tmp_path_factory.mktemp(f"mpi{request.param}")
    done, _ = launch("main", out, request.param)
    assert done.returncode == 0, done.stdout + done.stderr
    (out / "main.stdout").write_text(done.stdout)
    return out, request.param


# ---- without MPI: the pieces ----

def test_parts_cover_the_batch_contiguously_and_evenly():
    for n in (1, 3, 33, 257):
        for size in (1, 2, 3, 5, 300):
            bounds = [distributed.part(n, size, r) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            lengths = [hi - lo for lo, hi in bounds]
            assert max(lengths) - min(lengths) <= 1


def test_sharded_row_parts_take_the_batch_rows_each_rank_holds():
    rows = np.array([9, 0, 4, 7, 2], np.int64)  # global rows; rank 1 holds global rows 3..7
    local, share, first = distributed.RowParts(3, 8, 10, sharded=True, size=3, rank=1).mine(rows)
    np.testing.assert_array_equal(local, [1, 4])  # global 4 and 7, in batch order
    assert share == 2 / 5 and first == 2  # global rows 0 and 2 belong to rank 0: their masks come first


def test_replicated_row_parts_are_contiguous_parts_of_the_batch():
    rows = np.array([9, 0, 4, 7, 2, 5, 1], np.int64)
    local, share, first = distributed.RowParts(0, 10, 10, sharded=False, size=3, rank=1).mine(rows)
    np.testing.assert_array_equal(local, [7, 2])  # positions 3 and 4 of 7 rows split 3, 2, 2
    assert share == 2 / 7 and first == 3


def test_comm_must_be_a_communicator():
    with pytest.raises(TypeError, match="mpi4py communicator"):
        fastbp.Trainer([3, 2], comm="MPI.COMM_WORLD")


# ---- P ranks against one process ----

@needs_mpi
def test_p_ranks_train_the_one_process_model(main_run):
    out, ranks = main_run
    found = results(out, "exact", ranks)
    assert_same_on_every_rank(found, "params")
    X, y = problem()
    t = single_process()
    history = t.fit(X, y, epochs=3, validation_split=0.2, verbose=0)
    difference = np.abs(found[0][0]["params"] - flat(t)).max() / np.abs(flat(t)).max()
    print(f"{ranks} ranks vs one process: max parameter difference {difference:.2e} of the largest")
    assert difference <= 1e-4
    for _, values in found:
        assert values["step_count"] == t.step_count == 3 * 5  # 206 training rows in batches of 50
        for key, series in history.history.items():
            np.testing.assert_allclose(values["history"][key], series, rtol=1e-5, atol=1e-7)
        assert values["history"] == found[0][1]["history"]


@needs_mpi
def test_schedules_early_stopping_and_progress_with_comm(main_run):
    out, ranks = main_run
    found = results(out, "loop", ranks)
    assert_same_on_every_rank(found, "params")
    from distributed_worker import loop_options
    from fastbp import schedules
    fit_options, trainer_options = loop_options(schedules)
    X, y = problem()
    t = single_process(**trainer_options)
    history = t.fit(X, y, **{**fit_options, "verbose": 0})
    assert len(set(history.history["lr"])) > 1 and t.epochs_done < 12  # the plateau fired, training stopped
    for _, values in found:
        assert values["epochs_done"] == t.epochs_done
        assert values["history"]["lr"] == history.history["lr"]
        np.testing.assert_allclose(values["history"]["val_loss"], history.history["val_loss"], rtol=1e-5)
    assert_close_to(found[0][0]["params"], flat(t))
    # verbose=2 prints one line per epoch, on rank 0 only.
    assert (out / "main.stdout").read_text().count("epoch 1/12") == 1


@needs_mpi
def test_micro_batches_and_streams_with_comm(main_run):
    out, ranks = main_run
    found = results(out, "micro_and_stream", ranks)
    assert_same_on_every_rank(found, "micro")
    assert_same_on_every_rank(found, "stream")
    X, y = problem()
    t = single_process(dropout=0.2)
    t.fit(X, y, epochs=2, verbose=0)
    assert_close_to(found[0][0]["micro"], flat(t), 1e-5)
    streamed = single_process(dropout=0.2)
    streamed.fit([(X[s:s + 50], y[s:s + 50]) for s in range(0, 250, 50)], epochs=2, verbose=0)
    assert_close_to(found[0][0]["stream"], flat(streamed), 1e-5)
    assert_same_on_every_rank(found, "heavy")
    weighted = single_process()
    weighted.fit(X, y, epochs=2, verbose=0, sample_weight=sample_weights())
    assert_close_to(found[0][0]["heavy"], flat(weighted), 1e-5)


@needs_mpi
def test_dropout_masks_on_p_ranks_are_the_one_process_masks(main_run):
    out, ranks = main_run
    found = results(out, "dropout", ranks)
    assert_same_on_every_rank(found, "params")
    X, y = problem()
    t = single_process(dropout=0.3, activation="gelu", input_dropout=0.2, max_norm=1.0)
    t.fit(X, y, epochs=2, verbose=0)
    assert_close_to(found[0][0]["params"], flat(t), 1e-5)
    plain = single_process(activation="gelu")
    plain.fit(X, y, epochs=2, verbose=0)
    assert not np.allclose(flat(t), flat(plain))  # dropout and max-norm did change the training


@needs_mpi
def test_a_run_is_bitwise_repeatable_for_a_fixed_rank_count(main_run):
    out, ranks = main_run
    for arrays, values in results(out, "exact", ranks):
        np.testing.assert_array_equal(arrays["params"], arrays["params_again"])
        assert values["history"] == values["history_again"]


@needs_mpi
def test_sharded_data_trains_the_model_of_the_shards_concatenated(main_run):
    out, ranks = main_run
    found = results(out, "sharded", ranks)
    assert_same_on_every_rank(found, "params")
    X, y = problem()
    t = single_process()
    history = t.fit(X, y, epochs=3, validation_data=(X, y), verbose=0)
    assert_close_to(found[0][0]["params"], flat(t))
    for _, values in found:
        np.testing.assert_allclose(values["history"]["val_loss"], history.history["val_loss"], rtol=1e-5)
        scores = t.evaluate(X, y)
        np.testing.assert_allclose(values["scores"]["loss"], scores["loss"], rtol=1e-5)
        assert values["scores"]["accuracy"] == scores["accuracy"]
    # Sample weights: sharded with their rows, and replicated, both train the one-process weighted model.
    w = sample_weights()
    weighted = single_process()
    weighted_history = weighted.fit(X, y, epochs=2, verbose=0, sample_weight=w)
    weighted_scores = weighted.evaluate(X, y, sample_weight=w)
    for arrays, values in found:
        assert_close_to(arrays["weighted"], flat(weighted))
        assert_close_to(arrays["replicated_weighted"], flat(weighted))
        np.testing.assert_allclose(values["weighted_history"]["loss"], weighted_history.history["loss"], rtol=1e-5)
        np.testing.assert_allclose(values["weighted_scores"]["loss"], weighted_scores["loss"], rtol=1e-5)


@needs_mpi
def test_evaluate_gradients_predict_step_and_estimator_with_comm(main_run):
    out, ranks = main_run
    found = results(out, "api", ranks)
    for key in ("grad0", "probabilities", "after_step", "after_sharded_step", "clf_coef", "unseeded",
                "unseeded_clf_coef", "ordered"):
        assert_same_on_every_rank(found, key)
    arrays, values = found[0]
    X, y = problem()
    t = single_process()
    loss, grads = t.gradients(X, y)
    np.testing.assert_allclose(values["loss"], loss, rtol=1e-6)
    assert_close_to(arrays["grad0"], grads[0][0], 1e-5)
    scores = t.evaluate(X, y)
    np.testing.assert_allclose(values["scores"]["loss"], scores["loss"], rtol=1e-6)
    assert values["scores"]["accuracy"] == scores["accuracy"]
    np.testing.assert_allclose(arrays["probabilities"], t.predict(X[:10]), rtol=1e-6)
    np.testing.assert_allclose(values["step_loss"], t.step(X[:41], y[:41]), rtol=1e-6)
    assert_close_to(arrays["after_step"], flat(t), 1e-6)
    assert_close_to(arrays["after_sharded_step"], flat(t), 1e-6)  # the same batch, given in shards
    ordered = single_process()
    ordered.fit(X, y, epochs=2, verbose=0, shuffle=lambda n: np.random.default_rng(0).permutation(n))
    assert_close_to(arrays["ordered"], flat(ordered), 1e-5)  # rank 0's order
    pytest.importorskip("sklearn")
    from fastbp import MLPClassifier
    with pytest.warns(Warning):
        clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, batch_size=40, random_state=0,
                            early_stopping=True).fit(X, y)
    assert_close_to(arrays["clf_coef"], clf.coefs_[0])


# ---- faults: clear errors on every rank, no deadlock ----

@needs_mpi
def test_bad_input_or_mismatched_calls_on_one_rank_raise_on_every_rank(main_run):
    out, ranks = main_run
    for rank, (_, seen) in enumerate(results(out, "errors", ranks)):
        assert "NaN or infinity (first at index (17, 2))" in seen["nan"]
        assert seen["nan"].startswith("on rank 1: ") == (rank != 1)
        assert "the call differs (rank 0: {'batch_size': 32}; rank 1: {'batch_size': 16}" in seen["batch_size"]
        assert "the row counts differ (rank 0: 257, rank 1: 100" in seen["rows"]
        assert "lr differ between ranks" in seen["options"]
        assert "must hold every row 0..256 exactly once" in seen["order"]
        assert "count each rank's shard alone" in seen["balanced_shards"]
        assert "the call differs" in seen["class_weight_one_rank"]
        assert seen["order"].startswith("on rank 1: ") == (rank != 1)


@needs_mpi
def test_what_decides_the_collective_calls_is_agreed_so_a_difference_on_one_rank_never_hangs(main_run):
    """Streams with different steps_per_epoch, a stream ending early or raising on one rank, validation
    streams of different lengths, sample weights on one rank only (fit and step): an error on every rank,
    caught by the script, after which the ranks train on in step (the main run would time out otherwise)."""
    out, ranks = main_run
    found = results(out, "disagreements", ranks)
    assert_same_on_every_rank(found, "params")
    for rank, (_, seen) in enumerate(found):
        assert "the call differs" in seen["steps_per_epoch"] and "'steps_per_epoch': 3" in seen["steps_per_epoch"]
        assert "the stream ended on rank(s) 1 while the other ranks still had batches" in seen["stream_ends"]
        assert "the stream failed on rank 1" in seen["stream_raises"]
        assert seen["stream_raises"].startswith("RuntimeError: " + ("" if rank == 1 else "on rank 1: "))
        assert "validation stream ended on rank(s) " in seen["validation_stream"]
        assert "the call differs" in seen["weights"] and "'sample_weight': True" in seen["weights"]
        assert "the call differs" in seen["step_weights"]


@needs_mpi
def test_a_non_finite_loss_in_one_ranks_part_skips_the_update_on_every_rank(main_run):
    out, ranks = main_run
    for _, seen in results(out, "errors", ranks):
        assert "loss became inf at step 1; the update was not applied" in seen["non_finite"]
        assert seen["step_count_after_non_finite"] == 0 and seen["unchanged_after_non_finite"]


@needs_mpi
def test_a_callback_failing_on_one_rank_fails_on_every_rank(main_run):
    out, ranks = main_run
    messages = [values["message"] for _, values in results(out, "callback_fails", ranks)]
    assert messages[1] == "a callback failed on rank 1"
    assert all(m == "on rank 1: a callback failed on rank 1" for i, m in enumerate(messages) if i != 1)


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_a_killed_rank_ends_the_job_and_leaves_the_last_checkpoint_intact(tmp_path, ranks):
    done, seconds = launch("killed", tmp_path, ranks, timeout=120)
    print(f"SIGKILL of rank 1 in epoch 2 on {ranks} ranks: job ended in {seconds:.1f} s, rc {done.returncode}")
    assert done.returncode != 0
    t = fastbp.Trainer.load(tmp_path / "killed.npz")  # written by rank 0 after epoch 1
    assert (t.epochs_done, t.step_count) == (1, 6)


@needs_mpi
def test_an_exception_ending_one_ranks_program_ends_the_job(tmp_path):
    done, seconds = launch("crashed", tmp_path, 2, timeout=120)
    print(f"uncaught exception on rank 1: job ended in {seconds:.1f} s, rc {done.returncode}")
    assert done.returncode != 0
    # Rank 1 printed its traceback (to its own file, see the worker) before the abort ended the job.
    with open(tmp_path / "crashed-stderr-rank1.txt") as f:
        assert "RuntimeError: the program failed on rank 1" in f.read()


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(tmp_path, ranks):
    done, _ = launch("interrupted", tmp_path, ranks, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    found = results(tmp_path, "interrupted", ranks)
    assert_same_on_every_rank(found, "params")
    assert all(values["stopped"] and values["step_count"] == 8 for _, values in found)


@needs_mpi
def test_a_checkpoint_written_on_two_ranks_resumes_on_three_and_on_one(tmp_path):
    for ranks in (2, 3, None):  # the first run writes resume.npz, all three resume from it
        done, _ = launch("resume", tmp_path, ranks)
        assert done.returncode == 0, done.stdout + done.stderr
    two, three, one = (results(tmp_path, f"resume{r}", r) for r in (2, 3, 1))
    assert_same_on_every_rank(three, "params")
    assert all(values["step_count"] == 18 for _, values in two + three + one)
    assert_close_to(three[0][0]["params"], one[0][0]["params"])
    assert_close_to(two[0][0]["params"], one[0][0]["params"])


@needs_mpi
def test_single_rank_communicator_is_the_one_process_trainer(tmp_path):
    done, _ = launch("exact", tmp_path, None)  # no launcher: MPI.COMM_WORLD of size 1
    assert done.returncode == 0, done.stdout + done.stderr
    (arrays, _), = results(tmp_path, "exact", 1)
    X, y = problem()
    t = single_process()
    t.fit(X, y, epochs=3, validation_split=0.2, verbose=0)
    np.testing.assert_array_equal(arrays["params"], flat(t))


@needs_mpi
def test_cuda_backend_one_simulated_gpu_per_rank(tmp_path):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    done, _ = launch("cuda_simulator", tmp_path, 2, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    found = results(tmp_path, "cuda", 2)
    assert_same_on_every_rank(found, "params")
    X, y = problem(n=40)
    t = single_process(batch_size=20, sizes=[7, 5, 3])
    t.fit(X, y, epochs=1, verbose=0)
    assert_close_to(found[0][0]["params"], flat(t), 1e-5)


@needs_mpi
def test_cli_trains_on_two_ranks_and_only_rank_0_prints(tmp_path):
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "fastbp", "train", "--epochs", "2", "--hidden", "32",
               "--save", str(tmp_path / "model.npz")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on 2 MPI ranks x" in done.stdout
    assert done.stdout.count("epoch 2/2") == 1 and done.stdout.count("test accuracy") == 1
    single = subprocess.run([sys.executable, "-m", "fastbp", "train", "--epochs", "2", "--hidden", "32"],
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    last = [line for line in done.stdout.splitlines() if line.startswith("epoch 2/2")][0]
    assert last.split("  ")[:2] == [line for line in single.stdout.splitlines()
                                    if line.startswith("epoch 2/2")][0].split("  ")[:2]
    assert fastbp.Trainer.load(tmp_path / "model.npz").epochs_done == 2
