"""Memory-bounded training measured: a memory-mapped file against the same data in memory, and micro-batches.

    python scripts/bench_memory.py [--file-gb 4] [--rounds 3] [--dir DIR]     # nothing else running

1. One epoch over a float64 .npy file opened with np.load(mmap_mode="r") (rows converted per batch),
   against the same rows as a float64 array in memory (converted to float32 once per fit) and as a
   float32 array in memory (no conversion): samples/s
   and the peak growth of anonymous memory (RssAnon: the file's cached pages are not anonymous),
   [256, 256, 10] at batch 4096. The mapped run also runs under RLIMIT_DATA = baseline + 1 GiB, smaller
   than the file. Launches alternate, round by round; medians.
2. wide ([1024, 4096, 4096, 1024]) at batch 65536 in micro-batches of 4096 against batch 4096: samples/s
   and the peak anonymous memory of each whole run, its data included (one step of 65536 against 8 steps
   of 4096).

Each measurement runs in a subprocess of its own (`--worker ...`), so that peaks do not mix.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

WIDTH, SIZES, BATCH = 256, [256, 256, 10], 4096
WIDE = [1024, 4096, 4096, 1024]


def anon_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


class PeakAnon:
    """Samples RssAnon every 5 ms in a thread; .growth: the peak above the value at start."""

    def __enter__(self):
        self.baseline, self.peak, self.running = anon_bytes(), anon_bytes(), True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, anon_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.growth = self.peak - self.baseline


def labels_for(rows):
    return (np.arange(rows) % 10).astype(np.int64)


def write_file(path, gigabytes):
    rows = int(gigabytes * 2 ** 30) // (WIDTH * 8)
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, WIDTH))
    for start in range(0, rows, 65536):
        block = X[start:start + 65536]
        block[:] = np.random.default_rng(start).standard_normal(block.shape)
    X.flush()
    return rows


def worker_epoch(path, mode):
    import fastbp
    X_file = np.load(path, mmap_mode="r")
    y = labels_for(len(X_file))
    t = fastbp.Trainer(SIZES, loss="cross_entropy", batch_size=BATCH, seed=0)
    t.fit(np.asarray(X_file[:8192]), y[:8192], verbose=0)  # compiled and warm
    if mode == "memory":
        X = np.array(X_file)  # the same rows, in memory (float64: converted to float32 once per fit)
    elif mode == "memory32":
        X = np.array(X_file, dtype=np.float32)  # in memory, already the kernels' dtype: no conversion at all
    else:
        X = X_file
        resource.setrlimit(resource.RLIMIT_DATA, (anon_bytes() + 2 ** 30,) * 2)  # less than the file
    with PeakAnon() as peak:
        start = time.perf_counter()
        t.fit(X, y, epochs=1, verbose=0)
        seconds = time.perf_counter() - start
    print(json.dumps({"samples_per_s": len(y) / seconds, "anon_growth": peak.growth}))


def worker_wide(mode):
    """Peak anonymous memory of the whole run (data, workspaces, gradients), and samples/s after warm-up."""
    import fastbp
    from fastbp.workspaces import batch_bytes
    with PeakAnon() as peak:
        rng = np.random.default_rng(0)
        if mode == "micro":
            batch, steps, options = 65536, 1, dict(micro_batch=4096)
        else:
            batch, steps, options = 4096, 8, {}
        X = rng.standard_normal((batch, WIDE[0]), dtype=np.float32)
        y = rng.standard_normal((batch, WIDE[-1]), dtype=np.float32)
        t = fastbp.Trainer(WIDE, batch_size=batch, seed=0, **options)
        t.step(X[:4096], y[:4096])  # compiled and warm
        start = time.perf_counter()
        for _ in range(steps):
            t.step(X, y)
        seconds = time.perf_counter() - start
    print(json.dumps({"samples_per_s": batch * steps / seconds, "anon_growth": peak.peak,
                      "unchunked_activations": batch_bytes(WIDE, batch)}))


def _run(args):
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", *args], capture_output=True,
                          text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file-gb", type=float, default=4.0, help="size of the float64 file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the file goes (default: the system's temp dir)")
    parser.add_argument("--skip-wide", action="store_true", help="only the file measurement")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_epoch(*args.worker[1:]) if args.worker[0] == "epoch" else worker_wide(args.worker[1])

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "X.npy")
        rows = write_file(path, args.file_gb)
        print(f"1. One epoch, {SIZES} at batch {BATCH}, over {rows:,} rows of {WIDTH} float64 "
              f"({os.path.getsize(path) / 2 ** 30:.2f} GiB file)")
        found = {"memory": [], "memory32": [], "mapped": []}
        for _ in range(args.rounds):
            for mode in found:
                found[mode].append(_run(["epoch", path, mode]))
        for mode, runs in found.items():
            print(f"   {mode:7s} {statistics.median(r['samples_per_s'] for r in runs):12,.0f} samples/s   peak "
                  f"anonymous growth {max(r['anon_growth'] for r in runs) / 2 ** 20:8.0f} MiB")
        for mode in ("memory", "memory32"):
            ratio = statistics.median(r["samples_per_s"] for r in found["mapped"]) / \
                statistics.median(r["samples_per_s"] for r in found[mode])
            print(f"   mapped / {mode} throughput: {ratio:.3f}")
        if args.skip_wide:
            return

    print(f"\n2. wide {WIDE}: batch 65536 in micro-batches of 4096 against batch 4096")
    found = {"micro": [], "plain": []}
    for _ in range(args.rounds):
        for mode in found:
            found[mode].append(_run(["wide", mode]))
    for mode, runs in found.items():
        print(f"   {mode:6s} {statistics.median(r['samples_per_s'] for r in runs):10,.0f} samples/s   peak "
              f"anonymous memory {max(r['anon_growth'] for r in runs) / 2 ** 20:8.0f} MiB (its data included; "
              f"unchunked activations would take {runs[0]['unchunked_activations'] / 2 ** 20:,.0f} MiB)")
    ratio = statistics.median(r["samples_per_s"] for r in found["micro"]) / \
        statistics.median(r["samples_per_s"] for r in found["plain"])
    print(f"   micro-batched / plain throughput: {ratio:.3f}")


if __name__ == "__main__":
    main()
