"""The CUDA backend: the CPU backend's interface and memory layouts, with every buffer on the GPU.

Parameters, gradients and moments live on the device as flat float32 arrays (state.py's layout); the
host copies in NetworkState are refreshed only when the Trainer asks (pull) and sent back after it
changes them (push).

Two paths, chosen by the network's shape (fused_mlp.fits):
- narrow networks (every width <= 128): a transposed copy of the weights (so that the backward products
  read them coalesced), one fused kernel for forward, loss and delta propagation of all layers
  (fused_mlp.py), then one weight-gradient product per layer (weight_grad.py);
- any other widths: the batch gather, one GEMM per layer forward (bias through the ones column,
  activation and dropout in the epilogue), the fused loss, then per layer the weight-gradient product
  and the delta-propagation GEMM (act' in the epilogue, written over the activations).
Both end with one deterministic sum of the per-row losses, the norm for clipping when asked, and one
optimizer pass that itself skips the update when the loss is not finite, so the step runs without a
host round trip; its one transfer back is the loss scalar. Data given as NumPy is copied to the device
once per array (fit passes the same arrays every step), GPU data is used in place (device_data.py), and
an epoch's shuffled row order is uploaded once per epoch.
"""
import math

import numba
import numpy as np
from numba import cuda

from .. import sample_weights
from ..options import ACTIVATIONS, LOSSES, SLOPE_ACTIVATIONS
from ..workspaces import WorkspaceCache, available_host_bytes
from . import device_data, fused_mlp, gemm, reduce
from .fused_mlp import MODE_LOGITS, MODE_LOSS, MODE_TRAIN
from .gather import gather_input
from .loss_delta import clear_weightless_rows, loss_and_delta
from ..cpu.dropout import NO_DROPOUT
from .optimizers import apply_max_norm, optimizer_update, scalars
from .weight_grad import WeightGradient

TRANS, NO_TRANS = 1, 0
SLOPE_CODES = tuple(ACTIVATIONS[a] for a in SLOPE_ACTIVATIONS)


def _simulated():
    return bool(numba.config.ENABLE_CUDASIM)


def _offsets(sizes):
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


class Workspace:
    """Device scratch for batches of n rows: activations with ones columns (the general path writes the
    deltas over them), the fused path's hidden deltas, the slope blocks of slope-storing activations,
    weight-gradient partial products, per-row losses and hits, the loss sums and the squared gradient norm."""

    def __init__(self, dims, activations, n, fused, partial_floats):
        dims = [int(d) for d in dims]
        # layer l's act'(Z) (n, dims[l + 1]) at slope_off[l], for the hidden layers whose activation stores it
        self.slope_off = _offsets([n * dims[l + 1] if l < len(dims) - 2 and activations[l] in SLOPE_CODES else 0
                                   for l in range(len(dims) - 1)])
        self.slopes = cuda.device_array(max(1, int(self.slope_off[-1])), np.float32)
        self.d_slope_off = cuda.to_device(self.slope_off)
        self.act_off = _offsets([n * (d + 1) for d in dims[:-1]] + [n * dims[-1]])
        host = np.zeros(int(self.act_off[-1]), np.float32)
        for l in range(len(dims) - 1):
            host[self.act_off[l]:self.act_off[l + 1]].reshape(n, dims[l] + 1)[:, -1] = 1.0
        self.acts = cuda.to_device(host)
        self.d_act_off = cuda.to_device(self.act_off)
        # delta_l for the hidden layers 0 < l < L, at delta_off[l] (blocks 0 and L are empty).
        self.delta_off = _offsets([0] + [n * d if fused else 0 for d in dims[1:-1]] + [0])
        self.deltas = cuda.device_array(max(1, int(self.delta_off[-1])), np.float32)
        self.d_delta_off = cuda.to_device(self.delta_off)
        self.partials = cuda.device_array(max(1, partial_floats), np.float32)
        self.row_loss = cuda.device_array(n, np.float64)
        self.row_hits = cuda.device_array(n, np.float64)
        self.sums = cuda.device_array(2, np.float64)
        self.norm = cuda.to_device(np.zeros(2, np.float64))
        self.hits = 0.0
        self.weight_total = float(n)  # what the last loss pass divided by (sample_weights.batch_total)

    def block(self, l):
        return self.acts[self.act_off[l]:self.act_off[l + 1]]

    def delta_block(self, l):
        return self.deltas[self.delta_off[l]:self.delta_off[l + 1]]

    def slope_block(self, l):
        """Layer l's stored act'(Z), or None where its activation does not store one."""
        if self.slope_off[l + 1] == self.slope_off[l]:
            return None
        return self.slopes[self.slope_off[l]:self.slope_off[l + 1]]


class CudaBackend:
    """fused: None chooses by the network's widths; True or False forces a path (tests, benchmarks)."""

    checks = device_data  # the Trainer validates data with these: NumPy or GPU arrays
    reads_host_arrays = False  # a step's data goes through sources.py, which copies it to the device

    def __init__(self, config, state, fused=None):
        self.state = state
        self.activations = config.activation_codes()
        self._d_activations = cuda.to_device(self.activations)
        self.loss = LOSSES[config.loss]
        self._loss_options = (float(config.huber_delta), float(config.label_smoothing))
        self._decay_biases = bool(config.decay_biases)
        self.fused = fused_mlp.fits(state.dims) if fused is None else bool(fused)
        if self.fused and not fused_mlp.fits(state.dims):
            raise ValueError(f"the fused path takes widths up to {fused_mlp.MAX_WIDTH}, not {list(state.dims)}")
        simulated = _simulated()
        self.tiles = gemm.SIMULATOR_TILES if simulated else gemm.PRODUCTION_TILES
        self.fused_tiles = fused_mlp.SIMULATOR_TILES if simulated else fused_mlp.PRODUCTION_TILES
        self.threads = 8 if simulated else 256
        multiprocessors = 2 if simulated else cuda.get_current_device().MULTIPROCESSOR_COUNT
        self._weight_grad = WeightGradient(self.tiles, target_blocks=4 * multiprocessors,
                                           min_chunk=self.tiles[2] if simulated else 512, threads=self.threads)
        self._sums = reduce.make_sums(self.threads)
        self._workspaces = WorkspaceCache(lambda n: Workspace(
            state.dims, self.activations, n, self.fused, self._weight_grad.partial_size(state.dims, n)))
        self._d_dims = cuda.to_device(np.asarray(state.dims, np.int64))
        self._d_w_off = cuda.to_device(np.asarray(state.offsets, np.int64))
        self._weights_t = cuda.device_array(state.params.size if self.fused else 1, np.float32)
        self._data = {}
        self._order = None  # (host row order of the epoch, its device copy)
        self._empty_labels = cuda.to_device(np.zeros(1, np.int64))
        self._empty_targets = cuda.to_device(np.zeros(1, np.float32))
        self._empty_weights = cuda.to_device(np.zeros(1, np.float64))
        self._update_scratch = None  # apply_update's (norm, loss sums) device pair, made on first use
        self.push()

    memory_name = "GPU memory"

    def available_bytes(self):
        """The GPU's free memory (the host's under the simulator): what workspaces and data may take."""
        if _simulated():
            return available_host_bytes()
        return cuda.current_context().get_memory_info().free

    # ---- host <-> device state ----

    def push(self):
        """Host NetworkState arrays -> device (after the Trainer changed them)."""
        s = self.state
        self.params, self.grads = cuda.to_device(s.params), cuda.to_device(s.grads)
        self.moment1, self.moment2 = cuda.to_device(s.moment1), cuda.to_device(s.moment2)

    def pull(self):
        """Device -> host NetworkState arrays (before the Trainer reads them)."""
        s = self.state
        self.params.copy_to_host(s.params)
        self.grads.copy_to_host(s.grads)
        self.moment1.copy_to_host(s.moment1)
        self.moment2.copy_to_host(s.moment2)

    # ---- data ----

    @staticmethod
    def _flat(arr):
        return arr.reshape(arr.size) if device_data.is_device_array(arr) else cuda.to_device(arr.reshape(-1))

    def _device_data(self, X, labels, targets, weights):
        """Flat device views of the data: GPU arrays as they are, NumPy arrays copied once per array during
        one Trainer call (fit passes the same training and validation arrays every step). weights: None or
        host float64 sample weights (their batch totals are taken on the host)."""
        key = (id(X), id(labels), id(targets), id(weights))
        if key not in self._data:
            if len(self._data) >= 2:  # training and validation data
                self._data.pop(next(iter(self._data)))
            self._data[key] = ((X, labels, targets, weights),  # the arrays themselves, so that their ids stay unique
                               self._flat(X),
                               self._empty_labels if labels is None else self._flat(labels),
                               self._empty_targets if targets is None else self._flat(targets),
                               self._empty_weights if weights is None else cuda.to_device(weights))
        return self._data[key][1:]

    def _device_rows(self, rows):
        """The batch's row indices on the device. fit's batches are slices of the epoch's shuffled order:
        that order is uploaded once and sliced on the device."""
        order = rows.base
        if not (isinstance(order, np.ndarray) and order.dtype == np.int64 and order.ndim == 1
                and order.flags.c_contiguous and rows.flags.c_contiguous):
            return cuda.to_device(rows)
        if self._order is None or self._order[0] is not order:
            self._order = (order, cuda.to_device(order))
        start = (rows.__array_interface__["data"][0] - order.__array_interface__["data"][0]) // rows.itemsize
        return self._order[1][start:start + rows.size]

    def release_data(self):
        """Ends the data cache: the user may change their arrays in place between calls."""
        self._data.clear()
        self._order = None

    def _blocks(self, size):
        return max(1, math.ceil(size / self.threads))

    # ---- the passes ----

    def _forward(self, X, labels, targets, rows, mode, dropout_key=0, dropout=NO_DROPOUT, weights=None):
        """Forward pass of the batch X[rows]; unless mode is MODE_LOGITS, the per-row (weighted) losses
        summed into ws.sums; in MODE_TRAIN also the output delta (and on the fused path every hidden delta)."""
        s = self.state
        dims, off = s.dims, s.offsets
        n = rows.size
        n_layers = len(dims) - 1
        ws = self._workspaces.get(n)
        ws.weight_total = sample_weights.batch_total(weights, rows)
        d_X, d_labels, d_targets, d_weights = self._device_data(X, labels, targets, weights)
        weighting = (d_weights, weights is not None, ws.weight_total)
        d_rows = self._device_rows(rows)
        if self.fused:
            if mode == MODE_TRAIN:
                fused_mlp.transpose_weights[min(self._blocks(self.params.size), 1024), self.threads](
                    self.params, self._d_w_off, self._d_dims, n_layers, self._weights_t)
            fused_mlp.launch(self.fused_tiles, d_X, d_rows, n, self._d_dims, self._d_w_off, n_layers, self.params,
                             self._weights_t, ws.acts, ws.d_act_off, ws.deltas, ws.d_delta_off, ws.slopes,
                             ws.d_slope_off, d_labels, d_targets, *weighting, self.loss, *self._loss_options,
                             self._d_activations,
                             ws.row_loss, ws.row_hits, mode, dropout_key,
                             dropout.hidden, dropout.inputs)
        else:
            width0 = int(dims[0])
            gather_input[self._blocks(n * (width0 + 1)), self.threads](d_X, width0, d_rows, ws.block(0), dropout_key,
                                                                       dropout.inputs)
            for l in range(n_layers):
                fan_in, fan_out = int(dims[l]), int(dims[l + 1])
                hidden = l < n_layers - 1
                gemm.launch(self.tiles, NO_TRANS, NO_TRANS, n, fan_out, fan_in + 1, ws.block(l), fan_in + 1,
                            self.params[off[l]:off[l + 1]], fan_out, ws.block(l + 1),
                            fan_out + 1 if hidden else fan_out,
                            epilogue=gemm.EPI_ACTIVATE if hidden else gemm.EPI_NONE,
                            activation=int(self.activations[l]), aux=ws.slope_block(l), ld_aux=fan_out,
                            layer=l, dropout_key=dropout_key, dropout_threshold=dropout.hidden if hidden else 0)
            if mode != MODE_LOGITS:
                loss_and_delta[self._blocks(n), self.threads](ws.block(n_layers), n, int(dims[-1]), d_labels,
                                                              d_targets, *weighting, d_rows, self.loss,
                                                              *self._loss_options, ws.row_loss, ws.row_hits,
                                                              mode == MODE_TRAIN)
        if mode == MODE_TRAIN and weights is not None:
            clear_weightless_rows[self._blocks(n), self.threads](ws.acts, ws.d_act_off, ws.deltas, ws.d_delta_off,
                                                                 ws.slopes, ws.d_slope_off, self._d_dims, n_layers,
                                                                 n, d_weights, d_rows)
        if mode != MODE_LOGITS:
            self._sums[1, self.threads](ws.row_loss, ws.row_hits, ws.sums, False)
        return ws

    def _loss_value(self, ws):
        """The batch's (weighted) mean loss: the step's one device-to-host transfer."""
        total_loss, hits = ws.sums.copy_to_host()
        ws.hits = float(hits)
        m = int(self.state.dims[-1])
        total = ws.weight_total
        return total_loss / total if self.loss == LOSSES["cross_entropy"] else total_loss / (total * m)

    def _backward(self, ws, n, dropout_key, dropout):
        """Every layer's [dW; db] into self.grads (and, on the general path, the hidden deltas)."""
        s = self.state
        dims, off = s.dims, s.offsets
        n_layers = len(dims) - 1
        for l in range(n_layers - 1, -1, -1):
            fan_in, fan_out = int(dims[l]), int(dims[l + 1])
            output = l == n_layers - 1
            a_prev = ws.block(l)
            if self.fused:  # the fused kernel left the hidden deltas in their own buffers
                delta, ld_delta = (ws.block(l + 1) if output else ws.delta_block(l + 1)), fan_out
            else:  # deltas are written over the activations, ones column included
                delta, ld_delta = ws.block(l + 1), (fan_out if output else fan_out + 1)
            # BP3 + BP4: [A_prev, 1]^T @ delta.
            self._weight_grad(n, fan_in, fan_out, a_prev, delta, ld_delta, self.grads[off[l]:off[l + 1]],
                              ws.partials)
            if l > 0 and not self.fused:
                # BP2: (delta @ W^T) * act'(Z_prev) (from A_prev, or its stored slopes), written over A_prev.
                slopes = ws.slope_block(l - 1)
                gemm.launch(self.tiles, NO_TRANS, TRANS, n, fan_in, fan_out, delta, ld_delta,
                            self.params[off[l]:off[l + 1]], fan_out, a_prev, fan_in + 1,
                            epilogue=gemm.EPI_DERIVATIVE, activation=int(self.activations[l - 1]),
                            aux=a_prev if slopes is None else slopes,
                            ld_aux=fan_in + 1 if slopes is None else fan_in, layer=l - 1,
                            dropout_key=dropout_key, dropout_threshold=dropout.hidden)

    # ---- the CpuBackend interface ----

    def _update(self, settings, norm, loss_sums):
        """Clipping and the optimizer pass; the kernel skips the update when loss_sums[0] is not finite."""
        if settings.clip_norm > 0:
            self._sums[1, self.threads](self.grads, self.grads[:0], norm, True)
        blocks = min(self._blocks(self.params.size), 1024)
        optimizer_update[blocks, self.threads](self.params, self.grads, self.moment1, self.moment2,
                                               *scalars(settings), norm, loss_sums, self._decay_biases, self._d_dims,
                                               self._d_w_off)
        if settings.max_norm > 0:  # then every layer's columns held to the norm (one thread per unit)
            dims, off = self.state.dims, self.state.offsets
            for l in range(len(dims) - 1):
                fan_in, fan_out = int(dims[l]), int(dims[l + 1])
                apply_max_norm[self._blocks(fan_out), self.threads](self.params, int(off[l]), fan_in, fan_out,
                                                                    float(settings.max_norm), loss_sums)

    def train_step(self, X, labels, targets, rows, settings, dropout_key=0, dropout=NO_DROPOUT, weights=None):
        ws = self._forward(X, labels, targets, rows, MODE_TRAIN, dropout_key, dropout, weights)
        self._backward(ws, rows.size, dropout_key, dropout)
        self._update(settings, ws.norm, ws.sums)
        return self._loss_value(ws)

    # The gradient's trip through an MPI reduction (distributed.py), through host memory: one copy each way.
    def grads_to_host(self):
        """state.grads, holding the last loss_and_gradients call's gradient (copied from the device)."""
        self.grads.copy_to_host(self.state.grads)
        return self.state.grads

    def grads_from_host(self):
        """The device gradient <- state.grads (after the reduction changed it)."""
        self.grads.copy_to_device(self.state.grads)

    def apply_update(self, settings):
        """Clipping and the optimizer update from the device gradient (the caller checked the loss)."""
        if self._update_scratch is None:
            self._update_scratch = cuda.to_device(np.zeros(2, np.float64)), cuda.to_device(np.zeros(2, np.float64))
        norm, finite_loss = self._update_scratch
        self._update(settings, norm, finite_loss)

    def loss_and_gradients(self, X, labels, targets, rows, dropout_key=0, dropout=NO_DROPOUT, weights=None):
        ws = self._forward(X, labels, targets, rows, MODE_TRAIN, dropout_key, dropout, weights)
        self._backward(ws, rows.size, dropout_key, dropout)
        return self._loss_value(ws)

    def loss_value(self, X, labels, targets, rows, weights=None):
        return self._loss_value(self._forward(X, labels, targets, rows, MODE_LOSS, weights=weights))

    def last_hits(self, n):
        return self._workspaces[n].hits

    def last_logits(self, n):
        ws = self._workspaces[n]
        return ws.block(len(self.state.dims) - 1).copy_to_host().reshape(n, self.state.sizes[-1])

    def logits(self, X, rows):
        self._forward(X, None, None, rows, MODE_LOGITS)
        return self.last_logits(rows.size)
