"""Data loading (IDX raw and gzipped, .npz) and the command line."""
import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import cli, datasets


def write_idx(path, array, compress=False):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    array = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 3)).astype(np.uint8)
    labels = rng.integers(0, 10, 5).astype(np.uint8)
    write_idx(tmp_path / "img", images, compress)
    write_idx(tmp_path / "lab", labels, compress)
    X, y = datasets.load_idx(tmp_path / "img", tmp_path / "lab")
    assert X.shape == (5, 12) and X.dtype == np.float32
    assert np.allclose(X * 255, images.reshape(5, -1)) and np.array_equal(y, labels)
    floats = rng.standard_normal((3, 2)).astype(">f4")
    write_idx(tmp_path / "f", floats, compress)
    assert np.array_equal(datasets.read_idx(tmp_path / "f"), floats)


def test_bad_idx_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78 not idx")
    with pytest.raises(ValueError, match="magic"):
        datasets.read_idx(tmp_path / "junk")
    write_idx(tmp_path / "img", np.zeros((5, 2, 2), np.uint8))
    data = (tmp_path / "img").read_bytes()
    (tmp_path / "short").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="promises"):
        datasets.read_idx(tmp_path / "short")
    write_idx(tmp_path / "lab", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="5 images"):
        datasets.load_idx(tmp_path / "img", tmp_path / "lab")


def test_npz_layouts(tmp_path):
    np.savez(tmp_path / "plain.npz", X=np.ones((4, 3)), y=np.arange(4))
    np.savez(tmp_path / "keras.npz", x_train=np.full((4, 2, 2), 255, np.uint8), y_train=np.arange(4),
             x_test=np.zeros((2, 2, 2), np.uint8), y_test=np.arange(2))
    X, y, Xt, yt = datasets.load_npz(tmp_path / "plain.npz")
    assert X.shape == (4, 3) and Xt is None
    X, y, Xt, yt = datasets.load_npz(tmp_path / "keras.npz")
    assert X.shape == (4, 4) and np.all(X == 1.0) and Xt.shape == (2, 4)
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="needs arrays"):
        datasets.load_npz(tmp_path / "other.npz")


def test_cli_trains_on_the_generated_data(capsys):
    assert cli.main(["--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "epoch 3/3:" in out and "test accuracy" in out and "samples/s" in out
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.93


def test_cli_trains_on_idx_and_npz_and_saves(tmp_path, capsys):
    X, y = datasets.make_classification(n_samples=600, n_features=16, n_classes=3, seed=0)
    images = np.clip(X * 40 + 128, 0, 255).astype(np.uint8).reshape(600, 4, 4)
    write_idx(tmp_path / "img.gz", images, compress=True)
    write_idx(tmp_path / "lab.gz", y.astype(np.uint8), compress=True)
    assert cli.main(["train", "--idx", str(tmp_path / "img.gz"), str(tmp_path / "lab.gz"), "--epochs", "1",
                     "--save", str(tmp_path / "m.npz")]) == 0
    assert fastbp.Trainer.load(tmp_path / "m.npz").sizes == (16, 256, 3)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    assert cli.main(["--data", str(tmp_path / "d.npz"), "--epochs", "2", "--quiet", "--hidden", "8", "8",
                     "--activation", "gelu", "silu", "--input-dropout", "0.1", "--max-norm", "2",
                     "--label-smoothing", "0.1", "--class-weight", "balanced",
                     "--plot", str(tmp_path / "curves.png"),
                     "--save", str(tmp_path / "m2.npz")]) == 0
    assert "test accuracy" in capsys.readouterr().out
    config = fastbp.Trainer.load(tmp_path / "m2.npz").config
    assert (config.activation, config.input_dropout, config.max_norm, config.label_smoothing) == (
        ("gelu", "silu"), 0.1, 2.0, 0.1)
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", X=np.ones((10, 3)), y=np.full(10, np.nan))
    assert cli.main(["--data", str(tmp_path / "d.npz"), "--epochs", "1"]) == 2
    assert "fastbp: error:" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "fastbp", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout and "bench" in result.stdout


def test_mnist_example_script_on_an_idx_directory(tmp_path):
    """scripts/mnist.py on a directory laid out like MNIST's (small synthetic images, gzipped)."""
    import pathlib
    X, y = datasets.make_classification(n_samples=700, n_features=784, n_classes=10, seed=0)
    images = np.clip(X * 40 + 128, 0, 255).astype(np.uint8).reshape(700, 28, 28)
    for prefix, sl in (("train", slice(0, 600)), ("t10k", slice(600, 700))):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[sl], compress=True)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", y[sl].astype(np.uint8), compress=True)
    assert [a.shape for a in datasets.load_mnist_dir(tmp_path)] == [(600, 784), (600,), (100, 784), (100,)]
    script = pathlib.Path(__file__).parents[1] / "scripts" / "mnist.py"
    result = subprocess.run([sys.executable, str(script), "--mnist-dir", str(tmp_path), "--epochs", "10", "--batch-size", "32"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    fastbp_line = next(line for line in result.stdout.splitlines() if line.startswith("fastbp"))
    assert float(fastbp_line.split()[1]) > 0.5  # test accuracy column (chance: 0.1)


def test_mnist_record_script_ensemble(tmp_path):
    """scripts/mnist_record.py --ensemble 2 on a small MNIST-like directory with test files: it trains on
    every training row and its last line is the test error of the two networks' mean probabilities, the
    same as the script's own networks trained here give."""
    import importlib.util
    import pathlib
    X, y = datasets.make_classification(n_samples=400, n_features=784, n_classes=10, seed=1)
    images = np.clip(X * 40 + 128, 0, 255).astype(np.uint8).reshape(400, 28, 28)
    for prefix, sl in (("train", slice(0, 300)), ("t10k", slice(300, 400))):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[sl], compress=True)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", y[sl].astype(np.uint8), compress=True)
    script = pathlib.Path(__file__).parents[1] / "scripts" / "mnist_record.py"
    result = subprocess.run([sys.executable, str(script), "--mnist-dir", str(tmp_path), "--epochs", "1",
                             "--ensemble", "2", "--seed", "3", "--report-every", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("300 training rows; test error on 100 rows; 2 x 1 epochs")
    assert [line.replace(":", ",").split(",")[0] for line in lines[1:-1]] == [
        "network 1", "mean of networks 1-1", "network 2", "mean of networks 1-2"]
    spec = importlib.util.spec_from_file_location("mnist_record", script)
    record = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(record)
    X_train, y_train, X_test, y_test, _ = record.load(tmp_path)
    mean = np.zeros((100, 10))
    for seed in (3, 4):
        t = record.trainer(1, len(X_train), seed)
        t.fit(X_train, y_train, epochs=1, verbose=0)
        mean += t.predict(X_test)
    assert lines[-1] == f"test error: {100 * np.mean(mean.argmax(axis=1) != y_test):.2f}%"


def test_bench_command_runs_and_reports_the_losses_agree(tmp_path):
    """`python -m fastbp bench --all` (the README's benchmark command) on a small custom network, one short
    round: every peer's row with its memory, fastbp's first fit timed with the kernel cache empty and warm,
    and fastbp's first-step loss equal to the NumPy reference's to float32 rounding."""
    import json
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "fastbp", "bench", "--sizes", "16", "32", "4", "--batch", "64",
                             "--peers", "fastbp", "torch", "numpy", "--rounds", "1", "--seconds-per-round", "0.05",
                             "--all", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GEMM ceiling" in result.stdout and "against the best peer (torch)" in result.stdout
    workload = next(iter(json.loads(out.read_text())["workloads"].values()))
    peers = workload["peers"]
    assert peers["fastbp"]["first_loss"] == pytest.approx(peers["numpy"]["first_loss"], rel=1e-5)
    assert peers["fastbp"]["first_loss"] == pytest.approx(peers["torch"]["first_loss"], rel=1e-5)
    for r in peers.values():
        assert 0 < r["needed_gflops"] < r["gflops"]
        assert 0 < r["memory"]["used_bytes"] < 2 ** 30
    # An empty cache compiles (seconds); a warm one loads: far quicker.
    assert workload["first_fit"]["warm_s"] < workload["first_fit"]["cold_s"]


def bad_argument_cases(tmp_path):
    """(arguments, words the one-line message must hold) for every kind of argument train cannot use."""
    X = np.ones((20, 3), np.float32)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", np.zeros(20, np.int64))
    np.save(tmp_path / "flat.npy", np.ones(20, np.float32))
    np.save(tmp_path / "empty.npy", np.ones((0, 3), np.float32))
    np.save(tmp_path / "records.npy", np.zeros(20, dtype=[("a", "f4"), ("b", "i4")]))
    np.save(tmp_path / "objects.npy", np.array([None] * 20, dtype=object), allow_pickle=True)
    (tmp_path / "folder").mkdir()
    data = ["--data", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.npy")]
    return [
        (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"), (["--hidden", "0"], "--hidden"),
        (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--dropout", "1"], "--dropout"),
        (["--test-fraction", "1"], "--test-fraction"), (["--validation-split", "1"], "--validation-split"),
        (["--threads", "0"], "--threads"),
        (["--data", str(tmp_path / "missing.npz")], "does not exist"),
        (["--data", str(tmp_path / "folder")], "is a directory"),
        (["--data", str(tmp_path / "flat.npy"), "--labels", str(tmp_path / "y.npy")], "2-D"),
        (["--data", str(tmp_path / "records.npy"), "--labels", str(tmp_path / "y.npy")], "must be numbers"),
        (["--data", str(tmp_path / "objects.npy"), "--labels", str(tmp_path / "y.npy")], "numbers"),
        (["--data", str(tmp_path / "empty.npy"), "--labels", str(tmp_path / "y.npy")], "rows"),
        (["--data", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "folder")], "is a directory"),
        (["--data", str(tmp_path / "X.npy")], "--labels"),
        (["--labels", str(tmp_path / "y.npy")], "--labels goes with"),
        (["--idx", str(tmp_path / "a.gz"), str(tmp_path / "b.gz")], "does not exist"),
        (["--mnist-dir", str(tmp_path / "X.npy")], "not a directory"),
        (data + ["--save", str(tmp_path / "folder")], "is a directory"),
        (data + ["--save", str(tmp_path / "nowhere" / "m.npz")], "does not exist"),
        (data + ["--plot", str(tmp_path / "folder")], "is a directory"),
        (data + ["--hidden", "8", "8", "8", "--activation", "gelu", "silu"], "one per hidden layer (3)"),
        (data + ["--input-dropout", "1"], "--input-dropout must lie in [0, 1)"),
        (data + ["--max-norm", "0"], "--max-norm must be a positive number"),
        (data + ["--huber-delta", "2"], "--huber-delta goes with --loss huber"),
        (data + ["--label-smoothing", "1.5"], "--label-smoothing must lie in [0, 1]"),
        (data + ["--loss", "mse", "--class-weight", "balanced"], "--class-weight goes with --loss cross_entropy"),
    ]


def test_every_bad_argument_is_one_line_and_exit_status_2_before_training(tmp_path, capsys):
    """argparse's convention for arguments it cannot check itself: one line on stderr, status 2, and
    nothing printed or trained before it (a --save that cannot be written is found before the run)."""
    for argv, words in bad_argument_cases(tmp_path):
        assert cli.main(["train", *argv]) == 2, argv
        out, err = capsys.readouterr()
        assert out == "", (argv, out)
        assert err.startswith("fastbp: error:") and err.count("\n") == 1 and words in err, (argv, err)


def test_ctrl_c_in_train_saves_the_last_whole_step_and_exits_130(tmp_path):
    """SIGINT mid-run: training stops between steps, --save gets that state, one line says where it
    stopped, exit status 130 (128 + SIGINT) and no traceback."""
    import signal
    path = tmp_path / "interrupted.npz"
    proc = subprocess.Popen([sys.executable, "-m", "fastbp", "train", "--epochs", "100000", "--save", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # one line per epoch when the output is not a terminal
            if line.startswith("epoch 2/"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted after epoch" in err and f"saved {path}" in err
    t = fastbp.Trainer.load(path)
    assert t.epochs_done >= 2 and t.step_count >= t.epochs_done * 113  # 14,400 training rows, batches of 128


def test_an_mnist_directory_with_the_training_files_only_trains_on_a_held_out_split(tmp_path, capsys):
    """As ../shared/data/mnist is: no t10k files. The loader says so with a None test pair, and the command
    line holds out --test-fraction of the training rows instead of failing."""
    X, y = datasets.make_classification(n_samples=300, n_features=784, n_classes=10, seed=1)
    images = np.clip(X * 40 + 128, 0, 255).astype(np.uint8).reshape(300, 28, 28)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y.astype(np.uint8), compress=True)
    Xtr, ytr, Xte, yte = datasets.load_mnist_dir(tmp_path)
    assert Xtr.shape == (300, 784) and Xte is None and yte is None
    assert cli.main(["--mnist-dir", str(tmp_path), "--epochs", "1", "--quiet", "--hidden", "16"]) == 0
    assert "240 train rows, 60 test rows" in capsys.readouterr().out
