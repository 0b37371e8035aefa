"""Delta propagation on a copy of W^T (blas.transpose_into, blas.copy_beats_transposed, backend.weight_t_offsets):
the copy is exact, the layout is checked (and refused by run_steps when wrong: tests/cpu/test_kernels.py),
and a step that multiplies by copies computes the step without them to float32 rounding, on one part and
split in two, chunked and step by step alike."""
import numpy as np
import pytest

import fastbp
from fastbp import reference
from fastbp.cpu import backend as cpu_backend
from fastbp.cpu.blas import copy_beats_transposed, transpose_into
from fastbp.cpu.delta_backward import weight_t_offsets_fit
from conftest import rel_error


@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 33), (33, 1), (3, 257), (257, 3), (8, 8), (9, 17), (64, 64),
                                        (33, 257)])
def test_transpose_into_is_numpys_transpose(rng, rows, cols):
    w = rng.standard_normal(rows * cols + 5).astype(np.float32)  # longer than the matrix: only its part is read
    wt = np.full(rows * cols + 3, 7.0, np.float32)
    transpose_into(w, rows, cols, wt)
    np.testing.assert_array_equal(wt[:rows * cols].reshape(cols, rows), w[:rows * cols].reshape(rows, cols).T)
    np.testing.assert_array_equal(wt[rows * cols:], 7.0)  # nothing written past the matrix


def test_transpose_into_refuses_buffers_too_small():
    w, wt = np.zeros(12, np.float32), np.zeros(12, np.float32)
    for args in ((w[:11], 3, 4, wt), (w, 3, 4, wt[:11]), (w, -1, 4, wt)):
        with pytest.raises(IndexError, match="does not fit"):
            transpose_into(*args)


@pytest.mark.parametrize("m, n, k, copied", [
    (32, 64, 64, True), (64, 100, 10, True), (64, 32, 256, True), (32, 64, 4, True),  # faster with the copy
    (16, 64, 64, False), (32, 32, 256, False),  # BLAS's small kernel takes them as they are
    (64, 128, 128, False), (256, 256, 256, False),  # 2^20 multiply-adds and more: the copy costs more
    (8, 100, 10, False), (1, 64, 64, False)])  # too few rows to pay for the copy
def test_the_copy_rule_follows_the_measured_shapes(m, n, k, copied):
    """The shapes measured in blas.py's comment, each on the side it was measured on."""
    assert copy_beats_transposed(m, n, k) == copied


@pytest.mark.parametrize("sizes", [[3, 1], [5, 33, 3], [16, 64, 64, 4], [4, 100, 10, 257, 2]])
@pytest.mark.parametrize("n", [1, 3, 33, 257])
def test_weight_t_offsets_fit_accepts_the_layouts_and_nothing_else(monkeypatch, sizes, n):
    dims = np.array(sizes, np.int64)
    monkeypatch.setattr(cpu_backend, "copy_beats_transposed", lambda m, n, k: True)  # every layer's copy
    every = cpu_backend.weight_t_offsets(dims, n, True)
    none = cpu_backend.weight_t_offsets(dims, n, False)
    assert every[-1] == sum(sizes[l] * sizes[l + 1] for l in range(1, len(sizes) - 1)) and none[-1] == 0
    for off in (every, none):
        assert weight_t_offsets_fit(dims, off)
        assert not weight_t_offsets_fit(dims, off[:-1])
        for i in range(off.size):
            for delta in (-1, 1):
                changed = off.copy()
                changed[i:] += delta  # every later block starts one further on: only block i's length changes
                assert not weight_t_offsets_fit(dims, changed), (off, i, delta)
    first = none.copy()
    first[1:] += sizes[0] * sizes[1]  # a copy of the first layer, which no delta goes back through
    assert not weight_t_offsets_fit(dims, first)


def steps(seed, monkeypatch, sizes, batch, copies, n_steps=3, split=False, chunked=True, **options):
    """(trainer, history, initial params, X, y, floats of W^T copies) after n_steps of batch rows drawn from
    seed, on the serial path with a W^T copy for every layer a delta goes back through (copies) or none;
    split: each step cut into two parts on two threads."""
    with monkeypatch.context() as m:
        m.setattr(cpu_backend, "SERIAL_WORK", 2 ** 62)
        m.setattr(cpu_backend, "COPY_WEIGHTS", copies)
        m.setattr(cpu_backend, "copy_beats_transposed", lambda m, n, k: True)
        m.setattr(cpu_backend, "SPLIT_WORK", 0 if split else 2 ** 62)
        m.setattr(cpu_backend, "MIN_PART_ROWS", 2)
        m.setattr(cpu_backend, "MIN_SHARED_STEPS", 1)
        if not chunked:
            m.setattr(fastbp.loop, "runs_in_chunks", lambda *a: False)
        t = fastbp.Trainer(sizes, seed=3, threads=2 if split else 1, batch_size=batch, **options)
        data = np.random.default_rng(seed)  # the same rows for every call of one test
        X = data.standard_normal((batch * n_steps, sizes[0]))
        y = data.integers(0, sizes[-1], batch * n_steps)
        start = [(W.astype(np.float64), b.astype(np.float64)) for W, b in t.params]
        history = t.fit(X.astype(np.float32), y, epochs=1, shuffle=False, verbose=0)
        if split:
            assert t._backend.split_parts(3, batch, t._optimizer_settings()) == 2
            layout = t._backend._split_workspaces.get((batch, 2)).layout
        else:
            layout = t._backend._workspaces.get(batch).layout
        used = int(layout[2][-1])  # the W^T copies' floats in a part's workspace
    return t, history.history, start, X, y, used


@pytest.mark.parametrize("sizes", [[33, 257, 3, 3], [1, 3, 1, 33, 2], [16, 64, 64, 4]])
@pytest.mark.parametrize("batch", [1, 3, 33, 257])
def test_copies_change_the_steps_by_rounding_alone(rng, monkeypatch, sizes, batch):
    """Three Adam steps with every delta product on a copy of W^T: the steps without copies to float32
    rounding, and the float64 reference's."""
    seed = int(rng.integers(2 ** 31))
    with_copies, _, start, X, y, used = steps(seed, monkeypatch, sizes, batch, True, loss="cross_entropy",
                                              activation="tanh", lr=1e-2)
    assert used == sum(sizes[l] * sizes[l + 1] for l in range(1, len(sizes) - 1))  # the copies were there
    without, _, _, _, _, unused = steps(seed, monkeypatch, sizes, batch, False, loss="cross_entropy",
                                        activation="tanh", lr=1e-2)
    assert unused == 0
    np.testing.assert_allclose(with_copies.state.params, without.state.params, rtol=1e-5, atol=1e-6)
    c = with_copies.config
    ref = reference.Network(start, activation="tanh", loss="cross_entropy", kind="adam", lr=1e-2,
                            betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)
    for s in range(3):
        ref.step(X[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch])
    for (W, b), (rW, rb) in zip(with_copies.params, ref.params):
        assert rel_error(W, rW) < 1e-4 and rel_error(b, rb) < 1e-4


def test_split_steps_with_copies_are_the_step_loop_bit_for_bit(rng, monkeypatch):
    """Each part copies W^T into its own workspace: chunks of split steps and the same steps one call at a
    time give the same bits, and the one-part path's numbers to rounding."""
    seed = int(rng.integers(2 ** 31))
    sizes, batch = [20, 100, 10, 10], 64
    kw = dict(loss="cross_entropy", dropout=0.2, n_steps=6)
    chunks, h_chunks, _, _, _, used = steps(seed, monkeypatch, sizes, batch, True, split=True, **kw)
    assert used == 100 * 10 + 10 * 10
    one_by_one, h_steps, *_ = steps(seed, monkeypatch, sizes, batch, True, split=True, chunked=False, **kw)
    np.testing.assert_array_equal(chunks.state.params, one_by_one.state.params)
    np.testing.assert_array_equal(chunks.state.moment2, one_by_one.state.moment2)
    assert h_chunks == h_steps
    whole, *_ = steps(seed, monkeypatch, sizes, batch, False, **kw)
    np.testing.assert_allclose(chunks.state.params, whole.state.params, rtol=1e-4, atol=1e-5)

