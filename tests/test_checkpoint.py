"""Checkpoints: atomic writes, clear errors on corrupt or mismatched files."""
import os

import numpy as np
import pytest

import fastbp
from fastbp import checkpoint


def trained(seed=0):
    t = fastbp.Trainer([3, 7, 2], loss="mse", optimizer="adamw", seed=seed)
    t.step(np.ones((4, 3)), np.ones((4, 2)))
    return t


def test_round_trip_keeps_everything(tmp_path):
    t = trained()
    t.lr = 0.123
    t.save(tmp_path / "a.npz")
    u = fastbp.Trainer.load(tmp_path / "a.npz")
    for name in ("params", "moment1", "moment2"):
        assert np.array_equal(getattr(t.state, name), getattr(u.state, name))
    assert u.state.step_count == 1 and u.lr == 0.123 and u.config == t.config
    assert u._rng.bit_generator.state == t._rng.bit_generator.state


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    good = trained(seed=1)
    good.save(path)
    before = path.read_bytes()

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # e.g. the process being stopped mid-write

    monkeypatch.setattr(checkpoint.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        trained(seed=2).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind
    assert np.array_equal(fastbp.Trainer.load(path).state.params, good.state.params)


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    trained().save(tmp_path / "good.npz")
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.npz").write_text("hello")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    for name in ("truncated.npz", "text.npz", "foreign.npz"):
        with pytest.raises(ValueError, match="checkpoint"):
            fastbp.Trainer.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        fastbp.Trainer.load(tmp_path / "missing.npz")


def test_mismatched_arrays_are_a_clear_error(tmp_path):
    t = trained()
    arrays = {"params": t.state.params[:-1], "moment1": t.state.moment1, "moment2": t.state.moment2}
    checkpoint.write(tmp_path / "bad.npz", arrays, {"config": t.config.to_dict(), "lr": 0.1, "step_count": 1,
                                                     "epochs_done": 0, "rng_state": t._rng.bit_generator.state})
    with pytest.raises(ValueError, match="params array is"):
        fastbp.Trainer.load(tmp_path / "bad.npz")
    meta = {"config": dict(t.config.to_dict(), activation="swish"), "lr": 0.1, "step_count": 1,
            "epochs_done": 0, "rng_state": t._rng.bit_generator.state}
    checkpoint.write(tmp_path / "bad2.npz", {"params": t.state.params, "moment1": t.state.moment1,
                                             "moment2": t.state.moment2}, meta)
    with pytest.raises(ValueError, match="unknown activation"):
        fastbp.Trainer.load(tmp_path / "bad2.npz")
