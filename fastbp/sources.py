"""Where a step's rows come from: arrays converted whole, arrays converted batch by batch, or a stream.

The Trainer asks a source for the rows of (its part of) a batch with take(rows) and hands the result to
the backend's kernels, which read X (N, d0) float32 C-contiguous at the given row indices, labels (N,)
int64 or targets (N, d_L) float32, and sample weights (N,) float64 or None (see cpu/step.py,
sample_weights.py). Arrays sources hold their weights whole (8 bytes a row); row_weight(rows) is the
weight of global rows `rows`, their count without weights:

- InMemory: the whole data set checked and converted once (validation.py); take() passes the arrays as
  they are and the kernels gather the rows. The default for data that fits.
- OnDemand: an array that should not be copied whole: np.memmap / np.load(..., mmap_mode="r") of any real
  dtype, a SciPy sparse matrix (its rows densified per batch, never the whole matrix), some rows of
  either (RowSubset: the estimators' early-stopping split), or one whose float32 copy would not fit in
  memory. Checked before training in chunks of
  CHECK_CHUNK_BYTES (an error names the first bad row); take() reads and converts only the batch's rows,
  in batch order, so memory does not grow with the number of rows.
- batches(): a stream of (X_batch, y_batch) pairs (a generator, a list, a DataLoader-like iterable),
  each checked as it arrives; an error names the batch.
"""
import concurrent.futures
import itertools
import os

import numpy as np

from . import sample_weights, validation

# Rows checked per chunk of an OnDemand source: bounds the memory of the up-front checks.
CHECK_CHUNK_BYTES = 64 * 2 ** 20


class InMemory:
    """X, labels, targets (and sample weights) already checked and converted (labels or targets None;
    weights None without sample weights)."""

    def __init__(self, X, labels, targets, weights=None):
        self.X, self.labels, self.targets, self.weights = X, labels, targets, weights
        self.n_rows = X.shape[0]

    def take(self, rows):
        """(X, labels, targets, weights, rows) for the kernels: the whole arrays, and the rows to gather."""
        return self.X, self.labels, self.targets, self.weights, rows

    def row_weight(self, rows):
        return sample_weights.row_sum(self.weights, rows)

    def split(self, cut):
        """(rows [:cut], rows [cut:]) as two sources (validation_split)."""
        parts = [None if a is None else (a[:cut], a[cut:]) for a in (self.X, self.labels, self.targets, self.weights)]
        return tuple(InMemory(*[None if p is None else p[side] for p in parts]) for side in (0, 1))


# A float32 copy up to this size is made without asking how much memory is free (a file read).
ALWAYS_CONVERTED_BYTES = 64 * 2 ** 20


def is_sparse(X):
    """Whether X is a SciPy sparse matrix or array (read batch by batch, never densified whole)."""
    return hasattr(X, "tocsr") and hasattr(X, "nnz")


def wants_on_demand(X, available_bytes):
    """Whether X should be read batch by batch rather than converted whole: a memory-mapped array, a sparse
    matrix, or an array whose float32 copy would take more than half the memory available. available_bytes:
    a number, None (unknown), or a function returning one (called only for copies over
    ALWAYS_CONVERTED_BYTES)."""
    if isinstance(X, (np.memmap, RowSubset)) or is_sparse(X):
        return True
    need = validation.conversion_bytes(X)
    if need <= ALWAYS_CONVERTED_BYTES:
        return False
    available = available_bytes() if callable(available_bytes) else available_bytes
    return available is not None and need > available // 2


class Rows:
    """A SciPy sparse matrix (any format: kept as CSR, whose rows slice cheaply) read as dense rows:
    rows[a:b] and rows[index_array] give float arrays of just those rows. shape, ndim and dtype as the
    matrix's."""

    def __init__(self, matrix):
        self.matrix = matrix.tocsr()
        self.shape, self.ndim, self.dtype = self.matrix.shape, 2, self.matrix.dtype

    def __getitem__(self, rows):
        return self.matrix[rows].toarray()


class RowSubset:
    """Rows `rows` (an index array, in its order) of a memory-mapped array or a sparse matrix (or its Rows:
    subsets of one CSC matrix then share its one CSR copy), read only
    when asked for: subset[index] (a slice or an index array) gives just those rows as an array, read in
    file order; shape, ndim and dtype as the 2-D array's. What the estimators' early-stopping split trains
    and validates on instead of copying the rows (scikit-learn's train_test_split copies them).
    filename: the mapped file, or None."""

    def __init__(self, X, rows):
        self.whole = X
        self._read = Rows(X) if is_sparse(X) else X
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.shape, self.ndim, self.dtype = (self.rows.size, X.shape[1]), 2, self._read.dtype
        self.filename = getattr(X, "filename", None)

    # Rows read per piece: a piece's temporary copy stays small whatever the number of rows asked for.
    PIECE_ROWS = 4096

    def __getitem__(self, index):
        wanted = self.rows[index]
        order = np.argsort(wanted, kind="stable")
        block = np.empty((wanted.size, self.shape[1]), self.dtype)
        for start in range(0, wanted.size, self.PIECE_ROWS):
            piece = order[start:start + self.PIECE_ROWS]
            block[piece] = self._read[wanted[piece]]
        return block

    def subset(self, index):
        """Rows index (a slice or an index array) of this subset, as a RowSubset."""
        return RowSubset(self.whole, self.rows[index])


class OnDemand:
    """A (n, d0) array of real numbers and its labels or targets, read per batch (see the module's docstring).

    checks: the backend's checks module (validation.py); loss, n_features, n_outputs: the network's;
    weights: checked sample weights (n,) float64 (sample_weights.check), or None."""

    def __init__(self, X, y, loss, n_features, n_outputs, checks=validation, names=("X", "y"), weights=None):
        self.loss, self.n_features, self.n_outputs = loss, n_features, n_outputs
        self.checks, self.names = checks, names
        if is_sparse(X):
            X = Rows(X)
        if not isinstance(X, (np.ndarray, Rows, RowSubset)) or X.ndim != 2:
            raise ValueError(f"{names[0]} must be a 2-D (n_samples, n_features) array, got "
                             f"{type(X).__name__} of shape {getattr(X, 'shape', None)}")
        self.X = X
        self.weights = weights
        self.y = y if isinstance(y, np.ndarray) else np.asarray(y)
        self.n_rows = X.shape[0]
        self._reader, self._pending = None, []
        # The files X and y are mapped from, and their sizes now: a file that shrinks while it is mapped
        # would kill the process with SIGBUS at the first read past its new end (_check_files).
        self._files = {path: os.path.getsize(path) for path in
                       {getattr(a, "filename", None) for a in (X, self.y)
                        if isinstance(a, (np.memmap, RowSubset))} - {None}}
        if self.y.shape[:1] != (self.n_rows,):
            raise ValueError(f"{names[1]} has {self.y.shape[0] if self.y.ndim else 0} rows but {names[0]} has "
                             f"{self.n_rows} rows")
        self._check_all()

    def _convert(self, X_rows, y_rows, first_row):
        """Checked, converted rows: (X float32 (k, d0), labels or None, targets or None)."""
        X = self.checks.features(X_rows, self.n_features, self.names[0], first_row=first_row)
        labels, targets = self.checks.targets_for(self.loss, y_rows, X.shape[0], self.n_outputs, self.names[1],
                                                  first_row=first_row)
        return X, labels, targets

    def _check_all(self):
        """Every row checked before training starts, in chunks (memory bounded by CHECK_CHUNK_BYTES)."""
        row_bytes = max(1, self.X.shape[1] * max(self.X.dtype.itemsize, 4))
        chunk = max(1, CHECK_CHUNK_BYTES // row_bytes)
        for start in range(0, self.n_rows, chunk):
            self._check_files()
            self._convert(self.X[start:start + chunk], self.y[start:start + chunk], start)

    def _check_files(self):
        """OSError naming a mapped file that is shorter than when training began (truncated or replaced):
        a read through its mapping past the new end would be a SIGBUS, not an exception."""
        for path, size in self._files.items():
            try:
                now = os.path.getsize(path)
            except OSError:
                now = 0
            if now < size:
                raise OSError(f"{path} shrank from {size:,} to {now:,} bytes while fastbp was reading it; "
                              "training stopped before reading past its end (the last checkpoint is intact)")

    def _read(self, rows):
        """(X float32 (k, d0), y) of rows, in batch order (read in file order, converted in the same pass)."""
        self._check_files()
        order = np.argsort(rows, kind="stable")
        in_file_order = rows[order]
        X = np.empty((rows.size, self.n_features), np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            X[order] = self.X[in_file_order]
        y = np.empty((rows.size,) + self.y.shape[1:], self.y.dtype)
        y[order] = self.y[in_file_order]
        return X, y

    def prefetch(self, rows):
        """Queues reading `rows` (what a later take will ask for) in a background thread, so that reading and
        converting overlap the steps before it (NumPy releases the GIL while it copies)."""
        if self._reader is None:
            self._reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastbp-read")
        self._pending.append((rows, self._reader.submit(self._read, rows)))

    def row_weight(self, rows):
        return sample_weights.row_sum(self.weights, rows)

    def take(self, rows):
        """(X_b, labels_b, targets_b, weights_b, arange(len(rows))): the batch's rows read and converted, in
        batch order.
        Checked again, cheaply: the file may have changed since the up-front checks, and the kernels must
        never see an unchecked label."""
        found = None
        for i, (queued, future) in enumerate(self._pending):
            if queued.size == rows.size and np.array_equal(queued, rows):
                found = future
                del self._pending[:i + 1]  # reads queued before this one are not wanted any more
                break
        X, y = self._read(rows) if found is None else found.result()
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(X.sum(dtype=np.float64))
        if not finite:  # NaN, infinity, or beyond float32's range: named as the up-front check names it
            self._name_bad_row(rows)
            raise ValueError(f"{self.names[0]} changed since it was checked: rows of this batch are no longer "
                             "finite in float32")  # never reached unless the checks above disagree
        try:
            labels, targets = self.checks.targets_for(self.loss, y, rows.size, self.n_outputs, self.names[1])
        except ValueError:
            self._name_bad_row(rows)
            raise
        weights = None if self.weights is None else self.weights[rows]
        return X, labels, targets, weights, np.arange(rows.size, dtype=np.int64)

    def _name_bad_row(self, rows):
        """Raises the up-front check's ValueError for the first of `rows` that fails it now (the data
        changed since), naming that row's index in the file, as the up-front check does."""
        for row in np.sort(rows):
            self._convert(self.X[row:row + 1], self.y[row:row + 1], int(row))

    def close(self):
        """Ends the background reader (fit calls it at its end)."""
        self._pending = []
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None

    def split(self, cut):
        return (OnDemand.__new__(OnDemand)._view(self, slice(None, cut)),
                OnDemand.__new__(OnDemand)._view(self, slice(cut, None)))

    def _view(self, whole, rows):
        """This source as rows `rows` (a slice) of an already checked one."""
        self.__dict__.update(whole.__dict__)
        self._reader, self._pending = None, []
        if isinstance(whole.X, Rows):
            self.X = Rows(whole.X.matrix[rows])
        else:
            self.X = whole.X.subset(rows) if isinstance(whole.X, RowSubset) else whole.X[rows]
        self.y = whole.y[rows]
        self.weights = None if whole.weights is None else whole.weights[rows]
        self.n_rows = self.X.shape[0]
        return self


def is_stream(X, y):
    """Whether fit's X is a stream of (X_batch, y_batch) pairs rather than an array: y is None and X is an
    iterable that is not array-like, or a list of pairs whose first item is 2-D (a list of batches)."""
    if y is not None or isinstance(X, np.ndarray) or hasattr(X, "__array__") \
            or hasattr(X, "__cuda_array_interface__"):
        return False
    if isinstance(X, (list, tuple)):
        first = X[0] if X else None
        return isinstance(first, (list, tuple)) and len(first) == 2 and np.ndim(first[0]) == 2
    try:
        iter(X)
    except TypeError:
        return False
    return True


def batches(stream, steps=None):
    """Up to `steps` (all when None) (index, X_batch, y_batch) of a stream; a new pass for a re-iterable
    (a list, a DataLoader), the rest of it for an iterator (a generator). TypeError for an item that is not
    a pair, naming the batch."""
    for index, item in enumerate(itertools.islice(iter(stream), steps)):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"batch {index} of the stream is not an (X_batch, y_batch) pair: {type(item).__name__}")
        yield index, item[0], item[1]
