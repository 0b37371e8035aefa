"""First-call cost as a user sees it: import fastbp, build a network, run one step.

Run it twice: the first run in a fresh checkout compiles every kernel (and fills Numba's on-disk cache),
the second loads them from the cache. `--clear` empties the cache first.
"""
import argparse
import pathlib
import time

start = time.perf_counter()
parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--clear", action="store_true", help="delete fastbp's compiled-kernel cache first")
args = parser.parse_args()

if args.clear:
    import importlib.util
    root = pathlib.Path(importlib.util.find_spec("fastbp").origin).parent
    for cache in root.rglob("__pycache__"):
        for f in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            f.unlink()
    start = time.perf_counter()

import numpy as np  # noqa: E402

import fastbp  # noqa: E402

imported = time.perf_counter()
t = fastbp.Trainer([784, 800, 10], loss="cross_entropy", seed=0)
X = np.zeros((128, 784), np.float32)
y = np.zeros(128, np.int64)
t.step(X, y)
done = time.perf_counter()
print(f"import {imported - start:.2f} s, first step {done - imported:.2f} s, total {done - start:.2f} s")
