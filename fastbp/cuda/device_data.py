"""User data that is already on the GPU: checked where it lies and used in place, never copied to the host.

Accepts numba.cuda device arrays and anything exposing __cuda_array_interface__ (CuPy arrays, PyTorch
CUDA tensors, ...). The checks of validation.py hold for them too, before any kernel of the step runs:
shapes, dtypes (float32 features and targets, int64 labels: converting would be a copy the user did not
ask for, so the error says how to convert on the device), C-contiguity, NaN or infinity, labels out of
range, bce targets outside [0, 1]; the value checks are one scan on the device. NumPy data goes to
validation.py unchanged, so a Trainer(device="cuda") takes either kind, mixed freely.
"""
import math

import numpy as np
from numba import cuda

from .. import validation

CONVERT_HINT = "convert it on the device first (CuPy: x.astype(cupy.{dtype}); PyTorch: x.to(torch.{dtype}))"


def is_device_array(obj):
    return hasattr(obj, "__cuda_array_interface__") or getattr(obj, "__cuda_ndarray__", False) is True


def _as_device_array(obj, name):
    if getattr(obj, "__cuda_ndarray__", False) is True:  # numba's own device arrays (and the simulator's)
        return obj
    try:
        return cuda.as_cuda_array(obj)
    except Exception as exc:  # a malformed interface, or a device array under the simulator
        raise TypeError(f"{name} exposes __cuda_array_interface__ but numba.cuda cannot use it: {exc}") from None


@cuda.jit
def _first_bad_value(values, low, high, out):
    """out[0] = min(out[0], first i with values[i] non-finite or outside [low, high]); values (size,)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, values.size, stride):
        v = values[i]
        if not (math.isfinite(v) and low <= v <= high):
            cuda.atomic.min(out, 0, i)  # the minimum does not depend on the order: deterministic
            return


@cuda.jit
def _first_bad_label(labels, n_classes, out):
    """out[0] = min(out[0], first i with labels[i] outside [0, n_classes)); labels (size,) int64."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, labels.size, stride):
        if labels[i] < 0 or labels[i] >= n_classes:
            cuda.atomic.min(out, 0, i)
            return


def _first_bad(flat, kernel, *bounds):
    """Index of the first offending element of the 1-D device array flat, or None."""
    out = cuda.to_device(np.array([flat.size], np.int64))
    threads = 256
    kernel[min(1024, max(1, math.ceil(flat.size / threads))), threads](flat, *bounds, out)
    first = int(out.copy_to_host()[0])
    return None if first >= flat.size else first


def _element(flat, i):
    return flat[i:i + 1].copy_to_host()[0]


def _checked_array(obj, name, dtype, shape):
    """obj as a C-contiguous numba device array of `dtype` and `shape` (None matches any row count)."""
    arr = _as_device_array(obj, name)
    if np.dtype(arr.dtype) != dtype:
        raise TypeError(f"{name} is a GPU array of dtype {np.dtype(arr.dtype)}; fastbp needs {dtype.name}: "
                        + CONVERT_HINT.format(dtype=dtype.name))
    if len(arr.shape) != len(shape) or any(want is not None and got != want for got, want in zip(arr.shape, shape)):
        expected = tuple("n" if s is None else s for s in shape)
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {expected} (one row per row of X)")
    if not arr.is_c_contiguous():
        raise ValueError(f"{name} is a non-contiguous view of a GPU array: make it contiguous on the device first "
                         "(CuPy: cupy.ascontiguousarray(x); PyTorch: x.contiguous())")
    return arr


def _finite(arr, name, low=-math.inf, high=math.inf):
    flat = arr.reshape(arr.size)
    bad = _first_bad(flat, _first_bad_value, low, high) if arr.size else None
    if bad is not None:
        where = tuple(int(i) for i in np.unravel_index(bad, arr.shape))
        value = _element(flat, bad)
        what = "NaN or infinity" if not np.isfinite(value) else f"{value}, outside [{low}, {high}]"
        raise ValueError(f"{name} contains {what} (first at index {where})")


def features(X, n_features, name="X", first_row=0):
    """X (n, n_features): NumPy data through validation.features; GPU data checked in place."""
    if not is_device_array(X):
        return validation.features(X, n_features, name, first_row)
    arr = _as_device_array(X, name)
    if len(arr.shape) != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features per row but the network takes {n_features} (sizes[0])")
    arr = _checked_array(arr, name, np.dtype(np.float32), (None, n_features))
    _finite(arr, name)
    return arr


def targets_for(loss, y, n_rows, n_outputs, name="y", first_row=0):
    """(labels, targets) as validation.targets_for returns them, for NumPy or GPU y."""
    if not is_device_array(y):
        return validation.targets_for(loss, y, n_rows, n_outputs, name, first_row)
    arr = _as_device_array(y, name)
    if loss == "cross_entropy":
        if len(arr.shape) == 2 and arr.shape[1] == 1:
            labels = _checked_array(arr, name, np.dtype(np.int64), (n_rows, 1)).reshape(n_rows)
        else:
            labels = _checked_array(arr, name, np.dtype(np.int64), (n_rows,))
        bad = _first_bad(labels, _first_bad_label, n_outputs) if n_rows else None
        if bad is not None:
            raise ValueError(f"{name} has label {_element(labels, bad)} out of range (first at index {bad}): "
                             f"labels must be in [0, {n_outputs - 1}] for {n_outputs} output classes")
        return labels, None
    if len(arr.shape) == 1 and n_outputs == 1:
        targets = _checked_array(arr, name, np.dtype(np.float32), (n_rows,)).reshape(n_rows, 1)
    else:
        targets = _checked_array(arr, name, np.dtype(np.float32), (n_rows, n_outputs))
    if loss == "bce":
        _finite(targets, name + " for bce", 0.0, 1.0)
    elif loss == "poisson":
        _finite(targets, name + " for poisson", 0.0)
    else:
        _finite(targets, name)
    return None, targets
