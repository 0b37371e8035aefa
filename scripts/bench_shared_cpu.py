"""fastbp's step time on a shared CPU: quiet, then with one CPU-bound busy process per core beside it.

A fair share is about 2x the quiet step time (the cores are split between fastbp and the busy
processes). Rounds alternate quiet and loaded so that drift hits both alike; the figure per
condition is the median step time. Run it with nothing else on the machine:

    python scripts/bench_shared_cpu.py                      # every benchmark workload
    python scripts/bench_shared_cpu.py --workloads mnist deep --rounds 7

Prints one row per workload: quiet ms, loaded ms, their ratio, and the threading layer in use. The
large workloads run Trainer.step on one batch; the small-model workloads (online, rl, sk_default,
tabular) run fit's epochs as users do (chunks of steps where they apply), their figure the epoch's time
per step.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

from fastbp import Trainer
from fastbp.bench import WORKLOADS, make_batch
from fastbp.bench_small import SMALL_WORKLOADS
from fastbp.cpu import threading_layer

BUSY_LOOP = "while True: pass"


def start_busy(count):
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    time.sleep(0.3)  # let them reach the scheduler's steady state
    return procs


def stop_busy(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def timed_steps(run, steps, seconds):
    """Per-step times of as many calls of run() (each `steps` steps) as fit in `seconds` (at least 5), after
    one untimed call."""
    run()
    times, end = [], time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < end:
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) / steps)
    return times


def measure(name, rounds, seconds, busy, threads):
    spec = WORKLOADS[name] if name in WORKLOADS else SMALL_WORKLOADS[name]
    trainer = Trainer(spec["sizes"], loss=spec["loss"], batch_size=spec["batch"], seed=0, threads=threads)
    if name in WORKLOADS:
        X, y = make_batch(spec["sizes"], spec["batch"], spec["loss"])
        run, steps = (lambda: trainer.step(X, y)), 1
    else:
        X, y = make_batch(spec["sizes"], spec["rows"], spec["loss"])
        run, steps = (lambda: trainer.fit(X, y, epochs=1, shuffle=False, verbose=0)), -(-spec["rows"] // spec["batch"])
    for _ in range(3):  # compile and warm up
        run()
    quiet, loaded = [], []
    for _ in range(rounds):
        quiet += timed_steps(run, steps, seconds)
        procs = start_busy(busy)
        try:
            loaded += timed_steps(run, steps, seconds)
        finally:
            stop_busy(procs)
        time.sleep(0.2)
    return statistics.median(quiet), statistics.median(loaded)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    every = list(WORKLOADS) + list(SMALL_WORKLOADS)
    p.add_argument("--workloads", nargs="*", default=every, choices=every)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds-per-round", type=float, default=1.0)
    p.add_argument("--busy", type=int, default=os.cpu_count(), help="busy processes beside fastbp")
    p.add_argument("--threads", type=int, default=None, help="Trainer(threads=...); default: fastbp's choice")
    args = p.parse_args(argv)
    print(f"{args.busy} busy processes beside fastbp on {os.cpu_count()} CPUs (one per core: a fair share is "
          "about 2x the quiet step time)")
    print(f"{'workload':16} {'quiet ms':>9} {'loaded ms':>10} {'ratio':>6}  layer")
    for name in args.workloads:
        quiet, loaded = measure(name, args.rounds, args.seconds_per_round, args.busy, args.threads)
        print(f"{name:16} {quiet * 1e3:9.3f} {loaded * 1e3:10.3f} {loaded / quiet:6.2f}  {threading_layer.name()}",
              flush=True)


if __name__ == "__main__":
    main()
