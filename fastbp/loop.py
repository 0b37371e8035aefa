"""fit's epoch in compiled chunks: many steps per call into compiled code, Python only between chunks.

Where the backend offers it (the CPU backend's serial path, cpu/serial.py, for networks whose step is
small: CpuBackend.takes_serial_path) and the data sit in memory in one process, an epoch runs as a few
calls of backend.train_steps, each taking a chunk of the epoch's batches in the epoch's order. Between
chunks, and only there, Python shows progress and delivers a Ctrl-C, so the state is always that of a
whole number of steps. Chunks are sized from the last chunk's speed to take about CHUNK_SECONDS, so
progress and Ctrl-C answer within about a tenth of a second.

The steps are those of the step-at-a-time loop (Trainer._train_rows), bit for bit: the same function
computes each step whichever loop called it (Trainer.step on a small network goes through train_steps
too), the learning rate of a per-step schedule is evaluated for each step ahead of the chunk, the dropout
key follows the step count, and the epoch's loss, hits and weight are added up in the same order.
Everything else (micro-batches, MPI ranks, streams, memory-mapped or sparse data, GPUs, large networks)
takes the step-at-a-time loop.
"""
import time

import numpy as np

from . import sources
from .options import CLASSIFICATION_LOSSES, OptimizerSettings, float32_number

# A chunk aims at this long: progress and Ctrl-C answer within about a tenth of a second.
CHUNK_SECONDS = 0.05
# The first chunk of a fit, before its speed is known.
FIRST_CHUNK_STEPS = 16
# The dropout key's multiplier (Trainer._dropout_key: seed x this + step count, modulo 2^63).
_KEY_MULTIPLIER = 0x9E3779B97F4A7C15


def runs_in_chunks(trainer, source, batch_size):
    """Whether fit's epochs on `source` run in compiled chunks (see the module's docstring)."""
    backend = trainer._backend
    return (trainer._comm.size == 1 and isinstance(source, sources.InMemory)
            and hasattr(backend, "train_steps") and backend.takes_serial_path(batch_size)
            and trainer._chunk_rows(min(batch_size, source.n_rows)) >= min(batch_size, source.n_rows))


class ChunkedEpochs:
    """Runs fit's epochs of one source in chunks of steps; keeps the chunk size and output buffers."""

    def __init__(self, trainer, source, batch_size):
        self.trainer, self.source, self.batch_size = trainer, source, batch_size
        self.steps_per_chunk = FIRST_CHUNK_STEPS
        self.outputs = np.zeros((3, FIRST_CHUNK_STEPS), np.float64)  # each step's loss, hits, weight
        self.key_base = (trainer._dropout_seed * _KEY_MULTIPLIER) % 2 ** 63

    def _learning_rates(self, first_step, n_steps):
        """(n_steps,) float64: the learning rate of each step, as _train_rows would set it."""
        t = self.trainer
        schedule = t.schedule
        if schedule is None or schedule.interval != "step":
            return np.full(n_steps, t.lr)
        return np.array([float32_number("lr", schedule.lr(t.config.lr, first_step + s)) for s in range(n_steps)])

    def epoch(self, order, progress, interrupts):
        """Every batch of `order` (the epoch's rows, in order), in chunks; returns (loss x weight summed over
        steps, weight, hits, rows) as the step-at-a-time loop adds them up. A step whose loss is not finite
        raises FloatingPointError (its update not applied, the steps before it kept)."""
        t, backend, source, batch = self.trainer, self.trainer._backend, self.source, self.batch_size
        classification = t.config.loss in CLASSIFICATION_LOSSES
        full_steps, tail = divmod(order.size, batch)
        loss_sum = weight_seen = hits = 0.0
        seen = 0
        step = 0
        while step < full_steps or (tail and step == full_steps):
            rows = batch if step < full_steps else tail
            n_steps = min(self.steps_per_chunk, full_steps - step) if step < full_steps else 1
            if self.outputs.shape[1] < n_steps:
                self.outputs = np.zeros((3, n_steps), np.float64)
            began = time.perf_counter()
            with t._guard.lock:
                lrs = self._learning_rates(t.state.step_count, n_steps)
                settings = OptimizerSettings.for_step(t.config, float(lrs[0]), t.state.step_count + 1)
                done = backend.train_steps(source.X, source.labels, source.targets, source.weights,
                                           order[step * batch:step * batch + n_steps * rows], rows, n_steps,
                                           settings, lrs, self.key_base, t._dropout, self.outputs)
                t.state.step_count += done
                if t.schedule is not None and t.schedule.interval == "step":
                    t.lr = lrs[min(done, n_steps - 1)]
            losses, step_hits, weights = (column.tolist() for column in self.outputs[:, :done])
            for loss, weight, step_hit in zip(losses, weights, step_hits):  # the step loop's order of sums
                loss_sum += loss * weight
                weight_seen += weight
                hits += step_hit if classification else 0.0
                if t._step_log is not None:
                    t._step_log.append((loss, rows, weight))
            seen += done * rows
            step += done
            if done < n_steps:
                t._raise_non_finite_loss(self.outputs[0, done])
            if rows == batch and done:
                elapsed = time.perf_counter() - began
                self.steps_per_chunk = max(1, min(2 * n_steps, int(n_steps * CHUNK_SECONDS / max(elapsed, 1e-6))))
            progress.batch_done(done * rows, loss_sum / weight_seen if weight_seen else 0.0)
            interrupts.deliver()  # a Ctrl-C during the chunk lands here, after its whole steps
        return loss_sum, weight_seen, hits, seen
