"""Data already on the GPU (device_data.py): used in place by Trainer(device="cuda"), checked there with
the same errors as NumPy data, refused with a clear error by the CPU backend; and the epoch's row order
uploaded once per epoch. Under the simulator the GPU arrays are numba.cuda device arrays; objects that
only expose __cuda_array_interface__ (CuPy, PyTorch) take the same path on a real GPU."""
import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")
if not cuda.is_available():
    pytest.skip("no CUDA device or simulator", allow_module_level=True)

import fastbp  # noqa: E402
from fastbp.cuda import device_data  # noqa: E402
from conftest import rel_error  # noqa: E402


def data(rng, n=13, d=4, classes=3):
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, classes, n)


def test_gpu_arrays_train_like_numpy(rng):
    X, y = data(rng)
    host = fastbp.Trainer([4, 6, 3], loss="cross_entropy", device="cuda", seed=0, batch_size=5)
    gpu = fastbp.Trainer([4, 6, 3], loss="cross_entropy", device="cuda", seed=0, batch_size=5)
    d_X, d_y = cuda.to_device(X), cuda.to_device(y)
    h1 = host.fit(X, y, epochs=2, verbose=0, validation_split=0.2)
    h2 = gpu.fit(d_X, d_y, epochs=2, verbose=0, validation_split=0.2)
    assert h1.history == h2.history
    for (W1, b1), (W2, b2) in zip(host.params, gpu.params):
        assert np.array_equal(W1, W2) and np.array_equal(b1, b2)
    assert np.array_equal(gpu.predict(d_X), host.predict(X))
    assert gpu.evaluate(d_X, d_y) == host.evaluate(X, y)
    assert gpu.step(d_X, y) == host.step(X, d_y)  # mixed: host labels with GPU features, and the reverse


def test_gpu_targets_for_regression(rng):
    X = rng.standard_normal((7, 3)).astype(np.float32)
    y = rng.standard_normal(7).astype(np.float32)
    host = fastbp.Trainer([3, 1], device="cuda", seed=0)
    gpu = fastbp.Trainer([3, 1], device="cuda", seed=0)
    assert gpu.step(cuda.to_device(X), cuda.to_device(y)) == host.step(X, y)  # (n,) targets for one output
    probs = cuda.to_device(np.array([[0.5], [1.5]], np.float32))
    with pytest.raises(ValueError, match=r"y for bce contains 1.5, outside \[0.0, 1.0\] \(first at index \(1, 0\)\)"):
        fastbp.Trainer([3, 1], loss="bce", device="cuda").step(cuda.to_device(X[:2]), probs)


@pytest.mark.parametrize("bad, error, message", [
    (lambda X, y: (X.astype(np.float64), y), TypeError, "X is a GPU array of dtype float64; fastbp needs float32"),
    (lambda X, y: (X[:, :3], y), ValueError, "X has 3 features per row but the network takes 4"),
    (lambda X, y: (X[:0], y[:0]), ValueError, "X has no rows"),
    (lambda X, y: (X, y[:5]), ValueError, r"y has shape \(5,\), expected \(13,\)"),
    (lambda X, y: (X, y.astype(np.int32)), TypeError, "y is a GPU array of dtype int32; fastbp needs int64"),
    (lambda X, y: (np.where(np.arange(13)[:, None] == 6, np.inf, X).astype(np.float32), y), ValueError,
     r"X contains NaN or infinity \(first at index \(6, 0\)\)"),
    (lambda X, y: (X, np.where(np.arange(13) == 4, 3, y)), ValueError,
     r"y has label 3 out of range \(first at index 4\): labels must be in \[0, 2\]"),
])
def test_gpu_data_is_checked_in_place(rng, bad, error, message):
    X, y = data(rng)
    X_bad, y_bad = bad(X, y)
    t = fastbp.Trainer([4, 6, 3], loss="cross_entropy", device="cuda", seed=0)
    before = t.params
    with pytest.raises(error, match=message):
        t.step(cuda.to_device(np.ascontiguousarray(X_bad)), cuda.to_device(np.ascontiguousarray(y_bad)))
    assert all(np.array_equal(W, W0) for (W, _), (W0, _) in zip(t.params, before))


def test_non_contiguous_gpu_view_is_refused(rng):
    X, y = data(rng, d=8)
    t = fastbp.Trainer([4, 3], loss="cross_entropy", device="cuda")
    with pytest.raises(ValueError, match="non-contiguous view of a GPU array"):
        t.step(cuda.to_device(X)[:, ::2], y)


def test_cpu_backend_refuses_gpu_arrays(rng):
    X, y = data(rng)
    with pytest.raises(TypeError, match=r"X is a GPU array: train with Trainer\(..., device='cuda'\)"):
        fastbp.Trainer([4, 3], loss="cross_entropy").fit(cuda.to_device(X), y, verbose=0)
    assert device_data.is_device_array(cuda.to_device(X)) and not device_data.is_device_array(X)


def test_row_order_uploaded_once_per_epoch(rng, monkeypatch):
    """fit's batches are slices of the epoch's order: one int64 upload per epoch, not one per batch."""
    X, y = data(rng, n=20)
    t = fastbp.Trainer([4, 5, 3], loss="cross_entropy", device="cuda", seed=0, batch_size=7)
    uploads = []
    to_device = cuda.to_device
    monkeypatch.setattr(cuda, "to_device", lambda a, *args, **kw: uploads.append(a) or to_device(a, *args, **kw))
    t.fit(X, y, epochs=3, verbose=0)
    row_sized = [a for a in uploads if a.dtype == np.int64 and a.size == 20]
    assert len(row_sized) == 1 + 3  # the labels once, then the order of each of the 3 epochs (3 batches each)
    assert all(np.array_equal(np.sort(a), np.arange(20)) for a in row_sized[1:])
    assert not any(a.dtype == np.int64 and a.size in (6, 7) for a in uploads)  # no per-batch index upload
    reference = fastbp.Trainer([4, 5, 3], loss="cross_entropy", seed=0, batch_size=7)
    reference.fit(X, y, epochs=3, verbose=0)
    assert rel_error(t.params[0][0], reference.params[0][0]) < 1e-5


def test_a_training_step_copies_only_its_loss_back(rng, monkeypatch):
    """Within fit: the data and each epoch's order go to the device once, and each step's one transfer
    back is its loss (the non-finite check and the clipping norm stay on the device)."""
    X, y = data(rng, n=20)
    t = fastbp.Trainer([4, 5, 3], loss="cross_entropy", device="cuda", seed=0, batch_size=5, clip_norm=1.0)
    t.fit(X, y, epochs=1, verbose=0)  # workspaces allocated
    device_array_type = type(cuda.to_device(np.zeros(1)))
    uploads, downloads = [], []
    to_device, copy_to_host = cuda.to_device, device_array_type.copy_to_host
    monkeypatch.setattr(cuda, "to_device", lambda a, *args, **kw: uploads.append(a.shape) or to_device(a, *args, **kw))
    monkeypatch.setattr(device_array_type, "copy_to_host",
                        lambda self, *args, **kw: downloads.append(self.shape) or copy_to_host(self, *args, **kw))
    t.fit(X, y, epochs=2, verbose=0)
    assert sorted(uploads) == sorted([(80,), (20,), (20,), (20,)])  # X flat, labels, two epochs' orders
    assert downloads == [(2,)] * 8  # 2 epochs x 4 steps: the loss and accuracy sums
