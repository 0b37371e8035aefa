"""Where one thread with no parallel region (cpu/serial.py) stops beating the parallel kernels (cpu/step.py).

For networks of several widths and batch sizes, times a training step both ways on this machine: the
serial path as fit runs it (chunks of steps in one call, loop.py) and the parallel path as fit runs it
(one compiled call per step, every thread). Prints the work per step (batch x the network's weights and
biases, in multiply-adds) and the ratio, sorted by work: the crossover is where the ratio passes 1,
and backend.serial_work() is set from it (per BLAS kernel type: run it with each). Run it with nothing else on the machine:

    python scripts/serial_crossover.py
"""
import statistics
import time

import numpy as np

import fastbp
from fastbp.cpu import backend as cpu_backend

CASES = [([16, 64, 64, 4], 32), ([64, 100, 10], 64), ([64, 100, 10], 128), ([64, 100, 10], 200), ([64, 100, 10], 400),
         ([32, 256, 256, 1], 16), ([32, 256, 256, 1], 32), ([32, 256, 256, 1], 64), ([128, 256, 10], 64),
         ([128, 256, 10], 128), ([784, 128, 10], 32), ([784, 128, 10], 64), ([256, 512, 512, 10], 16),
         ([256, 512, 512, 10], 32)]


def epoch_seconds(trainer, X, y, batch, serial):
    cpu_backend.SERIAL_WORK = 2 ** 62 if serial else 0
    times = []
    for _ in range(5):
        began = time.perf_counter()
        trainer.fit(X, y, epochs=1, batch_size=batch, shuffle=False, verbose=0)
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:])


def main():
    saved = cpu_backend.SERIAL_WORK
    rows = []
    for sizes, batch in CASES:
        rng = np.random.default_rng(0)
        n = batch * max(8, 2 ** 14 // batch)
        X = rng.standard_normal((n, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], n) if sizes[-1] > 1 else rng.standard_normal(n).astype(np.float32)
        loss = "cross_entropy" if sizes[-1] > 1 else "mse"
        trainer = fastbp.Trainer(sizes, loss=loss, batch_size=batch, seed=0)
        steps = n // batch
        serial = min(epoch_seconds(trainer, X, y, batch, True) for _ in range(2)) / steps
        parallel = min(epoch_seconds(trainer, X, y, batch, False) for _ in range(2)) / steps
        work = batch * sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
        rows.append((work, sizes, batch, serial, parallel))
    cpu_backend.SERIAL_WORK = saved
    print(f"{'work (MACs)':>12} {'sizes':<22} {'batch':>5} {'serial us':>10} {'parallel us':>12} "
          f"{'parallel/serial':>16}")
    for work, sizes, batch, serial, parallel in sorted(rows):
        print(f"{work:12,d} {str(sizes):<22} {batch:5d} {serial * 1e6:10.1f} {parallel * 1e6:12.1f} "
              f"{parallel / serial:16.2f}")
    print(f"backend.serial_work() = {cpu_backend.serial_work():,}: steps below it take the serial path")


if __name__ == "__main__":
    main()
