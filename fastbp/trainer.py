"""The public Trainer: validation, batching and the training loop, on top of a backend's compiled kernels."""
import sys
import time

import numpy as np

from . import checkpoint, validation
from .history import History
from .options import Config, OptimizerSettings, finite_number, positive_int
from .state import NetworkState

# Rows per compiled call in predict/evaluate: bounds the workspace, whatever the size of X.
EVAL_CHUNK = 4096


def _make_backend(config, state):
    if config.device == "cuda":
        raise RuntimeError("device='cuda' is not available: the CUDA backend is not part of this fastbp "
                           "release yet; use device='cpu'")
    from .cpu.backend import CpuBackend
    return CpuBackend(config, state)


class Trainer:
    """A multilayer perceptron and its optimizer.

    sizes: [input width, hidden widths..., output width]. Hidden layers use `activation`; the output layer
    is linear and `loss` applies softmax (cross_entropy) or sigmoid (bce) itself, as PyTorch's losses do.
    Parameters are (W, b) per layer with W of shape (fan_in, fan_out): Z = A_prev @ W + b.
    """

    def __init__(self, sizes, activation="relu", loss="mse", optimizer="adam", lr=1e-3, batch_size=32,
                 device="cpu", seed=None, weight_decay=None, momentum=0.0, nesterov=False,
                 betas=(0.9, 0.999), eps=1e-8):
        self.config = Config(sizes=sizes, activation=activation, loss=loss, optimizer=optimizer, lr=lr,
                             batch_size=batch_size, device=device, seed=seed, weight_decay=weight_decay,
                             momentum=momentum, nesterov=nesterov, betas=betas, eps=eps)
        self.state = NetworkState(self.config.sizes)
        self._rng = np.random.default_rng(self.config.seed)
        self.state.initialize(self.config.activation, self._rng)
        self._backend = _make_backend(self.config, self.state)
        self.lr = self.config.lr
        self.epochs_done = 0

    # ---- configuration that may change during training ----

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = finite_number("lr", value, low=0.0)

    @property
    def sizes(self):
        return self.config.sizes

    def _optimizer_settings(self):
        return OptimizerSettings.for_step(self.config, self._lr, self.state.step_count + 1)

    # ---- validation ----

    def _checked(self, X, y, names=("X", "y")):
        X = validation.features(X, self.sizes[0], names[0])
        labels, targets = validation.targets_for(self.config.loss, y, X.shape[0], self.sizes[-1], names[1])
        return X, labels, targets

    # ---- training ----

    def _train_rows(self, X, labels, targets, rows):
        loss = self._backend.train_step(X, labels, targets, rows, self._optimizer_settings())
        if not np.isfinite(loss):
            # The compiled step skips the update when the loss is not finite: parameters and moments
            # still hold the last finite state.
            raise FloatingPointError(f"loss became {loss} at step {self.state.step_count + 1}; the update was "
                                     "not applied. Lower the learning rate or check the data scale.")
        self.state.step_count += 1
        return float(loss)

    def step(self, xb, yb):
        """One training step (forward, backward, update) on one batch; returns the batch's mean loss."""
        X, labels, targets = self._checked(xb, yb)
        return self._train_rows(X, labels, targets, np.arange(X.shape[0], dtype=np.int64))

    def fit(self, X, y, epochs=1, batch_size=None, validation_data=None, shuffle=True, verbose=1):
        """Trains for `epochs` passes over (X, y) in batches; the last batch of an epoch may be shorter.

        Returns a History whose .history holds per-epoch "loss" (mean training loss over the epoch's
        batches) and, with validation_data=(Xv, yv), "val_loss" and "val_accuracy" (classification).
        verbose: 0 silent, 1 one line per epoch.
        """
        X, labels, targets = self._checked(X, y)
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (X_val, y_val)")
            Xv, yv = validation_data
            Xv, lv, tv = self._checked(Xv, yv, ("validation X", "validation y"))
        epochs = positive_int("epochs", epochs)
        batch_size = self.config.batch_size if batch_size is None else positive_int(
            "batch_size", batch_size)
        n = X.shape[0]
        history = History()
        for _ in range(epochs):
            start_time = time.perf_counter()
            order = self._rng.permutation(n) if shuffle else np.arange(n, dtype=np.int64)
            loss_sum = 0.0
            for start in range(0, n, batch_size):
                rows = order[start:start + batch_size]
                loss_sum += self._train_rows(X, labels, targets, rows) * rows.size
            seconds = time.perf_counter() - start_time
            self.epochs_done += 1
            record = {"loss": loss_sum / n}
            if validation_data is not None:
                record.update({"val_" + k: v for k, v in self._evaluate(Xv, lv, tv).items()})
            history.record(self.epochs_done, **record)
            if verbose:
                metrics = "  ".join(f"{k} {v:.4f}" for k, v in record.items())
                print(f"epoch {self.epochs_done}: {metrics}  {n / seconds:,.0f} samples/s", file=sys.stdout,
                      flush=True)
        return history

    # ---- inference and inspection ----

    def _chunks(self, n):
        for start in range(0, n, EVAL_CHUNK):
            yield np.arange(start, min(start + EVAL_CHUNK, n), dtype=np.int64)

    def _logits(self, X):
        return np.concatenate([self._backend.logits(X, rows) for rows in self._chunks(X.shape[0])])

    def predict(self, X):
        """(n, out) float32: class probabilities for cross_entropy, P(y=1) for bce, raw outputs for mse."""
        X = validation.features(X, self.sizes[0])
        logits = self._logits(X)
        if self.config.loss == "cross_entropy":
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=1, keepdims=True)
        elif self.config.loss == "bce":
            logits = (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)  # sigmoid without overflow
        return logits

    def _evaluate(self, X, labels, targets):
        n = X.shape[0]
        loss_sum, correct = 0.0, 0.0
        for rows in self._chunks(n):
            loss_sum += self._backend.loss_value(X, labels, targets, rows) * rows.size
            if self.config.loss != "mse":
                logits = self._backend.last_logits(rows.size)
                if self.config.loss == "cross_entropy":
                    correct += np.count_nonzero(logits.argmax(axis=1) == labels[rows])
                else:
                    correct += np.count_nonzero((logits > 0) == (targets[rows] >= 0.5)) / self.sizes[-1]
        result = {"loss": loss_sum / n}
        if self.config.loss != "mse":
            result["accuracy"] = float(correct / n)
        return result

    def evaluate(self, X, y):
        """{"loss": mean loss, "accuracy": fraction correct (classification losses only)}."""
        return self._evaluate(*self._checked(X, y))

    def gradients(self, X, y):
        """(loss, [(dW, db), ...]) of the mean loss over all of (X, y); changes nothing."""
        X, labels, targets = self._checked(X, y)
        loss = self._backend.loss_and_gradients(X, labels, targets, np.arange(X.shape[0], dtype=np.int64))
        return float(loss), [(dW.copy(), db.copy()) for dW, db in self.state.layer_views(self.state.grads)]

    @property
    def params(self):
        """[(W, b), ...] float32 copies; W: (fan_in, fan_out), b: (fan_out,)."""
        return [(W.copy(), b.copy()) for W, b in self.state.layer_views(self.state.params)]

    def set_params(self, params):
        """Replaces the weights (e.g. with a reference implementation's); optimizer state is kept."""
        checked = validation.parameter_list(params, self.sizes)
        for (W, b), (W_new, b_new) in zip(self.state.layer_views(self.state.params), checked):
            W[...] = W_new
            b[...] = b_new

    # ---- checkpoints ----

    def save(self, path):
        """Weights, optimizer state, counters, RNG state and config in one .npz, written atomically."""
        s = self.state
        checkpoint.write(path, {"params": s.params, "moment1": s.moment1, "moment2": s.moment2},
                         {"config": self.config.to_dict(), "lr": self._lr, "step_count": s.step_count,
                          "epochs_done": self.epochs_done, "rng_state": self._rng.bit_generator.state})

    @classmethod
    def load(cls, path):
        """A Trainer that continues exactly where the saved one stopped."""
        arrays, meta = checkpoint.read(path)
        try:
            config = Config.from_dict(meta["config"])
            t = cls(**config.to_dict())
            s = t.state
            for name in ("params", "moment1", "moment2"):
                saved = arrays[name]
                if saved.shape != getattr(s, name).shape or saved.dtype != np.float32:
                    raise ValueError(f"{name} has shape {saved.shape} {saved.dtype}, the config needs "
                                     f"{getattr(s, name).shape} float32")
                getattr(s, name)[:] = saved
            s.step_count = int(meta["step_count"])
            t.epochs_done = int(meta["epochs_done"])
            t.lr = meta["lr"]
            t._rng.bit_generator.state = meta["rng_state"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a consistent fastbp checkpoint: {exc}") from None
        return t

    def __repr__(self):
        c = self.config
        return (f"Trainer(sizes={list(c.sizes)}, activation={c.activation!r}, loss={c.loss!r}, "
                f"optimizer={c.optimizer!r}, lr={self._lr}, batch_size={c.batch_size}, device={c.device!r})")
