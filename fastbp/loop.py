"""fit's epochs (run_epochs), and their steps in compiled chunks: many steps per call into compiled code,
Python only between chunks.

run_epochs is the loop Trainer.fit runs once its arguments are checked: per epoch, the rows' order, the
batches, progress, validation, the schedule and the callbacks; every step is Trainer._train_rows's, or a
chunk's. Where the backend offers it (the CPU backend's serial path, cpu/serial.py, for networks whose step
is small: CpuBackend.takes_serial_path) and the data sit in memory in one process, an epoch runs as a few
calls of backend.train_steps (ChunkedEpochs), each taking a chunk of the epoch's batches in the epoch's
order. Between chunks, and only there, Python shows progress and delivers a Ctrl-C, so the state is always
that of a whole number of steps. Chunks are sized from the last chunk's speed to take about CHUNK_SECONDS,
so progress and Ctrl-C answer within about a tenth of a second.

Where nothing needs Python between epochs (no validation, schedule, progress or callback of the user's;
the estimators' own callbacks say how many epochs may pass before they act: epochs_at_once), several
epochs run in one call (ChunkedEpochs.whole_epochs), each with its shorter last batch: their orders drawn
up front, in the same order of draws, and each epoch's bookkeeping done after the call. A small data set's
epoch is one or two steps, and the Python around an epoch cost more than its arithmetic.

The steps are those of the step-at-a-time loop (Trainer._train_rows), bit for bit: the same function
computes each step whichever loop called it (Trainer.step on a small network goes through train_steps
too), the learning rate of a per-step schedule is evaluated for each step ahead of the chunk, the dropout
key follows the step count, and the epoch's loss, hits and weight are added up in the same order.
Everything else (micro-batches, MPI ranks, streams, memory-mapped or sparse data, GPUs, large networks)
takes the step-at-a-time loop.
"""
import time

import numpy as np

from . import callbacks as callback_tools
from . import row_order, sources
from .guard import whole_steps
from .history import History
from .options import CLASSIFICATION_LOSSES, OptimizerSettings, float32_number
from .progress import EpochProgress

# A chunk aims at this long: progress and Ctrl-C answer within about a tenth of a second.
CHUNK_SECONDS = 0.05
# The first chunk of a fit, before its speed is known.
FIRST_CHUNK_STEPS = 16
# Most epochs one compiled call runs (epochs_at_once): the chunk's step budget decides below it.
MAX_EPOCHS_AT_ONCE = 64
# The dropout key's multiplier (Trainer._dropout_key: seed x this + step count, modulo 2^63).
_KEY_MULTIPLIER = 0x9E3779B97F4A7C15


def runs_in_chunks(trainer, source, batch_size):
    """Whether fit's epochs on `source` run in compiled chunks (see the module's docstring)."""
    backend = trainer._backend
    return (trainer._comm.size == 1 and isinstance(source, sources.InMemory)
            and hasattr(backend, "train_steps") and backend.takes_serial_path(batch_size)
            and trainer._chunk_rows(min(batch_size, source.n_rows)) >= min(batch_size, source.n_rows))


def running_sum(start, values):
    """start + values[0] + values[1] + ... as float64, added left to right (np.add.accumulate is sequential,
    unlike np.sum): the bits of a Python loop of `total += value`, without its microsecond per step."""
    return float(np.add.accumulate(np.concatenate(([start], values)))[-1])


class ChunkedEpochs:
    """Runs fit's epochs of one source in chunks of steps; keeps the chunk size and output buffers."""

    def __init__(self, trainer, source, batch_size):
        self.trainer, self.source, self.batch_size = trainer, source, batch_size
        # The chunk size the trainer's last fit with this batch size arrived at (a first fit's starts small).
        self._sizes = trainer.__dict__.setdefault("_chunk_steps", {})
        self.steps_per_chunk = self._sizes.get(batch_size, FIRST_CHUNK_STEPS)
        # Each step's loss, hits, weight, and the squared weights after an epoch's last step (whole_epochs).
        self.outputs = np.zeros((4, FIRST_CHUNK_STEPS), np.float64)
        self.key_base = (trainer._dropout_seed * _KEY_MULTIPLIER) % 2 ** 63

    def _measured(self, n_steps, elapsed):
        """The next chunk's size after n_steps whole steps took `elapsed` seconds: CHUNK_SECONDS' worth, at
        most twice the larger of the last chunk and the planned size (an epoch's end cuts a chunk short);
        remembered for the trainer's next fit with this batch size."""
        self.steps_per_chunk = max(1, min(2 * max(n_steps, self.steps_per_chunk),
                                          int(n_steps * CHUNK_SECONDS / max(elapsed, 1e-6))))
        self._sizes[self.batch_size] = self.steps_per_chunk

    def _learning_rates(self, first_step, n_steps):
        """(n_steps,) float64: the learning rate of each step, as _train_rows would set it."""
        t = self.trainer
        schedule = t.schedule
        if schedule is None or schedule.interval != "step":
            return np.full(n_steps, t.lr)
        return np.array([float32_number("lr", schedule.lr(t.config.lr, first_step + s)) for s in range(n_steps)])

    def _call(self, order, rows, n_steps, epoch_rows=0, squares=False):
        """One compiled call of n_steps steps of `rows` rows from order (with epoch_rows, whole epochs of that
        many rows, each with its shorter last batch: backend.train_steps); returns the steps applied (the
        outputs in self.outputs). The step count and a per-step schedule's learning rate move with them."""
        t, source = self.trainer, self.source
        if self.outputs.shape[1] < n_steps:
            self.outputs = np.zeros((4, n_steps), np.float64)
        with t._guard.lock:
            lrs = self._learning_rates(t.state.step_count, n_steps)
            settings = OptimizerSettings.for_step(t.config, float(lrs[0]), t.state.step_count + 1)
            done = t._backend.train_steps(source.X, source.labels, source.targets, source.weights, order, rows,
                                          n_steps, settings, lrs, self.key_base, t._dropout, self.outputs,
                                          epoch_rows, squares)
            t.state.step_count += done
            if t.schedule is not None and t.schedule.interval == "step":
                t.lr = lrs[min(done, n_steps - 1)]
        return done

    @property
    def steps_per_epoch(self):
        return -(-self.source.n_rows // self.batch_size)

    def whole_epochs(self, orders, squares):
        """len(orders) epochs, each order that epoch's rows, in one compiled call. Returns (finished,
        failed): for each epoch finished, (loss x weight summed over its steps, weight, hits, rows, its
        steps' step-log entries), added up as epoch() adds them; failed: the loss of the step that was not
        finite (its update not applied, the epochs before it finished), or None. squares: whether the
        epoch's last step-log entry carries the squared weights after it (the estimators' loss:
        Trainer._step_log)."""
        t, batch, n = self.trainer, self.batch_size, self.source.n_rows
        classification = t.config.loss in CLASSIFICATION_LOSSES
        epoch_steps = self.steps_per_epoch
        n_steps = epoch_steps * len(orders)
        began = time.perf_counter()
        done = self._call(np.concatenate(orders), batch, n_steps, n, squares)
        if done == n_steps:
            self._measured(n_steps, time.perf_counter() - began)
        losses, step_hits, weights, step_squares = (row.tolist() for row in self.outputs[:, :done])
        finished = []
        for first in range(0, done - epoch_steps + 1, epoch_steps):
            loss_sum = weight_seen = hits = 0.0
            records = []
            for j in range(epoch_steps):  # the step loop's order of sums
                s = first + j
                loss_sum += losses[s] * weights[s]
                weight_seen += weights[s]
                hits += step_hits[s] if classification else 0.0
                records.append((losses[s], min(batch, n - j * batch), weights[s], None))
            if squares:
                records[-1] = records[-1][:3] + (step_squares[first + epoch_steps - 1],)
            finished.append((loss_sum, weight_seen, hits, n, records))
        return finished, (self.outputs[0, done] if done < n_steps else None)

    def epoch(self, order, progress, interrupts):
        """Every batch of `order` (the epoch's rows, in order), in chunks; returns (loss x weight summed over
        steps, weight, hits, rows) as the step-at-a-time loop adds them up. A step whose loss is not finite
        raises FloatingPointError (its update not applied, the steps before it kept)."""
        t, batch = self.trainer, self.batch_size
        classification = t.config.loss in CLASSIFICATION_LOSSES
        full_steps, tail = divmod(order.size, batch)
        loss_sum = weight_seen = hits = 0.0
        seen = 0
        step = 0
        while step < full_steps or (tail and step == full_steps):
            rows = batch if step < full_steps else tail
            n_steps = min(self.steps_per_chunk, full_steps - step) if step < full_steps else 1
            began = time.perf_counter()
            done = self._call(order[step * batch:step * batch + n_steps * rows], rows, n_steps)
            losses, step_hits, weights = self.outputs[:3, :done]
            # The step loop's sums, in its order: one float64 addition per step, left to right.
            loss_sum = running_sum(loss_sum, losses * weights)
            weight_seen = running_sum(weight_seen, weights)
            hits = running_sum(hits, step_hits) if classification else hits
            if t._step_log is not None:
                t._step_log.extend((loss, rows, weight, None) for loss, weight in zip(losses.tolist(), weights.tolist()))
            seen += done * rows
            step += done
            if done < n_steps:
                t._raise_non_finite_loss(self.outputs[0, done])
            if rows == batch and done:
                self._measured(n_steps, time.perf_counter() - began)
            progress.batch_done(done * rows, loss_sum / weight_seen if weight_seen else 0.0)
            interrupts.deliver()  # a Ctrl-C during the chunk lands here, after its whole steps
        return loss_sum, weight_seen, hits, seen


def epochs_at_once(trainer, chunked, verbose, val, callbacks, shuffle, epochs_left):
    """How many epochs fit runs in one compiled call from here: 1, unless its epochs run in chunks
    (ChunkedEpochs), silently, with no validation or schedule, in fastbp's own
    orders (shuffle True or False, or a row_order.OwnOrder: a function of the user's is called once per
    epoch, between epochs), and every callback says how many epochs may pass before it acts on the trainer
    (its _epochs_ahead(trainer): the estimators' own; any other callback, and any callback of the user's,
    gets its epochs one at a time). Bounded by the chunk's step budget (CHUNK_SECONDS), so that Ctrl-C
    still answers within about a tenth of a second."""
    if (chunked is None or verbose or val is not None or trainer.schedule is not None or epochs_left < 2
            or not (isinstance(shuffle, bool) or isinstance(shuffle, row_order.OwnOrder))):
        return 1
    group = min(epochs_left, MAX_EPOCHS_AT_ONCE, chunked.steps_per_chunk // chunked.steps_per_epoch)
    for cb in callbacks:
        ahead = getattr(cb, "_epochs_ahead", None)
        group = min(group, ahead(trainer) if ahead is not None else 1)
    return max(1, group)


def run_epochs(trainer, X, train, val, parts, val_parts, stream, epochs, initial_epoch, batch_size, steps_per_epoch,
               shuffle, verbose, callbacks):
    """fit's epochs, once Trainer.fit has checked its arguments and every rank agrees on them: the History.
    train: the training source (None for a stream X, whose batches come from X); val: the validation source
    or stream, or None; parts, val_parts: the ranks' row parts (distributed.py; None for streams); each
    epoch's batches run in compiled chunks where they can (ChunkedEpochs), else step by step
    (Trainer._train_rows); progress, the schedule and the callbacks run between them."""
    n = None if stream else parts.n_total
    history = History()
    progress = EpochProgress(verbose if trainer._comm.is_root else 0, epochs, n)
    classification = trainer.config.loss in CLASSIFICATION_LOSSES
    trainer.stop_training = False
    chunked = None if stream or not runs_in_chunks(trainer, train, batch_size) else \
        ChunkedEpochs(trainer, train, batch_size)
    prepare = getattr(trainer._backend, "prepare", None)
    if prepare is not None and not stream:  # compiled (or loaded) now, not counted in the first epoch's speed
        step_rows = min(batch_size, train.n_rows)
        if trainer._backend.needs_compiling(step_rows):
            progress.compiling()
        prepare(step_rows)
    with trainer._comm.agreement():  # with comm, a callback failing on one rank fails on every rank
        callback_tools.call(callbacks, "on_train_begin", trainer)
    def end_epoch(epoch, loss_sum, weight_seen, hits, seen, seconds, epoch_lr):
        """An epoch's logs, validation, progress line, history and callbacks; returns whether to stop."""
        trainer.epochs_done = epoch + 1
        logs = {"loss": loss_sum / weight_seen if weight_seen else 0.0}
        if classification:
            logs["accuracy"] = hits / seen
        if val is not None:
            scores = (trainer._evaluate_stream(val) if val_parts is None else
                      trainer._evaluate(val, val_parts, "the validation data"))
            logs.update({"val_" + k: v for k, v in scores.items()})
        progress.end_epoch(epoch, logs, seconds, seen)
        history.record(epoch, **logs, lr=epoch_lr)
        with trainer._comm.agreement():
            if trainer.schedule is not None:
                trainer.schedule.on_epoch_end(logs)
            callback_tools.call(callbacks, "on_epoch_end", epoch, logs, trainer)
        # The same decision on every rank.
        trainer.stop_training = trainer._comm.any_(trainer.stop_training)
        return trainer.stop_training

    with whole_steps() as interrupts:  # Ctrl-C lands between steps (deliver), never inside one
        try:
            epoch = initial_epoch
            while epoch < epochs:
                group = epochs_at_once(trainer, chunked, verbose, val, callbacks, shuffle, epochs - epoch)
                if group > 1:  # several epochs in one compiled call, then each one's bookkeeping
                    epoch_lr, start_time = trainer._lr, time.perf_counter()
                    orders = [row_order.epoch_order(shuffle, trainer._rng, n, trainer._comm) for _ in range(group)]
                    finished, failed = chunked.whole_epochs(orders, squares=trainer._step_log is not None)
                    seconds = (time.perf_counter() - start_time) / group
                    for index, (loss_sum, weight_seen, hits, seen, records) in enumerate(finished):
                        progress.start_epoch(epoch)
                        if trainer._step_log is not None:
                            trainer._step_log.extend(records)
                        stop = end_epoch(epoch, loss_sum, weight_seen, hits, seen, seconds, epoch_lr)
                        epoch += 1
                        if stop and index < group - 1:
                            raise RuntimeError(f"a callback stopped training after epoch {epoch} of a group of "
                                               f"{group} run at once, though it allowed them (_epochs_ahead)")
                    if failed is not None:
                        trainer._raise_non_finite_loss(failed)
                    interrupts.deliver()  # a Ctrl-C during the group lands here, after its epochs' bookkeeping
                    if trainer.stop_training:
                        break
                    continue
                if trainer.schedule is not None and trainer.schedule.interval == "epoch":
                    trainer.lr = trainer.schedule.lr(trainer.config.lr, epoch)
                epoch_lr = trainer._lr
                start_time = time.perf_counter()
                progress.start_epoch(epoch)
                if stream:
                    batches = trainer._stream_batches(X, steps_per_epoch, "stream step")
                else:
                    order = row_order.epoch_order(shuffle, trainer._rng, n, trainer._comm)
                    batches = () if chunked else trainer._array_batches(train, order, batch_size, parts)
                loss_sum = hits = weight_seen = 0.0  # weight: rows, or their summed sample weights
                seen = 0
                if chunked:  # many steps per compiled call
                    loss_sum, weight_seen, hits, seen = chunked.epoch(order, progress, interrupts)
                for source, rows, batch_parts in batches:
                    loss, batch_hits, weight = trainer._train_rows(source, rows, batch_parts, interrupts)
                    if trainer._step_log is not None:
                        trainer._step_log.append((loss, rows.size, weight, None))
                    interrupts.deliver()  # a Ctrl-C during the step lands here, after it
                    loss_sum += loss * weight
                    weight_seen += weight
                    hits += batch_hits
                    seen += rows.size
                    progress.batch_done(rows.size, loss_sum / weight_seen if weight_seen else 0.0)
                if seen == 0:
                    raise ValueError(f"the stream yielded no batches in epoch {epoch + 1} (a generator is "
                                     "used up after one pass: give steps_per_epoch, or an iterable that "
                                     "starts over, such as a list or a data loader)")
                if end_epoch(epoch, loss_sum, weight_seen, hits, seen, time.perf_counter() - start_time, epoch_lr):
                    break
                epoch += 1
        finally:
            progress.abort()
            trainer._backend.release_data()
            for source in (train, val):
                getattr(source, "close", lambda: None)()
    with trainer._comm.agreement():
        callback_tools.call(callbacks, "on_train_end", trainer)
    return history
