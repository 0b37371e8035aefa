"""scripts/bench_cuda.py runs end to end: its --smoke mode drives the real code path (both fastbp paths,
PyTorch TF32 off and on, interleaved timing, the first-loss agreement check) on tiny sizes under the CUDA
simulator with PyTorch on the CPU. The real measurements need a GPU; this keeps the script from rotting."""
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
SCRIPT = pathlib.Path(__file__).parents[2] / "scripts" / "bench_cuda.py"


def test_bench_cuda_smoke_runs_and_losses_agree():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.strip().splitlines()[-1]
    for column in ("fastbp ", "fastbp_general ", "torch ", "torch_tf32 ", "first-loss rel diff"):
        assert column in line
    assert "MISMATCH" not in line
