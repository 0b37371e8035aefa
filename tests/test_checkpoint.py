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


# ---- crafted and foreign files: every one a ValueError naming the problem, nothing unpickled ----

def saved_parts(t):
    arrays = {"params": t.state.params, "moment1": t.state.moment1, "moment2": t.state.moment2}
    meta = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": t.config.to_dict(), "lr": 0.1,
            "step_count": 1, "epochs_done": 0, "rng_state": t._rng.bit_generator.state, "dropout_seed": 7,
            "schedule": None}
    return arrays, meta


def write_raw(path, arrays, meta_value):
    """An .npz with any metadata value (np.savez itself, so only the contents are crafted)."""
    np.savez(path, meta=np.array(meta_value), **arrays)


def npy_with_header(shape, dtype="<f4", payload=b""):
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


def crafted_files(tmp_path):
    import json
    import zipfile
    t = trained()
    arrays, meta = saved_parts(t)
    files = {}
    files["plain .npy"] = tmp_path / "a.npy"
    np.save(files["plain .npy"], t.state.params)
    files["list metadata"] = tmp_path / "list.npz"
    write_raw(files["list metadata"], arrays, json.dumps([1, 2]))
    files["number metadata"] = tmp_path / "number.npz"
    write_raw(files["number metadata"], arrays, 3.5)
    files["deep JSON"] = tmp_path / "deep.npz"
    write_raw(files["deep JSON"], arrays, "[" * 100000 + "]" * 100000)
    for name, value in [("huge step count", 10 ** 30), ("negative step count", -1), ("float step count", 1.5),
                        ("string step count", "7")]:
        files[name] = tmp_path / f"{name.replace(' ', '_')}.npz"
        write_raw(files[name], arrays, json.dumps(dict(meta, step_count=value)))
    files["negative moment2"] = tmp_path / "negative_v.npz"
    write_raw(files["negative moment2"], dict(arrays, moment2=-np.ones_like(t.state.moment2)), json.dumps(meta))
    files["object array"] = tmp_path / "object.npz"
    np.savez(files["object array"], meta=np.array(json.dumps(meta)), params=np.array([None, 1], dtype=object),
             moment1=arrays["moment1"], moment2=arrays["moment2"])
    files["bad rng state"] = tmp_path / "rng.npz"
    write_raw(files["bad rng state"], arrays, json.dumps(dict(meta, rng_state={"bit_generator": "nope"})))
    files["bad schedule"] = tmp_path / "schedule.npz"
    write_raw(files["bad schedule"], arrays, json.dumps(dict(meta, schedule={"name": "StepDecay", "config": 3})))
    files["huge sizes"] = tmp_path / "sizes.npz"
    write_raw(files["huge sizes"], arrays, json.dumps(dict(meta, config=dict(meta["config"], sizes=[10 ** 6] * 4))))
    files["huge shape header"] = tmp_path / "shape.npz"
    with zipfile.ZipFile(files["huge shape header"], "w") as z:
        z.writestr("meta.npy", npy_with_header((), "<U%d" % len(json.dumps(meta)),
                                               json.dumps(meta).encode("utf-32-le")))
        for name in ("params", "moment1", "moment2"):
            z.writestr(name + ".npy", npy_with_header((10 ** 12,), payload=b"\0" * 64))
    files["huge metadata"] = tmp_path / "bigmeta.npz"
    write_raw(files["huge metadata"], arrays, json.dumps(dict(meta, padding="x" * 2_000_000)))
    files["float64 arrays"] = tmp_path / "f64.npz"
    write_raw(files["float64 arrays"], {k: v.astype(np.float64) for k, v in arrays.items()}, json.dumps(meta))
    return files


def test_crafted_files_are_value_errors(tmp_path):
    for what, path in crafted_files(tmp_path).items():
        with pytest.raises(ValueError) as info:
            fastbp.Trainer.load(path)
        message = str(info.value)
        assert "checkpoint" in message, what
        assert "allow_pickle" not in message and "pickle" not in message.lower(), what


def test_a_valid_crafted_file_still_loads(tmp_path):
    """The strict reader is not stricter than the writer: a checkpoint written by hand in the same format
    loads, with every field as written."""
    import json
    t = trained()
    arrays, meta = saved_parts(t)
    write_raw(tmp_path / "ok.npz", arrays, json.dumps(dict(meta, step_count=2 ** 40)))
    u = fastbp.Trainer.load(tmp_path / "ok.npz")
    assert u.step_count == 2 ** 40 and u._dropout_seed == 7 and np.array_equal(u.state.params, t.state.params)


def test_saved_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        trained().save(tmp_path / "m.npz")
        np.savez(tmp_path / "reference.npz", a=np.zeros(1))
    finally:
        os.umask(old)
    mode = os.stat(tmp_path / "m.npz").st_mode & 0o777
    assert mode == os.stat(tmp_path / "reference.npz").st_mode & 0o777 == 0o644


def test_read_only_target_is_not_replaced(tmp_path):
    path = tmp_path / "keep.npz"
    trained(seed=1).save(path)
    before = path.read_bytes()
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError, match="read-only"):
        trained(seed=2).save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["keep.npz"]


def test_ctrl_c_during_save_completes_the_file_then_interrupts(tmp_path, monkeypatch):
    """SIGINT mid-write: the checkpoint is still written whole, no temporary file is left, and the
    KeyboardInterrupt arrives once the file is in place."""
    import signal
    real_savez = np.savez

    def interrupted(file, **arrays):
        os.kill(os.getpid(), signal.SIGINT)
        real_savez(file, **arrays)
    monkeypatch.setattr(checkpoint.np, "savez", interrupted)
    t = trained(seed=3)
    with pytest.raises(KeyboardInterrupt):
        t.save(tmp_path / "c.npz")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.npz"]
    assert np.array_equal(fastbp.Trainer.load(tmp_path / "c.npz").state.params, t.state.params)


def test_orphans_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    """A save killed mid-write (SIGKILL: no clean-up possible) leaves its temporary file; the next save of
    that target on this host removes it, but never a file of a live process or of another host."""
    import subprocess
    import sys
    target = tmp_path / "m.npz"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / (checkpoint._temporary_prefix(target, pid=dead.pid) + "abc.tmp")
    live = tmp_path / (checkpoint._temporary_prefix(target) + "def.tmp")  # this process: a save under way
    foreign = tmp_path / (checkpoint._temporary_prefix(target, host="elsewhere", pid=dead.pid) + "ghi.tmp")
    other_target = tmp_path / (checkpoint._temporary_prefix(tmp_path / "other.npz", pid=dead.pid) + "jkl.tmp")
    for f in (orphan, live, foreign, other_target):
        f.write_bytes(b"partial")
    trained().save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.npz", live.name, foreign.name,
                                                                 other_target.name])


def test_save_killed_mid_write_leaves_the_previous_file(tmp_path):
    """SIGKILL in the middle of np.savez, in a subprocess: the target is still the old, loadable file."""
    import subprocess
    import sys
    import textwrap
    target = tmp_path / "m.npz"
    first = trained(seed=1)
    first.save(target)
    code = textwrap.dedent(f"""
        import os, signal, numpy as np, fastbp
        from fastbp import checkpoint
        real = np.savez
        def killed(f, **arrays):
            f.write(b"PK half")
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.np.savez = killed
        t = fastbp.Trainer([3, 7, 2], seed=2)
        t.save({str(target)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -9
    assert np.array_equal(fastbp.Trainer.load(target).state.params, first.state.params)
    assert len(list(tmp_path.iterdir())) == 2  # the target and the killed save's orphan
    trained(seed=3).save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


# ---- every optimizer's checkpoint loads and resumes exactly ----

RESUME_CASES = {
    "sgd": dict(optimizer="sgd", lr=0.05),
    "sgd_momentum_nesterov": dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": dict(optimizer="adam"),
    "adam_eps_hat": dict(optimizer="adam", eps=1e-2, eps_hat=True),  # kept in the checkpoint's config
    "adamw_weights_only": dict(optimizer="adamw", weight_decay=0.1, decay_biases=False),
    "adagrad": dict(optimizer="adagrad", lr=0.05),
    "rmsprop": dict(optimizer="rmsprop", lr=0.01),
    "rmsprop_momentum": dict(optimizer="rmsprop", lr=0.01, momentum=0.9),  # its momentum buffer goes negative
    "adam_clip_dropout": dict(optimizer="adam", clip_norm=0.5, dropout=0.3),
    "adam_micro_batches": dict(optimizer="adam", micro_batch=7),  # a step summed in micro-batches of 7 rows
    "sgd_memory_budget": dict(optimizer="sgd", lr=0.05, momentum=0.5, memory_budget=4096),
    # one activation per hidden layer (a list in the checkpoint's JSON), stored slopes under dropout
    "adam_per_layer_dropout": dict(optimizer="adam", dropout=0.3, activation=["gelu", "elu"], sizes=[5, 9, 6, 3],
                                   input_dropout=0.2, max_norm=1.0, label_smoothing=0.1),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_every_optimizer_resumes_bitwise_from_its_own_checkpoint(tmp_path, case):
    """ModelCheckpoint's file loads (whatever the optimizer keeps in its moment buffers) and training resumed
    from it ends bitwise where the run that never stopped ends, micro_batch and memory_budget included."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((90, 5)).astype(np.float32)
    y = rng.integers(0, 3, 90)
    options = dict(RESUME_CASES[case])
    sizes = options.pop("sizes", [5, 9, 3])
    make = lambda: fastbp.Trainer(sizes, loss="cross_entropy", batch_size=30, seed=1, **options)
    full = make()
    full.fit(X, y, epochs=4, verbose=0)
    part = make()
    part.fit(X, y, epochs=2, verbose=0, callbacks=[fastbp.callbacks.ModelCheckpoint(tmp_path / "last.npz")])
    resumed = fastbp.Trainer.load(tmp_path / "last.npz")
    assert (resumed.micro_batch, resumed.memory_budget) == (part.micro_batch, part.memory_budget)
    resumed.fit(X, y, epochs=4, initial_epoch=2, verbose=0)
    for name in ("params", "moment1", "moment2"):
        assert np.array_equal(getattr(full.state, name), getattr(resumed.state, name)), name
    assert resumed.step_count == full.step_count
    assert resumed.config == full.config


def test_a_squared_moment_that_went_negative_is_refused_for_the_optimizer_that_keeps_squares(tmp_path):
    """The loader checks the buffer each optimizer keeps squares in: moment1 for adagrad and rmsprop,
    moment2 for adam; a negative momentum buffer (rmsprop's moment2) is fine."""
    import json
    for optimizer, squares in (("adagrad", "moment1"), ("rmsprop", "moment1"), ("adam", "moment2")):
        t = fastbp.Trainer([3, 7, 2], loss="mse", optimizer=optimizer, seed=0)
        arrays, meta = saved_parts(t)
        meta["config"] = t.config.to_dict()
        arrays = dict(arrays, **{squares: -np.ones_like(t.state.params)})
        write_raw(tmp_path / "neg.npz", arrays, json.dumps(meta))
        with pytest.raises(ValueError, match=f"{squares} holds negative values"):
            fastbp.Trainer.load(tmp_path / "neg.npz")
    t = fastbp.Trainer([3, 7, 2], loss="mse", optimizer="rmsprop", momentum=0.9, seed=0)
    t.state.moment2[:] = -1.0
    t.save(tmp_path / "momentum.npz")
    assert np.array_equal(fastbp.Trainer.load(tmp_path / "momentum.npz").state.moment2, t.state.moment2)
