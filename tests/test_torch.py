"""Against PyTorch (CPU): same initial weights and batches give the same losses and parameters."""
import numpy as np
import pytest

import fastbp
from fastbp import peers
from conftest import make_targets, rel_error

torch = pytest.importorskip("torch")

CASES = [
    ("relu", "cross_entropy", dict(optimizer="adam", lr=1e-2)),
    ("tanh", "mse", dict(optimizer="adam", lr=1e-2, weight_decay=1e-2)),
    ("sigmoid", "bce", dict(optimizer="adamw", lr=1e-2, weight_decay=0.1)),
    ("leaky_relu", "cross_entropy", dict(optimizer="sgd", lr=0.05, momentum=0.9)),
    ("relu", "mse", dict(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("identity", "bce", dict(optimizer="sgd", lr=0.1)),
    ("tanh", "cross_entropy", dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True)),
    ("relu", "cross_entropy", dict(optimizer="adagrad", lr=0.05, weight_decay=1e-3)),
    ("sigmoid", "mse", dict(optimizer="rmsprop", lr=1e-3)),
    ("leaky_relu", "bce", dict(optimizer="rmsprop", lr=1e-3, momentum=0.9, alpha=0.9, weight_decay=1e-3)),
    ("relu", "mse", dict(optimizer="adam", lr=1e-2, clip_norm=0.5)),
    ("tanh", "cross_entropy", dict(optimizer="sgd", lr=0.1, momentum=0.5, clip_norm=0.1)),
    # PoissonNLLLoss(log_input=True); decay_biases=False: PyTorch's idiom of a bias group without weight decay
    ("tanh", "poisson", dict(optimizer="adam", lr=1e-2)),
    ("relu", "poisson", dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.05, decay_biases=False)),
    ("relu", "mse", dict(optimizer="adamw", lr=1e-2, weight_decay=0.3, decay_biases=False)),
    ("sigmoid", "bce", dict(optimizer="adam", lr=1e-2, weight_decay=0.1, decay_biases=False)),
]
# The newer activations (nn.ELU, Softplus, GELU, GELU(approximate="tanh"), SiLU) under every optimizer, and
# one activation per hidden layer.
_NEW_OPTIMIZERS = [dict(optimizer="sgd", lr=0.05, momentum=0.9), dict(optimizer="adam", lr=1e-2),
                   dict(optimizer="adamw", lr=1e-2, weight_decay=0.1), dict(optimizer="adagrad", lr=0.05),
                   dict(optimizer="rmsprop", lr=1e-3, momentum=0.5)]
CASES += [(activation, ("cross_entropy", "mse", "bce")[i % 3], opt)
          for i, (activation, opt) in enumerate((a, o) for a in ("elu", "softplus", "gelu", "gelu_tanh", "silu")
                                                for o in _NEW_OPTIMIZERS)]
CASES += [(("gelu_tanh", "silu"), "cross_entropy", dict(optimizer="adam", lr=1e-2)),
          # the newer losses and loss options: HuberLoss(delta), L1Loss, CrossEntropyLoss(label_smoothing)
          ("relu", "huber", dict(optimizer="adam", lr=1e-2, huber_delta=0.5)),
          ("silu", "huber", dict(optimizer="sgd", lr=0.05, momentum=0.9)),
          ("tanh", "l1", dict(optimizer="adamw", lr=1e-2, weight_decay=0.1)),
          ("gelu", "l1", dict(optimizer="rmsprop", lr=1e-3)),
          ("relu", "cross_entropy", dict(optimizer="adam", lr=1e-2, label_smoothing=0.1)),
          ("elu", "cross_entropy", dict(optimizer="adagrad", lr=0.05, label_smoothing=0.3)),
          # max_norm against torch.renorm after each step (small enough that it binds from the first step)
          ("relu", "cross_entropy", dict(optimizer="sgd", lr=0.05, momentum=0.9, max_norm=0.6)),
          ("gelu", "mse", dict(optimizer="adam", lr=1e-2, max_norm=0.6, weight_decay=1e-2)),
          (("elu", "gelu"), "mse", dict(optimizer="sgd", lr=0.01, momentum=0.9))]


@pytest.mark.parametrize("activation, loss, opt", CASES)
def test_ten_steps_match_pytorch(rng, activation, loss, opt):
    sizes = [33, 65, 7, 3]
    t = fastbp.Trainer(sizes, activation=activation, loss=loss, seed=0, **opt)
    torch_step, model = peers.torch_peer(t.config, t.params)
    for step in range(10):
        batch = (7, 130, 1)[step % 3]
        X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        y = make_targets(rng, loss, batch, sizes[-1])
        y = y.astype(np.int64) if loss == "cross_entropy" else y.astype(np.float32)
        ours, theirs = t.step(X, y), torch_step(X, y)
        assert abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs))
    for (W, b), (tW, tb) in zip(t.params, peers.torch_params(model)):
        assert rel_error(W, tW) < 1e-4 and rel_error(b, tb) < 1e-4


def test_default_hyperparameters_are_pytorchs_own():
    """fastbp's defaults against the defaults of PyTorch's optimizer objects themselves (not fastbp's
    copy of them): Adagrad's eps 1e-10, AdamW's weight decay 0.01, RMSprop's alpha 0.99, Adam's betas."""
    torch = pytest.importorskip("torch")
    p = [torch.nn.Parameter(torch.zeros(1))]
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD),
                      ("adagrad", torch.optim.Adagrad), ("rmsprop", torch.optim.RMSprop)):
        theirs = cls(p, lr=0.1).defaults
        ours = fastbp.Trainer([2, 1], optimizer=name, lr=0.1).config
        assert ours.weight_decay == theirs["weight_decay"], name
        assert ours.momentum == theirs.get("momentum", 0.0), name
        if "eps" in theirs:
            assert ours.eps == theirs["eps"], name
        if "betas" in theirs:
            assert tuple(ours.betas) == tuple(theirs["betas"]), name
        if "alpha" in theirs:
            assert ours.alpha == theirs["alpha"], name
