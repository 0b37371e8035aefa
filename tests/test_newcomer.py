"""A newcomer's first hour: the README's examples run as written and do something sensible, help texts
and messages say what to do."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import cli
from fastbp.progress import EpochProgress

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading):
    """The first ```python block after a README heading."""
    text = README.read_text()
    start = text.index(heading)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def readme_blocks():
    """{heading: source} of every ```python block in the README, under the heading above it."""
    blocks, heading = {}, None
    for match in re.finditer(r"^(#+ [^\n]*)$|^```python\n(.*?)^```", README.read_text(), re.S | re.M):
        if match.group(1):
            heading = match.group(1)
        else:
            blocks[f"{heading} ({len(blocks) + 1})"] = match.group(2)
    return blocks


@pytest.mark.parametrize("heading", list(readme_blocks()))
def test_every_readme_code_block_runs_as_written_on_its_own(heading, tmp_path, monkeypatch):
    """Each block in a fresh namespace (nothing defined by another block), in an empty directory."""
    source = readme_blocks()[heading]
    if 'device="cuda"' in source:
        from numba import cuda
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or not cuda.is_available():
            pytest.skip("the GPU example needs an NVIDIA GPU and a CUDA build of PyTorch")
    for module in re.findall(r"^(?:from|import) (\w+)", source, re.M):
        pytest.importorskip(module)
    if "hist.plot" in source:
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    exec(compile(source, f"README.md: {heading}", "exec"), {"__name__": "__readme__"})


def test_readme_quickstart_and_training_loop_run_and_learn(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write model.npz, best.npz, last.npz, curves.png
    ns = {}
    exec(readme_block("## Quickstart"), ns)
    assert ns["t"].evaluate(ns["X"][16000:], ns["y"][16000:])["accuracy"] > 0.9
    pytest.importorskip("matplotlib")  # the loop example plots
    ns = {}
    exec(readme_block("### The training loop"), ns)
    t2 = ns["t2"]
    # The schedule spans the whole run: the rate is positive until the last epoch, including after resuming.
    assert t2.epochs_done == 30 and all(lr > 0 for lr in ns["hist"].history["lr"])
    assert t2.evaluate(ns["X"], ns["y"])["accuracy"] > 0.9


def test_readme_export_example_runs_and_agrees(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(readme_block("### Export: PyTorch and ONNX"), ns)
    assert float(capsys.readouterr().out.split()[-1]) < 1e-5
    assert (tmp_path / "model.onnx").exists()
    np.testing.assert_array_equal(ns["back"].predict(ns["X"][:5]), ns["t"].predict(ns["X"][:5]))


def test_epoch_line_is_whole_on_an_80_column_terminal():
    """On a real 80-column terminal (a pseudo-terminal), the epoch's metrics are printed whole; as the
    bar's postfix they were cut off there."""
    import fcntl
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with os.fdopen(slave, "w") as terminal:
        p = EpochProgress(1, epochs=10, n_samples=16000, stream=terminal)
        assert p.bar_wanted
        p.start_epoch(9)
        p.batch_done(16000, 0.1234)
        p.end_epoch(9, {"loss": 0.1234, "accuracy": 0.9876, "val_loss": 0.2345, "val_accuracy": 0.9765}, 1.0)
    chunks = []  # everything the terminal received: read until the closed side reports EOF (EIO on Linux)
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    shown = b"".join(chunks).decode()
    assert "val_accuracy 0.9765" in shown and "accuracy 0.9876" in shown and "val_loss 0.2345" in shown


def test_cli_help_shows_defaults():
    result = subprocess.run([sys.executable, "-m", "fastbp", "train", "--help"], capture_output=True, text=True)
    text = " ".join(result.stdout.split())
    assert result.returncode == 0 and "(default: 128)" in text and "(default: 0.001)" in text


def test_cli_plot_without_matplotlib_fails_before_training(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(fastbp.Trainer, "fit", lambda *a, **k: pytest.fail("trained before checking --plot"))
    assert cli.main(["--epochs", "1", "--plot", "x.png"]) == 2
    assert "matplotlib" in capsys.readouterr().err


def test_cli_labels_the_test_set_as_test(monkeypatch, capsys):
    """The test set is evaluated once, at the end, as "test"; per-epoch val_ metrics come from a split of the
    training rows (the test set used to be passed as validation_data and printed as val_)."""
    seen = {}
    real_fit = fastbp.Trainer.fit

    def spy(self, X, y, **kw):
        seen.update(kw, n=len(X))
        return real_fit(self, X, y, **kw)
    monkeypatch.setattr(fastbp.Trainer, "fit", spy)
    assert cli.main(["--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert seen.get("validation_data") is None and seen["validation_split"] == 0.1
    assert "test accuracy" in out and "val_accuracy" in out


def test_mnist_script_without_scikit_learn_says_what_to_do(tmp_path):
    script = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "mnist.py"
    code = ("import sys, runpy; sys.modules['sklearn'] = None; sys.argv = ['mnist.py']; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(script.parent.parent)})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "pip install 'fastbp[sklearn]'" in result.stderr and "--mnist-dir" in result.stderr


def test_help_describes_the_constructor_options_and_step_count_is_public():
    doc = fastbp.Trainer.__doc__
    for option in ("sizes", "activation", "loss", "optimizer", "lr", "batch_size", "device", "seed", "weight_decay",
                   "momentum", "betas", "eps", "alpha", "clip_norm", "dropout", "schedule", "threads"):
        assert re.search(rf"\b{option}\b", doc), option
    t = fastbp.Trainer([3, 2], seed=0)
    t.step(np.ones((4, 3)), np.ones((4, 2)))
    assert t.step_count == 1
    with pytest.raises(AttributeError):
        t.step_count = 5  # read-only: the optimizer's count follows the updates


def test_a_misspelt_keyword_names_the_public_class_and_the_keyword_meant():
    with pytest.raises(TypeError, match=r"^Trainer\(\) got an unexpected keyword argument 'lrate'; did you mean 'lr'"):
        fastbp.Trainer([2, 3], lrate=0.1)
    with pytest.raises(TypeError, match=r"Trainer.fit\(\) .* 'epoch'; did you mean 'epochs'"):
        fastbp.Trainer([2, 3]).fit(np.ones((4, 2)), np.ones((4, 3)), epoch=2)
    pytest.importorskip("sklearn")
    with pytest.raises(TypeError, match=r"^MLPClassifier\(\) .* 'hiden_layer_sizes'; did you mean 'hidden_layer_s"):
        fastbp.MLPClassifier(hiden_layer_sizes=(3,))
    with pytest.raises(TypeError, match=r"^MLPRegressor\(\) .* 'zzz'; valid keywords: loss, hidden_layer_sizes"):
        fastbp.MLPRegressor(zzz=1)
    assert fastbp.MLPRegressor(alpha=0.5).get_params()["alpha"] == 0.5  # the signature scikit-learn reads


def test_strings_in_x_get_an_encoding_hint_and_strings_in_y_the_class_label_one():
    t = fastbp.Trainer([2, 3], loss="cross_entropy")
    with pytest.raises(TypeError, match="encode text or categorical columns") as info:
        t.fit(np.array([["a", "b"], ["c", "d"]]), np.array([0, 1]), verbose=0)
    assert "class names" not in str(info.value)
    with pytest.raises(TypeError, match="validation X .*encode text or categorical columns"):
        t.fit(np.ones((2, 2)), np.array([0, 1]), validation_data=(np.array([["a", "b"]]), np.array([0])), verbose=0)
    with pytest.raises(TypeError, match="class names"):
        t.fit(np.ones((2, 2)), np.array(["cat", "dog"]), verbose=0)


def test_early_stopping_says_when_it_stops_and_restores_at_verbose_1(capsys):
    from fastbp.callbacks import EarlyStopping
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 4)), rng.integers(0, 2, 64)
    t = fastbp.Trainer([4, 8, 2], loss="cross_entropy", seed=0)
    # min_delta this large: no epoch improves on the first, so it stops after patience epochs
    stop = EarlyStopping(monitor="loss", patience=2, min_delta=100.0, restore_best_weights=True, verbose=1)
    t.fit(X, y, epochs=10, verbose=0, callbacks=[stop])
    out = capsys.readouterr().out.splitlines()
    assert out == ["Epoch 3: early stopping (loss did not improve for 2 epochs)",
                   f"Restoring model weights from the end of the best epoch: 1 (loss {stop.best:.4g})"]
    t.fit(X, y, epochs=10, verbose=0, callbacks=[EarlyStopping(monitor="loss", patience=2, min_delta=100.0)])
    assert capsys.readouterr().out == ""  # verbose=0, Keras's default: silent
