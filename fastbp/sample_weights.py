"""Sample weights: per-row factors on the loss, as fit(X, y, sample_weight=...) takes them in scikit-learn
and Keras. A batch's loss is the weighted mean sum_i w_i loss_i / sum_i w_i over its rows (cross_entropy:
per row; mse, bce, poisson: per output, the weighted mean over rows of the mean over outputs), and its
gradient that loss's. Unweighted is w = 1 everywhere. A batch whose weights are all 0 has loss 0 and a
zero gradient.

The kernels read the weights as a float64 (N,) array indexed like the labels or targets, plus the batch's
total (batch_total); hits (accuracy) stay unweighted, as Keras' metrics are unless asked.
"""
import numpy as np

from .sums import sum_at
from .validation import _as_numeric_array


def check(sample_weight, n_rows, name="sample_weight"):
    """sample_weight -> C-contiguous float64 (n_rows,), a copy (the kernels read it during training, so a
    caller changing theirs meanwhile changes nothing). None stays None. ValueError for the wrong length, a
    negative, NaN or infinite weight, or weights that are all 0."""
    if sample_weight is None:
        return None
    if hasattr(sample_weight, "__cuda_array_interface__"):
        raise TypeError(f"{name} is a GPU array: give the weights as a NumPy array (they are read on the host "
                        "to total each batch, and copied to the GPU once)")
    try:
        arr = _as_numeric_array(sample_weight, name)
    except TypeError as exc:  # without validation's hints about class labels, which are for y
        raise TypeError(str(exc).split(";")[0]) from None
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        raise ValueError(f"{name} must be 1-D with one weight per row of X ({n_rows}), got shape {arr.shape}")
    weights = np.array(arr, dtype=np.float64, order="C", copy=True)
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be finite and non-negative, found {weights[row]} at row {row}")
    if n_rows and not weights.any():
        raise ValueError(f"{name} is 0 for every row: nothing to learn from")
    return weights


def normalized(weights):
    """weights (float64, not all 0) times the power of two that brings the largest into [0.5, 1), in place.

    Only the weights' ratios matter to a weighted mean, and a power of two changes no ratio (it is exact
    in floating point), so results are bit for bit those of the weights as given; but no sum of them, and
    no gradient times a sum (micro-batches, chunks, MPI parts), can now overflow, whatever constant the
    weights were scaled by (1e-300 to 1e300 alike).

    In one process only: MPI ranks holding their own rows would each find their own power of two, and
    their weights would no longer be in proportion across ranks (agreeing on one would need a collective
    call where a rank's checks may already have failed)."""
    if weights.size:
        weights *= 2.0 ** -np.frexp(weights.max())[1]
    return weights


def row_sum(weights, rows):
    """The weight of the rows `rows`: their count without weights, else their weights' sum."""
    return float(rows.size) if weights is None else sum_at(weights, rows)  # the kernels' order (sums.py)


def batch_total(weights, rows):
    """What the kernels divide by for the batch of `rows`: row_sum, or 1 when that is 0 (every weighted
    term is then 0, so the loss and gradient are 0)."""
    total = row_sum(weights, rows)
    return total if total > 0 else 1.0
