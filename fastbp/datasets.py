"""Data for the CLI and examples: a generated default problem, .npz files and MNIST-style IDX files.

Nothing here downloads anything.
"""
import gzip
import os

import numpy as np

# IDX type codes (third byte of the magic number) -> big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def make_classification(n_samples=20000, n_features=64, n_classes=10, clusters_per_class=3, seed=0):
    """A learnable nonlinear problem: each class is a union of Gaussian clusters whose centres lie in a
    random 4-dimensional subspace, so no linear model separates the classes but an MLP comes close to
    the Bayes rate. Every feature has unit scale.

    Returns X (n_samples, n_features) float32 and labels (n_samples,) int64."""
    rng = np.random.default_rng(seed)
    n_clusters = n_classes * clusters_per_class
    latent = min(4, n_features)
    centres = rng.uniform(-1, 1, (n_clusters, latent)) * 3.0
    basis, _ = np.linalg.qr(rng.standard_normal((n_features, latent)))  # orthonormal columns
    cluster = rng.integers(0, n_clusters, n_samples)
    X = centres[cluster] @ basis.T * np.sqrt(n_features / latent) + rng.standard_normal((n_samples, n_features))
    X /= X.std(axis=0)
    return X.astype(np.float32), (cluster % n_classes).astype(np.int64)


def read_idx(path):
    """An IDX file (raw, or gzip-compressed: detected from its first bytes) as a NumPy array."""
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise ValueError(f"{path}: IDX header is truncated")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header_end != expected:
        raise ValueError(f"{path}: IDX header promises {shape} ({expected} bytes of data) "
                         f"but the file holds {len(data) - header_end}")
    return np.frombuffer(data, dtype, offset=header_end).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx(images_path, labels_path):
    """Images (n, ...) flattened to (n, features) float32 (uint8 scaled to [0, 1]); labels (n,) int64."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds labels of "
                         f"shape {labels.shape}")
    X = images.reshape(images.shape[0], -1).astype(np.float32)
    if images.dtype == np.uint8:
        X /= 255.0
    return X, labels.astype(np.int64)


def _find(directory, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {stem}[.gz] in {directory}")


def load_mnist_dir(directory):
    """(X_train, y_train, X_test, y_test) from a directory holding MNIST's IDX files (raw or .gz). The test
    pair is (None, None) when its two files are not there (a directory with the training files only):
    callers then hold out some training rows."""
    train = load_idx(_find(directory, "train-images-idx3-ubyte"), _find(directory, "train-labels-idx1-ubyte"))
    try:
        images, labels = _find(directory, "t10k-images-idx3-ubyte"), _find(directory, "t10k-labels-idx1-ubyte")
    except FileNotFoundError:
        return train + (None, None)
    return train + load_idx(images, labels)


def load_npz(path):
    """(X_train, y_train, X_test, y_test) from an .npz with arrays X and y (the test pair is then None), or
    x_train, y_train, x_test, y_test (Keras's mnist.npz layout). Images are flattened, uint8 scaled to [0, 1]."""
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        if {"X", "y"} <= keys:
            arrays = [data["X"], data["y"], None, None]
        elif {"x_train", "y_train"} <= keys:
            arrays = [data["x_train"], data["y_train"], data.get("x_test"), data.get("y_test")]
        else:
            raise ValueError(f"{path} needs arrays 'X' and 'y', or 'x_train' and 'y_train'; "
                             f"it has {sorted(keys)}")
    for i in (0, 2):
        X = arrays[i]
        if X is not None and X.ndim > 2:
            X = X.reshape(X.shape[0], -1)
        if X is not None and X.dtype == np.uint8:
            X = X.astype(np.float32) / np.float32(255.0)
        arrays[i] = X
    return tuple(arrays)
