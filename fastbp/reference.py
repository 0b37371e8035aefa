"""The executable specification: a plain NumPy MLP, written for clarity, float64 by default.

Conventions (shared with the compiled backends):
- X: (n, sizes[0]); parameters: a list of (W, b) with W of shape (fan_in, fan_out), b of shape (fan_out,).
- Hidden layers: Z = A_prev @ W + b, A = act(Z). The output layer is linear: its Z are the logits.
- Losses follow PyTorch: cross_entropy = softmax + NLL on integer labels, mean over the batch;
  mse = mean over all elements; bce = sigmoid + binary cross-entropy on logits, mean over all elements;
  poisson = PyTorch's PoissonNLLLoss(log_input=True): the logits are log-rates, mean over all elements of
  exp(z) - y z (the negative log-likelihood without its log(y!) term, which has no gradient);
  huber = HuberLoss(delta): per element 0.5 d^2 where |d| < delta, else delta (|d| - delta / 2), d = z - y,
  mean over all elements; l1 = mean of |z - y| (its derivative at 0 taken as 0, as PyTorch's sign);
  cross_entropy with label_smoothing e: the targets are (1 - e) onehot(y) + e / classes (PyTorch's).
- Sample weights w (n,): every mean over rows becomes the weighted one, sum_i w_i loss_i / sum_i w_i
  (a batch whose weights are all 0: loss 0, delta 0).
- Backpropagation (n = batch rows):
    BP1  delta_L = dLoss/dZ_L                         (fused with the loss)
    BP2  delta_l = (delta_{l+1} @ W_{l+1}^T) * act'(Z_l)
    BP3  db_l    = sum over rows of delta_l
    BP4  dW_l    = A_{l-1}^T @ delta_l
"""
import math

import numpy as np

from .options import LEAKY_SLOPE


# ---- activations and their derivatives, both as functions of the pre-activation Z ----

_GELU_TANH_K = np.sqrt(2 / np.pi)  # PyTorch's GELU(approximate="tanh"): 0.5 z (1 + tanh(k (z + c z^3)))
_GELU_TANH_C = 0.044715
_SOFTPLUS_THRESHOLD = 20.0  # PyTorch's Softplus(beta=1, threshold=20): linear above it
_erf = np.frompyfunc(math.erf, 1, 1)


def _phi(z):
    """The standard normal CDF, elementwise in z's dtype."""
    return (0.5 * (1 + _erf(z / np.sqrt(2)))).astype(z.dtype)


def activate(name, z):
    if name == "identity":
        return z.copy()
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, LEAKY_SLOPE * z)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return sigmoid(z)
    if name == "elu":  # alpha = 1
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))
    if name == "softplus":
        return np.where(z > _SOFTPLUS_THRESHOLD, z, np.log1p(np.exp(np.minimum(z, _SOFTPLUS_THRESHOLD))))
    if name == "gelu":  # PyTorch's exact GELU: z Phi(z)
        return z * _phi(z)
    if name == "gelu_tanh":
        return 0.5 * z * (1 + np.tanh(_GELU_TANH_K * (z + _GELU_TANH_C * z ** 3)))
    if name == "silu":
        return z * sigmoid(z)
    raise ValueError(f"unknown activation {name!r}")


def activation_derivative(name, z):
    """act'(Z). (The kernels compute it from the output A where the activation allows, and store it in the
    forward pass for gelu, gelu_tanh and silu, whose A does not determine Z.)"""
    if name == "identity":
        return np.ones_like(z)
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, LEAKY_SLOPE).astype(z.dtype)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = sigmoid(z)
        return s * (1 - s)
    if name == "elu":
        return np.where(z > 0, 1.0, np.exp(np.minimum(z, 0)))
    if name == "softplus":
        return np.where(z > _SOFTPLUS_THRESHOLD, 1.0, sigmoid(z))
    if name == "gelu":
        return _phi(z) + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    if name == "gelu_tanh":
        t = np.tanh(_GELU_TANH_K * (z + _GELU_TANH_C * z ** 3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_TANH_K * (1 + 3 * _GELU_TANH_C * z * z)
    if name == "silu":
        s = sigmoid(z)
        return s * (1 + z * (1 - s))
    raise ValueError(f"unknown activation {name!r}")


def hidden_activations(activation, n_hidden):
    """One name per hidden layer, from one name or a list of them."""
    if isinstance(activation, str):
        return [activation] * n_hidden
    if len(activation) != n_hidden:
        raise ValueError(f"{len(activation)} activations for {n_hidden} hidden layers")
    return list(activation)


def sigmoid(z):
    """Overflow-free logistic function."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---- forward, loss, backward ----

def forward(params, X, activation, masks=None, rate=0.0, input_mask=None, input_rate=0.0):
    """Returns (activations, logits): activations[0] is the input, activations[l] the output of hidden layer l.

    activation: one name, or one per hidden layer. masks: optional 0/1 arrays, one per hidden layer, for
    inverted dropout at `rate`: hidden layer l then outputs act(Z_l) * masks[l] / (1 - rate). input_mask:
    an optional 0/1 array of X's shape, for inverted dropout on the inputs at input_rate."""
    names = hidden_activations(activation, len(params) - 1)
    acts = [X if input_mask is None else X * input_mask / (1 - input_rate)]
    for l, (W, b) in enumerate(params[:-1]):
        a = activate(names[l], acts[-1] @ W + b)
        acts.append(a if masks is None else a * masks[l] / (1 - rate))
    W, b = params[-1]
    return acts, acts[-1] @ W + b


def loss_and_output_delta(logits, y, loss, weights=None, huber_delta=1.0, label_smoothing=0.0):
    """BP1: the loss and dLoss/dlogits. y: int labels (n,) for cross_entropy, targets (n, out) otherwise;
    weights: None or sample weights (n,)."""
    n, m = logits.shape
    if loss == "cross_entropy":
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        q = np.full((n, m), label_smoothing / m)
        q[np.arange(n), y] += 1 - label_smoothing
        row_loss = -(q * log_probs).sum(axis=1)
        row_delta = np.exp(log_probs) - q
        per_row = 1  # the mean is over rows
    elif loss == "mse":
        diff = logits - y
        row_loss, row_delta = (diff * diff).sum(axis=1), 2 * diff
        per_row = m  # the mean is over rows x outputs
    elif loss == "bce":
        # log(1 + exp(-|z|)) + max(z, 0) - z*y: never exponentiates a large positive number.
        row_loss = (np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))).sum(axis=1)
        row_delta, per_row = sigmoid(logits) - y, m
    elif loss == "poisson":
        rate = np.exp(logits)
        row_loss, row_delta, per_row = (rate - y * logits).sum(axis=1), rate - y, m
    elif loss == "huber":
        diff = logits - y
        inside = np.abs(diff) < huber_delta
        row_loss = np.where(inside, 0.5 * diff * diff, huber_delta * (np.abs(diff) - 0.5 * huber_delta)).sum(axis=1)
        row_delta, per_row = np.where(inside, diff, huber_delta * np.sign(diff)), m
    elif loss == "l1":
        diff = logits - y
        row_loss, row_delta, per_row = np.abs(diff).sum(axis=1), np.sign(diff), m
    else:
        raise ValueError(f"unknown loss {loss!r}")
    w = np.ones(n, logits.dtype) if weights is None else np.asarray(weights, logits.dtype)
    total = w.sum() * per_row
    if total == 0:
        return 0.0 * row_loss.sum(), np.zeros_like(row_delta)
    return (w * row_loss).sum() / total, row_delta * (w[:, None] / total)


def backward(params, acts, delta, activation, masks=None, rate=0.0):
    """BP2-BP4: gradients [(dW, db), ...] given the activations and the output delta.

    With dropout masks, the gradient reaching hidden layer l passes the mask and 1 / (1 - rate).
    act'(Z) is taken at Z recomputed from the layer's input (acts[l - 1] @ W + b)."""
    names = hidden_activations(activation, len(params) - 1)
    grads = [None] * len(params)
    for l in range(len(params) - 1, -1, -1):
        W, _ = params[l]
        grads[l] = (acts[l].T @ delta, delta.sum(axis=0))                               # BP4, BP3
        if l > 0:
            delta = delta @ W.T
            if masks is not None:
                delta = delta * masks[l - 1] / (1 - rate)
            W_prev, b_prev = params[l - 1]
            delta = delta * activation_derivative(names[l - 1], acts[l - 1] @ W_prev + b_prev)  # BP2
    return grads


def loss_and_gradients(params, X, y, activation, loss, masks=None, rate=0.0, weights=None, input_mask=None,
                       input_rate=0.0, huber_delta=1.0, label_smoothing=0.0):
    acts, logits = forward(params, X, activation, masks, rate, input_mask, input_rate)
    value, delta = loss_and_output_delta(logits, y, loss, weights, huber_delta, label_smoothing)
    return value, backward(params, acts, delta, activation, masks, rate)


def output_transform(logits, loss):
    """What predict() returns: probabilities for cross_entropy/bce, rates exp(z) for poisson, the raw
    outputs for mse."""
    if loss == "cross_entropy":
        return softmax(logits)
    if loss == "bce":
        return sigmoid(logits)
    if loss == "poisson":
        return np.exp(logits)
    return logits


# ---- optimizers (PyTorch's update rules), applied in place ----

class Optimizer:
    """Adam (L2 weight_decay), AdamW (decoupled weight_decay), SGD with optional (Nesterov) momentum,
    Adagrad and RMSprop (optional momentum); clip_norm: gradient clipping by global norm first;
    decay_biases=False: weight_decay applies to the weights W only, the biases b are not decayed;
    eps_hat=True: Adam's eps added to sqrt(v) before the bias corrections (Keras, scikit-learn), not to
    sqrt(v_hat) after them (PyTorch); max_norm: after each update, every W's columns (each unit's incoming
    weights) longer than max_norm are scaled to that norm (Srivastava et al.'s max-norm constraint)."""

    def __init__(self, params, kind="adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum=0.0, nesterov=False, alpha=0.99, clip_norm=None, decay_biases=True, eps_hat=False,
                 max_norm=None):
        self.kind, self.lr, self.betas, self.eps, self.eps_hat = kind, lr, betas, eps, eps_hat
        self.max_norm = max_norm
        self.decay_biases = decay_biases
        self.weight_decay, self.momentum, self.nesterov = weight_decay, momentum, nesterov
        self.alpha, self.clip_norm = alpha, clip_norm
        self.m = [np.zeros_like(p) for pair in params for p in pair]
        self.v = [np.zeros_like(p) for pair in params for p in pair]
        self.step_count = 0

    def step(self, params, grads):
        self._update(params, grads)
        if self.max_norm:
            for W, _ in params:
                norms = np.sqrt((W * W).sum(axis=0))
                W *= np.where(norms > self.max_norm, self.max_norm / np.maximum(norms, 1e-300), 1.0)

    def _update(self, params, grads):
        self.step_count += 1
        t = self.step_count
        flat_p = [p for pair in params for p in pair]
        flat_g = [g for pair in grads for g in pair]
        if self.clip_norm:
            norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in flat_g))
            flat_g = [g * min(1.0, self.clip_norm / (norm + 1e-6)) for g in flat_g]
        for index, (p, g, m, v) in enumerate(zip(flat_p, flat_g, self.m, self.v)):
            is_bias = index % 2 == 1  # flat_p is W_0, b_0, W_1, b_1, ...
            wd = 0.0 if is_bias and not self.decay_biases else self.weight_decay
            if self.kind in ("adagrad", "rmsprop"):
                if wd:
                    g = g + wd * p
                if self.kind == "adagrad":
                    m += g * g
                    p -= self.lr * g / (np.sqrt(m) + self.eps)
                    continue
                m *= self.alpha
                m += (1 - self.alpha) * g * g
                u = g / (np.sqrt(m) + self.eps)
                if self.momentum:
                    v *= self.momentum
                    v += u
                    u = v
                p -= self.lr * u
                continue
            if self.kind == "sgd":
                if wd:
                    g = g + wd * p
                if self.momentum:
                    m *= self.momentum
                    m += g
                    g = g + self.momentum * m if self.nesterov else m
                p -= self.lr * g
                continue
            if self.kind == "adamw":
                p *= 1 - self.lr * wd
            elif wd:
                g = g + wd * p
            b1, b2 = self.betas
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            if self.eps_hat:  # Kingma and Ba's algorithm as written out at the end of their section 2
                p -= self.lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + self.eps)
                continue
            m_hat = m / (1 - b1 ** t)
            v_hat = v / (1 - b2 ** t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class Network:
    """A whole reference trainer: step(X, y) runs forward, loss, backward and the update."""

    def __init__(self, params, activation="relu", loss="mse", dtype=np.float64, huber_delta=1.0, label_smoothing=0.0,
                 **optimizer_options):
        self.params = [(np.array(W, dtype=dtype), np.array(b, dtype=dtype)) for W, b in params]
        self.activation, self.loss, self.dtype = activation, loss, dtype
        self.huber_delta, self.label_smoothing = huber_delta, label_smoothing
        self.optimizer = Optimizer(self.params, **optimizer_options)

    def loss_and_gradients(self, X, y, weights=None):
        y = y if self.loss == "cross_entropy" else np.asarray(y, self.dtype).reshape(len(X), -1)
        return loss_and_gradients(self.params, np.asarray(X, self.dtype), y, self.activation, self.loss,
                                  weights=weights, huber_delta=self.huber_delta, label_smoothing=self.label_smoothing)

    def step(self, X, y, weights=None):
        value, grads = self.loss_and_gradients(X, y, weights)
        self.optimizer.step(self.params, grads)
        return float(value)

    def predict(self, X):
        _, logits = forward(self.params, np.asarray(X, self.dtype), self.activation)
        return output_transform(logits, self.loss)
