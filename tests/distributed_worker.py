"""The program tests/test_distributed.py runs under `mpiexec -n P`: python distributed_worker.py SCENARIO OUT_DIR.

Each rank writes what it saw to OUT_DIR/SCENARIO-rank{r}.npz (arrays) and .json (values, error messages);
the test compares the ranks with each other and with one process. Scenarios are functions below.
"""
import json
import os
import signal
import sys

import numpy as np
from mpi4py import MPI

import fastbp
from fastbp.callbacks import LambdaCallback, ModelCheckpoint

comm = MPI.COMM_WORLD
rank = comm.Get_rank()


def problem(n=257, width=7, classes=3, seed=5):
    """A small classification data set, the same on every rank (and in the test process)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, width)).astype(np.float32)
    y = ((X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)).astype(np.int64) % classes
    return X, y


def sample_weights(n=257, seed=9):
    """Sample weights for problem()'s rows, zeros among them."""
    w = np.random.default_rng(seed).random(n) * 2
    w[::10] = 0.0
    return w


def trainer(**options):
    settings = dict(sizes=[7, 33, 3], loss="cross_entropy", optimizer="adam", lr=0.01, batch_size=50, seed=3)
    settings.update(options)
    return fastbp.Trainer(**settings, comm=comm)


def flat(t):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in t.params])


def report(name, arrays=None, **values):
    out = os.path.join(OUT, f"{name}-rank{rank}")
    np.savez(out + ".npz", **(arrays or {}))
    with open(out + ".json", "w") as f:
        json.dump(values, f)


def exact():
    """3 epochs of Adam on replicated data, with validation; twice, to check repeatability."""
    X, y = problem()
    runs = []
    for _ in range(2):
        t = trainer()
        history = t.fit(X, y, epochs=3, validation_split=0.2, verbose=0)
        runs.append((flat(t), history.history))
    report("exact", {"params": runs[0][0], "params_again": runs[1][0]}, history=runs[0][1],
           history_again=runs[1][1], step_count=t.step_count)


def loop_options(schedules):
    """fit's options for the loop scenario: a plateau schedule that fires, early stopping that stops and
    restores the best weights, a warm-up cosine per step (built here and in the test alike)."""
    from fastbp.callbacks import EarlyStopping
    return dict(epochs=12, validation_split=0.3, verbose=2,
                callbacks=[EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=True)]), \
        dict(schedule=schedules.ReduceOnPlateau(monitor="loss", patience=0, factor=0.5, min_delta=0.5))


def loop():
    """The training loop's features with comm: schedules, early stopping, progress lines (rank 0 only)."""
    from fastbp import schedules
    X, y = problem()
    fit_options, trainer_options = loop_options(schedules)
    t = trainer(**trainer_options)
    history = t.fit(X, y, **fit_options)
    report("loop", {"params": flat(t)}, history=history.history, epochs_done=t.epochs_done)


def dropout():
    """2 epochs with dropout on replicated data: each rank's part gets the masks of its batch positions
    (and gelu's stored slopes, per rank part, go with them)."""
    X, y = problem()
    t = trainer(dropout=0.3, activation="gelu", input_dropout=0.2, max_norm=1.0)
    t.fit(X, y, epochs=2, verbose=0)
    report("dropout", {"params": flat(t)})


def micro_and_stream():
    """Micro-batches of 7 rows within each rank's part; and a stream in which each rank yields its own part
    of every batch (np.array_split of the batch in rank order)."""
    X, y = problem()
    t = trainer(micro_batch=7, dropout=0.2)
    t.fit(X, y, epochs=2, verbose=0)

    def my_parts():
        while True:
            for start in range(0, 250, 50):
                mine = np.array_split(np.arange(start, start + 50), comm.Get_size())[rank]
                yield X[mine], y[mine]
    streamed = trainer(dropout=0.2)
    streamed.fit(my_parts(), epochs=2, steps_per_epoch=5, verbose=0)
    # Weights near float64's top in micro-batches: each chunk's sum is far beyond float32's range.
    heavy = trainer(micro_batch=7)
    heavy.fit(X, y, epochs=2, verbose=0, sample_weight=sample_weights() * 1e300)
    report("micro_and_stream", {"micro": flat(t), "stream": flat(streamed), "heavy": flat(heavy)})


def sharded():
    """Each rank given only its shard (np.array_split of the data in rank order), with sharded validation."""
    X, y = problem()
    mine = np.array_split(np.arange(len(X)), comm.Get_size())[rank]
    t = trainer()
    history = t.fit(X[mine], y[mine], epochs=3, verbose=0, sharded=True,
                    validation_data=(X[mine], y[mine]))
    scores = t.evaluate(X[mine], y[mine], sharded=True)
    # Sample weights, sharded with their rows and replicated: a rank's chunk sums are weighted by its share.
    w = sample_weights()
    weighted = trainer()
    weighted_history = weighted.fit(X[mine], y[mine], epochs=2, verbose=0, sharded=True, sample_weight=w[mine])
    weighted_scores = weighted.evaluate(X[mine], y[mine], sharded=True, sample_weight=w[mine])
    replicated = trainer()
    replicated.fit(X, y, epochs=2, verbose=0, sample_weight=w)
    report("sharded", {"params": flat(t), "weighted": flat(weighted), "replicated_weighted": flat(replicated)},
           history=history.history, scores=scores, weighted_history=weighted_history.history,
           weighted_scores=weighted_scores)


def api():
    """evaluate, gradients, predict and step with comm, and the scikit-learn estimator."""
    X, y = problem()
    t = trainer(dropout=0.0)
    loss, grads = t.gradients(X, y)
    scores = t.evaluate(X, y)
    probabilities = t.predict(X[:10])
    step_loss = t.step(X[:41], y[:41])
    mine = np.array_split(np.arange(41), comm.Get_size())[rank]
    t2 = trainer()
    sharded_step_loss = t2.step(X[:41][mine], y[:41][mine], sharded=True)
    from fastbp import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, batch_size=40, random_state=0, early_stopping=True,
                        comm=comm).fit(X, y)
    unseeded = trainer(seed=None)  # each rank draws its own seed: rank 0's weights and RNG must win
    unseeded.fit(X, y, epochs=1, verbose=0)
    # random_state=None: each rank's global generator draws its own initial weights and shuffles (seeded
    # differently here); rank 0's must win.
    np.random.seed(100 + rank)
    unseeded_clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=2, batch_size=40, comm=comm).fit(X, y)
    # A shuffle function giving each rank its own order: rank 0's is used on every rank.
    ordered = trainer()
    ordered.fit(X, y, epochs=2, verbose=0, shuffle=lambda n: np.random.default_rng(rank).permutation(n))
    report("api", {"grad0": grads[0][0], "probabilities": probabilities, "after_step": flat(t),
                   "after_sharded_step": flat(t2), "clf_coef": clf.coefs_[0], "unseeded": flat(unseeded),
                   "unseeded_clf_coef": unseeded_clf.coefs_[0], "ordered": flat(ordered)},
           loss=loss, scores=scores, step_loss=step_loss, sharded_step_loss=sharded_step_loss,
           clf_score=clf.score(X, y))


def errors():
    """Bad input or mismatched calls on one rank: a clear error on every rank, and no deadlock."""
    X, y = problem()
    t = trainer()
    seen = {}
    bad = X.copy()
    if rank == 1:
        bad[17, 2] = np.nan
    try:
        t.fit(bad, y, epochs=1, verbose=0)
    except ValueError as exc:
        seen["nan"] = str(exc)
    try:
        t.fit(X, y, epochs=1, verbose=0, batch_size=32 if rank == 0 else 16)
    except ValueError as exc:
        seen["batch_size"] = str(exc)
    try:
        t.fit(X if rank == 0 else X[:100], y if rank == 0 else y[:100], epochs=1, verbose=0)
    except ValueError as exc:
        seen["rows"] = str(exc)
    try:
        trainer(lr=0.01 if rank == 0 else 0.02)
    except ValueError as exc:
        seen["options"] = str(exc)
    try:  # "balanced" on shards would weigh each rank's classes by its own counts
        t.fit(X, y, epochs=1, verbose=0, sharded=True, class_weight="balanced")
    except ValueError as exc:
        seen["balanced_shards"] = str(exc)
    try:  # class weights on rank 0 only
        t.fit(X, y, epochs=1, verbose=0, class_weight={0: 2.0} if rank == 0 else None)
    except ValueError as exc:
        seen["class_weight_one_rank"] = str(exc)
    try:  # a shuffle function whose order is wrong on rank 1 only
        t.fit(X, y, epochs=1, verbose=0, shuffle=lambda n: np.arange(n) // (2 if rank == 1 else 1))
    except ValueError as exc:
        seen["order"] = str(exc)
    # Targets that overflow the squared error in rows 40-49 of the first (unshuffled) batch: only the last
    # rank's part of the batch holds them, yet every rank must skip the update and raise.
    targets = np.zeros((len(X), 3), np.float32)
    targets[40:50] = 3e38
    regression = trainer(loss="mse")
    before = flat(regression)
    try:
        regression.fit(X, targets, epochs=1, shuffle=False, verbose=0)
    except FloatingPointError as exc:
        seen["non_finite"] = str(exc)
    seen["step_count_after_non_finite"] = regression.step_count
    seen["unchanged_after_non_finite"] = bool((flat(regression) == before).all())
    t.fit(X, y, epochs=1, verbose=0)  # still usable, in step on every rank
    report("errors", {"params": flat(t)}, **seen)


def stream(X, y, batches, fail_at=None, size=20):
    """A generator of `batches` (X, y) batches of `size` rows (this rank's own part); raises RuntimeError
    instead of yielding batch fail_at."""
    for b in range(batches):
        if b == fail_at:
            raise RuntimeError(f"the stream failed on rank {rank}")
        yield X[b * size:(b + 1) * size], y[b * size:(b + 1) * size]


def disagreements():
    """Values that decide how many collective calls follow, different on one rank: an error on every rank
    (never a hang), after which the ranks train on together."""
    X, y = problem()
    t = trainer()
    seen = {}
    cases = {
        "steps_per_epoch": lambda: t.fit(stream(X, y, 6), steps_per_epoch=3 if rank == 0 else 4, verbose=0),
        "stream_ends": lambda: t.fit(stream(X, y, 2 if rank == 1 else 4), steps_per_epoch=4, verbose=0),
        "stream_raises": lambda: t.fit(stream(X, y, 4, fail_at=2 if rank == 1 else None), steps_per_epoch=4,
                                       verbose=0),
        "validation_stream": lambda: t.fit(stream(X, y, 3), steps_per_epoch=3, verbose=0,
                                           validation_data=list(stream(X, y, 3 if rank == 1 else 2))),
        "weights": lambda: t.fit(X, y, epochs=1, verbose=0,
                                 sample_weight=sample_weights() if rank == 0 else None),
        "step_weights": lambda: t.step(X[:50], y[:50], sample_weight=np.ones(50) if rank == 1 else None),
    }
    for name, call in cases.items():
        try:
            call()
            seen[name] = None
        except (ValueError, RuntimeError) as exc:  # the script catches it, and goes on on every rank
            seen[name] = f"{type(exc).__name__}: {exc}"
    t.fit(X, y, epochs=1, verbose=0)  # still in step on every rank
    report("disagreements", {"params": flat(t)}, **seen)


def signal_at_step(t, who, at, signum):
    """Makes rank `who` send itself signal signum as the trainer starts its step number `at` (1-based)."""
    compute, calls = t._backend.loss_and_gradients, [0]

    def counting(*args, **kwargs):
        calls[0] += 1
        if rank == who and calls[0] == at:
            os.kill(os.getpid(), signum)
        return compute(*args, **kwargs)
    t._backend.loss_and_gradients = counting


def killed():
    """Rank 1 dies by SIGKILL in the middle of epoch 2; rank 0 saved a checkpoint after epoch 1."""
    X, y = problem()
    t = trainer()
    signal_at_step(t, 1, 8, signal.SIGKILL)  # 6 steps per epoch
    t.fit(X, y, epochs=3, verbose=0, callbacks=[ModelCheckpoint(os.path.join(OUT, "killed.npz"))])


def callback_fails():
    """A callback raises on rank 1 only, after epoch 1: every rank raises, naming rank 1."""
    X, y = problem()

    def fail_on_rank_1(epoch, logs, trainer):
        if rank == 1:
            raise RuntimeError("a callback failed on rank 1")
    try:
        trainer().fit(X, y, epochs=3, verbose=0, callbacks=[LambdaCallback(fail_on_rank_1)])
    except RuntimeError as exc:
        report("callback_fails", message=str(exc))


def crashed():
    """Rank 1's program ends with an exception between two fits while rank 0 trains on. Each rank's stderr
    goes to OUT/crashed-stderr-rank{r}.txt, a file of its own: what mpiexec forwards of a rank it is
    killing depends on timing, what a rank wrote to a file before the abort does not."""
    errors = os.open(os.path.join(OUT, f"crashed-stderr-rank{rank}.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(errors, 2)
    X, y = problem()
    t = trainer()
    t.fit(X, y, epochs=1, verbose=0)
    if rank == 1:
        raise RuntimeError("the program failed on rank 1")
    t.fit(X, y, epochs=2, verbose=0)


def interrupted():
    """Ctrl-C reaches rank 1 only, in the middle of epoch 2: every rank stops after the same step."""
    X, y = problem()
    t = trainer()
    signal_at_step(t, 1, 8, signal.SIGINT)
    try:
        t.fit(X, y, epochs=3, verbose=0)
        stopped = False
    except KeyboardInterrupt:
        stopped = True
    report("interrupted", {"params": flat(t)}, stopped=stopped, step_count=t.step_count)


def resume():
    """Trains 1 epoch and saves, then every rank loads the checkpoint (written by another rank count)."""
    X, y = problem()
    path = os.path.join(OUT, "resume.npz")
    if not os.path.exists(path):
        trainer().fit(X, y, epochs=1, verbose=0, callbacks=[ModelCheckpoint(path)])
    t = fastbp.Trainer.load(path, comm=comm)
    t.fit(X, y, epochs=3, initial_epoch=1, verbose=0)
    report(f"resume{comm.Get_size()}", {"params": flat(t)}, step_count=t.step_count)


def cuda_simulator():
    """device='cuda' on Numba's simulator: one (simulated) GPU per rank, gradients reduced on the host."""
    X, y = problem(n=40)
    t = trainer(device="cuda", batch_size=20, sizes=[7, 5, 3])
    history = t.fit(X, y, epochs=1, verbose=0)
    report("cuda", {"params": flat(t)}, history=history.history)


def main():
    """The scenarios that end normally, one after another in one launch (each launch costs seconds)."""
    exact()
    micro_and_stream()
    loop()
    dropout()
    sharded()
    api()
    errors()
    disagreements()
    callback_fails()


if __name__ == "__main__":
    scenario, OUT = sys.argv[1], sys.argv[2]
    globals()[scenario]()
