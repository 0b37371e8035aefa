"""The CUDA backend: the CPU backend's interface and memory layouts, with every buffer on the GPU.

Parameters, gradients and moments live on the device as flat float32 arrays (state.py's layout); the
host copies in NetworkState are refreshed only when the Trainer asks (pull) and sent back after it
changes them (push). A training step launches a fixed set of kernels: the batch gather, one GEMM per
layer forward (bias through the ones column, activation and dropout in the epilogue), the fused loss,
one deterministic sum, then per layer the weight-gradient GEMM and the delta-propagation GEMM (act' in
the epilogue, written over the activations), the norm for clipping and one optimizer pass. The only
transfers per step are the batch's row indices in and the loss scalar out; data given as NumPy is
copied to the device once per array (fit passes the same array every step).
"""
import math

import numba
import numpy as np
from numba import cuda

from ..options import ACTIVATIONS, LOSSES
from ..workspaces import WorkspaceCache
from . import gemm, reduce
from .gather import gather_input
from .loss_delta import loss_and_delta
from .optimizers import optimizer_update, scalars

TRANS, NO_TRANS = 1, 0


def _simulated():
    return bool(numba.config.ENABLE_CUDASIM)


class Workspace:
    """Device scratch for batches of n rows: activations with ones columns (overwritten by the deltas in
    the backward pass), per-row losses and hits, the two sums."""

    def __init__(self, dims, n):
        sizes = [n * (int(d) + 1) for d in dims[:-1]] + [n * int(dims[-1])]
        self.act_off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        host = np.zeros(int(self.act_off[-1]), np.float32)
        for l in range(len(dims) - 1):
            host[self.act_off[l]:self.act_off[l + 1]].reshape(n, int(dims[l]) + 1)[:, -1] = 1.0
        self.acts = cuda.to_device(host)
        self.row_loss = cuda.device_array(n, np.float64)
        self.row_hits = cuda.device_array(n, np.float64)
        self.sums = cuda.device_array(2, np.float64)
        self.norm = cuda.device_array(2, np.float64)
        self.hits = 0.0

    def block(self, l):
        return self.acts[self.act_off[l]:self.act_off[l + 1]]


class CudaBackend:
    def __init__(self, config, state):
        self.state = state
        self.activation = ACTIVATIONS[config.activation]
        self.loss = LOSSES[config.loss]
        self.tiles = gemm.SIMULATOR_TILES if _simulated() else gemm.PRODUCTION_TILES
        self.threads = 8 if _simulated() else 256
        self._sums = reduce.make_sums(self.threads)
        self._workspaces = WorkspaceCache(lambda n: Workspace(state.dims, n))
        self._data = {}
        self._empty_labels = cuda.to_device(np.zeros(1, np.int64))
        self._empty_targets = cuda.to_device(np.zeros(1, np.float32))
        self.push()

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

    def _device_data(self, X, labels, targets):
        """Device copies of the data, made once per array during one Trainer call (fit passes the same
        training and validation arrays every step); release_data() forgets them."""
        key = (id(X), id(labels), id(targets))
        if key not in self._data:
            if len(self._data) >= 2:  # training and validation data
                self._data.pop(next(iter(self._data)))
            self._data[key] = ((X, labels, targets),  # the host arrays, so that their ids stay unique
                               cuda.to_device(X.reshape(-1)),
                               self._empty_labels if labels is None else cuda.to_device(labels),
                               self._empty_targets if targets is None else cuda.to_device(targets.reshape(-1)))
        return self._data[key][1:]

    def release_data(self):
        """Ends the data cache: the user may change their arrays in place between calls."""
        self._data.clear()

    def _blocks(self, size):
        return max(1, math.ceil(size / self.threads))

    # ---- the passes ----

    def _forward(self, X, labels, targets, rows, dropout_key, dropout_threshold):
        s = self.state
        dims, off = s.dims, s.offsets
        n = rows.size
        ws = self._workspaces.get(n)
        d_X, d_labels, d_targets = self._device_data(X, labels, targets)
        d_rows = cuda.to_device(rows)
        width0 = int(dims[0])
        gather_input[self._blocks(n * (width0 + 1)), self.threads](d_X, width0, d_rows, ws.block(0))
        n_layers = len(dims) - 1
        for l in range(n_layers):
            fan_in, fan_out = int(dims[l]), int(dims[l + 1])
            hidden = l < n_layers - 1
            gemm.launch(self.tiles, NO_TRANS, NO_TRANS, n, fan_out, fan_in + 1, ws.block(l), fan_in + 1,
                        self.params[off[l]:off[l + 1]], fan_out, ws.block(l + 1),
                        fan_out + 1 if hidden else fan_out,
                        epilogue=gemm.EPI_ACTIVATE if hidden else gemm.EPI_NONE, activation=self.activation,
                        layer=l, dropout_key=dropout_key, dropout_threshold=dropout_threshold if hidden else 0)
        return ws, d_labels, d_targets, d_rows

    def _loss(self, ws, n, d_labels, d_targets, d_rows, want_delta):
        m = int(self.state.dims[-1])
        loss_and_delta[self._blocks(n), self.threads](ws.block(len(self.state.dims) - 1), n, m, d_labels,
                                                      d_targets, d_rows, self.loss, ws.row_loss, ws.row_hits,
                                                      want_delta)
        self._sums[1, self.threads](ws.row_loss, ws.row_hits, ws.sums, False)
        total_loss, hits = ws.sums.copy_to_host()
        ws.hits = float(hits)
        return total_loss / n if self.loss == LOSSES["cross_entropy"] else total_loss / (n * m)

    def _backward(self, ws, n, dropout_key, dropout_threshold):
        s = self.state
        dims, off = s.dims, s.offsets
        n_layers = len(dims) - 1
        for l in range(n_layers - 1, -1, -1):
            fan_in, fan_out = int(dims[l]), int(dims[l + 1])
            ld_delta = fan_out if l == n_layers - 1 else fan_out + 1
            delta, a_prev = ws.block(l + 1), ws.block(l)
            # BP3 + BP4: [A_prev, 1]^T @ delta, one thread per gradient element, summed over the batch.
            gemm.launch(self.tiles, TRANS, NO_TRANS, fan_in + 1, fan_out, n, a_prev, fan_in + 1, delta, ld_delta,
                        self.grads[off[l]:off[l + 1]], fan_out)
            if l > 0:
                # BP2: (delta @ W^T) * act'(A_prev), written over A_prev.
                gemm.launch(self.tiles, NO_TRANS, TRANS, n, fan_in, fan_out, delta, ld_delta,
                            self.params[off[l]:off[l + 1]], fan_out, a_prev, fan_in + 1,
                            epilogue=gemm.EPI_DERIVATIVE, activation=self.activation, aux=a_prev,
                            ld_aux=fan_in + 1, layer=l - 1, dropout_key=dropout_key,
                            dropout_threshold=dropout_threshold)

    # ---- the CpuBackend interface ----

    def train_step(self, X, labels, targets, rows, settings, dropout_key=0, dropout_threshold=0):
        ws, d_labels, d_targets, d_rows = self._forward(X, labels, targets, rows, dropout_key, dropout_threshold)
        value = self._loss(ws, rows.size, d_labels, d_targets, d_rows, True)
        if not np.isfinite(value):
            return value  # no update: the parameters keep their last finite values
        self._backward(ws, rows.size, dropout_key, dropout_threshold)
        if settings.clip_norm > 0:
            self._sums[1, self.threads](self.grads, self.grads[:0], ws.norm, True)
        blocks = min(self._blocks(self.params.size), 1024)
        optimizer_update[blocks, self.threads](self.params, self.grads, self.moment1, self.moment2,
                                               *scalars(settings), ws.norm)
        return value

    def loss_and_gradients(self, X, labels, targets, rows, dropout_key=0, dropout_threshold=0):
        ws, d_labels, d_targets, d_rows = self._forward(X, labels, targets, rows, dropout_key, dropout_threshold)
        value = self._loss(ws, rows.size, d_labels, d_targets, d_rows, True)
        self._backward(ws, rows.size, dropout_key, dropout_threshold)
        return value

    def loss_value(self, X, labels, targets, rows):
        ws, d_labels, d_targets, d_rows = self._forward(X, labels, targets, rows, 0, 0)
        return self._loss(ws, rows.size, d_labels, d_targets, d_rows, False)

    def last_hits(self, n):
        return self._workspaces[n].hits

    def last_logits(self, n):
        ws = self._workspaces[n]
        return ws.block(len(self.state.dims) - 1).copy_to_host().reshape(n, self.state.sizes[-1])

    def logits(self, X, rows):
        self._forward(X, None, None, rows, 0, 0)
        return self.last_logits(rows.size)
