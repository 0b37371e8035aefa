"""Models out and back in: Trainer.to_torch / from_torch (the same predictions, training goes on) and
Trainer.to_onnx run by ONNX Runtime (predictions equal to fastbp's to 1e-5), for every activation and loss;
models fastbp cannot represent are refused with a clear error."""
import os

import numpy as np
import pytest

import fastbp
from conftest import ALL_ACTIVATIONS, LOSSES, make_targets, per_layer

SIZES = [7, 33, 3, 4]


def trained(rng, activation, loss, sizes=SIZES):
    t = fastbp.Trainer(sizes, activation=per_layer(activation, sizes), loss=loss, seed=int(rng.integers(2 ** 31)), lr=1e-2)
    X = rng.standard_normal((64, sizes[0])).astype(np.float32)
    y = make_targets(rng, loss, 64, sizes[-1])
    t.fit(X, y, epochs=2, batch_size=16, verbose=0)  # biases away from zero, weights moved
    return t


def output_transform(torch, logits, loss):
    if loss == "cross_entropy":
        return torch.softmax(logits, dim=1)
    if loss == "poisson":
        return torch.exp(logits)
    return torch.sigmoid(logits) if loss == "bce" else logits


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_to_torch_and_back_predict_the_same(rng, activation, loss):
    torch = pytest.importorskip("torch")
    t = trained(rng, activation, loss)
    model = t.to_torch()
    X = rng.standard_normal((130, SIZES[0])).astype(np.float32)
    with torch.no_grad():
        theirs = output_transform(torch, model(torch.from_numpy(X)), loss).numpy()
    np.testing.assert_allclose(theirs, t.predict(X), rtol=1e-5, atol=1e-6)
    back = fastbp.Trainer.from_torch(model, loss=loss)
    assert back.config.hidden_activations == t.config.hidden_activations and back.sizes == t.sizes
    np.testing.assert_array_equal(back.predict(X), t.predict(X))
    for (W, b), (W2, b2) in zip(back.params, t.params):
        np.testing.assert_array_equal(W, W2)
        np.testing.assert_array_equal(b, b2)


def test_a_model_fine_tuned_in_torch_comes_back_and_trains_on(rng):
    torch = pytest.importorskip("torch")
    t = trained(rng, "relu", "cross_entropy")
    model = t.to_torch()
    X = rng.standard_normal((40, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], 40)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(X)), torch.from_numpy(y))
    loss.backward()
    opt.step()
    back = fastbp.Trainer.from_torch(model, loss="cross_entropy", optimizer="sgd", lr=0.1)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(X)), 1).numpy()
    np.testing.assert_allclose(back.predict(X), expected, rtol=1e-5, atol=1e-6)
    before = back.evaluate(X, y)["loss"]
    back.fit(X, y, epochs=20, batch_size=40, verbose=0)
    assert back.evaluate(X, y)["loss"] < before


def test_from_torch_refuses_what_fastbp_cannot_represent():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    cases = [
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Softmax(dim=1)), "ends with Softmax"),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), "no activation between them"),
        (nn.Sequential(nn.Linear(3, 4), nn.Mish(), nn.Linear(4, 2)), "Mish"),
        (nn.Sequential(nn.Linear(3, 4), nn.ELU(alpha=0.5), nn.Linear(4, 2)), "alpha 1"),
        (nn.Sequential(nn.Linear(3, 4), nn.Softplus(beta=2.0), nn.Linear(4, 2)), "beta 1"),
        (nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2), nn.Linear(4, 2)), "slope"),
        (nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2)), "without bias"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)), "feed one taking 5 inputs"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 2)), "Dropout"),
        (nn.Sequential(nn.Linear(3, 4, dtype=torch.complex64)), "complex64"),
        (nn.Sequential(nn.Linear(3, 4, device="meta"), nn.ReLU(), nn.Linear(4, 2, device="meta")), "meta device"),
    ]
    for model, message in cases:
        with pytest.raises(ValueError, match=message):
            fastbp.Trainer.from_torch(model)
    with pytest.raises(TypeError, match="Sequential"):
        fastbp.Trainer.from_torch(nn.Linear(3, 2))
    mixed = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 5), nn.SiLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="but the model's is"):
        fastbp.Trainer.from_torch(mixed, activation="gelu")
    assert fastbp.Trainer.from_torch(mixed, activation=["gelu", "silu"]).config.activation == ("gelu", "silu")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_onnx_runtime_predicts_what_fastbp_predicts(rng, tmp_path, activation, loss):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    t = trained(rng, activation, loss)
    path = t.to_onnx(tmp_path / "model.onnx")
    logits_path = t.to_onnx(tmp_path / "logits.onnx", probabilities=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits_session = ort.InferenceSession(str(logits_path), providers=["CPUExecutionProvider"])
    for n in (1, 7, 130):  # the batch dimension is free
        X = rng.standard_normal((n, SIZES[0])).astype(np.float32)
        (out,) = session.run(None, {"input": X})
        np.testing.assert_allclose(out, t.predict(X), rtol=1e-5, atol=1e-5)
        (logits,) = logits_session.run(None, {"input": X})
        np.testing.assert_allclose(logits, t._backend.logits(t._backend.checks.features(X, SIZES[0]),
                                                             np.arange(n, dtype=np.int64)), rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logits.onnx", "model.onnx"]  # no temporary file left


def test_estimators_export_their_predictions(rng, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    X = rng.standard_normal((90, 5))
    y = np.where(X[:, 0] > 0, "yes", "no")
    clf = fastbp.MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y)
    session = ort.InferenceSession(str(clf.to_onnx(tmp_path / "clf.onnx")), providers=["CPUExecutionProvider"])
    (p_yes,) = session.run(None, {"input": X.astype(np.float32)})
    np.testing.assert_allclose(p_yes[:, 0], clf.predict_proba(X)[:, 1], rtol=1e-5, atol=1e-6)
    reg = fastbp.MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, X[:, :2] * 3)
    with torch.no_grad():
        out = reg.to_torch()(torch.from_numpy(X.astype(np.float32))).numpy()
    np.testing.assert_allclose(out, reg.predict(X), rtol=1e-5, atol=1e-5)


def test_onnx_export_is_atomic(rng, tmp_path, monkeypatch):
    """A write that fails part-way leaves the previous file whole and no temporary file."""
    pytest.importorskip("onnx")
    from fastbp import export
    t = trained(rng, "relu", "mse")
    path = tmp_path / "model.onnx"
    t.to_onnx(path)
    before = path.read_bytes()
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # a plain file's permissions, not mkstemp's 0600

    def broken_fsync(fd):
        raise OSError("disk full")
    monkeypatch.setattr(export.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        fastbp.Trainer([7, 2], seed=1).to_onnx(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_export_without_its_package_says_how_to_install_it(monkeypatch, tmp_path):
    import sys
    t = fastbp.Trainer([3, 4, 2])
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'fastbp\[torch\]'"):
        t.to_torch()
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'fastbp\[onnx\]'"):
        t.to_onnx(tmp_path / "m.onnx")
