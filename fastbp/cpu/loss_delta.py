"""Kernel 2 (BP1): the loss and the output delta dLoss/dZ_L, fused in one pass over the logits.

Shapes (n = batch rows, m = output width):
    logits   (n * m,) float32, row-major (n, m)
    labels   (N,) int64 class indices, read for cross_entropy (else may be empty)
    targets  (N, m) float32, read for mse, bce, poisson, huber and l1 (else may be empty)
    loss     options.LossSettings: the loss code, Huber's delta, cross_entropy's label smoothing
    weights  (N,) float64 sample weights, or empty: every row weighs 1
    weight_total  the sum of the batch's weights (n without weights), or 1 when it is 0
    rows     (n,) int64: batch row i's label/target/weight is labels[rows[i]] / targets[rows[i]] / weights[rows[i]]
    delta    (n * m,) float32 output, row-major (n, m); written only when want_delta. It may be the
             logits array itself: each row's loss is taken before its delta overwrites it
    row_loss (n,) float64 scratch: each row's summed loss times its weight, added up in a fixed order
             (deterministic)
    row_hits (n,) float64 output: each row's accuracy (cross_entropy: 1 if the first largest logit is
             the label; bce: the share of outputs with (z > 0) == (t >= 0.5); mse, poisson: 0)
Losses follow PyTorch: cross_entropy = mean over rows of logsumexp(z) - sum_k q_k z_k, q the label's one-hot
(1 - e) + e / m (label smoothing e); mse = mean of (z - t)^2; bce = mean of max(z, 0) - z t + log1p(exp(-|z|));
poisson = mean of exp(z) - t z (PoissonNLLLoss with log_input=True); huber = mean of 0.5 d^2 (|d| < delta)
or delta (|d| - delta / 2), d = z - t (HuberLoss); l1 = mean of |d| (L1Loss; d' = sign(d), 0 at 0). With sample weights w, the mean over rows is the weighted one, sum_i w_i loss_i / sum_i w_i
(PyTorch's reduction with class weights, scikit-learn's np.average). Every exp but poisson's is of a
non-positive number; poisson's exp(z) is taken in float32, so a log-rate beyond float32's range
(z > 88.7) gives an infinite loss, which stops the step.
The training steps' cross_entropy with its delta runs on blocks of rows (cross_entropy_rows) so that its
exps vectorize (vector_math.exp32); a pass without a delta (evaluate) keeps the row function and libm's exp.
"""
import numpy as np
from numba import njit, prange

from ._jit import BCE, CROSS_ENTROPY, FASTMATH, HUBER, L1, MSE, POISSON
from .denormals import flush_denormals, restore
from .vector_math import exp32

# Rows per block of cross_entropy_rows: its exps in L1 (64 rows of up to 64 classes: 16 KB), blocks enough
# for every thread. Each row's numbers are its own, whatever the blocks.
SOFTMAX_ROWS = 64


# Each loss's row function is called, not inlined: one compiled copy serves every caller (each inlined copy
# is compile time in each entry point: inlined, this round's huber, l1 and label smoothing took a cold first
# fit of [64, 100, 10] from 12-15 s to 11 s; its steps are as fast either way, LLVM inlines the call after
# linking). One function per loss, so that an entry point compiled for one loss (variants.Uses) compiles only
# its own. Each returns (loss, hits) of one row z (m,) and writes its delta, scaled by `scale`, into d (m,)
# when want_delta (d may be z); src: the row's index in labels / targets.

@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def row_max(z, m):
    """The largest of z[:m] and the index of its first occurrence."""
    zmax = z[0]
    best = 0
    for j in range(1, m):
        if z[j] > zmax:
            zmax = z[j]
            best = j
    return zmax, best


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def softmax_delta(d, m, label, total, smoothing, scale):
    """In place on d (m,) = exp(z - max z): the cross-entropy delta scale (softmax(z) - q), q the label's
    smoothed one-hot, from the exps' sum `total`."""
    inv_total = np.float32(1.0) / total
    spread = np.float32(smoothing / m * scale)
    for j in range(m):
        d[j] = d[j] * inv_total * scale - spread
    d[label] -= np.float32((1.0 - smoothing) * scale)


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def cross_entropy_row(z, d, src, m, labels, smoothing, scale, want_delta):
    label = labels[src]
    if label < 0 or label >= m:
        # Never index with a label the checks did not see (changed in place since): a NaN loss, so a
        # step skips its update and reports it, and no delta.
        if want_delta:
            for j in range(m):
                d[j] = np.float32(0.0)
        return np.nan, 0.0
    zmax, best = row_max(z, m)
    hits = 1.0 if best == label else 0.0
    z_label = np.float64(z[label])
    z_sum = 0.0
    if smoothing > 0:  # the targets' share e / m on every class
        for j in range(m):
            z_sum += np.float64(z[j])
    # Each exp once (a scalar libm call: most of this row's time; cross_entropy_rows is the training
    # steps' vectorized form): with a delta to write, it is kept in d, which may be z itself, so every read
    # of z comes before this loop.
    total = np.float32(0.0)
    if want_delta:
        for j in range(m):
            e = np.exp(z[j] - zmax)
            d[j] = e
            total += e
    else:
        for j in range(m):
            total += np.exp(z[j] - zmax)
    acc = np.float64(zmax) + np.log(np.float64(total)) - (1.0 - smoothing) * z_label
    if smoothing > 0:
        acc -= smoothing / m * z_sum
    if want_delta:
        softmax_delta(d, m, label, total, smoothing, scale)
    return acc, hits


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def cross_entropy_rows(z, d, r0, r1, m, labels, weights, rows, smoothing, scale, row_loss, row_hits):
    """weighted_row_loss_and_delta for cross_entropy with its delta, on batch rows [r0, r1) of z (n, m)
    row-major (d: the same layout, may be z), in three passes so that the exps vectorize: each row's max,
    hits and loss without its log-sum (into row_loss), and z - max into d; exp32 over the whole block
    (libm's expf is a scalar call: 200 rows of 10 classes took 20.7 us, a third of a one-thread step of
    [64, 100, 10], against 2.4 us like this); each row's sum, loss and delta. The same numbers as
    cross_entropy_row but for exp32's rounding (within 1 ulp of expf's, vector_math.py)."""
    for i in range(r0, r1):
        row = z[i * m:(i + 1) * m]
        label = labels[rows[i]]
        zmax, best = row_max(row, m)
        row_hits[i] = 1.0 if best == label else 0.0
        if label < 0 or label >= m:  # see cross_entropy_row; zeroed in the third pass
            row_hits[i] = 0.0
            row_loss[i] = np.nan
        else:
            # loss = zmax + log(total) - (1 - e) z_label - e / m sum(z), the z's shifted by zmax here
            # (float64: exact for float32 z), log(total) added in the third pass.
            z_sum = 0.0
            if smoothing > 0:
                for j in range(m):
                    z_sum += np.float64(row[j]) - np.float64(zmax)
            row_loss[i] = -(1.0 - smoothing) * (np.float64(row[label]) - np.float64(zmax)) - smoothing / m * z_sum
        shifted = d[i * m:(i + 1) * m]
        for j in range(m):  # every read of this row of z above comes first: d may be z
            shifted[j] = row[j] - zmax
    block = d[r0 * m:r1 * m]
    for k in range(block.size):
        block[k] = exp32(block[k])
    for i in range(r0, r1):
        e = d[i * m:(i + 1) * m]
        label = labels[rows[i]]
        w = weights[rows[i]] if weights.size else 1.0
        if w == 0.0 or label < 0 or label >= m:  # no delta; the loss of a weightless row is 0, not NaN x 0
            for j in range(m):
                e[j] = np.float32(0.0)
            row_loss[i] = 0.0 if w == 0.0 else np.nan  # (labels read again: changed in place meanwhile, still NaN)
            continue
        total = np.float32(0.0)
        for j in range(m):
            total += e[j]
        row_loss[i] = (row_loss[i] + np.log(np.float64(total))) * w
        softmax_delta(e, m, label, total, smoothing, np.float32(w * scale))


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def mse_row(z, d, src, m, targets, scale, want_delta):
    acc = 0.0
    for j in range(m):
        diff = z[j] - targets[src, j]
        acc += np.float64(diff * diff)
        if want_delta:
            d[j] = np.float32(2.0) * diff * scale
    return acc, 0.0


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def huber_row(z, d, src, m, targets, huber_delta, scale, want_delta):
    acc = 0.0
    delta = np.float32(huber_delta)
    for j in range(m):
        diff = z[j] - targets[src, j]
        size = abs(diff)
        inside = size < delta
        acc += np.float64(np.float32(0.5) * diff * diff if inside else delta * (size - np.float32(0.5) * delta))
        if want_delta:
            d[j] = (diff if inside else (delta if diff > 0 else -delta)) * scale
    return acc, 0.0


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def l1_row(z, d, src, m, targets, scale, want_delta):
    acc = 0.0
    for j in range(m):
        diff = z[j] - targets[src, j]
        acc += np.float64(abs(diff))
        if want_delta:
            d[j] = np.float32(scale) if diff > 0 else (np.float32(-scale) if diff < 0 else np.float32(0.0))
    return acc, 0.0


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def poisson_row(z, d, src, m, targets, scale, want_delta):
    acc = 0.0
    for j in range(m):
        v = z[j]
        t = targets[src, j]
        rate = np.exp(v)
        acc += np.float64(rate) - np.float64(t) * np.float64(v)
        if want_delta:
            d[j] = (rate - t) * scale
    return acc, 0.0


@njit(cache=True, nogil=True, fastmath=FASTMATH, _nrt=False)
def bce_row(z, d, src, m, targets, scale, want_delta):
    acc = 0.0
    hits = 0.0
    for j in range(m):
        v = z[j]
        t = targets[src, j]
        e = np.exp(-abs(v))
        acc += np.float64(max(v, np.float32(0.0)) - v * t) + np.log1p(np.float64(e))
        if (v > 0) == (t >= 0.5):
            hits += 1.0 / m
        if want_delta:
            p = np.float32(1.0) / (np.float32(1.0) + e) if v >= 0 else e / (np.float32(1.0) + e)
            d[j] = (p - t) * scale
    return acc, hits


@njit(cache=True, nogil=True, inline="always")
def row_loss_and_delta(kind, z, d, src, m, labels, targets, loss, scale, want_delta):
    """The row function of loss `kind` (loss.kind, or a compile-time constant equal to it: then only that
    loss's call is compiled)."""
    if kind == CROSS_ENTROPY:
        return cross_entropy_row(z, d, src, m, labels, loss.label_smoothing, scale, want_delta)
    if kind == MSE:
        return mse_row(z, d, src, m, targets, scale, want_delta)
    if kind == HUBER:
        return huber_row(z, d, src, m, targets, loss.huber_delta, scale, want_delta)
    if kind == L1:
        return l1_row(z, d, src, m, targets, scale, want_delta)
    if kind == POISSON:
        return poisson_row(z, d, src, m, targets, scale, want_delta)
    return bce_row(z, d, src, m, targets, scale, want_delta)


@njit(cache=True, nogil=True, inline="always")
def delta_scale(loss, weight_total, m):
    """The mean's 1/total (cross_entropy: per row) or 1/(total m) (mse, bce, poisson: per output), float64;
    total = the batch's rows, or its summed sample weights."""
    return 1.0 / weight_total if loss.kind == CROSS_ENTROPY else 1.0 / (weight_total * m)


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def weighted_row_loss_and_delta(kind, z, d, src, m, labels, targets, weights, loss, scale, want_delta):
    """row_loss_and_delta for a row of sample weight w = weights[src] (1 when weights is empty): (w x loss,
    hits), the delta scaled by w x scale (float64 scale from delta_scale). A row of weight 0 counts for
    nothing whatever its values: loss 0 and a zero delta, not 0 x an infinite loss (its hits still count,
    as accuracy is unweighted)."""
    w = weights[src] if weights.size else 1.0
    # One inlined copy of the per-row math (each copy is compile time), its delta skipped for a weight of 0.
    acc, hits = row_loss_and_delta(kind, z, d, src, m, labels, targets, loss, np.float32(w * scale),
                                   want_delta and w != 0.0)
    if w == 0.0:
        if want_delta:
            for j in range(m):
                d[j] = np.float32(0.0)
        return 0.0, hits
    return acc * w, hits


@njit(cache=True, nogil=True, _nrt=False)  # no prange inside: called, not inlined (inlining costs compile time)
def clear_weightless_rows(acts, act_off, slope_off, dims, rows, weights):
    """Zeros, in every input and hidden activation block and every slope block of acts (laid out by
    activation_offsets and slope_offsets for at least rows.size rows), the rows i whose sample weight
    weights[rows[i]] is 0; the ones columns stay. Called between the loss and the backward pass: such a
    row's delta is 0, but its activations may not be finite (inputs or weights that overflow float32),
    and 0 x inf in the weight gradient is NaN."""
    for i in range(rows.size):
        if weights[rows[i]] == 0.0:
            for l in range(dims.size - 1):
                start = act_off[l] + i * (dims[l] + 1)
                for j in range(dims[l]):
                    acts[start + j] = np.float32(0.0)
                if slope_off[l + 1] > slope_off[l]:  # layer l's act'(Z), (rows, dims[l + 1])
                    start = slope_off[l] + i * dims[l + 1]
                    for j in range(dims[l + 1]):
                        acts[start + j] = np.float32(0.0)


@njit(cache=True, nogil=True, _nrt=False)
def mean_loss(row_loss, n, weight_total, m, loss):
    """The batch's (weighted) mean loss from the n per-row sums, added in row order."""
    total_loss = 0.0
    for i in range(n):
        total_loss += row_loss[i]
    return total_loss / weight_total if loss.kind == CROSS_ENTROPY else total_loss / (weight_total * m)


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def loss_and_delta(logits, n, m, labels, targets, weights, weight_total, rows, loss, loss_kind, delta, row_loss,
                   row_hits, want_delta):
    """Returns the (weighted) mean loss (float64); fills delta with dLoss/dlogits when want_delta. loss_kind:
    loss.kind, or the caller's compile-time constant equal to it (variants.Uses)."""
    if loss.kind not in (MSE, CROSS_ENTROPY, BCE, POISSON, HUBER, L1):
        raise ValueError("unknown loss code")
    if loss.kind != loss_kind:
        raise ValueError("a loss other than the one this pass was compiled for")
    scale = delta_scale(loss, weight_total, m)
    if loss_kind == CROSS_ENTROPY and want_delta:  # blocks of rows, their exps vectorized
        for b in prange((n + SOFTMAX_ROWS - 1) // SOFTMAX_ROWS):
            fp_state = flush_denormals()
            cross_entropy_rows(logits, delta, b * SOFTMAX_ROWS, min(n, (b + 1) * SOFTMAX_ROWS), m, labels, weights,
                               rows, loss.label_smoothing, scale, row_loss, row_hits)
            restore(fp_state)
        return mean_loss(row_loss, n, weight_total, m, loss)
    for i in prange(n):
        fp_state = flush_denormals()  # softmax probabilities of hopeless classes are often subnormal
        row_loss[i], row_hits[i] = weighted_row_loss_and_delta(loss_kind, logits[i * m:(i + 1) * m],
                                                               delta[i * m:(i + 1) * m], rows[i], m, labels,
                                                               targets, weights, loss, scale, want_delta)
        restore(fp_state)
    return mean_loss(row_loss, n, weight_total, m, loss)
