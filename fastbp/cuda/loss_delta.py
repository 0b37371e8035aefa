"""Kernel 2 on the GPU (BP1): loss and output delta fused, one thread per row; the CPU kernel's math
(cpu/loss_delta.py). The delta overwrites the logits; row_loss and row_hits are summed afterwards by
reduce.py in a fixed order. row_loss_and_delta is the per-row math, also called by the fused narrow
path (fused_mlp.py) on logits held in shared memory.

Shapes: logits (n * m,) float32 row-major; labels (N,) int64 or targets (N * m,) float32 row-major;
weights (N,) float64 sample weights, read when weighted (else a placeholder); weight_total: their sum over
the batch, or n (sample_weights.batch_total); rows (n,) int64; row_loss (n,) float64: each row's loss
times its weight; row_hits (n,) float64; loss the loss code, with huber_delta (loss "huber") and
label_smoothing (loss "cross_entropy"): options.LossSettings as scalars.
"""
import math

from numba import cuda, float32, float64

from ..options import LOSSES

MSE, CROSS_ENTROPY, BCE, POISSON, HUBER, L1 = (LOSSES[k] for k in ("mse", "cross_entropy", "bce", "poisson", "huber",
                                                                    "l1"))


@cuda.jit(device=True, inline=True)
def row_loss_and_delta(logits, base, m, labels, targets, src, loss, huber_delta, label_smoothing, scale, want_delta):
    """(loss, hits) of one row, logits[base:base + m]; its delta (scaled by `scale`) written over the logits
    when want_delta. src: the row's index in labels / targets."""
    acc = float64(0.0)
    hits = float64(0.0)
    if loss == CROSS_ENTROPY:
        label = labels[src]
        if label < 0 or label >= m:
            # GPU labels are used in place: one changed since the checks ran is never used as an index.
            # A NaN loss makes the step skip its update and report it.
            if want_delta:
                for j in range(m):
                    logits[base + j] = float32(0.0)
            return math.nan, hits
        zmax = logits[base]
        best = 0
        for j in range(1, m):
            if logits[base + j] > zmax:
                zmax = logits[base + j]
                best = j
        hits = 1.0 if best == label else 0.0
        total = float32(0.0)
        for j in range(m):
            total += math.exp(logits[base + j] - zmax)
        acc = float64(zmax) + math.log(float64(total)) - (1.0 - label_smoothing) * float64(logits[base + label])
        if label_smoothing > 0:
            z_sum = float64(0.0)
            for j in range(m):
                z_sum += float64(logits[base + j])
            acc -= label_smoothing / m * z_sum
        if want_delta:
            inv_total = float32(1.0) / total
            spread = float32(label_smoothing / m * scale)
            for j in range(m):
                logits[base + j] = math.exp(logits[base + j] - zmax) * inv_total * scale - spread
            logits[base + label] -= float32((1.0 - label_smoothing) * scale)
    elif loss == MSE:
        for j in range(m):
            diff = logits[base + j] - targets[src * m + j]
            acc += float64(diff * diff)
            if want_delta:
                logits[base + j] = float32(2.0) * diff * scale
    elif loss == HUBER:
        delta = float32(huber_delta)
        for j in range(m):
            diff = logits[base + j] - targets[src * m + j]
            size = abs(diff)
            inside = size < delta
            acc += float64(float32(0.5) * diff * diff if inside else delta * (size - float32(0.5) * delta))
            if want_delta:
                logits[base + j] = (diff if inside else (delta if diff > 0 else -delta)) * scale
    elif loss == L1:
        for j in range(m):
            diff = logits[base + j] - targets[src * m + j]
            acc += float64(abs(diff))
            if want_delta:
                logits[base + j] = scale if diff > 0 else (-scale if diff < 0 else float32(0.0))
    elif loss == POISSON:
        for j in range(m):
            v = logits[base + j]
            t = targets[src * m + j]
            rate = math.exp(v)
            acc += float64(rate) - float64(t) * float64(v)
            if want_delta:
                logits[base + j] = (rate - t) * scale
    else:
        for j in range(m):
            v = logits[base + j]
            t = targets[src * m + j]
            e = math.exp(-abs(v))
            acc += float64(max(v, float32(0.0)) - v * t) + math.log1p(float64(e))
            if (v > 0) == (t >= 0.5):
                hits += 1.0 / m
            if want_delta:
                p = float32(1.0) / (float32(1.0) + e) if v >= 0 else e / (float32(1.0) + e)
                logits[base + j] = (p - t) * scale
    return acc, hits


@cuda.jit(device=True, inline=True)
def delta_scale(loss, weight_total, m):
    """The mean's 1/total (cross_entropy: per row) or 1/(total m) (mse, bce, poisson: per output), float64."""
    return 1.0 / weight_total if loss == CROSS_ENTROPY else 1.0 / (weight_total * m)


@cuda.jit(device=True, inline=True)
def weighted_row_loss_and_delta(logits, base, m, labels, targets, weights, weighted, src, loss, huber_delta,
                                label_smoothing, scale, want_delta):
    """row_loss_and_delta for a row of sample weight w (weights[src], or 1 unless weighted): (w x loss,
    hits), the delta scaled by w x scale (float64, from delta_scale). A row of weight 0: loss 0 and a zero
    delta whatever its values (the CPU kernel's rule, cpu/loss_delta.py)."""
    w = weights[src] if weighted else 1.0
    acc, hits = row_loss_and_delta(logits, base, m, labels, targets, src, loss, huber_delta, label_smoothing,
                                   float32(w * scale), want_delta and w != 0.0)
    if w == 0.0:
        if want_delta:
            for j in range(m):
                logits[base + j] = float32(0.0)
        return 0.0, hits
    return acc * w, hits


@cuda.jit
def clear_weightless_rows(acts, act_off, deltas, delta_off, slopes, slope_off, dims, n_layers, n, weights, rows):
    """One thread per batch row i of sample weight weights[rows[i]] = 0: zeros its row in every input and
    hidden activation block (acts, (n, d_l + 1) blocks at act_off[l]; the ones columns stay), in every
    hidden delta block of the fused path (deltas, (n, d_l) at delta_off[l], where not empty) and in every
    slope block (slopes, layer l's act'(Z) (n, d_{l+1}) at slope_off[l], where not empty). Launched after
    the loss, before the weight gradients: the row's delta is 0, but its activations (and, through act',
    the fused path's deltas) may not be finite, and 0 x inf in a gradient is NaN."""
    i = cuda.grid(1)
    if i >= n or weights[rows[i]] != 0.0:
        return
    for l in range(n_layers):
        d = dims[l]
        start = act_off[l] + i * (d + 1)
        for j in range(d):
            acts[start + j] = float32(0.0)
        if delta_off[l + 1] > delta_off[l]:
            start = delta_off[l] + i * d
            for j in range(d):
                deltas[start + j] = float32(0.0)
        if slope_off[l + 1] > slope_off[l]:
            start = slope_off[l] + i * dims[l + 1]
            for j in range(dims[l + 1]):
                slopes[start + j] = float32(0.0)


@cuda.jit
def loss_and_delta(logits, n, m, labels, targets, weights, weighted, weight_total, rows, loss, huber_delta,
                   label_smoothing, row_loss, row_hits, want_delta):
    i = cuda.grid(1)
    if i >= n:
        return
    row_loss[i], row_hits[i] = weighted_row_loss_and_delta(logits, i * m, m, labels, targets, weights, weighted,
                                                           rows[i], loss, huber_delta, label_smoothing,
                                                           delta_scale(loss, weight_total, m), want_delta)
