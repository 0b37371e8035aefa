"""The crossovers between fastbp's CPU paths: one part on one thread, split steps, the parallel kernels.

For networks of several widths and batch sizes, times a training step three ways on this machine, each as
fit runs it: the serial path with each step in one part on one thread and with its batch split into
parts that every kernel thread claims (cpu/serial.py; chunks of steps in one call, loop.py), and the
parallel path (one compiled call per step, every thread; cpu/step.py). Prints the work per step (batch x
the network's weights and biases, in multiply-adds) and the ratios, sorted by work: backend.SPLIT_WORK
is where split steps start to beat one part, backend.serial_work() where the parallel kernels start to
beat both (per BLAS kernel type: run it with each). Run it with nothing else on the machine:

    python scripts/serial_crossover.py
"""
import statistics
import time

import numpy as np

import fastbp
from fastbp.cpu import backend as cpu_backend

CASES = [([16, 64, 64, 4], 32), ([16, 64, 64, 4], 64), ([32, 64, 64, 4], 128), ([32, 96, 96, 4], 64), ([64, 100, 10], 64), ([64, 100, 10], 128), ([64, 100, 10], 200), ([64, 100, 10], 400),
         ([32, 256, 256, 1], 16), ([32, 256, 256, 1], 32), ([32, 256, 256, 1], 64), ([128, 256, 10], 64),
         ([128, 256, 10], 128), ([784, 128, 10], 32), ([784, 128, 10], 64), ([256, 512, 512, 10], 16),
         ([256, 512, 512, 10], 32)]


def epoch_seconds(trainer, X, y, batch, path):
    """path: "one" (one part, one thread), "split" (split steps) or "parallel"."""
    cpu_backend.SERIAL_WORK = 0 if path == "parallel" else 2 ** 62
    cpu_backend.SPLIT_WORK = 0 if path == "split" else 2 ** 62
    times = []
    for _ in range(5):
        began = time.perf_counter()
        trainer.fit(X, y, epochs=1, batch_size=batch, shuffle=False, verbose=0)
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:])


def main():
    saved = cpu_backend.SERIAL_WORK, cpu_backend.SPLIT_WORK
    rows = []
    for sizes, batch in CASES:
        rng = np.random.default_rng(0)
        n = batch * max(8, 2 ** 14 // batch)
        X = rng.standard_normal((n, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], n) if sizes[-1] > 1 else rng.standard_normal(n).astype(np.float32)
        loss = "cross_entropy" if sizes[-1] > 1 else "mse"
        trainer = fastbp.Trainer(sizes, loss=loss, batch_size=batch, seed=0)
        steps = n // batch
        one, split, parallel = (min(epoch_seconds(trainer, X, y, batch, path) for _ in range(2)) / steps
                                for path in ("one", "split", "parallel"))
        work = batch * sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
        rows.append((work, sizes, batch, one, split, parallel))
    cpu_backend.SERIAL_WORK, cpu_backend.SPLIT_WORK = saved
    print(f"{'work (MACs)':>12} {'sizes':<22} {'batch':>5} {'one part us':>11} {'split us':>9} {'parallel us':>12} "
          f"{'one/split':>10} {'parallel/best serial':>21}")
    for work, sizes, batch, one, split, parallel in sorted(rows):
        print(f"{work:12,d} {str(sizes):<22} {batch:5d} {one * 1e6:11.1f} {split * 1e6:9.1f} {parallel * 1e6:12.1f} "
              f"{one / split:10.2f} {parallel / min(one, split):21.2f}")
    print(f"backend.SPLIT_WORK = {cpu_backend.SPLIT_WORK:,}, backend.serial_work() = {cpu_backend.serial_work():,}: "
          "steps from the first split (on more than one kernel thread), steps below the second take the serial path")


if __name__ == "__main__":
    main()
