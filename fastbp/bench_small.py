"""The small-model benchmark: seconds per epoch where per-step overhead decides, and first runs.

Each workload (shared/README.md's small-model table) is an epoch of `rows` rows taken in order in batches
of `batch`, Adam lr=1e-3, every peer from the same initial weights. Peers, each at its best:
    fastbp        Trainer.fit for one epoch (compiled chunks of steps, loop.py)
    fastbp_step   Trainer.step in a Python loop
    torch         PyTorch eager, fused Adam, at its best thread count (1 or all cores: both are timed,
                  the faster is reported)
    torch_compile torch.compile of the whole step, all cores
    jax_step      jax.jit of the whole step (donated buffers) in a Python loop
    jax_scan      jax.jit of the whole epoch: lax.scan over the batches, state donated
    sklearn       scikit-learn's MLPClassifier/MLPRegressor.partial_fit over the epoch (float32 data)
After a warm-up epoch (compilation), rounds of one epoch per peer are interleaved; the figure is the
median epoch time. First runs: a new process that imports, fits the table's sk_default job (one epoch
of 20,000 rows of [64, 100, 10]) and predicts, with an empty and then a warm kernel cache, for fastbp's
Trainer and MLPClassifier and for scikit-learn's MLPClassifier.
"""
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from .bench import make_batch

SMALL_WORKLOADS = {
    "online": dict(sizes=[8, 32, 1], batch=1, rows=2048, loss="mse"),
    "rl": dict(sizes=[16, 64, 64, 4], batch=32, rows=8192, loss="mse"),
    "sk_default": dict(sizes=[64, 100, 10], batch=200, rows=20000, loss="cross_entropy"),
    "tabular": dict(sizes=[32, 256, 256, 1], batch=64, rows=16384, loss="mse"),
}
SMALL_PEERS = ("fastbp", "fastbp_step", "torch", "torch_compile", "jax_step", "jax_scan", "sklearn")


def _fastbp_epochs(trainer, X, y, batch, stepwise):
    if not stepwise:
        return lambda: trainer.fit(X, y, epochs=1, batch_size=batch, shuffle=False, verbose=0)

    def epoch():
        for start in range(0, X.shape[0], batch):
            trainer.step(X[start:start + batch], y[start:start + batch])
    return epoch


def _torch_epochs(config, params, X, y, batch, mode):
    """An epoch of PyTorch steps; mode "fused" at its best thread count (the faster of 1 and all cores,
    chosen on a warm-up epoch), "compile" on all cores."""
    import torch
    from . import peers
    step, _ = peers.torch_peer(config, params, mode=mode)
    batches = [(X[s:s + batch], y[s:s + batch]) for s in range(0, X.shape[0], batch)]

    def epoch(threads):
        torch.set_num_threads(threads)
        for xb, yb in batches:
            step(xb, yb)
    epoch(os.cpu_count())  # warm-up (compilation for "compile")
    if mode != "fused":
        return functools.partial(epoch, os.cpu_count())
    times = {}
    for threads in sorted({1, os.cpu_count()}):
        began = time.perf_counter()
        epoch(threads)
        times[threads] = time.perf_counter() - began
    return functools.partial(epoch, min(times, key=times.get))


def _jax_step_epochs(config, params, X, y, batch):
    from . import peers
    step = peers.jax_peer(config, params)

    def epoch():
        for s in range(0, X.shape[0], batch):
            step(X[s:s + batch], y[s:s + batch])
    return epoch


def _sklearn_epochs(config, params, X, y, batch):
    """MLPClassifier/MLPRegressor.partial_fit over the epoch, Adam lr=1e-3, no shuffling (the rows in order),
    its weights set to the shared initial ones."""
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    hidden = tuple(config.sizes[1:-1])
    common = dict(hidden_layer_sizes=hidden, activation="relu", solver="adam", learning_rate_init=config.lr,
                  batch_size=batch, shuffle=False, alpha=0.0, random_state=0)
    if config.loss == "cross_entropy":
        model = MLPClassifier(**common)
        classes = np.arange(config.sizes[-1])
        model.partial_fit(X[:batch], y[:batch], classes=classes)
    else:
        model = MLPRegressor(**common)
        model.partial_fit(X[:batch], y[:batch])
    model.coefs_ = [W.astype(X.dtype) for W, _ in params]
    model.intercepts_ = [b.astype(X.dtype) for _, b in params]
    return lambda: model.partial_fit(X, y)


def build_epochs(workload, peers=SMALL_PEERS):
    """{peer: epoch() -> None}, each peer warmed up (compiled) and sharing the initial weights; peers whose
    framework is missing are left out with a message."""
    from . import peers as peer_impls
    from .trainer import Trainer
    sizes, batch, rows, loss = workload["sizes"], workload["batch"], workload["rows"], workload["loss"]
    X, y = make_batch(sizes, rows, loss)
    fit_y = y if loss == "cross_entropy" or sizes[-1] > 1 else y[:, 0]
    epochs = {}
    for peer in peers:
        trainer = Trainer(sizes, loss=loss, optimizer="adam", lr=1e-3, batch_size=batch, seed=0)
        params, config = trainer.params, trainer.config
        try:
            if peer in ("fastbp", "fastbp_step"):
                epochs[peer] = _fastbp_epochs(trainer, X, y, batch, stepwise=peer == "fastbp_step")
            elif peer in ("torch", "torch_compile"):
                epochs[peer] = _torch_epochs(config, params, X, y, batch, "fused" if peer == "torch" else "compile")
            elif peer == "jax_step":
                epochs[peer] = _jax_step_epochs(config, params, X, y, batch)
            elif peer == "jax_scan":
                epochs[peer] = peer_impls.jax_epoch_peer(config, params, X, y, batch)
            elif peer == "sklearn":
                epochs[peer] = _sklearn_epochs(config, params, X, fit_y, batch)
            else:
                raise ValueError(f"unknown peer {peer!r}; valid: {', '.join(SMALL_PEERS)}")
        except ImportError as exc:
            print(f"skipping the {peer} peer: {exc}", file=sys.stderr)
            continue
        epochs[peer]()  # warm-up: compilation, caches
    return epochs


# Each round times a peer's epochs for at least this long (an epoch of online takes milliseconds).
SECONDS_PER_ROUND = 0.2


def run_small(workload, peers=SMALL_PEERS, rounds=5):
    """{peer: {"epoch_s", "step_us"}}: the median over interleaved rounds of a round's mean epoch time.

    In each round every peer, in turn, waits 0.2 s (the previous peer's idle threads stop spinning), runs
    one untimed epoch (caches and clock warm again after the pause), then as many timed epochs as take
    about SECONDS_PER_ROUND."""
    epochs = build_epochs(workload, peers)
    samples = {peer: [] for peer in epochs}
    for _ in range(rounds):
        for peer, epoch in epochs.items():
            time.sleep(0.2)
            began = time.perf_counter()
            epoch()
            count = max(1, round(SECONDS_PER_ROUND / max(time.perf_counter() - began, 1e-6)))
            began = time.perf_counter()
            for _ in range(count):
                epoch()
            samples[peer].append((time.perf_counter() - began) / count)
    steps = workload["rows"] // workload["batch"]
    return {peer: {"epoch_s": statistics.median(s), "step_us": statistics.median(s) / steps * 1e6}
            for peer, s in samples.items()}


_FIRST_RUN = """
import time
start = time.perf_counter()
import numpy as np
{imports}
rng = np.random.default_rng(0)
X = rng.standard_normal((20000, 64)).astype(np.float32)
y = rng.integers(0, 10, 20000)
{fit}
model.predict(X[:100])
print(time.perf_counter() - start)
"""
FIRST_RUN_JOBS = {
    "fastbp Trainer": ("import fastbp", "model = fastbp.Trainer([64, 100, 10], loss='cross_entropy', batch_size=200, "
                       "seed=0); model.fit(X, y, epochs=1, verbose=0)"),
    "fastbp MLPClassifier": ("import fastbp", "model = fastbp.MLPClassifier(max_iter=1, random_state=0); "
                             "import warnings; warnings.simplefilter('ignore'); model.fit(X, y)"),
    "sklearn MLPClassifier": ("from sklearn.neural_network import MLPClassifier",
                              "model = MLPClassifier(max_iter=1, random_state=0); import warnings; "
                              "warnings.simplefilter('ignore'); model.fit(X, y)"),
}


def first_run_seconds(job, cache_dir):
    imports, fit = FIRST_RUN_JOBS[job]
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    run = subprocess.run([sys.executable, "-c", _FIRST_RUN.format(imports=imports, fit=fit)], env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"first-run probe {job!r} failed: {run.stderr[-2000:]}")
    return float(run.stdout.split()[-1])


def first_runs(jobs=tuple(FIRST_RUN_JOBS)):
    """{job: {"cold_s", "warm_s"}}: a new process's import + fit + predict, kernel cache empty then warm."""
    results = {}
    for job in jobs:
        with tempfile.TemporaryDirectory(prefix="fastbp-numba-cache-") as cache_dir:
            cold = first_run_seconds(job, cache_dir)
            results[job] = {"cold_s": cold, "warm_s": first_run_seconds(job, cache_dir)}
    return results


def format_small(results, first=None):
    lines = ["Small models: seconds per epoch (median of interleaved rounds), per step in microseconds", "",
             f"{'workload':<11} {'peer':<14} {'s/epoch':>9} {'us/step':>9} {'fastbp x':>9}"]
    for name, res in results.items():
        base = res.get("fastbp")
        for peer, r in res.items():
            ratio = r["epoch_s"] / base["epoch_s"] if base else float("nan")
            lines.append(f"{name:<11} {peer:<14} {r['epoch_s']:9.4f} {r['step_us']:9.1f} {ratio:9.2f}")
        others = {p: r["epoch_s"] for p, r in res.items() if not p.startswith("fastbp")}
        if base and others:
            best = min(others, key=others.get)
            lines.append(f"{'':<11} fastbp against the best peer ({best}): {others[best] / base['epoch_s']:.2f}x")
    if first:
        lines += ["", "First run, new process: import, one epoch of 20,000 rows of [64, 100, 10], predict"]
        for job, r in first.items():
            lines.append(f"  {job:<22} {r['cold_s']:6.1f} s with an empty kernel cache, {r['warm_s']:5.2f} s warm")
    lines += ["", "fastbp x = peer's epoch time / fastbp fit's (above 1: fastbp is faster)."]
    return "\n".join(lines)
