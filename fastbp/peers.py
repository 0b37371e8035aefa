"""Reference implementations to compare fastbp against, built from a Trainer's config and weights.

PyTorch and JAX are optional: each peer imports its framework on first use and raises ImportError when
it is missing.
"""
import functools

import numpy as np

from . import export, reference


# PyTorch's optimizer implementations: "fused" (one fused CPU kernel per parameter group: PyTorch's fastest
# eager optimizer, and the `torch` benchmark peer), "foreach" (its default, multi-tensor ops) and "compile"
# (torch.compile of the whole step, optimizer included: Inductor generates one C++ loop for the update).
TORCH_MODES = ("fused", "foreach", "compile")


def torch_model(config, params):
    """(model, loss_fn): export.sequential of params with config's activation, and the loss module
    matching config.loss."""
    import torch
    loss_fn = {"mse": torch.nn.MSELoss, "cross_entropy": lambda: torch.nn.CrossEntropyLoss(
                   label_smoothing=config.label_smoothing),
               "bce": torch.nn.BCEWithLogitsLoss, "poisson": lambda: torch.nn.PoissonNLLLoss(log_input=True),
               "huber": lambda: torch.nn.HuberLoss(delta=config.huber_delta), "l1": torch.nn.L1Loss}[config.loss]()
    return export.sequential(params, config.activation), loss_fn


def torch_optimizer(config, parameters, mode):
    """config's optimizer as a torch.optim object; mode "fused" asks for the fused kernel (RMSprop has
    none and stays foreach), "foreach" and "compile" take PyTorch's default implementation."""
    import torch
    c = config
    if not c.decay_biases and c.weight_decay:  # the usual PyTorch idiom: a group of biases without decay
        parameters = list(parameters)
        parameters = [{"params": [p for p in parameters if p.ndim > 1]},
                      {"params": [p for p in parameters if p.ndim == 1], "weight_decay": 0.0}]
    fast = {"fused": True} if mode == "fused" and c.optimizer != "rmsprop" else {}
    if c.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                               weight_decay=c.weight_decay, **fast)
    if c.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
        return cls(parameters, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, **fast)
    if c.optimizer == "adagrad":
        return torch.optim.Adagrad(parameters, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay, **fast)
    return torch.optim.RMSprop(parameters, lr=c.lr, alpha=c.alpha, eps=c.eps, weight_decay=c.weight_decay,
                               momentum=c.momentum)


def torch_peer(config, params, threads=None, mode="fused"):
    """(step, model) for PyTorch: step(X, y) -> loss float runs one training step on numpy arrays already
    converted by the caller (X float32 (n, in); y int64 labels or float32 (n, out) targets).

    mode (TORCH_MODES): "fused" eager with the fused optimizer; "foreach" eager with the default one;
    "compile" the whole step (zero_grad, forward, loss, backward, clipping, optimizer step) through
    torch.compile, as PyTorch's tutorials on compiled training steps do."""
    import torch
    if mode not in TORCH_MODES:
        raise ValueError(f"unknown PyTorch mode {mode!r}; valid: {', '.join(TORCH_MODES)}")
    if threads:
        torch.set_num_threads(threads)
    model, loss_fn = torch_model(config, params)
    opt = torch_optimizer(config, model.parameters(), mode)
    clip_norm, max_norm = config.clip_norm, config.max_norm
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]

    def train_step(xt, yt):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        if max_norm:  # PyTorch's max-norm idiom: each unit's incoming weights (a row of weight) renormed
            with torch.no_grad():
                for linear in linears:
                    linear.weight.copy_(torch.renorm(linear.weight, 2, 0, max_norm))
        return loss.detach()

    compiled_step = torch.compile(train_step) if mode == "compile" else train_step

    def step(X, y):
        return compiled_step(torch.from_numpy(X), torch.from_numpy(y)).item()

    return step, model


def _jax_adam(config, params):
    """(train_step, state) for the JAX peers: train_step(weights, m, v, t, X, y) -> (weights, m, v, t, loss)
    is one whole step (forward, backward, Adam update) in JAX, not yet jitted; state holds the initial
    weights, zero moments and step count. Adam only (the benchmark's optimizer)."""
    import jax
    import jax.numpy as jnp
    if config.optimizer != "adam" or config.weight_decay or config.clip_norm:
        raise ValueError("the JAX peer implements plain Adam only")
    if config.loss in ("huber", "l1") or config.label_smoothing:
        raise ValueError("the JAX peer implements the mse, cross_entropy (without label smoothing), bce and poisson "
                         "losses only")
    functions = {"identity": lambda z: z, "relu": jax.nn.relu, "leaky_relu": jax.nn.leaky_relu, "tanh": jnp.tanh,
                 "sigmoid": jax.nn.sigmoid, "elu": jax.nn.elu, "softplus": jax.nn.softplus,
                 "gelu": lambda z: jax.nn.gelu(z, approximate=False),
                 "gelu_tanh": lambda z: jax.nn.gelu(z, approximate=True), "silu": jax.nn.silu}
    acts = [functions[name] for name in config.hidden_activations]
    b1, b2 = config.betas
    lr, eps, loss_name = config.lr, config.eps, config.loss

    def loss_fn(weights, X, y):
        a = X
        for l, (W, b) in enumerate(weights):
            a = a @ W + b
            if l < len(weights) - 1:
                a = acts[l](a)
        if loss_name == "cross_entropy":
            return jnp.mean(jax.nn.logsumexp(a, axis=1) - jnp.take_along_axis(a, y[:, None], axis=1)[:, 0])
        if loss_name == "mse":
            return jnp.mean((a - y) ** 2)
        if loss_name == "poisson":
            return jnp.mean(jnp.exp(a) - a * y)
        return jnp.mean(jnp.maximum(a, 0) - a * y + jnp.log1p(jnp.exp(-jnp.abs(a))))

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
    return train_step, state


def jax_peer(config, params):
    """step(X, y) -> loss float: the same network, loss and Adam update written in JAX, the whole step
    (forward, backward, update) one jax.jit-compiled function whose weights and moments are donated (updated
    in place, no copy per step). Adam only (the benchmark's optimizer)."""
    import jax
    train_step, state = _jax_adam(config, params)
    train_step = jax.jit(train_step, donate_argnums=(0, 1, 2, 3))

    def step(X, y):
        state["weights"], state["m"], state["v"], state["t"], value = train_step(
            state["weights"], state["m"], state["v"], state["t"], X, y)
        return float(value)  # waits for the step to finish

    return step


def jax_epoch_peer(config, params, X, y, batch):
    """epoch() -> (steps,) losses: JAX's best practice for small models, one jax.jit of a whole epoch,
    lax.scan over the batches of X and y taken in order (rows a multiple of batch), the weights and
    moments donated. X and y are put on the device once."""
    import jax
    import jax.numpy as jnp
    if X.shape[0] % batch:
        raise ValueError("the scanned JAX epoch needs a whole number of batches")
    train_step, state = _jax_adam(config, params)
    steps = X.shape[0] // batch
    Xs = jnp.asarray(X.reshape(steps, batch, *X.shape[1:]))
    ys = jnp.asarray(y.reshape(steps, batch, *y.shape[1:]))

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3))
    def train_epoch(weights, m, v, t, Xs, ys):
        def body(carry, xy):
            weights, m, v, t, value = train_step(*carry, *xy)
            return (weights, m, v, t), value
        (weights, m, v, t), values = jax.lax.scan(body, (weights, m, v, t), (Xs, ys))
        return weights, m, v, t, values

    def epoch():
        state["weights"], state["m"], state["v"], state["t"], values = train_epoch(
            state["weights"], state["m"], state["v"], state["t"], Xs, ys)
        return np.asarray(values)  # waits for the epoch to finish

    return epoch


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
                             momentum=c.momentum, nesterov=c.nesterov, alpha=c.alpha, clip_norm=c.clip_norm,
                             decay_biases=c.decay_biases)
