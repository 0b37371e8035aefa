"""The order in which an epoch of fit takes the rows of an array data set: what `shuffle=` decides.

fit(shuffle=...) takes
- True: a fresh permutation of the rows every epoch, drawn from the Trainer's generator (its `seed`;
  with comm, rank 0's generator, broadcast at construction, so every rank draws the same);
- False: the rows in their order;
- a function order(n) -> rows: called at the start of every epoch with the number of rows n (with
  sharded data, of all ranks' rows together), it returns the epoch's order, an integer array holding
  each of 0..n-1 exactly once; batch k is rows[k * batch_size:(k + 1) * batch_size]. This is the hook
  for another library's sampling: the scikit-learn estimators (estimators.py) pass scikit-learn's own
  shuffle, drawn from the estimator's random_state, to take its rows in its order.
  With comm, the function is called on every rank and rank 0's order is used on every rank (each
  rank's generator advances alike; an error on any rank is raised on every rank).
A checkpoint (Trainer.save) keeps the Trainer's generator, not a function's state.
"""
import numpy as np


class OwnOrder:
    """Base class of fastbp's own order functions (the estimators' scikit-learn shuffle): each returns a
    fresh int64 permutation of 0..n-1 by construction, so epoch_order takes it without _checked_order's
    passes over the rows (a few microseconds an epoch: most of a tiny data set's step)."""

    def __call__(self, n):
        raise NotImplementedError


def check_shuffle(shuffle):
    """TypeError unless shuffle is a bool (numpy's too) or a callable; returns what the ranks compare."""
    if callable(shuffle):
        return "function"
    if isinstance(shuffle, (bool, np.bool_)):
        return bool(shuffle)
    raise TypeError(f"shuffle must be True, False or a function order(n) returning the epoch's order of the "
                    f"rows, got {shuffle!r}")


def epoch_order(shuffle, rng, n, comm):
    """(n,) int64: the rows of the next epoch in the order batches take them (see the module's docstring).
    rng: the Trainer's numpy Generator, the same on every rank; comm: distributed.Single or Collective."""
    if not callable(shuffle):
        return rng.permutation(n) if shuffle else np.arange(n, dtype=np.int64)
    with comm.agreement():
        rows = shuffle(n) if isinstance(shuffle, OwnOrder) else _checked_order(shuffle(n), n)
    return comm.broadcast(rows) if comm.size > 1 else rows


def _checked_order(rows, n):
    """rows as a C-contiguous int64 (n,) array; ValueError/TypeError unless it holds each of 0..n-1 once
    (a batch taking a row twice or a row out of range would silently train on the wrong data)."""
    what = "the shuffle function's order"
    array = np.asarray(rows)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{what} must be an integer array of row numbers, got dtype {array.dtype}")
    if array.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},), one entry per row, got shape {array.shape}")
    if n and (array.min() < 0 or array.max() >= n):
        raise ValueError(f"{what} holds row numbers outside 0..{n - 1} (min {array.min()}, max {array.max()})")
    array = np.ascontiguousarray(array, dtype=np.int64)
    if array is rows:
        array = array.copy()  # the caller's array may change later; the epoch reads this one
    if n and not (np.bincount(array, minlength=n) == 1).all():
        raise ValueError(f"{what} must hold every row 0..{n - 1} exactly once; it repeats or misses some")
    return array
