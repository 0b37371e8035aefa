"""The benchmark's peers compute the same training step as fastbp: the JAX peer and the torch.compile peer
against the float64 NumPy reference for three Adam steps (a peer that trained something else would make
every speed ratio meaningless)."""
import numpy as np
import pytest

import fastbp
from fastbp import peers, reference
from conftest import make_targets


def three_steps(rng, make_step, loss):
    sizes = [5, 7, 3]
    t = fastbp.Trainer(sizes, loss=loss, optimizer="adam", lr=1e-2, seed=0)
    params = [(W.astype(np.float64), b.astype(np.float64)) for W, b in t.params]
    ref = reference.Network(params, activation="relu", loss=loss, kind="adam", lr=1e-2)
    step = make_step(t.config, t.params)
    for _ in range(3):
        X = rng.standard_normal((11, 5)).astype(np.float32)
        y = make_targets(rng, loss, 11, 3)
        y = y.astype(np.int64) if loss == "cross_entropy" else y.astype(np.float32)
        assert step(X, y) == pytest.approx(ref.step(X, y), rel=1e-5)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce", "poisson"])
def test_jax_peer_matches_reference(rng, loss):
    pytest.importorskip("jax")
    three_steps(rng, peers.jax_peer, loss)


def test_torch_compile_peer_matches_reference(rng):
    pytest.importorskip("torch")
    three_steps(rng, lambda config, params: peers.torch_peer(config, params, mode="compile")[0], "cross_entropy")


def test_jax_peer_refuses_what_it_does_not_implement():
    pytest.importorskip("jax")
    t = fastbp.Trainer([3, 2], optimizer="sgd")
    with pytest.raises(ValueError, match="plain Adam only"):
        peers.jax_peer(t.config, t.params)
