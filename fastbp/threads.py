"""Keeps Numba's threads and BLAS's threads from competing for the cores.

fastbp's kernels split every product into one block per Numba thread and call BLAS on each block, so
BLAS must run single-threaded meanwhile: two thread pools, each as wide as the machine, would
oversubscribe it (measured here on 2 cores: ~24 ms per small step instead of ~0.2 ms, as OpenMP
workers spin while OpenBLAS's threads wait for a core). The user's own BLAS setting is restored on exit.
"""
import threading

_lock = threading.RLock()
_libraries = None


def _blas_libraries():
    global _libraries
    with _lock:
        if _libraries is None:
            import scipy.linalg.cython_blas  # noqa: F401  (the BLAS the kernels call must be loaded)
            from threadpoolctl import ThreadpoolController
            _libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    return _libraries


_active = 0        # how many blas_single_threaded blocks are open, in any thread
_saved_counts = []


class blas_single_threaded:
    """Context manager: every loaded BLAS runs on one thread inside, as before outside.

    Nests, and is safe from several threads at once: the first block to open saves the user's thread
    counts and the last one to close restores them."""

    def __enter__(self):
        global _active, _saved_counts
        libs = _blas_libraries()
        with _lock:
            if _active == 0:
                _saved_counts = [lib.num_threads for lib in libs]
                for lib in libs:
                    lib.set_num_threads(1)
            _active += 1
        return self

    def __exit__(self, *exc):
        global _active
        with _lock:
            _active -= 1
            if _active == 0:
                for lib, n in zip(_blas_libraries(), _saved_counts):
                    lib.set_num_threads(n)
        return False
