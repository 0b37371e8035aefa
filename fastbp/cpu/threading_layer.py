"""Chooses Numba's threading layer before the first parallel kernel runs.

Numba's three layers differ in what survives the field (measured here, numba 0.68):
- omp (GNU OpenMP, Numba's pick when TBB is missing): a fork after any kernel ran kills or hangs the
  child ("fork() called from a process already using GNU OpenMP, this is unsafe"): a multiprocessing
  pool with the fork start method, or joblib's multiprocessing backend, hangs.
- workqueue: fork-safe, but two threads calling parallel kernels at once abort the process.
- tbb (Intel TBB): fork-safe and thread-safe. Its workers sleep when idle instead of spinning, which
  is what a CPU shared with other jobs needs.

So fastbp asks for TBB, from the `tbb` wheel it depends on. Numba's TBB module does not find that
wheel's library by itself (it lands in the environment's lib/, which is on no search path), so it is
loaded here first by its full path. A user's own choice (NUMBA_THREADING_LAYER, or
numba.config.THREADING_LAYER set before fastbp is imported) is kept. Where TBB cannot be loaded, the
fallback is workqueue, and `serialized()` makes its parallel calls take turns across threads.
"""
import ctypes
import os
import sys
import threading

import numba
from numba.np.ufunc import parallel as _numba_parallel

_TBB_LIBRARY = {"win32": "tbb12.dll", "darwin": "libtbb.12.dylib"}.get(sys.platform, "libtbb.so.12")
_workqueue_lock = threading.Lock()


def _load_tbb():
    """True if TBB's runtime is loaded (by us from the tbb wheel, or already by someone else)."""
    try:
        ctypes.CDLL(_TBB_LIBRARY, mode=ctypes.RTLD_GLOBAL)  # already loaded, or on the search path
        return True
    except OSError:
        pass
    try:
        from importlib import metadata
        files = metadata.files("tbb") or []
    except Exception:  # not installed, or unreadable metadata
        return False
    for f in files:
        if f.name == _TBB_LIBRARY:
            try:
                ctypes.CDLL(str(f.locate()), mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                return False
    return False


def configure():
    """Sets numba.config.THREADING_LAYER unless the user chose one or Numba's threads already run."""
    if _numba_parallel._is_initialized:  # too late to choose: the layer in use stays
        return
    tbb_loaded = _load_tbb()  # also when the user asked for TBB ('tbb', 'safe', ...): Numba needs it loaded
    if os.environ.get("NUMBA_THREADING_LAYER") or numba.config.THREADING_LAYER != "default":
        return
    numba.config.THREADING_LAYER = "tbb" if tbb_loaded else "workqueue"


def name():
    """The layer in use ('tbb', 'omp' or 'workqueue'), or None before the first parallel kernel ran."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


class serialized:
    """Context manager around every parallel kernel call: on the workqueue layer, which aborts the
    process when two threads enter it at once, calls from different threads take turns; on the others
    it does nothing."""

    def __enter__(self):
        self._locked = name() not in ("tbb", "omp")  # None: the first call, which may start workqueue
        if self._locked:
            _workqueue_lock.acquire()
        return self

    def __exit__(self, *exc):
        if self._locked:
            _workqueue_lock.release()
        return False
