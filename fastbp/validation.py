"""Checks and conversions of user data, done before any kernel runs.

Each function raises ValueError/TypeError naming the problem, or returns arrays in the exact layout the
kernels read: X as C-contiguous float32, labels as int64, targets as C-contiguous (n, out) float32.
"""
import numpy as np


_STRINGS_HINT = ("; for class names (strings) use fastbp.MLPClassifier, which encodes them, or map them to "
                 "integers 0..k-1 yourself")
_FEATURES_HINT = ("; encode text or categorical columns as numbers first (e.g. scikit-learn's OneHotEncoder or "
                  "OrdinalEncoder)")


def _strings_hint(name):
    """What to do about strings: in features (X, "validation X", "X of batch 3", xb) encode them; in
    targets they may be class names."""
    return _FEATURES_HINT if "X" in name.split() or name.startswith("x") else _STRINGS_HINT


def row_count(X):
    """The number of rows X will have, without converting it (so that a batch too large for memory is
    refused before a float32 copy of it is made); None when it cannot be told cheaply."""
    shape = getattr(X, "shape", None)
    if shape is None and isinstance(X, (list, tuple)):
        return len(X)
    try:
        return int(shape[0]) if shape is not None and len(shape) >= 1 else None
    except (TypeError, ValueError):
        return None


def conversion_bytes(X):
    """Bytes a float32, C-contiguous copy of X would take (0 when X is one already, or is no array)."""
    if not isinstance(X, np.ndarray) or (X.dtype == np.float32 and X.flags.c_contiguous):
        return 0
    return 4 * X.size


def _as_numeric_array(value, name):
    if hasattr(value, "__cuda_array_interface__") or getattr(value, "__cuda_ndarray__", False) is True:
        raise TypeError(f"{name} is a GPU array: train with Trainer(..., device='cuda'), or copy it to the host "
                        "(e.g. x.get() in CuPy, x.cpu().numpy() in PyTorch)")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} could not be converted to a numeric array: {exc}") from None
    if arr.dtype == object:  # e.g. numbers in a pandas object column: fine if they are all real numbers
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must hold real numbers; it holds Python objects that are not"
                            f"{_strings_hint(name)}") from None
    if arr.dtype.kind in "fiub":  # the common case, decided without issubdtype's class walk (a few us a call)
        return arr
    if arr.dtype.kind in "US":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}{_strings_hint(name)}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers, got complex dtype {arr.dtype}")
    return arr


# isfinite over blocks of this many elements (a C-contiguous array's, else of whole rows): its temporary
# stays small whatever the array's size, and it is 4x faster than the float64 sum that served before
# (measured here, 8192 x 16 float32: 9 against 36 us; a fit validates its data on every call).
_CHECK_BLOCK = 1 << 16


def _all_finite(arr):
    """Whether arr (any shape) holds no NaN or infinity."""
    if arr.ndim == 0 or arr.size <= _CHECK_BLOCK:
        return bool(np.isfinite(arr).all())
    if arr.flags.c_contiguous:
        flat = arr.reshape(-1)  # a view
        return all(np.isfinite(flat[i:i + _CHECK_BLOCK]).all() for i in range(0, flat.size, _CHECK_BLOCK))
    rows = max(1, _CHECK_BLOCK * len(arr) // arr.size)
    return all(np.isfinite(arr[i:i + rows]).all() for i in range(0, len(arr), rows))


def check_finite(arr, name, first_row=0):
    """ValueError naming the first NaN or infinity; arr's row 0 is row first_row of the caller's data."""
    if arr.dtype.kind != "f" or _all_finite(arr):
        return
    bad = [int(i) for i in np.argwhere(~np.isfinite(arr))[0]]
    bad[0] += first_row
    raise ValueError(f"{name} contains NaN or infinity (first at index {tuple(bad)})")


def features(X, n_features, name="X", first_row=0):
    """X: (n, n_features) array-like of real numbers, n >= 1 -> C-contiguous float32. first_row: where X
    starts in the caller's data (a chunk of a larger array), for the messages."""
    arr = _as_numeric_array(X, name)
    if arr.ndim != 2:
        hint = "; for a single sample use X.reshape(1, -1)" if arr.ndim == 1 and arr.shape[0] == n_features else ""
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features per row but the network takes {n_features} "
                         f"(sizes[0])")
    check_finite(arr, name, first_row)
    return _to_float32(arr, name, first_row)


def _to_float32(arr, name, first_row=0):
    """C-contiguous float32; values beyond float32's range would become inf, and are refused."""
    if arr.dtype == np.float32 and arr.flags.c_contiguous:  # nothing to convert (no errstate block: ~1 us)
        return arr
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.dtype != np.float32:
        check_finite(out, name + " (converted to float32)", first_row)
    return out


def class_labels(y, n_rows, n_classes, name="y", first_row=0):
    """Integer class labels (n_rows,) in [0, n_classes) -> int64. Float labels must be whole numbers."""
    arr = _as_numeric_array(y, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D class labels of shape (n_samples,), got shape {arr.shape}"
                         + ("; cross_entropy takes integer labels, not one-hot rows" if arr.ndim == 2 else ""))
    if arr.shape[0] != n_rows:
        raise ValueError(f"{name} has {arr.shape[0]} labels but X has {n_rows} rows")
    if arr.dtype == np.bool_:
        raise TypeError(f"{name} must hold integer class labels, got booleans")
    if arr.dtype.kind == "f":
        check_finite(arr, name, first_row)
        if not np.array_equal(arr, np.round(arr)):
            row = int(np.flatnonzero(arr != np.round(arr))[0]) + first_row
            raise ValueError(f"{name} must hold integer class labels; found non-integer values (first at row {row})")
        if np.abs(arr).max(initial=0) >= n_classes:  # also keeps huge floats from wrapping in the int64 copy
            _raise_label_out_of_range(arr, name, n_classes, first_row)
    # Always a copy, checked after it is made: the kernels index memory with these labels, so they must not
    # change after this check (a callback relabelling y in place, another thread, the caller's validation_data).
    labels = np.array(arr, dtype=np.int64, order="C", copy=True)
    # One comparison for both bounds: a negative label read as uint64 is 2^63 or more.
    if (labels.view(np.uint64) >= n_classes).any():
        _raise_label_out_of_range(labels, name, n_classes, first_row)
    return labels


def _raise_label_out_of_range(labels, name, n_classes, first_row):
    row = int(np.flatnonzero((labels < 0) | (labels >= n_classes))[0])
    raise ValueError(f"{name} has label {labels[row]} out of range (at row {row + first_row}): labels must be in "
                     f"[0, {n_classes - 1}] for {n_classes} output classes")


def regression_targets(y, n_rows, n_outputs, name="y", probabilities=False, first_row=0, counts=False):
    """Targets (n_rows, n_outputs), or (n_rows,) when n_outputs == 1 -> C-contiguous float32 (n, out).

    probabilities: the targets of bce, which must lie in [0, 1]; counts: those of poisson, >= 0.
    """
    arr = _as_numeric_array(y, name)
    if arr.ndim == 1 and n_outputs == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != n_outputs:
        hint = ""
        if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer) and n_outputs > 1:
            hint = ("; integer class labels need loss='cross_entropy' (the default loss is 'mse', which "
                    "takes one target per output)")
        raise ValueError(f"{name} must have shape (n_samples, {n_outputs}) to match the output width, "
                         f"got shape {arr.shape}{hint}")
    if arr.shape[0] != n_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows but X has {n_rows} rows")
    check_finite(arr, name, first_row)
    out = _to_float32(arr, name, first_row)
    if probabilities and out.size and (out.min() < 0 or out.max() > 1):
        row = int(np.argwhere((out < 0) | (out > 1))[0, 0]) + first_row
        raise ValueError(f"{name} for bce must lie in [0, 1], found values in [{out.min()}, {out.max()}] "
                         f"(first outside at row {row})")
    if counts and out.size and out.min() < 0:
        row = int(np.argwhere(out < 0)[0, 0]) + first_row
        raise ValueError(f"{name} for poisson must be non-negative (counts or rates), found {out.min()} (first "
                         f"negative at row {row})")
    return out


def targets_for(loss, y, n_rows, n_outputs, name="y", first_row=0):
    """(labels, targets) for the kernels: exactly one is an array, the other None. first_row: as in
    features."""
    if loss == "cross_entropy":
        return class_labels(y, n_rows, n_outputs, name, first_row), None
    return None, regression_targets(y, n_rows, n_outputs, name, probabilities=(loss == "bce"), first_row=first_row,
                                    counts=(loss == "poisson"))


def parameter_list(params, sizes):
    """[(W, b), ...] matching sizes -> list of float32 arrays, every problem named before anything is copied."""
    n_layers = len(sizes) - 1
    try:
        pairs = list(params)
    except TypeError:
        raise TypeError("params must be a list of (W, b) pairs") from None
    if len(pairs) != n_layers:
        raise ValueError(f"params has {len(pairs)} layers but the network has {n_layers}")
    checked = []
    for l, pair in enumerate(pairs):
        try:
            W, b = pair
        except (TypeError, ValueError):
            raise TypeError(f"params[{l}] must be a (W, b) pair") from None
        W = _as_numeric_array(W, f"params[{l}] W")
        b = _as_numeric_array(b, f"params[{l}] b")
        want_w, want_b = (sizes[l], sizes[l + 1]), (sizes[l + 1],)
        if W.shape != want_w:
            hint = " (PyTorch's Linear.weight is (out, in): pass its transpose)" if W.shape == want_w[::-1] else ""
            raise ValueError(f"params[{l}] W has shape {W.shape}, expected {want_w}{hint}")
        if b.shape != want_b:
            raise ValueError(f"params[{l}] b has shape {b.shape}, expected {want_b}")
        check_finite(W, f"params[{l}] W")
        check_finite(b, f"params[{l}] b")
        checked.append((_to_float32(W, f"params[{l}] W"), _to_float32(b, f"params[{l}] b")))
    return checked
