"""asv benchmarks on the five shared workloads: step time, peak memory, first-step (compile) time.

asv treats lower as better, so everything here is seconds or bytes. Smoke test against the installed
environment: `asv run --python=same --quick`.
"""
import os
import subprocess
import sys
import tempfile

from fastbp.bench import WORKLOADS, make_batch
from fastbp.trainer import Trainer

NAMES = list(WORKLOADS)


class TrainingStep:
    params = [NAMES]
    param_names = ["workload"]
    timeout = 600

    def setup(self, name):
        w = WORKLOADS[name]
        self.X, self.y = make_batch(w["sizes"], w["batch"], w["loss"])
        self.trainer = Trainer(w["sizes"], loss=w["loss"], batch_size=w["batch"], seed=0)
        for _ in range(2):  # compile or load the kernels, allocate the workspace
            self.trainer.step(self.X, self.y)

    def time_step(self, name):
        """One training step: forward, loss, backward, Adam update."""
        self.trainer.step(self.X, self.y)

    def peakmem_training(self, name):
        """Peak resident memory of the process after setup plus three steps."""
        for _ in range(3):
            self.trainer.step(self.X, self.y)


class FirstStep:
    """Import plus first step of a new network in a fresh process, with Numba's on-disk cache empty
    (compilation included) and warm (what every later run of a program pays). mnist's step takes the
    layer-at-a-time kernels (cpu/step.py: run), tiny's the per-thread pipeline (run_pipeline): two
    separately compiled entry points."""
    params = [["cold_cache", "warm_cache"], ["mnist", "tiny"]]
    param_names = ["cache", "workload"]
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, cache, name):
        self.cache_dir = tempfile.mkdtemp(prefix="fastbp-numba-cache-")
        if cache == "warm_cache":
            self._run(name)

    def _run(self, name):
        w = WORKLOADS[name]
        code = ("import time; t = time.perf_counter(); import fastbp; from fastbp.bench import make_batch; "
                f"tr = fastbp.Trainer({w['sizes']}, loss={w['loss']!r}, seed=0); "
                f"tr.step(*make_batch({w['sizes']}, {w['batch']}, {w['loss']!r})); "
                "print(time.perf_counter() - t)")
        env = dict(os.environ, NUMBA_CACHE_DIR=self.cache_dir)
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        return float(out.stdout.strip().splitlines()[-1])

    def track_first_step_seconds(self, cache, name):
        return self._run(name)

    track_first_step_seconds.unit = "seconds"
