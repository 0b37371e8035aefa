"""The public Trainer: validation, batching and the training loop, on top of a backend's compiled kernels."""
import copy
import numbers
import time

import numpy as np

from . import callbacks as callback_tools
from . import checkpoint, distributed, schedules, threads as thread_limits, validation
from .guard import CallGuard, whole_steps
from .history import History
from .progress import EpochProgress
from .cpu.dropout import offset_key, threshold as dropout_threshold
from .options import Config, OptimizerSettings, finite_number, float32_number, positive_int
from .state import NetworkState, layer_offsets

# Rows per compiled call in predict/evaluate: bounds the workspace, whatever the size of X.
EVAL_CHUNK = 4096


def _make_backend(config, state, threads=None, comm=distributed.Single()):
    if config.device == "cuda":
        try:
            from numba import cuda
            available = cuda.is_available()
        except ImportError:
            available = False
        if not available:
            raise RuntimeError("device='cuda' needs an NVIDIA GPU with a working driver and the CUDA target "
                               "(pip install 'fastbp[cuda]'); none was found. Use device='cpu'.")
        if comm.size > 1:  # one GPU per rank: the ranks on a machine take its GPUs in turn
            cuda.select_device(comm.node_rank() % len(cuda.gpus))
        from .cuda.backend import CudaBackend
        return CudaBackend(config, state)
    from .cpu.backend import CpuBackend
    return CpuBackend(config, state, threads)


def _checkpoint_length(meta):
    """The flat buffers' length that a checkpoint's saved config implies (checked before reading them)."""
    try:
        return int(layer_offsets(Config.from_dict(meta["config"]).sizes)[-1])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ValueError(f"its config is not valid: {exc}") from None


def _counter(value, name):
    """A saved step count, epoch count or seed: an integer in [0, 2^62]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2 ** 62:
        raise ValueError(f"{name} must be an integer in [0, 2^62], got {value!r}")
    return value


class Trainer:
    """A multilayer perceptron and its optimizer.

    Parameters are (W, b) per layer with W of shape (fan_in, fan_out): Z = A_prev @ W + b. Hidden layers
    use `activation`; the output layer is linear and `loss` applies softmax (cross_entropy) or sigmoid
    (bce) itself, as PyTorch's losses do.

    Options (each checked on construction; a bad value is a ValueError or TypeError naming it):
        sizes        [input width, hidden widths..., output width]
        activation   "relu" (default), "leaky_relu" (slope 0.01), "tanh", "sigmoid", "identity"
        loss         "mse" (default; targets (n, out)), "cross_entropy" (integer labels (n,), softmax
                     outputs), "bce" (targets in [0, 1], sigmoid outputs)
        optimizer    "adam" (default), "adamw", "sgd", "adagrad", "rmsprop", with PyTorch's update rules
        lr           learning rate (default 1e-3); `trainer.lr` may be changed between steps
        batch_size   rows per step in fit (default 32)
        device       "cpu" (default) or "cuda"
        seed         initial weights, shuffling and dropout masks; None draws a fresh seed
        weight_decay L2 decay (AdamW: decoupled; default 0.01 for AdamW, else 0)
        momentum, nesterov       SGD (and RMSprop) momentum
        betas, eps   Adam/AdamW moment decays and epsilon (eps default 1e-8; Adagrad 1e-10)
        alpha        RMSprop's smoothing constant (default 0.99)
        clip_norm    clip the global gradient norm to this value (default None: no clipping)
        dropout      rate on every hidden layer during training, in [0, 1 - 2^-24] (default 0)
        schedule     a fastbp.schedules.Schedule for the learning rate (default None: constant)
        threads      CPU threads for the kernels (default None: as many as the process may use, see
                     fastbp.threads.limit; joblib workers and threadpoolctl limits are honoured; with comm,
                     that number divided among the ranks on the same machine)
        comm         an mpi4py communicator (e.g. MPI.COMM_WORLD) for data-parallel training on its ranks,
                     or None (default): one process. See distributed.py and the README's "MPI" section:
                     every rank constructs the Trainer and calls its methods in the same order; rank 0's
                     initial weights are used everywhere; batch_size is the global batch.

    Thread safety: every method may be called from any thread; calls on one Trainer take turns, and
    training it from two threads at once is a RuntimeError. A Ctrl-C during training takes effect between
    steps: the state is always that of a whole number of steps (`step_count`).
    """

    def __init__(self, sizes, activation="relu", loss="mse", optimizer="adam", lr=1e-3, batch_size=32,
                 device="cpu", seed=None, weight_decay=None, momentum=0.0, nesterov=False,
                 betas=(0.9, 0.999), eps=None, alpha=0.99, clip_norm=None, dropout=0.0, schedule=None,
                 threads=None, comm=None):
        self._comm = distributed.wrap(comm)
        self.config = Config(sizes=sizes, activation=activation, loss=loss, optimizer=optimizer, lr=lr,
                             batch_size=batch_size, device=device, seed=seed, weight_decay=weight_decay,
                             momentum=momentum, nesterov=nesterov, betas=betas, eps=eps, alpha=alpha,
                             clip_norm=clip_norm, dropout=dropout)
        if schedule is not None and not isinstance(schedule, schedules.Schedule):
            raise TypeError(f"schedule must be a fastbp.schedules.Schedule, got {schedule!r}")
        self.schedule = schedule
        self.threads = thread_limits.check_requested(threads)
        self._guard = CallGuard()
        self.state = NetworkState(self.config.sizes)
        self._rng = np.random.default_rng(self.config.seed)
        self.state.initialize(self.config.activation, self._rng)
        self._dropout_seed = int(self._rng.integers(2 ** 62))
        if self._comm.size > 1:
            self._share_initial_state()
        self._dropout_threshold = dropout_threshold(self.config.dropout)
        self._backend = _make_backend(self.config, self.state, self.threads, self._comm)
        self.lr = self.config.lr
        self.epochs_done = 0
        self.stop_training = False

    def _share_initial_state(self):
        """Every rank: the same options (else ValueError on every rank), then rank 0's weights, shuffling
        RNG and dropout seed; the kernels' threads shared among the ranks on this machine."""
        comm = self._comm
        configs = comm.allgather(self.config.to_dict())
        differing = sorted(k for k in configs[0] if k != "seed" and any(c[k] != configs[0][k] for c in configs))
        if differing:
            raise ValueError(f"every rank must construct the Trainer with the same options; {', '.join(differing)} "
                             f"differ between ranks")
        params, rng_state, dropout_seed = comm.broadcast(
            (self.state.params, self._rng.bit_generator.state, self._dropout_seed))
        self.state.params[:] = params
        self._rng.bit_generator.state = rng_state
        self._dropout_seed = dropout_seed
        if self.threads is None and self.config.device == "cpu":
            self.threads = thread_limits.per_rank(comm.node_ranks())

    @property
    def comm(self):
        """The mpi4py communicator given at construction (None: one process)."""
        return self._comm.comm

    # ---- configuration that may change during training ----

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = float32_number("lr", value, low=0.0)

    @property
    def sizes(self):
        return self.config.sizes

    @property
    def step_count(self):
        """Optimizer steps applied so far (what Adam's bias correction and the dropout masks follow)."""
        return self.state.step_count

    def _optimizer_settings(self):
        return OptimizerSettings.for_step(self.config, self._lr, self.state.step_count + 1)

    # ---- validation ----

    def _checked(self, X, y, names=("X", "y")):
        """(X, labels, targets) as the kernels read them; the backend's checks also take its own device arrays."""
        checks = self._backend.checks
        X = checks.features(X, self.sizes[0], names[0])
        labels, targets = checks.targets_for(self.config.loss, y, X.shape[0], self.sizes[-1], names[1])
        return X, labels, targets

    # ---- training ----

    def _dropout_key(self):
        """This step's dropout key: a function of the trainer's dropout seed and the step count only."""
        return (self._dropout_seed * 0x9E3779B97F4A7C15 + self.state.step_count) % 2 ** 63  # fits int64

    def _train_rows(self, X, labels, targets, rows, parts=None, interrupts=None):
        """One step on the batch of global rows `rows` (of which this rank computes parts.mine(rows); parts
        may be None in one process); returns (loss, hits) of the whole batch. The update and the step count move together (interrupts: the
        caller's guard.whole_steps, which holds back Ctrl-C), and other threads wait for the lock meanwhile."""
        with self._guard.lock:
            if self.schedule is not None and self.schedule.interval == "step":
                self.lr = self.schedule.lr(self.config.lr, self.state.step_count)
            if self._comm.size == 1:  # one compiled call: gradient and update fused
                loss = self._backend.train_step(X, labels, targets, rows, self._optimizer_settings(),
                                                self._dropout_key(), self._dropout_threshold)
                hits = self._backend.last_hits(rows.size) if self.config.loss != "mse" else 0.0
            else:
                loss, hits = self._summed_gradients(X, labels, targets, *parts.mine(rows), self._dropout_threshold,
                                                    interrupts)
                if np.isfinite(loss):
                    self._backend.apply_update(self._optimizer_settings())
            if not np.isfinite(loss):
                # The update was skipped (by the compiled step itself on one process).
                self._raise_non_finite_loss(loss)
            self.state.step_count += 1
        return float(loss), hits

    def _summed_gradients(self, X, labels, targets, local_rows, share, first, dropout_threshold, interrupts=None):
        """The gradient of a batch split among MPI ranks, left in the backend's gradient buffer on every rank:
        this rank's part (rows local_rows, `share` of the batch's rows, dropout masks from batch position
        `first` on) weighted by its share, summed over the ranks; returns the batch's (loss, hits), also
        summed. A Ctrl-C held back on any rank is requested on every rank (interrupts.request), so that
        all stop after this same step."""
        classification = self.config.loss != "mse"
        if local_rows.size:
            loss = self._backend.loss_and_gradients(X, labels, targets, local_rows,
                                                    offset_key(self._dropout_key(), first), dropout_threshold)
            hits = self._backend.last_hits(local_rows.size) if classification else 0.0
            grads = self._backend.grads_to_host()
            grads *= np.float32(share)
        else:  # a batch shorter than the number of ranks, or a shard with no row in it
            loss = hits = 0.0
            grads = self._backend.grads_to_host()
            grads[:] = 0.0
        with np.errstate(invalid="ignore", over="ignore"):
            totals = np.array([loss * share, hits, interrupts is not None and interrupts.pending()], np.float64)
        self._comm.sum_(totals)
        self._comm.sum_(grads)
        self._backend.grads_from_host()
        if totals[2] and interrupts is not None:
            interrupts.request()
        return float(totals[0]), float(totals[1])

    def _raise_non_finite_loss(self, loss):
        self._backend.pull()
        if np.isfinite(self.state.params).all():
            where = "the update was not applied, parameters hold their last finite values"
        else:
            where = ("the parameters themselves hold NaN or infinity (an earlier update overflowed float32): "
                     "restore them from a checkpoint or re-initialize")
        raise FloatingPointError(f"loss became {loss} at step {self.state.step_count + 1}; {where}. Lower the "
                                 "learning rate, clip gradients (clip_norm) or check the data scale.")

    def step(self, xb, yb, sharded=False):
        """One training step (forward, backward, update) on one batch; returns the batch's mean loss.

        With comm, every rank calls step: sharded=False, each with the same whole batch (each computes its
        part); sharded=True, each with its own rows of the batch."""
        with self._guard.training("step"), self._guard.lock, whole_steps() as interrupts:
            with self._comm.agreement():
                self._backend.check_batch_memory(validation.row_count(xb), self.sizes)
                X, labels, targets = self._checked(xb, yb)
            try:
                parts = self._comm.row_parts(X.shape[0], sharded, "step")
                rows = np.arange(parts.n_total, dtype=np.int64)
                return self._train_rows(X, labels, targets, rows, parts, interrupts)[0]
            finally:
                self._backend.release_data()

    def _validation_set(self, X, labels, targets, validation_data, validation_split):
        """(train part, validation part or None) of the already checked data."""
        if validation_data is not None and validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (X_val, y_val)")
            return (X, labels, targets), self._checked(*validation_data, names=("validation X", "validation y"))
        if not validation_split:
            return (X, labels, targets), None
        fraction = finite_number("validation_split", validation_split, low=0.0, low_inclusive=False, high=1.0)
        n_val = int(round(X.shape[0] * fraction))
        if not 0 < n_val < X.shape[0]:
            raise ValueError(f"validation_split={validation_split} leaves no rows for training or validation "
                             f"out of {X.shape[0]}")
        cut = X.shape[0] - n_val  # the last rows, before any shuffling, as Keras does
        part = lambda a, sl: None if a is None else a[sl]  # noqa: E731
        train = (X[:cut], part(labels, slice(None, cut)), part(targets, slice(None, cut)))
        val = (X[cut:], part(labels, slice(cut, None)), part(targets, slice(cut, None)))
        return train, val

    def fit(self, X, y, epochs=1, batch_size=None, validation_data=None, validation_split=0.0, shuffle=True,
            verbose=1, initial_epoch=0, callbacks=None, sharded=False):
        """Trains in batches from epoch `initial_epoch` up to (not including) `epochs`, as Keras does.

        X (n, sizes[0]) and y (labels (n,) for cross_entropy, else (n, sizes[-1])): array-likes, or with
        device="cuda" also GPU arrays (numba, CuPy, PyTorch CUDA tensors: float32 X and targets, int64
        labels), used in place.

        The last batch of an epoch may be shorter. validation_split holds out the last fraction of the rows
        (before shuffling). Returns a History with per-epoch "loss" and, for classification, "accuracy"
        (means over the epoch's batches), plus "val_loss"/"val_accuracy" with validation data, and "lr".
        verbose: 0 silent, 1 progress bar (one line per epoch when stdout is not a terminal), 2 one line
        per epoch. callbacks: see callbacks.py; `trainer.stop_training = True` ends after the epoch.

        With comm, every rank calls fit with the same arguments but the data: sharded=False, each rank
        with the same data set (it computes its part of each batch); sharded=True, each with its own
        rows (its shard; validation_split then holds out the last fraction of each shard, and
        validation_data is sharded too). Only rank 0 shows progress; every rank gets the same History.
        """
        with self._guard.training("fit"):
            return self._fit(X, y, epochs, batch_size, validation_data, validation_split, shuffle, verbose,
                             initial_epoch, callbacks, sharded)

    def _fit(self, X, y, epochs, batch_size, validation_data, validation_split, shuffle, verbose, initial_epoch,
             callbacks, sharded):
        with self._comm.agreement():  # an error on one rank is raised on every rank, before any step
            batch_size = self.config.batch_size if batch_size is None else positive_int("batch_size", batch_size)
            n_rows = validation.row_count(X)
            self._backend.check_batch_memory(None if n_rows is None else min(batch_size, n_rows), self.sizes,
                                             validation.conversion_bytes(X))
            X, labels, targets = self._checked(X, y)
            (X, labels, targets), val = self._validation_set(X, labels, targets, validation_data, validation_split)
            epochs = positive_int("epochs", epochs)
            if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, numbers.Integral) \
                    or not 0 <= initial_epoch < epochs:
                raise ValueError(f"initial_epoch must be an integer in [0, epochs={epochs}), got {initial_epoch!r}")
            callbacks = callback_tools.check(callbacks)
        parts = self._comm.row_parts(X.shape[0], sharded, (epochs, batch_size, shuffle, int(initial_epoch),
                                                           val is not None))
        val_parts = None if val is None else self._comm.row_parts(val[0].shape[0], sharded)
        n = parts.n_total
        history = History()
        progress = EpochProgress(verbose if self._comm.is_root else 0, epochs, n)
        classification = self.config.loss != "mse"
        self.stop_training = False
        with self._comm.agreement():  # with comm, a callback failing on one rank fails on every rank
            callback_tools.call(callbacks, "on_train_begin", self)
        with whole_steps() as interrupts:  # Ctrl-C lands between steps (deliver), never inside one
            try:
                for epoch in range(int(initial_epoch), epochs):
                    if self.schedule is not None and self.schedule.interval == "epoch":
                        self.lr = self.schedule.lr(self.config.lr, epoch)
                    epoch_lr = self._lr
                    start_time = time.perf_counter()
                    progress.start_epoch(epoch)
                    order = self._rng.permutation(n) if shuffle else np.arange(n, dtype=np.int64)
                    loss_sum = hits = 0.0
                    for start in range(0, n, batch_size):
                        rows = order[start:start + batch_size]
                        loss, batch_hits = self._train_rows(X, labels, targets, rows, parts, interrupts)
                        interrupts.deliver()  # a Ctrl-C during the step lands here, after it
                        loss_sum += loss * rows.size
                        hits += batch_hits
                        progress.batch_done(rows.size, loss_sum / min(start + batch_size, n))
                    seconds = time.perf_counter() - start_time
                    self.epochs_done = epoch + 1
                    logs = {"loss": loss_sum / n}
                    if classification:
                        logs["accuracy"] = hits / n
                    if val is not None:
                        scores = self._evaluate(*val, val_parts, "the validation data")
                        logs.update({"val_" + k: v for k, v in scores.items()})
                    progress.end_epoch(epoch, logs, seconds)
                    history.record(epoch, **logs, lr=epoch_lr)
                    with self._comm.agreement():
                        if self.schedule is not None:
                            self.schedule.on_epoch_end(logs)
                        callback_tools.call(callbacks, "on_epoch_end", epoch, logs, self)
                    self.stop_training = self._comm.any_(self.stop_training)  # the same decision on every rank
                    if self.stop_training:
                        break
            finally:
                progress.abort()
                self._backend.release_data()
        with self._comm.agreement():
            callback_tools.call(callbacks, "on_train_end", self)
        return history

    # ---- inference and inspection ----

    def _chunks(self, n):
        for start in range(0, n, EVAL_CHUNK):
            yield np.arange(start, min(start + EVAL_CHUNK, n), dtype=np.int64)

    def _logits(self, X):
        return np.concatenate([self._backend.logits(X, rows) for rows in self._chunks(X.shape[0])])

    def predict(self, X):
        """(n, out) float32: class probabilities for cross_entropy, P(y=1) for bce, raw outputs for mse."""
        X = self._backend.checks.features(X, self.sizes[0])
        with self._guard.lock:  # every chunk from the same parameters
            try:
                logits = self._logits(X)
            finally:
                self._backend.release_data()
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite outputs are reported just below
            if self.config.loss == "cross_entropy":
                logits -= logits.max(axis=1, keepdims=True)
                np.exp(logits, out=logits)
                logits /= logits.sum(axis=1, keepdims=True)
            elif self.config.loss == "bce":
                logits = (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)  # sigmoid without overflow
        if not np.isfinite(logits).all():
            row = int(np.argwhere(~np.isfinite(logits))[0, 0])
            raise FloatingPointError(f"the network's output is not finite (first at row {row}): inputs too large "
                                     "for float32, or diverged parameters")
        return logits

    def _evaluate(self, X, labels, targets, parts, what="the data"):
        """Loss and accuracy over the data set that parts describes (with comm: each rank computes its
        rows, parts.mine of all of them, and the sums are added up)."""
        n = parts.n_total
        mine = parts.mine(np.arange(n, dtype=np.int64))[0]
        sums = np.zeros(2, np.float64)  # loss, correct
        with self._guard.lock:
            for chunk in self._chunks(mine.size):
                rows = mine[chunk]
                sums[0] += self._backend.loss_value(X, labels, targets, rows) * rows.size
                sums[1] += self._backend.last_hits(rows.size)
        self._comm.sum_(sums)
        loss_sum, correct = sums
        if not np.isfinite(loss_sum):
            raise FloatingPointError(f"the loss over {what} is {loss_sum / n}: the outputs or their errors are "
                                     "beyond float32's range (inputs or targets too large, or diverged "
                                     "parameters)")
        result = {"loss": loss_sum / n}
        if self.config.loss != "mse":
            result["accuracy"] = float(correct / n)
        return result

    def evaluate(self, X, y, sharded=False):
        """{"loss": mean loss, "accuracy": fraction correct (classification losses only)}.

        With comm, every rank calls it, with the same data (sharded=False) or its own rows (sharded=True);
        each computes its part and every rank gets the result for the whole data set."""
        try:
            with self._comm.agreement():
                checked = self._checked(X, y)
            return self._evaluate(*checked, self._comm.row_parts(checked[0].shape[0], sharded, "evaluate"))
        finally:
            self._backend.release_data()

    def gradients(self, X, y, training=False, sharded=False):
        """(loss, [(dW, db), ...]) of the mean loss over all of (X, y); changes nothing.

        training=True applies dropout with the masks the next training step would draw. With comm, every
        rank calls it (sharded as in evaluate) and gets the gradient over the whole data set."""
        with self._guard.lock:
            with self._comm.agreement():
                self._backend.check_batch_memory(validation.row_count(X), self.sizes)
                X, labels, targets = self._checked(X, y)
            dropout_threshold = self._dropout_threshold if training else 0
            try:
                parts = self._comm.row_parts(X.shape[0], sharded, ("gradients", bool(training)))
                if self._comm.size == 1:
                    loss = self._backend.loss_and_gradients(X, labels, targets, np.arange(X.shape[0], dtype=np.int64),
                                                            self._dropout_key(), dropout_threshold)
                else:
                    loss, _ = self._summed_gradients(X, labels, targets,
                                                     *parts.mine(np.arange(parts.n_total, dtype=np.int64)),
                                                     dropout_threshold)
            finally:
                self._backend.release_data()
            if not np.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss}: the outputs or their errors are beyond float32's "
                                         "range (inputs or targets too large, or diverged parameters)")
            self._backend.pull()
            return float(loss), [(dW.copy(), db.copy()) for dW, db in self.state.layer_views(self.state.grads)]

    @property
    def params(self):
        """[(W, b), ...] float32 copies; W: (fan_in, fan_out), b: (fan_out,)."""
        with self._guard.lock:
            self._backend.pull()
            return [(W.copy(), b.copy()) for W, b in self.state.layer_views(self.state.params)]

    def set_params(self, params):
        """Replaces the weights (e.g. with a reference implementation's); optimizer state is kept."""
        checked = validation.parameter_list(params, self.sizes)
        with self._guard.lock, whole_steps():
            self._backend.pull()
            for (W, b), (W_new, b_new) in zip(self.state.layer_views(self.state.params), checked):
                W[...] = W_new
                b[...] = b_new
            self._backend.push()

    def _flat_params(self):
        """A copy of the flat parameter buffer (callbacks keep snapshots of it)."""
        with self._guard.lock:
            self._backend.pull()
            return self.state.params.copy()

    def _set_flat_params(self, flat):
        with self._guard.lock, whole_steps():
            self._backend.pull()
            self.state.params[:] = flat
            self._backend.push()

    # ---- checkpoints ----

    def save(self, path):
        """Everything training depends on, in one .npz written atomically (a crash never leaves a partial
        file): config, weights, optimizer moments and step count, learning rate and schedule state, the
        shuffling RNG, the dropout seed and the epoch count.

        With comm, only rank 0 writes (the state is the same on every rank); on the others save does
        nothing, so `if comm.rank == 0: trainer.save(path)` and a save on every rank are alike."""
        if not self._comm.is_root:
            return
        with self._guard.lock:
            self._backend.pull()
            s = self.state
            checkpoint.write(path, {"params": s.params, "moment1": s.moment1, "moment2": s.moment2},
                             {"config": self.config.to_dict(), "lr": self._lr, "step_count": s.step_count,
                              "epochs_done": self.epochs_done, "rng_state": self._rng.bit_generator.state,
                              "dropout_seed": self._dropout_seed,
                              "schedule": None if self.schedule is None else schedules.to_dict(self.schedule)})

    @staticmethod
    def _read_checkpoint(path):
        """(config, arrays, meta) of a checkpoint file, every value checked; ValueError naming the problem."""
        arrays, meta = checkpoint.read(path, _checkpoint_length)
        try:
            config = Config.from_dict(meta["config"])
            for name, saved in arrays.items():
                if not np.isfinite(saved).all():
                    raise ValueError(f"{name} holds NaN or infinity")
            if (arrays["moment2"] < 0).any():
                raise ValueError("moment2 holds negative values (it is a running mean of squares)")
            for name in ("step_count", "epochs_done", "dropout_seed"):
                _counter(meta[name], name)
            meta["schedule"] = None if meta["schedule"] is None else schedules.from_dict(meta["schedule"])
            float32_number("lr", meta["lr"], low=0.0)
            if not isinstance(meta["rng_state"], dict):
                raise ValueError("rng_state is not a generator state")
            np.random.default_rng().bit_generator.state = meta["rng_state"]  # the same generator as Trainer's
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{path} is not a consistent fastbp checkpoint: {what}") from None
        return config, arrays, meta

    @classmethod
    def load(cls, path, comm=None):
        """A Trainer that continues exactly where the saved one stopped. A file that is not a consistent
        fastbp checkpoint (crafted, damaged, foreign) is a ValueError naming the problem.

        With comm, every rank calls load; rank 0 reads the file and sends it to the others (no shared
        file system needed). A checkpoint written on any number of ranks loads on any number."""
        comm = distributed.wrap(comm)
        loaded = None
        with comm.agreement():
            if comm.is_root:
                loaded = cls._read_checkpoint(path)
        config, arrays, meta = comm.broadcast(loaded)
        t = cls(**config.to_dict(), comm=comm)
        s = t.state
        for name, saved in arrays.items():
            getattr(s, name)[:] = saved
        t.lr = meta["lr"]
        t._rng.bit_generator.state = meta["rng_state"]
        s.step_count, t.epochs_done, t._dropout_seed = meta["step_count"], meta["epochs_done"], meta["dropout_seed"]
        t.schedule = meta["schedule"]
        t._backend.push()
        return t

    # ---- pickling (joblib, multiprocessing, scikit-learn's clone of fitted estimators) ----

    def __getstate__(self):
        with self._guard.lock:
            self._backend.pull()
            state = self.__dict__.copy()
            state["state"] = copy.deepcopy(self.state)  # a snapshot, not the arrays the next step changes
        del state["_backend"], state["_guard"]  # workspaces, compiled-code handles and locks: rebuilt on load
        state["_comm"] = None  # a communicator does not travel: the copy trains in one process
        return state

    def __setstate__(self, state):
        state.setdefault("threads", None)  # pickles from before the option existed
        self.__dict__.update(state)
        self._comm = distributed.wrap(state.get("_comm"))
        self._guard = CallGuard()
        s = self.state
        # Arrays may come back read-only (e.g. memory-mapped by joblib); the kernels write to them.
        for name in ("params", "grads", "moment1", "moment2"):
            setattr(s, name, np.array(getattr(s, name), dtype=np.float32, copy=True))
        self._backend = _make_backend(self.config, self.state, self.threads)

    def __repr__(self):
        c = self.config
        return (f"Trainer(sizes={list(c.sizes)}, activation={c.activation!r}, loss={c.loss!r}, "
                f"optimizer={c.optimizer!r}, lr={self._lr}, batch_size={c.batch_size}, device={c.device!r})")
