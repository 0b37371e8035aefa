"""How many threads the kernels use, and keeping Numba's threads and BLAS's threads from competing.

fastbp's kernels split every product into one block per Numba thread and call BLAS on each block, so
BLAS must run single-threaded meanwhile: two thread pools, each as wide as the machine, would
oversubscribe it (measured here on 2 cores: ~24 ms per small step instead of ~0.2 ms, as OpenMP
workers spin while OpenBLAS's threads wait for a core). The user's own BLAS setting is restored on exit.

The kernels' thread count honours every limit a process can be given (kernel_threads).
"""
import os
import threading

import numba
import threadpoolctl

_lock = threading.RLock()
_controller = None
_threadpoolctl_limit = None  # set through threadpoolctl (threadpool_limits), process-wide like its other limits


class NumbaKernels(threadpoolctl.LibController):
    """fastbp's kernels as a thread pool threadpoolctl knows: `threadpool_limits(1)` (or with
    user_api="openmp", scikit-learn's idiom for OpenMP-style pools) limits them too, and
    threadpool_info() lists them. Matched by the library of Numba's threading layer."""
    user_api = "openmp"
    internal_api = "numba"
    filename_prefixes = ("tbbpool", "omppool", "workqueue")

    def get_num_threads(self):
        return numba.config.NUMBA_NUM_THREADS if _threadpoolctl_limit is None else _threadpoolctl_limit

    def set_num_threads(self, num_threads):
        global _threadpoolctl_limit
        _threadpoolctl_limit = None if num_threads >= numba.config.NUMBA_NUM_THREADS else max(1, int(num_threads))

    def get_version(self):
        return numba.__version__


threadpoolctl.register(NumbaKernels)


def _threadpools():
    """threadpoolctl's view of the loaded BLAS and OpenMP libraries (looked up once)."""
    global _controller
    with _lock:
        if _controller is None:
            import scipy.linalg.cython_blas  # noqa: F401  (the BLAS the kernels call must be loaded)
            from threadpoolctl import ThreadpoolController
            _controller = ThreadpoolController()
    return _controller


_blas = None
_openmp = None


def blas_libraries():
    """The BLAS libraries loaded when first asked (SciPy's, which the kernels call, among them)."""
    global _blas
    if _blas is None:
        _blas = _threadpools().select(user_api="blas").lib_controllers
    return _blas


def _openmp_libraries():
    """The OpenMP runtimes loaded when first asked (not fastbp's own kernels: _threadpoolctl_limit)."""
    global _openmp
    if _openmp is None:
        _openmp = [lib for lib in _threadpools().select(user_api="openmp").lib_controllers
                   if not isinstance(lib, NumbaKernels)]
    return _openmp


def _env_limit(name):
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = int(text.split(",")[0])  # OpenMP's nested form "4,2": the outer level is ours
    except ValueError:
        return None
    return value if value > 0 else None


def limit():
    """The most threads this process should run kernels on, from every limit the field sets:
    Numba's own count in the calling thread (NUMBA_NUM_THREADS, numba.set_num_threads: joblib's loky
    workers get NUMBA_NUM_THREADS = cores // n_jobs), the CPUs this process may run on (taskset,
    cgroup cpusets, Slurm), OMP_NUM_THREADS, and limits set through threadpoolctl (threadpool_limits(1)
    around a call: on the kernels themselves, see NumbaKernels, and on any OpenMP library loaded)."""
    limits = [numba.get_num_threads()]
    if _threadpoolctl_limit is not None:
        limits.append(_threadpoolctl_limit)
    if hasattr(os, "sched_getaffinity"):
        limits.append(len(os.sched_getaffinity(0)))
    env = _env_limit("OMP_NUM_THREADS")
    if env:
        limits.append(env)
    for lib in _openmp_libraries():
        limits.append(lib.num_threads)
    return max(1, min(limits))


def check_requested(threads):
    """Trainer(threads=...): None (fastbp chooses) or an integer in [1, Numba's maximum]."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be None or a positive integer, got {threads!r}")
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads={threads} is more than Numba's maximum of {numba.config.NUMBA_NUM_THREADS} "
                         "(set NUMBA_NUM_THREADS before starting Python to raise it)")
    return threads


def per_rank(node_ranks):
    """Threads for one of node_ranks MPI ranks sharing this machine: limit(), split evenly among them
    unless the launcher already bound each rank to its own CPUs (then they do not share them)."""
    threads = limit()
    bound = hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) < (os.cpu_count() or 1)
    return threads if bound else max(1, threads // node_ranks)


def kernel_threads(requested):
    """The thread count for the next compiled call: `requested` (Trainer(threads=...)) if given, capped by
    Numba's maximum, else limit()."""
    if requested is not None:
        return min(requested, numba.config.NUMBA_NUM_THREADS)
    return limit()


_active = 0        # how many blas_single_threaded blocks are open, in any thread
_saved_counts = []


_local_setters = None
_saved_local = []
_saved_counts_active = [False]  # whether _saved_counts holds counts to restore when the last block closes


def _openblas_setters():
    """openblas_set_num_threads_local of each loaded OpenBLAS that has it (0.3.27 on). OpenBLAS (0.3.30 here,
    pthreads builds) ignores openblas_set_num_threads from any thread but the main one, so a Trainer trained
    from another thread called a BLAS on all cores beside its own threads; this setter is honoured from any
    thread. In these builds it is not per thread but process-wide (measured: three threads each setting
    and restoring it around their calls left a quarter of the calls multithreaded), so it is set and
    restored under the same process-wide count as the other limits."""
    global _local_setters
    if _local_setters is None:
        import ctypes
        setters = []
        for lib in blas_libraries():
            setter = getattr(getattr(lib, "dynlib", None), "openblas_set_num_threads_local", None)
            if setter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
                setters.append(setter)
        _local_setters = setters
    return _local_setters


class blas_single_threaded:
    """Context manager: every loaded BLAS runs on one thread inside, as before outside, whichever thread
    enters it.

    Nests, and is safe from several threads at once: the first block to open saves the user's thread
    counts and the last one to close restores them. calling_thread_only=True: only BLAS calls made from
    the entering thread need to be single-threaded (the serial path calls BLAS from nowhere else); when
    every loaded BLAS has OpenBLAS's setter, that is all that is set (a few ctypes calls, where
    threadpoolctl's route costs about 10 us a block)."""

    def __init__(self, calling_thread_only=False):
        self.calling_thread_only = calling_thread_only

    def __enter__(self):
        global _active, _saved_counts, _saved_local
        libs, setters = blas_libraries(), _openblas_setters()
        with _lock:
            # The counts are read before OpenBLAS's setter runs and restored after it is undone: in the
            # builds seen here both act on the same process-wide number.
            set_counts = not _saved_counts_active[0] and not (self.calling_thread_only and len(setters) == len(libs))
            if set_counts:
                _saved_counts = [lib.num_threads for lib in libs]
            # Set in every entering thread: where the setter is per thread, each thread needs its own.
            previous = [setter(1) for setter in setters]
            if _active == 0:
                _saved_local = previous
            if set_counts:
                for lib in libs:
                    lib.set_num_threads(1)
                _saved_counts_active[0] = True
            _active += 1
        return self

    def __exit__(self, *exc):
        global _active
        with _lock:
            _active -= 1
            if _active == 0:
                if _saved_counts_active[0]:
                    for lib, n in zip(blas_libraries(), _saved_counts):
                        lib.set_num_threads(n)
                    _saved_counts_active[0] = False
                for setter, previous in zip(_openblas_setters(), _saved_local):
                    setter(previous)
        return False
