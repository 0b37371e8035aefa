"""The public Trainer: validation, batching, one step, checkpoints and export, on top of a backend's compiled
kernels; fit's epochs run in loop.py."""
import copy
import math
import numbers
import warnings

import numpy as np

from . import callbacks as callback_tools
from . import (checkpoint, class_weights, distributed, export, loop, row_order, sample_weights, schedules, sources,
               threads as thread_limits, validation)
from .guard import CallGuard, whole_steps
from .keywords import suggest_keywords
from .cpu.dropout import NO_DROPOUT, Thresholds, offset_key, threshold as dropout_threshold
from .options import CLASSIFICATION_LOSSES, Config, OptimizerSettings, finite_number, float32_number, positive_int
from .state import NetworkState, layer_offsets
from .workspaces import available_host_bytes, batch_bytes, rows_within

# Rows per compiled call in predict/evaluate: bounds the workspace, whatever the size of X.
EVAL_CHUNK = 4096
# A step's activations up to this size are taken to fit without asking how much memory is free.
_ALWAYS_FITS = 64 * 2 ** 20


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


# Which moment buffer holds squares (never negative) for each optimizer (update_rules.py): Adam's v, Adagrad's
# sum, RMSprop's running mean; the other buffer, where used, holds signed values (a momentum buffer).
_SQUARED_MOMENT = {"adam": "moment2", "adamw": "moment2", "adagrad": "moment1", "rmsprop": "moment1"}


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
        activation   "relu" (default), "leaky_relu" (slope 0.01), "tanh", "sigmoid", "identity", "elu"
                     (alpha 1), "softplus" (PyTorch's: beta 1, linear above 20), "gelu" (exact, erf-based),
                     "gelu_tanh" (PyTorch's approximate="tanh"), "silu"; or a list of one per hidden layer
        loss         "mse" (default; targets (n, out)), "cross_entropy" (integer labels (n,), softmax
                     outputs), "bce" (targets in [0, 1], sigmoid outputs), "poisson" (counts or rates
                     >= 0; the outputs are log-rates, predict gives exp(z); PyTorch's
                     PoissonNLLLoss(log_input=True)), "huber" (PyTorch's HuberLoss: quadratic within
                     huber_delta of the target, linear beyond), "l1" (mean absolute error, L1Loss)
        huber_delta  the Huber loss's delta (default 1.0)
        label_smoothing  cross_entropy's targets (1 - e) onehot + e / classes (PyTorch's; default 0)
        optimizer    "adam" (default), "adamw", "sgd", "adagrad", "rmsprop", with PyTorch's update rules
        lr           learning rate (default 1e-3); `trainer.lr` may be changed between steps
        batch_size   rows per step in fit (default 32)
        device       "cpu" (default) or "cuda"
        seed         initial weights, shuffling and dropout masks; None draws a fresh seed
        weight_decay L2 decay (AdamW: decoupled; default 0.01 for AdamW, else 0)
        decay_biases False: weight_decay applies to the weights only, not the biases (default True, as
                     torch.optim applies it to every parameter it is given)
        momentum, nesterov       SGD (and RMSprop) momentum
        betas, eps   Adam/AdamW moment decays and epsilon (eps default 1e-8; Adagrad 1e-10)
        eps_hat      Adam/AdamW: False (default) adds eps to sqrt(v) after its bias correction, as PyTorch;
                     True before it, as Keras and scikit-learn (Kingma and Ba's "epsilon hat"):
                     p -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)
        alpha        RMSprop's smoothing constant (default 0.99)
        clip_norm    clip the global gradient norm to this value (default None: no clipping)
        dropout      rate on every hidden layer during training, in [0, 1 - 2^-24] (default 0)
        input_dropout  rate on the input features during training (default 0), its own masks
        max_norm     after every update, each unit's incoming weights W[:, j] (every layer; not the
                     biases) are scaled back to this Euclidean norm when longer (Srivastava et al.'s
                     max-norm, Keras' MaxNorm; default None: no constraint)
        schedule     a fastbp.schedules.Schedule for the learning rate (default None: constant)
        threads      CPU threads for the kernels (default None: as many as the process may use, see
                     fastbp.threads.limit; joblib workers and threadpoolctl limits are honoured; with comm,
                     that number divided among the ranks on the same machine)
        micro_batch  rows per compiled call within a step (default None: the whole batch): each step's
                     batch runs in chunks of at most this many rows whose gradients are summed in order
                     before one update, so memory is bounded by micro_batch rows, not the batch, and the
                     result is the unchunked step's to float32 rounding (dropout masks included)
        memory_budget  bytes a step's activations may take (default None: half the memory available,
                     the GPU's with device="cuda"); a step that needs more runs in micro-batches that fit,
                     said once by a ResourceWarning; MemoryError if not even one row fits
        comm         an mpi4py communicator (e.g. MPI.COMM_WORLD) for data-parallel training on its ranks,
                     or None (default): one process. See distributed.py and the README's "MPI" section:
                     every rank constructs the Trainer and calls its methods in the same order; rank 0's
                     initial weights are used everywhere; batch_size is the global batch.

    Thread safety: every method may be called from any thread; calls on one Trainer take turns, and
    training it from two threads at once is a RuntimeError. A Ctrl-C during training takes effect between
    steps: the state is always that of a whole number of steps (`step_count`).
    """

    @suggest_keywords
    def __init__(self, sizes, activation="relu", loss="mse", optimizer="adam", lr=1e-3, batch_size=32,
                 device="cpu", seed=None, weight_decay=None, momentum=0.0, nesterov=False,
                 betas=(0.9, 0.999), eps=None, eps_hat=False, alpha=0.99, clip_norm=None, dropout=0.0,
                 decay_biases=True, schedule=None, threads=None, micro_batch=None, memory_budget=None, comm=None,
                 input_dropout=0.0, max_norm=None, huber_delta=1.0, label_smoothing=0.0):
        self._comm = distributed.wrap(comm)
        self.micro_batch = None if micro_batch is None else positive_int("micro_batch", micro_batch)
        self.memory_budget = None if memory_budget is None else positive_int("memory_budget", memory_budget)
        self._said_micro_batch = False
        self._grad_total = None
        # None, or a list to which fit appends (loss, rows, weight, squares) of each step: what the
        # estimators need to report an epoch's loss as scikit-learn averages it (by rows, not by sample
        # weights). squares: the squared weights after the step (sums.squared_weights) where fit ran
        # several epochs at once (loop.py), on an epoch's last step; else None.
        self._step_log = None
        self.config = Config(sizes=sizes, activation=activation, loss=loss, optimizer=optimizer, lr=lr,
                             batch_size=batch_size, device=device, seed=seed, weight_decay=weight_decay,
                             momentum=momentum, nesterov=nesterov, betas=betas, eps=eps, eps_hat=eps_hat, alpha=alpha,
                             clip_norm=clip_norm, dropout=dropout, decay_biases=decay_biases,
                             input_dropout=input_dropout, max_norm=max_norm, huber_delta=huber_delta,
                             label_smoothing=label_smoothing)
        if schedule is not None and not isinstance(schedule, schedules.Schedule):
            raise TypeError(f"schedule must be a fastbp.schedules.Schedule, got {schedule!r}")
        self.schedule = schedule
        self.threads = thread_limits.check_requested(threads)
        self._guard = CallGuard()
        self.state = NetworkState(self.config.sizes)
        self._bytes_per_row = batch_bytes(self.state.dims, 1)  # a batch's workspace and copy, per row
        self._rng = np.random.default_rng(self.config.seed)
        self.state.initialize(self.config.hidden_activations, self._rng)
        self._dropout_seed = int(self._rng.integers(2 ** 62))
        if self._comm.size > 1:
            self._share_initial_state()
        self._dropout = Thresholds(dropout_threshold(self.config.dropout), dropout_threshold(self.config.input_dropout))
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

    # ---- data: checks, sources and memory ----

    def _checked(self, X, y, names=("X", "y")):
        """(X, labels, targets) as the kernels read them; the backend's checks also take its own device arrays."""
        checks = self._backend.checks
        X = checks.features(X, self.sizes[0], names[0])
        labels, targets = checks.targets_for(self.config.loss, y, X.shape[0], self.sizes[-1], names[1])
        return X, labels, targets

    def _available_bytes(self):
        """What a copy of the data and the workspaces may take: the backend's memory, and the host's."""
        known = [b for b in (self._backend.available_bytes(), available_host_bytes()) if b is not None]
        return min(known) if known else None

    def _source(self, X, y, names=("X", "y"), sample_weight=None):
        """The data as a source (sources.py): read batch by batch when it is memory-mapped or too large to
        convert whole, else checked and converted now. sample_weight: None or one weight per row."""
        weights = None
        if sample_weight is not None:
            weights = sample_weights.check(sample_weight, validation.row_count(X),
                                           names[0].replace("X", "sample_weight"))
            if self._comm.size == 1:
                sample_weights.normalized(weights)
        if sources.wants_on_demand(X, self._available_bytes):
            if validation.row_count(X) == 0:
                raise ValueError(f"{names[0]} has no rows")
            return sources.OnDemand(X, y, self.config.loss, self.sizes[0], self.sizes[-1], self._backend.checks,
                                    names, weights)
        return sources.InMemory(*self._checked(X, y, names), weights)

    def _chunk_rows(self, n):
        """Rows per compiled call for n rows of one step: micro_batch, or fewer where the memory budget
        requires (said once per Trainer). MemoryError when not even one row's workspace fits."""
        m = n if self.micro_batch is None else min(self.micro_batch, n)
        need = m * self._bytes_per_row  # batch_bytes(dims, m), which is linear in m
        budget = self.memory_budget
        if budget is None:
            if need <= _ALWAYS_FITS:  # no look at the free memory (a file read) for every small step
                return max(1, m)
            available = self._backend.available_bytes()
            budget = None if available is None else available // 2
        if budget is None or need <= budget:
            return max(1, m)
        fitting = rows_within(self.state.dims, budget)
        if fitting < 1:
            raise MemoryError(f"one row of this network needs {batch_bytes(self.state.dims, 1):,} bytes of "
                              f"{self._backend.memory_name} for its activations, more than the budget of "
                              f"{budget:,} bytes (memory_budget, or half the memory available)")
        if not self._said_micro_batch:
            warnings.warn(f"fastbp: a step of {n:,} rows needs about {batch_bytes(self.state.dims, m) / 2 ** 30:.2f} "
                          f"GiB of {self._backend.memory_name} for its activations, more than the budget of "
                          f"{budget / 2 ** 30:.2f} GiB: running it in micro-batches of {fitting:,} rows (same "
                          "result; set micro_batch or memory_budget to choose)", ResourceWarning, stacklevel=4)
            self._said_micro_batch = True
        return fitting

    # ---- training ----

    def _dropout_key(self):
        """This step's dropout key: a function of the trainer's dropout seed and the step count only."""
        return (self._dropout_seed * 0x9E3779B97F4A7C15 + self.state.step_count) % 2 ** 63  # fits int64

    def _train_rows(self, source, rows, parts=None, interrupts=None):
        """One step on the batch of global rows `rows` of `source` (of which this rank computes
        parts.mine(rows); parts may be None in one process); returns (loss, hits, weight) of the whole batch
        (weight: its rows, or their summed sample weights). The update and the step count move together
        (interrupts: the caller's guard.whole_steps, which holds back Ctrl-C), and other threads wait for
        the lock meanwhile."""
        with self._guard.lock:
            local, _, first = (rows, 1.0, 0) if parts is None else parts.mine(rows)
            chunk = self._chunk_rows(local.size)
            if self._comm.size == 1 and local.size <= chunk:  # one compiled call: gradient and update fused
                X, labels, targets, weights, kernel_rows = source.take(local)
                loss = self._fused_step(X, labels, targets, kernel_rows, weights)
                hits = self._backend.last_hits(local.size) if self.config.loss in CLASSIFICATION_LOSSES else 0.0
                return loss, hits, source.row_weight(local)
            self._follow_step_schedule()
            loss, hits, weight = self._summed_gradients(source, local, first, chunk, self._dropout, interrupts)
            if np.isfinite(loss):
                self._backend.apply_update(self._optimizer_settings())
            else:
                self._raise_non_finite_loss(loss)
            self.state.step_count += 1
        return float(loss), hits, weight

    def _follow_step_schedule(self):
        """A per-step schedule's learning rate for the step about to run."""
        if self.schedule is not None and self.schedule.interval == "step":
            self.lr = self.schedule.lr(self.config.lr, self.state.step_count)

    def _fused_step(self, X, labels, targets, rows, weights):
        """One step on the checked batch X[rows] in one compiled call (gradient and update fused; one process,
        the caller holding the lock); returns its loss. A loss that is not finite raises, its update not
        applied (the compiled step skips it)."""
        self._follow_step_schedule()
        loss = self._backend.train_step(X, labels, targets, rows, self._optimizer_settings(), self._dropout_key(),
                                        self._dropout, weights)
        loss = float(loss)
        if not math.isfinite(loss):
            self._raise_non_finite_loss(loss)
        self.state.step_count += 1
        return loss

    def _summed_gradients(self, source, local_rows, first, chunk, dropout, interrupts=None):
        """The mean gradient of a batch, left in the backend's gradient buffer; returns the batch's (mean
        loss, hits, weight).

        This process computes rows local_rows of source (an MPI rank's part of the batch; all of it in one
        process), `chunk` rows per compiled call (micro-batches), each chunk's mean gradient times its share
        of this rank's weight (its rows, or summed sample weights) and the chunks added in order; with comm
        each rank's mean is then scaled by its share of the batch's weight and the ranks' parts added up.
        Shares are at most 1, so no weight, however large (any float64), overflows float32 on the way.
        Dropout masks are those of batch positions first, first + 1, ... (dropout.offset_key), however the
        batch is cut. A Ctrl-C held back on any rank is requested on every rank (interrupts.request), so
        that all stop after this same step."""
        classification = self.config.loss in CLASSIFICATION_LOSSES
        key = self._dropout_key()
        loss = hits = 0.0
        rank_weight = source.row_weight(local_rows) if local_rows.size else 0.0
        total = None  # the running sum, when there is more than one chunk
        grads = self._backend.grads_to_host() if local_rows.size == 0 else None
        for start in range(0, local_rows.size, chunk):
            rows = local_rows[start:start + chunk]
            X, labels, targets, weights, kernel_rows = source.take(rows)
            chunk_loss = self._backend.loss_and_gradients(X, labels, targets, kernel_rows,
                                                          offset_key(key, first + start), dropout, weights)
            share = source.row_weight(rows) / rank_weight if rank_weight > 0 else 0.0
            with np.errstate(invalid="ignore", over="ignore"):
                loss += chunk_loss * share
            hits += self._backend.last_hits(rows.size) if classification else 0.0
            grads = self._backend.grads_to_host()
            grads *= np.float32(share)
            if local_rows.size > chunk:
                if total is None:
                    total = self._gradient_total()
                    total[:] = grads
                else:
                    total += grads
        if grads is not None and local_rows.size == 0:  # a batch shorter than the ranks, a shard without rows
            grads[:] = 0.0
        if total is not None:
            grads[:] = total
        # Every rank's (mean loss, hits, weight, Ctrl-C pending), added up in rank order on every rank.
        reports = self._comm.allgather((loss, hits, rank_weight, interrupts is not None and interrupts.pending()))
        batch_weight = sum(report[2] for report in reports)
        shares = [report[2] / batch_weight if batch_weight > 0 else 0.0 for report in reports]  # all 0: no gradient
        if self._comm.size > 1:
            grads *= np.float32(shares[self._comm.rank])
            self._comm.sum_(grads)
        self._backend.grads_from_host()
        if any(report[3] for report in reports) and interrupts is not None:
            interrupts.request()
        with np.errstate(invalid="ignore", over="ignore"):
            loss = sum(report[0] * share for report, share in zip(reports, shares))
        return float(loss), float(sum(report[1] for report in reports)), float(batch_weight)

    def _gradient_total(self):
        """The host buffer micro-batches' gradients are added up in (made on first use)."""
        if self._grad_total is None or self._grad_total.size != self.state.grads.size:
            self._grad_total = np.empty_like(self.state.grads)
        return self._grad_total

    def _raise_non_finite_loss(self, loss):
        self._backend.pull()
        if np.isfinite(self.state.params).all():
            where = "the update was not applied, parameters hold their last finite values"
        else:
            where = ("the parameters themselves hold NaN or infinity (an earlier update overflowed float32): "
                     "restore them from a checkpoint or re-initialize")
        raise FloatingPointError(f"loss became {loss} at step {self.state.step_count + 1}; {where}. Lower the "
                                 "learning rate, clip gradients (clip_norm) or check the data scale.")

    def step(self, xb, yb, sharded=False, sample_weight=None):
        """One training step (forward, backward, update) on one batch; returns the batch's mean loss
        (with sample_weight, one weight >= 0 per row: the weighted mean, sum w_i loss_i / sum w_i).

        With comm, every rank calls step: sharded=False, each with the same whole batch (each computes its
        part); sharded=True, each with its own rows of the batch."""
        with self._guard.training("step"), self._guard.lock, whole_steps() as interrupts:
            if sample_weight is None and self._comm.size == 1:
                batch = self._small_host_batch(xb, yb)
                if batch is not None:
                    return self._fused_step(*batch, np.arange(batch[0].shape[0], dtype=np.int64), None)
            with self._comm.agreement():
                n_rows = validation.row_count(xb)
                if n_rows:
                    self._chunk_rows(n_rows)  # MemoryError before any conversion if one row cannot fit
                source = self._source(xb, yb, sample_weight=sample_weight)
            try:
                parts = self._comm.row_parts(source.n_rows, sharded, ("step", sample_weight is not None))
                rows = np.arange(parts.n_total, dtype=np.int64)
                return self._train_rows(source, rows, parts, interrupts)[0]
            finally:
                self._backend.release_data()

    def _small_host_batch(self, xb, yb):
        """Trainer.step's quick route, for the common call: (X, labels, targets) checked as _checked does,
        when xb is already a C-contiguous float32 NumPy array (n, sizes[0]) whose step runs in one compiled
        call on a backend that reads host arrays; else None (the general route: conversions, memory-mapped
        and GPU data, micro-batches). It skips what such a batch does not need (the data source, the row
        parts, the memory look-ups): a few microseconds a call, on steps of about as many."""
        if not (self._backend.reads_host_arrays and type(xb) is np.ndarray and xb.dtype == np.float32
                and xb.ndim == 2 and xb.flags.c_contiguous and xb.shape[0] > 0 and xb.shape[1] == self.sizes[0]
                and self._chunk_rows(xb.shape[0]) >= xb.shape[0]):
            return None
        validation.check_finite(xb, "X")  # its type, shape and layout are checked above
        return (xb,) + self._backend.checks.targets_for(self.config.loss, yb, xb.shape[0], self.sizes[-1])

    def _validation_source(self, train, validation_data, validation_split):
        """(training source, validation source or None) from the checked training data."""
        if validation_data is not None and validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        if validation_data is not None:
            if sources.is_stream(validation_data, None):
                return train, validation_data
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise TypeError("validation_data must be a pair (X_val, y_val), a triple (X_val, y_val, "
                                "sample_weight_val), or a stream of (X, y) batches")
            return train, self._source(*validation_data[:2], names=("validation X", "validation y"),
                                       sample_weight=validation_data[2] if len(validation_data) == 3 else None)
        if not validation_split:
            return train, None
        if train is None:
            raise ValueError("validation_split needs arrays; with a stream, give validation_data")
        fraction = finite_number("validation_split", validation_split, low=0.0, low_inclusive=False, high=1.0)
        n_val = int(round(train.n_rows * fraction))
        if not 0 < n_val < train.n_rows:
            raise ValueError(f"validation_split={validation_split} leaves no rows for training or validation "
                             f"out of {train.n_rows}")
        training, validation = train.split(train.n_rows - n_val)  # the last rows, before shuffling, as Keras
        for part, what in ((training, "training rows"), (validation, f"validation rows (the last {n_val})")):
            if part.weights is not None and not part.weights.any():
                raise ValueError(f"sample_weight is 0 for every one of the {what} of validation_split="
                                 f"{validation_split}: their loss would mean nothing")
        return training, validation

    @suggest_keywords
    def fit(self, X, y=None, epochs=1, batch_size=None, validation_data=None, validation_split=0.0, shuffle=True,
            verbose=1, initial_epoch=0, callbacks=None, sharded=False, steps_per_epoch=None, sample_weight=None,
            class_weight=None):
        """Trains in batches from epoch `initial_epoch` up to (not including) `epochs`, as Keras does.

        X (n, sizes[0]) and y (labels (n,) for cross_entropy, else (n, sizes[-1])): array-likes, or with
        device="cuda" also GPU arrays (numba, CuPy, PyTorch CUDA tensors: float32 X and targets, int64
        labels), used in place. Memory-mapped arrays (np.load(path, mmap_mode="r"), np.memmap) of any real
        dtype, and arrays too large to convert whole, are read batch by batch (sources.py).

        Or X is a stream of (X_batch, y_batch) pairs (a generator, or an iterable such as a list or a data
        loader) and y is None: each epoch takes up to steps_per_epoch batches (all of them when None; an
        iterable starts over every epoch, a generator goes on where it stopped). validation_data may be
        such a stream too. A bad batch raises naming it, before it touches the parameters.

        The last batch of an epoch may be shorter. shuffle: True (a fresh permutation of the rows every
        epoch, from the Trainer's seed), False (in order), or a function order(n) returning each epoch's
        order of the n rows, each once (row_order.py). validation_split holds out the last fraction of the
        rows (before shuffling). sample_weight (arrays only): one weight >= 0 per row of X; each batch's loss is
        then the weighted mean sum w_i loss_i / sum w_i (sample_weights.py), and validation_data may be a
        triple (X_val, y_val, sample_weight_val) (validation_split splits the weights too). class_weight
        (arrays only; cross_entropy, or bce with one output and 0/1 targets): a dict {class index: weight}
        (a class left out weighs 1) or "balanced"; each training row's weight is multiplied by its class's
        (class_weights.py), as Keras does: validation metrics, the validation_split rows' included, are not
        class-weighted. Returns a
        History with per-epoch "loss" and, for classification, "accuracy"
        (means over the epoch's batches), plus "val_loss"/"val_accuracy" with validation data, and "lr".
        verbose: 0 silent, 1 progress bar (one line per epoch when stdout is not a terminal), 2 one line
        per epoch. callbacks: see callbacks.py; `trainer.stop_training = True` ends after the epoch.

        With comm, every rank calls fit with the same arguments but the data: sharded=False, each rank
        with the same data set (it computes its part of each batch); sharded=True, each with its own
        rows (its shard; validation_split then holds out the last fraction of each shard, and
        validation_data is sharded too). A stream with comm is sharded: each rank's stream yields its
        own part of every batch, and steps_per_epoch is required. Only rank 0 shows progress; every rank
        gets the same History.
        """
        with self._guard.training("fit"):
            return self._fit(X, y, epochs, batch_size, validation_data, validation_split, shuffle, verbose,
                             initial_epoch, callbacks, sharded, steps_per_epoch, sample_weight, class_weight)

    def _agreed_stream(self, stream, steps, what):
        """(index, source) of up to `steps` batches of a stream, each checked as it arrives (a bad one raises
        naming it before any step on it). With comm the ranks agree before every batch, so that each makes
        the same collective calls: a batch that fails on one rank (bad data, the stream itself raising) fails
        on every rank, and a stream that ends on some ranks while others still have batches is a ValueError
        on every rank. what: "batch" or "validation batch", for the messages."""
        batches = sources.batches(stream, steps)
        while True:
            item = source = None
            with self._comm.agreement():
                item = next(batches, None)
                if item is not None:
                    index, X_batch, y_batch = item
                    try:
                        source = self._source(X_batch, y_batch, names=(f"X of {what} {index}", f"y of {what} {index}"))
                    except (ValueError, TypeError) as exc:
                        raise type(exc)(f"{what} {index} of the stream: {exc}") from None
            ended = self._comm.allgather(item is None)
            if any(ended):
                if not all(ended):
                    listed = ", ".join(str(r) for r, done in enumerate(ended) if done)
                    raise ValueError(f"the {what.replace('batch', 'stream')} ended on rank(s) {listed} while the "
                                     "other ranks still had batches: with comm every rank's stream must give "
                                     "as many batches (steps_per_epoch)")
                return
            yield index, source

    def _stream_batches(self, stream, steps, parts_call):
        """(source, rows, parts) of each batch of a stream (_agreed_stream); with comm, the batch's parts from
        every rank's own part."""
        for _, source in self._agreed_stream(stream, steps, "batch"):
            parts = self._comm.row_parts(source.n_rows, self._comm.size > 1, parts_call)
            yield source, np.arange(parts.n_total, dtype=np.int64), parts

    def _array_batches(self, source, order, batch_size, parts):
        """(source, rows, parts) of each batch of an epoch; a source read batch by batch starts reading the
        next batch's rows (this rank's part) while the current one trains."""
        prefetch = getattr(source, "prefetch", None)

        def read_ahead(start):  # this rank's part of the batch at `start`, when one take reads it whole
            if start >= order.size:
                return
            upcoming = parts.mine(order[start:start + batch_size])[0]
            if upcoming.size and upcoming.size <= self._chunk_rows(upcoming.size):
                prefetch(upcoming)
        if prefetch is not None:
            read_ahead(0)
        for start in range(0, order.size, batch_size):
            if prefetch is not None:
                read_ahead(start + batch_size)  # read during the step on the batch at `start`
            yield source, order[start:start + batch_size], parts

    def _fit(self, X, y, epochs, batch_size, validation_data, validation_split, shuffle, verbose, initial_epoch,
             callbacks, sharded, steps_per_epoch, sample_weight, class_weight):
        stream = sources.is_stream(X, y)
        with self._comm.agreement():  # an error on one rank is raised on every rank, before any step
            batch_size = self.config.batch_size if batch_size is None else positive_int("batch_size", batch_size)
            epochs = positive_int("epochs", epochs)
            if steps_per_epoch is not None:
                steps_per_epoch = positive_int("steps_per_epoch", steps_per_epoch)
            if stream and self._comm.size > 1 and steps_per_epoch is None:
                raise ValueError("a stream with comm needs steps_per_epoch (every rank must take as many batches)")
            if y is None and not stream:
                raise TypeError("fit needs y with arrays X (or X a stream of (X_batch, y_batch) pairs)")
            if sample_weight is not None and stream:
                raise TypeError("sample_weight applies to arrays X and y, not to a stream of batches")
            if class_weight is not None and stream:
                raise TypeError("class_weight applies to arrays X and y, not to a stream of batches")
            if isinstance(class_weight, str) and sharded and self._comm.size > 1:
                # Each rank would count its own shard's classes: weights that differ between ranks.
                raise ValueError("class_weight='balanced' with sharded data would count each rank's shard "
                                 "alone: give a dict of class weights computed over all the shards")
            if steps_per_epoch is not None and not stream:
                raise ValueError("steps_per_epoch is for streams of batches; with arrays an epoch is every row")
            train = None
            if not stream:
                n_rows = validation.row_count(X)
                if n_rows:
                    self._chunk_rows(min(batch_size, n_rows))  # MemoryError before converting anything
                unweighted = sample_weight
                if class_weight is not None:
                    sample_weight = class_weights.row_weights(class_weight, y, self.config.loss, self.sizes[-1],
                                                              sample_weight)
                train = self._source(X, y, sample_weight=sample_weight)
            train, val = self._validation_source(train, validation_data, validation_split)
            if class_weight is not None and validation_split:  # held-out rows: their own weights only
                val.weights = None if unweighted is None else sample_weights.check(
                    np.asarray(unweighted)[-val.n_rows:], val.n_rows, "sample_weight (validation_split's rows)")
            if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, numbers.Integral) \
                    or not 0 <= initial_epoch < epochs:
                raise ValueError(f"initial_epoch must be an integer in [0, epochs={epochs}), got {initial_epoch!r}")
            callbacks = callback_tools.check(callbacks)
            shuffle_kind = row_order.check_shuffle(shuffle)
        call = dict(method="fit", epochs=epochs, batch_size=batch_size, shuffle=shuffle_kind,
                    initial_epoch=int(initial_epoch), validation=val is not None, stream=stream,
                    steps_per_epoch=steps_per_epoch, sample_weight=sample_weight is not None,
                    validation_stream=val is not None and sources.is_stream(val, None),
                    validation_weights=getattr(val, "weights", None) is not None)
        # Every value that decides how many collective calls follow is compared across ranks first (a
        # stream's rows are agreed batch by batch, _agreed_stream).
        parts = self._comm.row_parts(0 if stream else train.n_rows, sharded or stream, call)
        if stream:
            parts = None
        val_parts = None if val is None or sources.is_stream(val, None) else \
            self._comm.row_parts(val.n_rows, sharded)
        return loop.run_epochs(self, X, train, val, parts, val_parts, stream, epochs, int(initial_epoch), batch_size,
                               steps_per_epoch, shuffle, verbose, callbacks)

    # ---- inference and inspection ----

    def _chunks(self, n):
        for start in range(0, n, EVAL_CHUNK):
            yield np.arange(start, min(start + EVAL_CHUNK, n), dtype=np.int64)

    def predict(self, X):
        """(n, out) float32: class probabilities for cross_entropy, P(y=1) for bce, rates exp(z) for poisson,
        raw outputs for mse.
        Memory-mapped and sparse X are read chunk by chunk."""
        on_demand = sources.wants_on_demand(X, self._available_bytes)
        if not on_demand:
            X = self._backend.checks.features(X, self.sizes[0])
        elif sources.is_sparse(X):
            X = sources.Rows(X)
        if on_demand and (not isinstance(X, (np.ndarray, sources.Rows, sources.RowSubset)) or X.ndim != 2):
            raise ValueError(f"X must be a 2-D (n_samples, n_features) array, got shape {getattr(X, 'shape', None)}")
        if on_demand and X.shape[0] == 0:
            raise ValueError("X has no rows")  # as features() says of an in-memory X
        with self._guard.lock:  # every chunk from the same parameters
            try:
                parts = []
                for rows in self._chunks(X.shape[0]):
                    if on_demand:
                        lo, hi = int(rows[0]), int(rows[-1]) + 1
                        chunk = self._backend.checks.features(X[lo:hi], self.sizes[0], first_row=lo)
                        parts.append(self._backend.logits(chunk, np.arange(hi - lo, dtype=np.int64)))
                    else:
                        parts.append(self._backend.logits(X, rows))
                logits = parts[0] if len(parts) == 1 else np.concatenate(parts)
            finally:
                self._backend.release_data()
        if self.config.loss in ("cross_entropy", "bce", "poisson"):  # the others' outputs are the logits
            with np.errstate(invalid="ignore", over="ignore"):  # non-finite outputs are reported just below
                logits = self._outputs_from_logits(logits)
        if not np.isfinite(logits).all():
            row = int(np.argwhere(~np.isfinite(logits))[0, 0])
            raise FloatingPointError(f"the network's output is not finite (first at row {row}): inputs too large "
                                     "for float32, or diverged parameters")
        return logits

    def _outputs_from_logits(self, logits):
        """predict's outputs from the logits (n, out) float32 (overwritten): softmax rows for cross_entropy,
        sigmoids for bce, exp for poisson."""
        if self.config.loss == "cross_entropy":
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=1, keepdims=True)
            return logits
        if self.config.loss == "bce":
            return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)  # sigmoid without overflow
        return np.exp(logits, out=logits)  # the rates; beyond float32's range: predict's error

    def _evaluate(self, source, parts, what="the data"):
        """Loss and accuracy over the data set that parts describes (with comm: each rank computes its
        rows, parts.mine of all of them, and the sums are added up)."""
        n = parts.n_total
        mine = parts.mine(np.arange(n, dtype=np.int64))[0]
        sums = np.zeros(3, np.float64)  # loss x weight, correct, weight
        with self._guard.lock:
            for chunk in self._chunks(mine.size):
                X, labels, targets, weights, rows = source.take(mine[chunk])
                weight = source.row_weight(mine[chunk])
                sums[0] += self._backend.loss_value(X, labels, targets, rows, weights) * weight
                sums[1] += self._backend.last_hits(rows.size)
                sums[2] += weight
        self._comm.sum_(sums)
        return self._scores(sums, n, what)

    def _evaluate_stream(self, stream):
        """Loss and accuracy over every batch of a stream (each rank's own batches, with comm)."""
        sums = np.zeros(4, np.float64)  # loss x rows, correct, rows (the weight), rows
        for _, source in self._agreed_stream(stream, None, "validation batch"):
            with self._guard.lock:
                for chunk in self._chunks(source.n_rows):
                    X, labels, targets, _, rows = source.take(chunk)
                    sums[0] += self._backend.loss_value(X, labels, targets, rows) * rows.size
                    sums[1] += self._backend.last_hits(rows.size)
                    sums[2:] += rows.size
        self._comm.sum_(sums)
        if sums[3] == 0:
            raise ValueError("the validation stream yielded no batches (a generator is used up after one pass: "
                             "give an iterable that starts over, such as a list or a data loader)")
        return self._scores(sums[:3], sums[3], "the validation data")

    def _scores(self, sums, n, what):
        """{"loss", "accuracy"} from sums (loss x weight, correct, weight) over n rows."""
        loss_sum, correct, weight = sums
        loss = loss_sum / weight if weight > 0 else 0.0
        if not np.isfinite(loss):
            raise FloatingPointError(f"the loss over {what} is {loss}: the outputs or their errors are "
                                     "beyond float32's range (inputs or targets too large, or diverged "
                                     "parameters)")
        result = {"loss": float(loss)}
        if self.config.loss in CLASSIFICATION_LOSSES:
            result["accuracy"] = float(correct / n)
        return result

    def evaluate(self, X, y, sharded=False, sample_weight=None):
        """{"loss": mean loss, "accuracy": fraction correct (classification losses only)}. sample_weight:
        the loss is the weighted mean (as in step); the accuracy stays the fraction of rows.

        With comm, every rank calls it, with the same data (sharded=False) or its own rows (sharded=True);
        each computes its part and every rank gets the result for the whole data set."""
        try:
            with self._comm.agreement():
                source = self._source(X, y, sample_weight=sample_weight)
            return self._evaluate(source, self._comm.row_parts(source.n_rows, sharded, "evaluate"))
        finally:
            self._backend.release_data()

    def gradients(self, X, y, training=False, sharded=False, sample_weight=None):
        """(loss, [(dW, db), ...]) of the mean loss over all of (X, y) (the weighted mean with
        sample_weight, as in step); changes nothing.

        training=True applies dropout with the masks the next training step would draw. With comm, every
        rank calls it (sharded as in evaluate) and gets the gradient over the whole data set. Computed in
        micro-batches where the step's would be (micro_batch, memory_budget)."""
        with self._guard.lock:
            return self._source_gradients(self._gradient_source(X, y, sample_weight), training, sharded)

    def _gradient_source(self, X, y, sample_weight=None):
        """(X, y) checked and converted as gradients takes them, into a source that _source_gradients may
        take again and again (lbfgs.py: one evaluation after another, the data checked once)."""
        with self._comm.agreement():
            n_rows = validation.row_count(X)
            if n_rows:
                self._chunk_rows(n_rows)  # MemoryError before any conversion if one row cannot fit
            return self._source(X, y, sample_weight=sample_weight)

    def _source_gradients(self, source, training=False, sharded=False):
        """gradients() of a source from _gradient_source."""
        with self._guard.lock:
            dropout = self._dropout if training else NO_DROPOUT
            try:
                parts = self._comm.row_parts(source.n_rows, sharded, ("gradients", bool(training)))
                rows = np.arange(parts.n_total, dtype=np.int64)
                local, _, first = parts.mine(rows)
                chunk = self._chunk_rows(local.size)
                if isinstance(source, sources.OnDemand):  # a file is read a piece at a time, never copied whole
                    chunk = min(chunk, EVAL_CHUNK)
                loss, _, _ = self._summed_gradients(source, local, first, chunk, dropout)
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

    def _scale_moment1(self, factor):
        """moment1 x factor (float32). For SGD with momentum, buffer x old lr / new lr at a change of the
        learning rate keeps lr x buffer, the velocity in parameter units, as scikit-learn's and Keras' SGD
        (v = mu v - lr g; PyTorch's buffer of gradients makes a new rate apply to past steps too)."""
        with self._guard.lock, whole_steps():
            self._backend.pull()
            self.state.moment1 *= np.float32(factor)
            self._backend.push()

    def _set_flat_params(self, flat):
        with self._guard.lock, whole_steps():
            self._backend.pull()
            self.state.params[:] = flat
            self._backend.push()

    # ---- export (export.py) ----

    def to_torch(self):
        """A torch.nn.Sequential with this network's weights (float32, Linear layers and the hidden
        activation; the output layer linear: apply softmax/sigmoid for probabilities). Needs PyTorch."""
        return export.to_torch(self)

    @classmethod
    def from_torch(cls, model, **options):
        """A Trainer holding the weights of a torch.nn.Sequential of Linear layers with one kind of activation
        (ReLU, LeakyReLU(0.01), Tanh, Sigmoid, Identity) between them and a Linear last; options: the
        Trainer's (loss, optimizer, lr, ...). ValueError for a model fastbp cannot represent."""
        sizes, params, options = export.from_torch(model, **options)
        trainer = cls(sizes, **options)
        trainer.set_params(params)
        return trainer

    def to_onnx(self, path, probabilities=True):
        """Writes an ONNX model (Gemm + activation nodes, a free batch dimension) to path, atomically:
        input "input" (batch, sizes[0]) float32, output "output" = predict()'s values, or the logits with
        probabilities=False. Needs the onnx package (pip install "fastbp[onnx]"). Returns path."""
        return export.to_onnx(self, path, probabilities)

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
                              "dropout_seed": self._dropout_seed, "micro_batch": self.micro_batch,
                              "memory_budget": self.memory_budget,
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
            squares = _SQUARED_MOMENT.get(config.optimizer)
            if squares is not None and (arrays[squares] < 0).any():
                raise ValueError(f"{squares} holds negative values (for {config.optimizer} it is a sum or running "
                                 "mean of squared gradients)")
            for name in ("micro_batch", "memory_budget"):
                if meta.get(name) is not None:
                    positive_int(name, meta[name])
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
        # micro_batch and memory_budget decide a step's summation order: a resumed run keeps them (files
        # from before they were saved have neither).
        t = cls(**config.to_dict(), comm=comm, micro_batch=meta.get("micro_batch"),
                memory_budget=meta.get("memory_budget"))
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
        state["_grad_total"] = state["_step_log"] = None  # scratch
        return state

    def __setstate__(self, state):
        for name in ("threads", "micro_batch", "memory_budget", "_grad_total", "_step_log"):  # older pickles
            state.setdefault(name, None)
        state.setdefault("_said_micro_batch", False)
        self.__dict__.update(state)
        self._bytes_per_row = batch_bytes(self.state.dims, 1)  # not in pickles from before it
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
