"""The network's state: parameters, gradients and optimizer moments, each one flat float32 buffer.

Layout of every flat buffer, layer after layer (fan_in = sizes[l], fan_out = sizes[l+1]):

    [ W_0 (fan_in, fan_out) row-major | b_0 (fan_out) | W_1 ... | b_1 | ... ]

so layer l's W and b together form one row-major (fan_in + 1, fan_out) matrix whose last row is the
bias. The kernels use that: with a column of ones appended to the layer's input, the bias add is part
of the matrix product, and dW and db come out of one product too. The optimizer update, a
checkpoint or an allreduce each touch one array.
"""
import numpy as np

from .options import LEAKY_SLOPE

# Activations that pass about half of their input's variance, as ReLU does: He initialization suits them.
RELU_LIKE = ("relu", "elu", "softplus", "gelu", "gelu_tanh", "silu")


def layer_offsets(sizes):
    """Start of each layer's (fan_in + 1, fan_out) block in the flat buffer, plus the total length."""
    offsets = [0]
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        offsets.append(offsets[-1] + (fan_in + 1) * fan_out)
    return np.array(offsets, dtype=np.int64)


class NetworkState:
    """Flat buffers plus per-layer views into them.

    params, grads, moment1, moment2: float32 (n_params,). moment1/moment2 hold Adam's m and v, or SGD's
    momentum buffer in moment1. step_count: optimizer steps taken so far (Adam's bias correction).
    """

    def __init__(self, sizes):
        self.sizes = tuple(int(s) for s in sizes)
        self.dims = np.array(self.sizes, dtype=np.int64)
        self.offsets = layer_offsets(self.sizes)
        n_params = int(self.offsets[-1])
        self.params = np.zeros(n_params, np.float32)
        self.grads = np.zeros(n_params, np.float32)
        self.moment1 = np.zeros(n_params, np.float32)
        self.moment2 = np.zeros(n_params, np.float32)
        self.step_count = 0

    @property
    def n_layers(self):
        return len(self.sizes) - 1

    def _block(self, flat, l):
        """Layer l's (fan_in + 1, fan_out) view of a flat buffer: rows [:fan_in] are W, row [fan_in] is b."""
        fan_in, fan_out = self.sizes[l], self.sizes[l + 1]
        return flat[self.offsets[l]:self.offsets[l + 1]].reshape(fan_in + 1, fan_out)

    def layer_views(self, flat):
        """[(W, b), ...] views (not copies) into a flat buffer."""
        views = []
        for l in range(self.n_layers):
            block = self._block(flat, l)
            views.append((block[:-1], block[-1]))
        return views

    def initialize(self, hidden_activations, rng):
        """He-uniform for layers followed by a ReLU-like activation (relu, elu, softplus, gelu, gelu_tanh, silu;
        leaky_relu with its slope's gain), Glorot-uniform otherwise; zero biases. hidden_activations: one
        name per hidden layer.

        Draws in float64 from a PCG64 generator, then rounds, so a seed gives the same network everywhere.
        """
        for l, (W, b) in enumerate(self.layer_views(self.params)):
            fan_in, fan_out = W.shape
            activation = hidden_activations[l] if l < self.n_layers - 1 else "identity"
            if activation in RELU_LIKE:
                limit = np.sqrt(6.0 / fan_in)
            elif activation == "leaky_relu":
                limit = np.sqrt(6.0 / ((1 + LEAKY_SLOPE ** 2) * fan_in))
            else:
                limit = np.sqrt(6.0 / (fan_in + fan_out))
            W[...] = rng.uniform(-limit, limit, size=W.shape)
            b[...] = 0.0
        self.reset_optimizer()

    def reset_optimizer(self):
        self.moment1[:] = 0.0
        self.moment2[:] = 0.0
        self.step_count = 0
