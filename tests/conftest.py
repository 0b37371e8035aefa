import os
import zlib

# The CUDA backend's tests run under Numba's CUDA simulator unless asked for a real GPU. This must be
# set before anything imports numba (the simulator is chosen when numba reads its configuration).
if os.environ.get("FASTBP_TEST_REAL_GPU") != "1":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

# One generic compiled entry point for the suite's hundreds of configurations, instead of one variant per
# configuration (cpu/variants.py); tests/cpu/test_variants.py checks the variants against it.
os.environ.setdefault("FASTBP_SPECIALIZE", "0")

import signal  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# A suite started in the background by a non-interactive shell (`cmd &`) inherits SIGINT ignored, and hands
# that on to every subprocess: the Ctrl-C tests would see no KeyboardInterrupt and their children would
# never stop. They test fastbp's handling of Ctrl-C, so the suite runs under Python's default handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ACTIVATIONS = ["identity", "relu", "leaky_relu", "tanh", "sigmoid"]
# The activations whose derivative the kernels take from A (elu, softplus) or store in the forward pass
# (gelu, gelu_tanh, silu); "mixed" stands for one activation per hidden layer (per_layer below).
NEW_ACTIVATIONS = ["elu", "softplus", "gelu", "gelu_tanh", "silu", "mixed"]
ALL_ACTIVATIONS = ACTIVATIONS + NEW_ACTIVATIONS
_MIXED = ["gelu", "relu", "silu", "tanh", "elu", "softplus", "gelu_tanh", "sigmoid", "leaky_relu", "identity"]
LOSSES = ["mse", "cross_entropy", "bce", "poisson"]
# The newer losses, and options of the older ones: names for loss_options() below.
NEW_LOSSES = ["huber", "l1", "huber_delta", "smoothed_ce"]
ALL_LOSSES = LOSSES + NEW_LOSSES
_LOSS_OPTIONS = {"huber_delta": ("huber", {"huber_delta": 0.3}),
                 "smoothed_ce": ("cross_entropy", {"label_smoothing": 0.2})}


def interrupted_child(script, seconds=1.0, timeout=120):
    """(returncode, stdout, stderr) of `python -c script` run from the project root and sent SIGINT `seconds`
    after its first line, which must say "training" (the Ctrl-C tests: a child that trains until stopped)."""
    import subprocess
    import sys
    import time
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=root)
    try:
        assert child.stdout.readline().strip() == "training"
        time.sleep(seconds)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=timeout)
    finally:
        child.kill()
    return child.returncode, out, err


def loss_options(name):
    """(loss, options) for a test's loss name: the Trainer's loss and its extra keywords (the reference's
    loss_and_gradients and Network take the same keywords)."""
    return _LOSS_OPTIONS.get(name, (name, {}))


def per_layer(activation, sizes):
    """The Trainer's activation argument for a test's activation name: "mixed" becomes a list of different
    activations, one per hidden layer of sizes (a slope-storing one first)."""
    return _MIXED[:len(sizes) - 2] if activation == "mixed" else activation


def rel_error(actual, expected):
    """max |actual - expected| / max |expected|: the norm-wise relative error of a whole array."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max() if expected.size else 0.0
    return float(np.abs(actual - expected).max() / scale) if scale > 0 else float(np.abs(actual).max())


def make_targets(rng, loss, n, width):
    loss = loss_options(loss)[0]
    if loss == "cross_entropy":
        return rng.integers(0, width, n)
    if loss == "bce":
        return rng.random((n, width))
    if loss == "poisson":
        return rng.poisson(1.5, (n, width)).astype(np.float64)
    return rng.standard_normal((n, width))


@pytest.fixture
def rng(request):
    # A fresh, test-specific stream: every test sees different random inputs, reproducibly.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=["serial", "parallel"])
def kernel_path(request, monkeypatch):
    """Runs a test on each CPU path a step can take: "serial" (cpu/serial.py, one thread, whatever the
    work, its delta products on copies of W^T wherever blas.copy_beats_transposed picks them, as with
    OpenBLAS's AVX-512 kernels; the rest of the suite copies as the machine's BLAS decides) or "parallel"
    (cpu/step.py's parallel kernels, whatever the work; on a one-core machine the serial path serves anyway)."""
    from fastbp.cpu import backend
    monkeypatch.setattr(backend, "SERIAL_WORK", 2 ** 62 if request.param == "serial" else 0)
    monkeypatch.setattr(backend, "COPY_WEIGHTS", request.param == "serial")
    return request.param


def pytest_addoption(parser):
    parser.addoption("--stress", type=int, default=1, metavar="N",
                     help="run every CUDA test N times: the simulator runs a block's threads concurrently, and a "
                          "race (a missing barrier, a reused shared buffer) shows only now and then")


def pytest_generate_tests(metafunc):
    """Stress mode: `python -m pytest tests/cuda --stress 20` runs each CUDA test 20 times."""
    rounds = metafunc.config.getoption("stress")
    if rounds > 1 and "cuda" in metafunc.definition.path.parts:
        metafunc.fixturenames.append("stress_round")
        metafunc.parametrize("stress_round", range(rounds), ids=lambda r: f"round{r}")


@pytest.fixture
def stress_round(request):
    return request.param
