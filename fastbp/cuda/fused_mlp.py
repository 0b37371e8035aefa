"""The fully fused path for narrow networks (every width, input and output included, at most MAX_WIDTH),
in the spirit of tiny-cuda-nn's FullyFusedMLP: one kernel takes a tile of batch rows through every layer
forward (BP0: A_{l+1} = act([A_l, 1] @ [W_l; b_l])), the loss and output delta (BP1), and every layer's
delta propagation backward (BP2: delta_l = (delta_{l+1} @ W_l^T) * act'(A_l)).

Each block owns ROWS consecutive batch rows. Their activations, then their deltas, pass from layer to
layer in shared memory: two ROWS x LD float32 buffers used in turn (LD = MAX_WIDTH + 1 leaves room for the
ones column and puts consecutive rows in different banks). Each thread accumulates a TM x TN patch of a
layer's output in registers, reading activations or deltas from shared memory and the weights from
global memory (at most 129 x 128 floats per layer: they stay in L1/L2 across the blocks).

Global memory receives only what other kernels need: the batch's gathered input and hidden activations
(the weight-gradient GEMMs read [A_l, 1], the backward pass rereads A_l for act', or act'(Z) itself where
it is stored), the output delta and
the hidden deltas (weight_grad.py), the per-row losses and hits (reduce.py), or the logits for predict.
Unlike tiny-cuda-nn: float32, biases, any width up to 128, any batch size, and no atomics anywhere
(weight gradients are deterministic split-k products, see weight_grad.py).

Layouts, all row-major float32 unless noted; n batch rows in step order; L layers; dims (L + 1,) int64:
    x (N * dims[0],): the data; rows (n,) int64: the batch's rows of x, labels, targets
    params: state.py's flat buffer; layer l at w_off[l], a (dims[l] + 1, dims[l + 1]) matrix [W_l; b_l]
    weights_t: layer l's W_l^T (dims[l + 1], dims[l]) at w_off[l] (transpose_weights, once per step), so
               that the threads of a warp read consecutive weights in the backward products too
    acts: block l < L at act_off[l]: [A_l, 1] (n, dims[l] + 1); block L: logits or delta_L (n, dims[L])
    deltas: block l (0 < l < L) at delta_off[l]: delta_l (n, dims[l])
    activations (L,) int64: layer l's activation code (the last, identity)
    slopes: layer l's act'(Z) (n, dims[l + 1]) at slope_off[l], for the slope-storing activations
            (device_math.stores_slope; written in training passes), other blocks empty
    row_loss, row_hits (n,) float64; labels (N,) int64 / targets (N * dims[L],), weights, weighted,
    weight_total: as in loss_delta.py
"""
import math

from numba import cuda, float32

from . import device_math as dm
from .gather import input_feature
from .loss_delta import delta_scale, weighted_row_loss_and_delta

MAX_WIDTH = 128
LD = MAX_WIDTH + 1  # shared-memory row stride
MODE_LOSS, MODE_LOGITS, MODE_TRAIN = 0, 1, 2

# ROWS, TM, TN, THREADS. Production: 32 rows per block, 4 x 4 outputs per thread, 128 threads (a 64-wide
# layer is 128 patches: one each); 2 x 32 x 129 floats = 33 KB of shared memory per block.
PRODUCTION_TILES = (32, 4, 4, 128)
# The CUDA simulator runs every thread as a Python thread: 4 rows, 2 x 2 patches, 4 threads.
SIMULATOR_TILES = (4, 2, 2, 4)

_kernels = {}


def fits(dims):
    """Whether a network takes the fused path: every layer width, input and output too, <= MAX_WIDTH."""
    return max(int(d) for d in dims) <= MAX_WIDTH


# Both products loop over TM x TN patches and store raw sums into shared memory; the kernel then applies
# the epilogue element by element in one loop (coalesced global stores, and one copy of the activation
# and dropout code instead of one per accumulator: the first version's compile took 38 s). The
# accumulators are generated as named scalars so that they live in registers (a local array indexed in
# loops would sit in local memory).
_TEMPLATE = """
def forward_product(buf, src, dst, params, w_base, fan_in, fan_out):
    \"\"\"buf[dst] (ROWS, fan_out) = buf[src] (ROWS, fan_in + 1) @ [W; b] (fan_in + 1, fan_out).\"\"\"
    col_blocks = (fan_out + TN - 1) // TN
    for p in range(cuda.threadIdx.x, ROW_BLOCKS * col_blocks, THREADS):
        r0 = (p // col_blocks) * TM
        c0 = (p % col_blocks) * TN
{clamp_out}
{zero}
        for k in range(fan_in + 1):
{load_a}
            w_row = w_base + k * fan_out
{load_w_forward}
{fma}
{store_out}


def backward_product(buf, src, dst, weights_t, w_base, fan_in, fan_out):
    \"\"\"buf[dst] (ROWS, fan_in) = buf[src] (ROWS, fan_out) @ W^T, W^T read as weights_t (fan_out, fan_in).\"\"\"
    col_blocks = (fan_in + TN - 1) // TN
    for p in range(cuda.threadIdx.x, ROW_BLOCKS * col_blocks, THREADS):
        r0 = (p // col_blocks) * TM
        c0 = (p % col_blocks) * TN
{clamp_in}
{zero}
        for k in range(fan_out):
{load_a}
{load_w_backward}
{fma}
{store_in}


def fused(x, rows, n, dims, w_off, n_layers, params, weights_t, acts, act_off, deltas, delta_off, slopes, slope_off,
          labels, targets, weights, weighted, weight_total, loss, huber_delta, label_smoothing, activations, row_loss,
          row_hits, mode, dropout_key, dropout_threshold, input_threshold):
    buf = cuda.shared.array(BUFFER, float32)  # two ROWS x LD tiles
    tid = cuda.threadIdx.x
    row0 = cuda.blockIdx.x * ROWS
    train = mode == MODE_TRAIN
    d0 = dims[0]
    # The block's input tile [X[rows], 1]; rows past the batch's end are zeros.
    for idx in range(tid, ROWS * (d0 + 1), THREADS):
        r = idx // (d0 + 1)
        k = idx - r * (d0 + 1)
        row = row0 + r
        v = float32(0.0)
        if row < n:
            v = float32(1.0) if k == d0 else input_feature(x[rows[row] * d0 + k], dropout_key, row, k,
                                                           input_threshold)
            if train:
                acts[act_off[0] + row * (d0 + 1) + k] = v
        buf[r * LD + k] = v
    cuda.syncthreads()
    src = 0
    for l in range(n_layers):
        dst = ROWS * LD - src
        fan_out = dims[l + 1]
        forward_product(buf, src, dst, params, w_off[l], dims[l], fan_out)
        cuda.syncthreads()
        if l < n_layers - 1:
            # Hidden layer: activation and dropout; [A_(l+1), 1] (and act'(Z) where it is stored) kept for the
            # backward pass when training.
            a_base = act_off[l + 1]
            activation = activations[l]
            keep_slope = train and dm.stores_slope(activation)
            for idx in range(tid, ROWS * (fan_out + 1), THREADS):
                r = idx // (fan_out + 1)
                c = idx - r * (fan_out + 1)
                row = row0 + r
                v = float32(1.0)
                if c < fan_out:
                    z = buf[dst + r * LD + c]
                    if keep_slope and row < n:
                        slopes[slope_off[l] + row * fan_out + c] = dm.slope(z, activation)
                    v = dm.forward_epilogue(z, activation, dropout_key, l, row, c, dropout_threshold)
                    if train and row < n:
                        acts[a_base + row * (fan_out + 1) + c] = v
                buf[dst + r * LD + c] = v
            cuda.syncthreads()
        src = dst
    if mode == MODE_LOGITS:
        m = dims[n_layers]
        out_base = act_off[n_layers]
        for idx in range(tid, ROWS * m, THREADS):
            r = idx // m
            if row0 + r < n:
                acts[out_base + (row0 + r) * m + idx - r * m] = buf[src + r * LD + idx - r * m]
        return
    # BP1, one thread per row: loss, hits and (training) the output delta over the logits.
    m = dims[n_layers]
    scale = delta_scale(loss, weight_total, m)
    out_base = act_off[n_layers]
    for r in range(tid, ROWS, THREADS):
        row = row0 + r
        if row < n:
            row_loss[row], row_hits[row] = weighted_row_loss_and_delta(buf, src + r * LD, m, labels, targets,
                                                                       weights, weighted, rows[row], loss,
                                                                       huber_delta, label_smoothing, scale, train)
            if train:
                for j in range(m):
                    acts[out_base + row * m + j] = buf[src + r * LD + j]
        else:
            for j in range(m):
                buf[src + r * LD + j] = float32(0.0)
    if not train:
        return
    cuda.syncthreads()
    for l in range(n_layers - 1, 0, -1):
        dst = ROWS * LD - src
        fan_in = dims[l]
        backward_product(buf, src, dst, weights_t, w_off[l], fan_in, dims[l + 1])
        cuda.syncthreads()
        # delta_l = (delta_(l+1) @ W_l^T) * act'(A_l), undoing A_l's dropout (drawn by layer l - 1) first.
        activation = activations[l - 1]
        with_slope = dm.stores_slope(activation)
        a_base = act_off[l]
        s_base = slope_off[l - 1]
        d_base = delta_off[l]
        for idx in range(tid, ROWS * fan_in, THREADS):
            r = idx // fan_in
            c = idx - r * fan_in
            row = row0 + r
            v = float32(0.0)  # past the batch's end: zeros, so nothing non-finite enters later products
            if row < n:
                stored = slopes[s_base + row * fan_in + c] if with_slope else acts[a_base + row * (fan_in + 1) + c]
                v = dm.backward_epilogue(buf[dst + r * LD + c], stored, activation, dropout_key, l - 1, row, c,
                                         dropout_threshold)
                deltas[d_base + row * fan_in + c] = v
            buf[dst + r * LD + c] = v
        cuda.syncthreads()
        src = dst
"""


def make_fused(rows, tm, tn, threads):
    """The fused kernel for one tile configuration (generated and compiled once per configuration)."""
    key = (rows, tm, tn, threads)
    if key in _kernels:
        return _kernels[key]
    ij = [(i, j) for i in range(tm) for j in range(tn)]

    def stores(width):  # the raw sums of the patch's columns inside the product's width
        return "\n".join(f"        if c0 + {j} < {width}:\n"
                         f"            buf[dst + (r0 + {i}) * LD + c0 + {j}] = acc_{i}_{j}" for i, j in ij)
    src = _TEMPLATE.format(
        clamp_out="\n".join(f"        cl_{j} = min(c0 + {j}, fan_out - 1)" for j in range(tn)),
        clamp_in="\n".join(f"        cl_{j} = min(c0 + {j}, fan_in - 1)" for j in range(tn)),
        zero="\n".join(f"        acc_{i}_{j} = float32(0.0)" for i, j in ij),
        load_a="\n".join(f"            a_{i} = buf[src + (r0 + {i}) * LD + k]" for i in range(tm)),
        load_w_forward="\n".join(f"            b_{j} = params[w_row + cl_{j}]" for j in range(tn)),
        load_w_backward="\n".join(f"            b_{j} = weights_t[w_base + k * fan_in + cl_{j}]" for j in range(tn)),
        fma="\n".join(f"            acc_{i}_{j} += a_{i} * b_{j}" for i, j in ij),
        store_out=stores("fan_out"), store_in=stores("fan_in"))
    namespace = {"cuda": cuda, "float32": float32, "dm": dm, "delta_scale": delta_scale,
                 "input_feature": input_feature,
                 "weighted_row_loss_and_delta": weighted_row_loss_and_delta, "ROWS": rows, "LD": LD,
                 "BUFFER": 2 * rows * LD, "TM": tm, "TN": tn, "THREADS": threads, "ROW_BLOCKS": rows // tm,
                 "MODE_TRAIN": MODE_TRAIN, "MODE_LOGITS": MODE_LOGITS}
    exec(compile(src, f"<fastbp.cuda.fused_mlp {key}>", "exec"), namespace)
    for name in ("forward_product", "backward_product"):
        namespace[name] = cuda.jit(device=True, inline=True)(namespace[name])
    _kernels[key] = cuda.jit(namespace["fused"])
    return _kernels[key]


@cuda.jit
def transpose_weights(params, w_off, dims, n_layers, weights_t):
    """weights_t <- each hidden-to-next layer's W^T (layers 1 .. L - 1: the ones a delta goes back through);
    one thread per weight, grid-stride."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for l in range(1, n_layers):
        fan_in, fan_out, base = dims[l], dims[l + 1], w_off[l]
        for idx in range(start, fan_in * fan_out, stride):
            i = idx // fan_out
            j = idx - i * fan_out
            weights_t[base + j * fan_in + i] = params[base + idx]


def launch(tiles, x, rows, n, *args):
    """Runs the fused kernel over the n batch rows; args: fused()'s parameters after n."""
    block_rows, _, _, threads = tiles
    make_fused(*tiles)[math.ceil(n / block_rows), threads](x, rows, n, *args)
