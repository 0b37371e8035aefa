"""asv benchmarks on the five shared workloads: step time, peak memory, first-fit (compile) time, speed
against PyTorch eager with fused Adam.

asv treats lower as better, so everything here is seconds or bytes. Smoke test against the installed
environment: `asv run --python=same --quick`.
"""
import os
import shutil
import tempfile

from fastbp.bench import WORKLOADS, first_fit_seconds, make_batch, run_workload
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


class FirstFit:
    """A new process's import plus first fit (one epoch, validation data) of a new network, with Numba's
    on-disk cache empty (compilation included) and warm (what every later run of a program pays). mnist
    takes the layer-at-a-time kernels (cpu/step.py: run), tiny's steps the per-thread pipeline
    (run_pipeline) and its validation run: two separately compiled entry points."""
    params = [["cold_cache", "warm_cache"], ["mnist", "tiny"]]
    param_names = ["cache", "workload"]
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, cache, name):
        self.cache_dir = tempfile.mkdtemp(prefix="fastbp-numba-cache-")
        if cache == "warm_cache":
            self.track_first_fit_seconds(cache, name)

    def teardown(self, cache, name):
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def track_first_fit_seconds(self, cache, name):
        w = WORKLOADS[name]
        return first_fit_seconds(w["sizes"], w["batch"], w["loss"], self.cache_dir)

    track_first_fit_seconds.unit = "seconds"


class AgainstPyTorch:
    """PyTorch eager's step time (fused Adam, every core) over fastbp's, measured side by side (asv
    tracks it as a number: higher is better for fastbp)."""
    params = [NAMES]
    param_names = ["workload"]
    timeout = 900
    number = 1
    repeat = 1

    def setup(self, name):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise NotImplementedError("PyTorch is not installed")  # asv's way to skip a benchmark

    def track_speedup_vs_torch(self, name):
        w = WORKLOADS[name]
        res = run_workload(name, w["sizes"], w["batch"], w["loss"], ("fastbp", "torch"), rounds=3,
                           seconds_per_round=0.3, threads=os.cpu_count())
        return res["torch"]["step_s"] / res["fastbp"]["step_s"]

    track_speedup_vs_torch.unit = "x"
