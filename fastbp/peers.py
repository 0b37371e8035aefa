"""Reference implementations to compare fastbp against, built from a Trainer's config and weights.

PyTorch is optional: torch_peer() imports it on first use and raises ImportError when it is missing.
"""
import numpy as np

from . import reference


def torch_peer(config, params, threads=None):
    """(step, model) for PyTorch eager: step(X, y) -> loss float runs one training step on numpy arrays
    already converted by the caller (X float32 (n, in); y int64 labels or float32 (n, out) targets)."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    activations = {"identity": torch.nn.Identity, "relu": torch.nn.ReLU, "leaky_relu": torch.nn.LeakyReLU,
                   "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}
    layers = []
    with torch.no_grad():
        for l, (W, b) in enumerate(params):
            linear = torch.nn.Linear(W.shape[0], W.shape[1])
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T, dtype=np.float32)))
            linear.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float32)))
            layers.append(linear)
            if l < len(params) - 1:
                layers.append(activations[config.activation]())
    model = torch.nn.Sequential(*layers)
    loss_fn = {"mse": torch.nn.MSELoss(), "cross_entropy": torch.nn.CrossEntropyLoss(),
               "bce": torch.nn.BCEWithLogitsLoss()}[config.loss]
    c = config
    if c.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                              weight_decay=c.weight_decay)
    elif c.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)
    elif c.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=c.lr, betas=c.betas, eps=c.eps,
                                weight_decay=c.weight_decay)
    elif c.optimizer == "adagrad":
        opt = torch.optim.Adagrad(model.parameters(), lr=c.lr, eps=c.eps, weight_decay=c.weight_decay)
    else:
        opt = torch.optim.RMSprop(model.parameters(), lr=c.lr, alpha=c.alpha, eps=c.eps,
                                  weight_decay=c.weight_decay, momentum=c.momentum)

    def step(X, y):
        xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        if c.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip_norm)
        opt.step()
        return loss.item()

    return step, model


def torch_params(model):
    """[(W, b), ...] in fastbp's layout (W: (fan_in, fan_out)) from a torch Sequential of Linear layers."""
    import torch
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linears]


def numpy_peer(config, params, dtype=np.float32):
    """reference.Network with the config's optimizer: a plain NumPy implementation of the same step."""
    c = config
    return reference.Network(params, activation=c.activation, loss=c.loss, dtype=dtype, kind=c.optimizer,
                             lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                             momentum=c.momentum, nesterov=c.nesterov, alpha=c.alpha, clip_norm=c.clip_norm)
