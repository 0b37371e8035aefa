"""The helper threads of split steps: run_steps called on several threads at once (serial.py).

A split call is the compiled run_steps (which releases the GIL) entered by the calling thread and by
threads - 1 helpers with the same arguments; the threads claim the steps' parts through the shared
counters in `claims` (claims.py). The helpers are plain Python threads of a small pool, not a Numba
parallel region: a parallel function calling run_steps took 5 s to compile on top of run_steps itself
(measured here), where these threads call the already compiled one. A hand-off through the pool costs
tens of microseconds a call, paid once per chunk of steps.

The call returns only when every helper it asked for has returned, so no thread ever runs on the
arguments of a finished call. A helper that starts late (the pool busy with another Trainer's call)
finds every task claimed and returns at once: the calling thread alone can run every task, so no call
waits on a thread that has not started.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .claims import STOP

_pool = None
_pool_size = 0
_pool_lock = threading.Lock()


def _helpers(count):
    """A pool with at least `count` threads, for this process (a forked child starts its own)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < count:
            old = _pool
            _pool, _pool_size = ThreadPoolExecutor(max_workers=count, thread_name_prefix="fastbp-split"), count
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _forget_pool():
    """In a forked child: the parent's pool threads do not exist here, and its lock may have been held by
    a thread that does not exist either."""
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_split(run_steps, threads, args, claims, n_steps):
    """run_steps(*args) on `threads` threads at once (the calling one included), args ending with claims:
    the steps applied (run_steps' return value)."""
    claims[:] = 0
    futures = [_helpers(threads - 1).submit(run_steps, *args) for _ in range(threads - 1)]
    try:
        run_steps(*args)
    finally:
        _wait_for_helpers(futures)
    stop = int(claims[STOP])
    return stop - 1 if stop else n_steps


def _wait_for_helpers(futures):
    """Every helper's return (its exception re-raised). A KeyboardInterrupt while waiting (a Ctrl-C that no
    guard holds back) is raised only once the helpers have returned: until then they still change the
    state, and an exception must leave it that of whole steps."""
    interrupted = None
    for future in futures:
        while True:
            try:
                future.result()
                break
            except KeyboardInterrupt as exc:
                interrupted = exc
    if interrupted is not None:
        raise interrupted
