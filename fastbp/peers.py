"""Reference implementations to compare fastbp against, built from a Trainer's config and weights.

PyTorch and JAX are optional: each peer imports its framework on first use and raises ImportError when
it is missing.
"""
import numpy as np

from . import reference


def torch_peer(config, params, threads=None, compiled=False):
    """(step, model) for PyTorch eager: step(X, y) -> loss float runs one training step on numpy arrays
    already converted by the caller (X float32 (n, in); y int64 labels or float32 (n, out) targets).

    compiled: the model's forward (and so its backward) through torch.compile (Inductor's generated C++
    on the CPU), as PyTorch recommends for speed; the optimizer step stays eager (foreach Adam)."""
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

    forward = torch.compile(model) if compiled else model

    def step(X, y):
        xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(forward(xt), yt)
        loss.backward()
        if c.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip_norm)
        opt.step()
        return loss.item()

    return step, model


def jax_peer(config, params):
    """step(X, y) -> loss float: the same network, loss and Adam update written in JAX, the whole step
    (forward, backward, update) one jax.jit-compiled function. Adam only (the benchmark's optimizer)."""
    import jax
    import jax.numpy as jnp
    if config.optimizer != "adam" or config.weight_decay or config.clip_norm:
        raise ValueError("the JAX peer implements plain Adam only")
    act = {"identity": lambda z: z, "relu": jax.nn.relu, "leaky_relu": jax.nn.leaky_relu, "tanh": jnp.tanh,
           "sigmoid": jax.nn.sigmoid}[config.activation]
    b1, b2 = config.betas
    lr, eps, loss_name = config.lr, config.eps, config.loss

    def loss_fn(weights, X, y):
        a = X
        for l, (W, b) in enumerate(weights):
            a = a @ W + b
            if l < len(weights) - 1:
                a = act(a)
        if loss_name == "cross_entropy":
            return jnp.mean(jax.nn.logsumexp(a, axis=1) - jnp.take_along_axis(a, y[:, None], axis=1)[:, 0])
        if loss_name == "mse":
            return jnp.mean((a - y) ** 2)
        return jnp.mean(jnp.maximum(a, 0) - a * y + jnp.log1p(jnp.exp(-jnp.abs(a))))

    @jax.jit
    def train_step(weights, m, v, t, X, y):
        value, grads = jax.value_and_grad(loss_fn)(weights, X, y)
        t = t + 1
        m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, grads)
        step_size = lr * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        weights = jax.tree_util.tree_map(lambda w, m_, v_: w - step_size * m_ / (jnp.sqrt(v_) + eps
                                                                                   * jnp.sqrt(1 - b2 ** t)),
                                         weights, m, v)
        return weights, m, v, t, value

    state = {"weights": [(jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32)) for W, b in params]}
    state["m"] = jax.tree_util.tree_map(jnp.zeros_like, state["weights"])
    state["v"] = jax.tree_util.tree_map(jnp.zeros_like, state["weights"])
    state["t"] = jnp.zeros((), jnp.float32)

    def step(X, y):
        state["weights"], state["m"], state["v"], state["t"], value = train_step(
            state["weights"], state["m"], state["v"], state["t"], X, y)
        return float(value)  # waits for the step to finish

    return step


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
