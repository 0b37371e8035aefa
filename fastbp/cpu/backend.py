"""The CPU backend: owns the per-batch-size workspaces and makes one compiled call per operation.

Inputs arrive validated and converted by the Trainer (see validation.py); nothing here checks user data.
"""
import contextlib
import os
import time

import numba
import numpy as np

from .. import sample_weights, validation
from ..sums import sum_first
from ..options import LossSettings, OptimizerSettings
from ..workspaces import WorkspaceCache, available_host_bytes
from ..threads import blas_libraries, blas_single_threaded, kernel_threads
from . import pipeline, serial, split_threads, step, threading_layer
from .blas import SMALL_MACS, copy_beats_transposed
from .delta_backward import TILE_ROWS
from .dropout import NO_DROPOUT
from .activations import slope_offsets
from .dense_forward import activation_offsets
from .optimizers import NORM_CHUNKS, decay_masks
from .variants import uses_of
from .weight_grad import split_batch

_EMPTY_LABELS = np.zeros(0, np.int64)
_EMPTY_TARGETS = np.zeros((0, 0), np.float32)
_EMPTY_WEIGHTS = np.zeros(0, np.float64)
_NO_DECAY_MASK = np.zeros(0, np.bool_)
_NO_SQUARES = np.zeros(0, np.float64)  # serial.run_steps' epoch_squares when no epoch asks for them
# Below serial_work() multiply-adds per step (batch rows x the network's weights and biases), steps run on
# one thread with no parallel region (serial.py). The crossover depends on the BLAS's kernels: measured by
# scripts/serial_crossover.py on the 2-core Zen 5 VM (README, "Small networks"), near 6 M multiply-adds with
# OpenBLAS's AVX-512 kernels and near 3 M with its AVX2 ones. SERIAL_WORK, when set, overrides it (tests,
# scripts).
SERIAL_WORK = None
SERIAL_WORK_AVX512 = 6 * 2 ** 20
SERIAL_WORK_OTHER = 3 * 2 ** 20
# From SPLIT_WORK multiply-adds per step up to serial_work(), a training step's batch is split into parts
# that the kernel threads share (serial.py's split steps), each part at least MIN_PART_ROWS rows. Measured
# by scripts/serial_crossover.py and the small-model benchmark on the 2-core Zen 5 VM (README, "Small
# networks"): with 64 rows a part or more, split steps ran 1.2-1.9x one part's speed ([32, 64, 64, 4] at
# batch 128, [64, 100, 10] at batch 128 to 400); with 32 rows a part anywhere from 0.73x to 1.35x from run to
# run ([32, 256, 256, 1] at batch 64: 0.73-1.30x; on this VM two threads of vector code are sometimes a
# third slower for seconds at a time), and slower with 8 or 16 (0.62-0.89x: BLAS runs narrow products
# slowly). A one-part step also keeps Trainer.step's speed (the parts of a single step run one after the
# other) and a CPU shared with other jobs (split steps fall back to one thread, but their parts stay).
SPLIT_WORK = 256 * 2 ** 10
MIN_PART_ROWS = 64
# Calls of fewer steps run a split step's parts on the calling thread alone (the same numbers: the parts
# decide them, not the threads): waking a helper thread costs tens of microseconds, a step's worth.
MIN_SHARED_STEPS = 4
# After a split call's thread waited for a descheduled one (claims.RETIRE), calls run their parts on the calling
# thread alone for a while before trying two threads again: FIRST_ALONE_SECONDS after a retirement that ends
# CLEAN_SECONDS or more of shared calls that all went well, else twice as long as the last time, up to
# ALONE_SECONDS. On the 2-core VM of the README, quiet, the second vCPU is taken away for a millisecond or more
# every 0.1 s or so: with 0.25 s alone after every such hiccup, sk_default's split steps ran on one thread for
# most of the benchmark's rounds (51-52 us a step, against 34-36 with this rule; measured here, interleaved).
# A CPU shared with other jobs interrupts shared calls every few milliseconds: the time alone grows to
# ALONE_SECONDS within six tries and stays there.
FIRST_ALONE_SECONDS = 0.01
CLEAN_SECONDS = 0.05
ALONE_SECONDS = 0.25
# Delta propagation multiplies by a copy of W^T, made each step, where blas.copy_beats_transposed says that is
# faster: only with OpenBLAS's AVX-512 kernels, where it was measured (with its AVX2 kernels the copy only
# costs). COPY_WEIGHTS, when set (True or False), overrides that (tests, scripts).
COPY_WEIGHTS = None
# OpenBLAS's names (threadpoolctl's "architecture") for its AVX-512 kernels.
_AVX512_KERNELS = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
_avx512_blas = None  # whether every loaded OpenBLAS runs them: found once (avx512_blas())


def avx512_blas():
    """Whether every loaded BLAS is an OpenBLAS running its AVX-512 kernels (found once, through threadpoolctl)."""
    global _avx512_blas
    if _avx512_blas is None:
        kernels = [str(getattr(lib, "architecture", "")).lower() for lib in blas_libraries()]
        _avx512_blas = bool(kernels) and all(k in _AVX512_KERNELS for k in kernels)
    return _avx512_blas


def serial_work():
    """SERIAL_WORK, or the crossover for the loaded BLAS: SERIAL_WORK_AVX512 with OpenBLAS's AVX-512 kernels
    (avx512_blas()), else SERIAL_WORK_OTHER."""
    if SERIAL_WORK is not None:
        return SERIAL_WORK
    return SERIAL_WORK_AVX512 if avx512_blas() else SERIAL_WORK_OTHER


def copies_weights():
    """COPY_WEIGHTS, or whether the loaded BLAS runs small delta products faster on a copy of W^T
    (avx512_blas(): see COPY_WEIGHTS)."""
    return avx512_blas() if COPY_WEIGHTS is None else bool(COPY_WEIGHTS)


def weight_t_offsets(dims, n, copies):
    """(L + 1,) int64: step.py's weight_t_off for batches of n rows, with copies: a W^T copy for each layer a
    delta goes back through whose product (a tile of up to TILE_ROWS of the n rows, delta_backward.py)
    blas.copy_beats_transposed picks; without: none."""
    off = np.zeros(len(dims), np.int64)
    rows = min(int(n), TILE_ROWS)
    for l in range(1, len(dims) - 1):
        fan_in, fan_out = int(dims[l]), int(dims[l + 1])
        off[l + 1] = off[l] + (fan_in * fan_out if copies and copy_beats_transposed(rows, fan_in, fan_out) else 0)
    return off


# Settings for the calls that update nothing (the compiled entry point takes them regardless).
_UNUSED_SETTINGS = OptimizerSettings(kind=0, lr=0.0, beta1=0.0, beta2=0.0, eps=1.0, weight_decay=0.0,
                                     momentum=0.0, nesterov=False, step=1, alpha=0.0, clip_norm=0.0,
                                     eps_hat=False, max_norm=0.0)


# The workspaces' layouts come from the kernels' own functions run as Python (py_func): called from Python,
# the compiled ones would each be compiled on their own for a few additions (0.4 s of a first fit, for these
# three, measured here), where the kernels that need them inline them.
_activation_offsets = activation_offsets.py_func
_slope_offsets = slope_offsets.py_func
_split_batch = split_batch.py_func


class Workspace:
    """Scratch memory for batches of n rows: activations (overwritten by the deltas in the backward
    pass), per-thread tiles for delta propagation, per-row losses. copies: W^T copies where they pay
    (copies_weights(), weight_t_offsets)."""

    def __init__(self, dims, activations, n, copies=False):
        act_off = _activation_offsets(dims, n)
        slope_off = _slope_offsets(dims, activations, n, act_off[-1])
        weight_t_off = weight_t_offsets(dims, n, copies)
        # The activation blocks, then the slope blocks of the activations that store act'(Z) (activations.py),
        # then the W^T copies (step.py).
        self.acts = np.zeros(int(slope_off[-1] + weight_t_off[-1]), np.float32)
        # The ones column of each layer input carries the bias through the product; the products
        # write only the columns before it, so it is set once here.
        for l in range(dims.size - 1):
            block = self.acts[act_off[l]:act_off[l + 1]].reshape(n, dims[l] + 1)
            block[:, -1] = 1.0
        hidden_width = int(dims[1:-1].max()) if dims.size > 2 else 0
        # Sized for the most threads Numba may ever run, so numba.set_num_threads() is always safe.
        max_threads = numba.config.NUMBA_NUM_THREADS
        self.scratch = np.zeros(max(1, min(max_threads, n) * TILE_ROWS * hidden_width), np.float32)
        # Two threads is the count that splits the most layers; size for it, with every thread's partial.
        split_layers = [(dims[l] + 1) * dims[l + 1] for l in range(dims.size - 1)
                        if _split_batch(n, dims[l], dims[l + 1], 2)]
        partial_floats = [1] + [(max_threads - 1) * size for size in split_layers]
        # The per-thread pipeline (narrow layers, long batches): a tile workspace per thread, ones columns
        # preset, and every thread but the first accumulating a whole gradient of its own.
        self.tiles, self.weights_t = np.zeros(1, np.float32), np.zeros(1, np.float32)
        if pipeline.fits(dims, n, 1):
            self.weights_t = np.zeros(int(sum((dims[:-1] + 1) * dims[1:])), np.float32)
            per_thread = pipeline.tile_floats(dims, activations)
            self.tiles = np.zeros(max_threads * per_thread, np.float32)
            tile_off = _activation_offsets(dims, pipeline.TILE_ROWS)
            for t in range(max_threads):
                for l in range(dims.size - 1):
                    start = t * per_thread + tile_off[l]
                    self.tiles[start:start + tile_off[l + 1] - tile_off[l]].reshape(-1, dims[l] + 1)[:, -1] = 1.0
            partial_floats.append((max_threads - 1) * self.weights_t.size)
        self.partials = np.zeros(max(partial_floats), np.float32)
        self.row_loss = np.zeros(n, np.float64)
        self.row_hits = np.zeros(n, np.float64)
        self.norm_sums = np.zeros(NORM_CHUNKS, np.float64)
        self.logits = slice(int(act_off[-2]), int(act_off[-1]))
        # serial.run_steps' act_off, slope_off and weight_t_off: this workspace's layout.
        self.layout = (act_off, slope_off, weight_t_off)
        # serial.run_steps' arguments for one part: the workspace as its only row, and no other part.
        self.one_part = (self.acts.reshape(1, -1), self.scratch.reshape(1, -1), self.partials.reshape(1, -1),
                         self.row_loss.reshape(1, -1), self.row_hits.reshape(1, -1))
        self.no_part_grads = np.zeros((0, 0), np.float32)
        self.part_values = np.zeros((1, 3), np.float64)
        self.claims = np.zeros(serial.CLAIM_SLOTS, np.int64)


class SplitWorkspace:
    """Scratch memory for steps of n rows split into `parts` (serial.py): a Workspace of ceil(n / parts)
    rows per part, stacked row by row, and every part's gradient but the first (which goes to grads)."""

    def __init__(self, dims, activations, n, parts, n_params, copies=False):
        each = [Workspace(dims, activations, -(-n // parts), copies) for _ in range(parts)]
        self.parts = tuple(np.stack([getattr(w, name) for w in each])
                           for name in ("acts", "scratch", "partials", "row_loss", "row_hits"))
        self.part_grads = np.zeros((parts - 1, n_params), np.float32)
        self.part_values = np.zeros((parts, 3), np.float64)
        self.claims = np.zeros(serial.CLAIM_SLOTS, np.int64)
        self.norm_sums = each[0].norm_sums
        self.layout = each[0].layout


class CpuBackend:
    """threads: Trainer(threads=...), None to follow the process's limits (threads.kernel_threads)."""
    checks = validation  # the Trainer validates data with these
    reads_host_arrays = True  # its kernels take the checked NumPy arrays as they are

    def __init__(self, config, state, threads=None):
        self.state = state
        self.threads = threads
        numba.get_num_threads()  # loads the threading layer now, so that threadpoolctl can see and limit it
        self.activations = config.activation_codes()
        self.loss = LossSettings.of(config)
        self._norm_sums = np.zeros(NORM_CHUNKS, np.float64)  # apply_update's scratch
        self._decay_mask = decay_masks(state, config)
        # What its kernels use: the entry points are compiled for it alone (variants.py).
        self._uses = uses_of(config, self.activations, self.loss, self._decay_mask, copies_weights())
        # W^T copies in the workspaces: where the BLAS wants them and the variant has their code (the generic
        # variant always has).
        copies = self._uses.copies and copies_weights()
        self._workspaces = WorkspaceCache(lambda n: Workspace(state.dims, self.activations, n, copies))
        # Multiply-adds per batch row of a step's products: what decides the serial path (serial_work()).
        self._macs_per_row = int(sum((state.dims[:-1] + 1) * state.dims[1:]))
        # Batches of up to this many rows make no BLAS call on the serial path: each of their products is
        # small enough for blas.small_gemm's loops (a bound on every product's multiply-adds, bias column
        # included), so they skip the BLAS thread limit's 2 us a call.
        self._blas_free_rows = SMALL_MACS // int(max((state.dims[:-1] + 1) * (state.dims[1:] + 1)))
        self._step_outputs = np.zeros((3, 1), np.float64)  # one step's loss, hits, weight (serial path)
        self._split_workspaces = WorkspaceCache(lambda key: SplitWorkspace(state.dims, self.activations, *key,
                                                                           state.params.size, copies))
        self._hits = None  # (rows, hits) of the last serial-path pass: its hits are not in one workspace
        self._prepared = set()  # (batch rows, entry point) pairs prepare() has compiled or loaded
        self._share_after = 0.0  # time.monotonic() from which split steps may use several threads again
        self._alone_seconds = 0.0  # the last time alone after a retirement (0: none since CLEAN_SECONDS of sharing)
        self._clean_since = None  # time.monotonic() at the first of the shared calls since then, all clean
        self._batch_size = config.batch_size

    memory_name = "memory"

    @staticmethod
    def available_bytes():
        """Memory the workspaces and data may take: MemAvailable, or None where it cannot be told."""
        return available_host_bytes()

    # The state arrays are the ones the kernels use: nothing to copy (see cuda/backend.py).
    def push(self):
        pass

    def pull(self):
        pass

    def release_data(self):
        pass

    @contextlib.contextmanager
    def _kernel_threads(self):
        """Numba's thread count set to the kernels' for the block (it is thread-local in Numba: other threads
        are unaffected), BLAS single-threaded meanwhile; yields the count."""
        threads = kernel_threads(self.threads)
        callers_threads = numba.get_num_threads()
        if threads != callers_threads:
            numba.set_num_threads(threads)
        try:
            with blas_single_threaded(), threading_layer.serialized():
                yield threads
        finally:
            if threads != callers_threads:
                numba.set_num_threads(callers_threads)

    def takes_serial_path(self, n):
        """Whether batches of n rows run on one thread with no parallel region (serial.py): below
        serial_work() multiply-adds per step, or when the kernels get one thread anyway."""
        return n * self._macs_per_row < serial_work() or kernel_threads(self.threads) == 1

    def split_parts(self, mode, n, settings):
        """How many parts a serial-path pass of n rows is split into (serial.py): 1 below SPLIT_WORK
        multiply-adds, on one kernel thread, for passes that do not train, and with clipping or max-norm
        (they need the whole gradient or update); else one per kernel thread, at most one per MIN_PART_ROWS
        rows."""
        if n * self._macs_per_row < SPLIT_WORK or n < 2 * MIN_PART_ROWS or mode != step.STEP \
                or settings.clip_norm > 0 or settings.max_norm > 0:
            return 1
        return max(1, min(kernel_threads(self.threads), n // MIN_PART_ROWS))

    def _serial_for(self, mode, n):
        """Whether a pass of n rows runs serial.run_steps: a training or gradient pass when its own work is
        small (takes_serial_path), a forward or loss pass (predict, evaluate) also whenever this network's
        training steps do, so that a small network compiles that one entry point and never the parallel one
        (a forward pass of EVAL_CHUNK rows of such a network takes milliseconds on one thread)."""
        return self.takes_serial_path(n) or (mode <= step.LOSS and self.takes_serial_path(self._batch_size))

    def _run(self, mode, X, labels, targets, rows, settings=None, dropout_key=0, dropout=NO_DROPOUT, weights=None):
        if self._serial_for(mode, rows.size):
            settings = settings or _UNUSED_SETTINGS
            first_step = settings.step - 1
            key_base = (dropout_key - first_step) % 2 ** 63  # serial.dropout_key gives back dropout_key
            out = self._step_outputs
            self._run_steps(mode, X, labels, targets, weights, rows, rows.size, 1, settings,
                            np.array([settings.lr]), key_base, first_step, dropout, out)
            self._hits = (rows.size, float(out[1, 0]))
            return float(out[0, 0])
        self._hits = None
        s = self.state
        weight_total = sample_weights.batch_total(weights, rows)
        ws = self._workspaces.get(rows.size)
        with self._kernel_threads() as threads:
            # Gradients of narrow networks over long batches: per-thread tiles through all layers (pipeline.py).
            entry, scratch = step.run_for(self._uses), (ws.acts, ws.scratch)
            if mode >= step.GRADIENTS and pipeline.fits(s.dims, rows.size, threads):
                entry, scratch = step.run_pipeline, (ws.weights_t, ws.tiles)
            return entry(mode, X, _EMPTY_LABELS if labels is None else labels,
                         _EMPTY_TARGETS if targets is None else targets,
                         _EMPTY_WEIGHTS if weights is None else weights, weight_total, rows, s.dims, s.offsets,
                         self.activations, self.loss, s.params, s.grads, s.moment1, s.moment2,
                         settings or _UNUSED_SETTINGS, dropout_key, dropout.hidden, dropout.inputs, *scratch,
                         ws.partials,
                         ws.row_loss, ws.row_hits, ws.norm_sums, threads)

    def _run_steps(self, mode, X, labels, targets, weights, order, batch_rows, n_steps, settings, lrs, key_base,
                   first_step, dropout, out, epoch_rows=0, squares=False):
        """serial.run_steps on this backend's state and the workspace for batch_rows rows, its steps split
        into split_parts() parts; out: (3, >= n_steps) float64 for each step's loss, hits and weight, or
        (4, >= n_steps) with squares for the squared weights after each epoch's last step too (epoch_rows > 0:
        see serial.py). Returns the steps applied."""
        s = self.state
        parts = self.split_parts(mode, batch_rows, settings)
        args = (mode, X, _EMPTY_LABELS if labels is None else labels, _EMPTY_TARGETS if targets is None else targets,
                _EMPTY_WEIGHTS if weights is None else weights, order, batch_rows, n_steps, s.dims, s.offsets,
                self.activations, self.loss, s.params, s.grads, s.moment1, s.moment2, settings, lrs, key_base,
                first_step, dropout.hidden, dropout.inputs, self._decay_mask if mode == step.STEP else _NO_DECAY_MASK)
        outputs = (out[0], out[1], out[2], epoch_rows, out[3] if squares else _NO_SQUARES)
        if parts > 1:
            ws = self._split_workspaces.get((batch_rows, parts))
            began = time.monotonic()
            threads = parts if n_steps >= MIN_SHARED_STEPS and began >= self._share_after else 1
            with blas_single_threaded(calling_thread_only=threads == 1):  # each of the threads calls BLAS
                done = split_threads.run_split(self._serial_entry(), threads,
                                               (*args, *ws.parts, *ws.layout, ws.norm_sums, *outputs, ws.part_grads,
                                                ws.part_values, ws.claims), ws.claims, n_steps)
            if ws.claims[serial.RETIRE]:  # a thread waited for a descheduled one: the CPU is busy, work alone
                self._alone_seconds = min(ALONE_SECONDS, 2 * self._alone_seconds or FIRST_ALONE_SECONDS)
                self._share_after = time.monotonic() + self._alone_seconds
                self._clean_since = None
            elif threads > 1:
                if self._clean_since is None:
                    self._clean_since = began
                elif time.monotonic() - self._clean_since >= CLEAN_SECONDS:
                    self._alone_seconds = 0.0
            return done
        ws = self._workspaces.get(batch_rows)
        no_blas = batch_rows <= self._blas_free_rows
        with contextlib.nullcontext() if no_blas else blas_single_threaded(calling_thread_only=True):
            return self._serial_entry()(*args, *ws.one_part, *ws.layout, ws.norm_sums, *outputs, ws.no_part_grads,
                                        ws.part_values, ws.claims)

    def _serial_entry(self):
        """This network's variant of serial.run_steps: compiled with the parts its configuration uses."""
        return serial.run_steps_for(self._uses)

    def _entry_point(self, n):
        """The compiled function that steps of n rows run: a serial.run_steps or a step.run variant."""
        return self._serial_entry() if self.takes_serial_path(n) else step.run_for(self._uses)

    def needs_compiling(self, n):
        """Whether the first step of n rows will compile its entry point: not compiled in this process yet,
        and not in Numba's on-disk cache (its index file is missing; a cache of another version or machine
        is not told apart, and then it compiles after all)."""
        entry = self._entry_point(n)
        if (n, entry) in self._prepared:
            return False
        if entry.signatures:
            return False
        try:
            return not os.path.exists(entry._cache._cache_file._index_path)
        except AttributeError:  # caching off, or another Numba's internals: say nothing
            return False

    def prepare(self, n):
        """Compiles, or loads from the cache, the entry point of steps of n rows, by a call on no rows:
        fit calls it before its first epoch so that compilation is not counted in the epoch's speed."""
        # A later fit's: compiled already (its call costs tens of microseconds). Keyed by the entry point too:
        # a thread limit set since (threadpool_limits) can move n to the other path.
        key = (n, self._entry_point(n))
        if key in self._prepared:
            return
        s, empty_X = self.state, np.zeros((0, int(self.state.dims[0])), np.float32)
        no_rows = np.zeros(0, np.int64)
        self._prepared.add(key)
        if self.takes_serial_path(n):
            self._run_steps(step.STEP, empty_X, None, None, None, no_rows, 0, 0, _UNUSED_SETTINGS, np.zeros(0), 0,
                            0, NO_DROPOUT, np.zeros((3, 0)))
            return
        ws = self._workspaces.get(0)
        with self._kernel_threads() as threads:
            step.run_for(self._uses)(step.FORWARD, empty_X, _EMPTY_LABELS, _EMPTY_TARGETS, _EMPTY_WEIGHTS, 1.0,
                                     no_rows, s.dims, s.offsets, self.activations, self.loss, s.params, s.grads,
                                     s.moment1, s.moment2, _UNUSED_SETTINGS, 0, 0, 0, ws.acts, ws.scratch,
                                     ws.partials, ws.row_loss, ws.row_hits, ws.norm_sums, threads)

    def train_steps(self, X, labels, targets, weights, order, batch_rows, n_steps, settings, lrs, key_base,
                    dropout, out, epoch_rows=0, squares=False):
        """n_steps training steps in one compiled call (serial.run_steps; only where takes_serial_path(batch_rows)):
        step s on rows order[s * batch_rows:(s + 1) * batch_rows] of X (N, d0) float32 with labels (N,) int64 or
        targets (N, d_L) float32 and weights (N,) float64 or None; lrs (n_steps,) float64 each step's learning
        rate; settings: the first step's OptimizerSettings (its step count and the options); key_base: the
        dropout key of step count 0. Fills out (3, >= n_steps) float64 with each step's loss, hits and weight;
        returns the steps applied (fewer than n_steps when a step's loss was not finite: its update is not
        applied). epoch_rows > 0: order holds whole epochs of epoch_rows rows, each cut into batches of
        batch_rows with a shorter last one where they do not divide (serial.py); squares: out (4, >= n_steps)
        also gets the squared weights (sums.squared_weights) after each epoch's last step, in row 3."""
        return self._run_steps(step.STEP, X, labels, targets, weights, order, batch_rows, n_steps, settings, lrs,
                               key_base, settings.step - 1, dropout, out, epoch_rows, squares)

    def train_step(self, X, labels, targets, rows, settings: OptimizerSettings, dropout_key=0, dropout=NO_DROPOUT,
                   weights=None):
        """One step on batch X[rows]; updates params and moments in place (not when the loss is not
        finite). Returns the loss. dropout (dropout.Thresholds) applies dropout with this step's key. weights:
        None, or (N,) float64 sample weights indexed as labels/targets are (the loss is then their
        weighted mean, sample_weights.py)."""
        if self._decay_mask.size and not self.takes_serial_path(rows.size):
            # decay_biases=False: the gradient, then the masked update (its own entry point)
            value = self._run(step.GRADIENTS, X, labels, targets, rows, None, dropout_key, dropout, weights)
            if np.isfinite(value):
                self.apply_update(settings)
            return value
        return self._run(step.STEP, X, labels, targets, rows, settings, dropout_key, dropout, weights)

    def loss_and_gradients(self, X, labels, targets, rows, dropout_key=0, dropout=NO_DROPOUT, weights=None):
        """Fills state.grads for batch X[rows] (with dropout's masks, dropout.Thresholds); returns the loss."""
        return self._run(step.GRADIENTS, X, labels, targets, rows, None, dropout_key, dropout, weights)

    # The gradient's trip through an MPI reduction (distributed.py): on the CPU it already lives on the host.
    def grads_to_host(self):
        """state.grads, holding the last loss_and_gradients call's gradient."""
        return self.state.grads

    def grads_from_host(self):
        pass

    def apply_update(self, settings: OptimizerSettings):
        """Clipping and the optimizer update from state.grads, as train_step would apply them."""
        s = self.state
        with self._kernel_threads() as threads:
            if self._decay_mask.size:
                step.run_update_masked(s.params, s.grads, s.moment1, s.moment2, settings, self._norm_sums,
                                       self._decay_mask, s.dims, s.offsets, threads)
            else:
                step.run_update(s.params, s.grads, s.moment1, s.moment2, settings, self._norm_sums, s.dims,
                                s.offsets, threads)

    def loss_value(self, X, labels, targets, rows, weights=None):
        """The loss of batch X[rows]; its logits stay readable through last_logits()."""
        return self._run(step.LOSS, X, labels, targets, rows, weights=weights)

    def last_hits(self, n):
        """Correct predictions (summed per-row accuracy) of the last loss or step call on n rows."""
        if self._hits is not None and self._hits[0] == n:  # a serial-path pass: as serial.run_steps added them
            return self._hits[1]
        return sum_first(self._workspaces[n].row_hits, n)

    def last_logits(self, n):
        """(n, d_L) view of the logits the last forward or loss call on n rows left in its workspace."""
        ws = self._workspaces[n]
        return ws.acts[ws.logits].reshape(n, self.state.sizes[-1])

    def logits(self, X, rows):
        """(n, d_L) float32 copy of the output layer's pre-activation values for X[rows]."""
        self._run(step.FORWARD, X, None, None, rows)
        return self.last_logits(rows.size).copy()
