"""A Trainer used from many places at once: calls take turns, one thread trains at a time, and Ctrl-C lands
between whole steps.

- CallGuard: one re-entrant lock per Trainer, held for every call that touches the network state or the
  backend's workspaces (a step, a whole predict or evaluate, a save). Concurrent predicts are served one
  after another, each on one consistent set of parameters; a predict during another thread's fit sees the
  parameters of a whole number of steps. Training (fit, step) from a second thread while one trains is a
  RuntimeError: two loops interleaving their steps on one model is never what anyone meant.
- whole_steps: a KeyboardInterrupt (SIGINT) arriving inside is held back and raised at the block's end
  (or where the block calls deliver(), between two steps), so the parameters, the optimizer moments and
  the step count always describe the same whole number of steps. Only the main thread receives
  signals, so elsewhere it does nothing. The handler is installed once per block (two sigaction calls,
  ~10 us), not once per step.
"""
import _signal  # signal's C functions: the signal module wraps each call in enum conversions (~5 us)
import signal
import threading


class CallGuard:
    def __init__(self):
        self.lock = threading.RLock()
        self._trainer_thread = None  # ident of the thread inside fit/step, if any
        self._depth = 0

    def training(self, what):
        """Context manager marking the calling thread as the one training for the block; RuntimeError if
        another thread is. what: the call's name, for the message."""
        return _Training(self, what)


class _Training:
    """CallGuard.training's block (a class, not a generator: entered on every Trainer.step)."""

    def __init__(self, guard, what):
        self.guard, self.what = guard, what

    def __enter__(self):
        guard, me = self.guard, threading.get_ident()
        with guard.lock:
            if guard._trainer_thread not in (None, me):
                raise RuntimeError(f"{self.what} called while another thread is training this Trainer; train one "
                                   "model from one thread at a time (predict and evaluate may be called from any "
                                   "thread)")
            guard._trainer_thread = me
            guard._depth += 1
        return self

    def __exit__(self, *exc):
        guard = self.guard
        with guard.lock:
            guard._depth -= 1
            if guard._depth == 0:
                guard._trainer_thread = None
        return False


class whole_steps:
    """Context manager that defers SIGINT's handler to the end of the block (see the module's docstring).

    A handler the user installed runs then too, with the signal's frame; SIG_IGN and SIG_DFL are left as
    they are."""

    def __enter__(self):
        self._previous = None
        self._received = None
        if threading.current_thread() is not threading.main_thread():
            return self
        previous = _signal.getsignal(signal.SIGINT)
        if callable(previous):
            self._previous = previous
            _signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum, frame):
        self._received = (signum, frame)

    def pending(self):
        """Whether a signal is held back, waiting for deliver()."""
        return self._received is not None

    def request(self):
        """Makes the next deliver() act as if SIGINT had arrived here too: MPI ranks that did not receive
        the signal stop after the same step as one that did (distributed.py)."""
        if self._received is None:
            self._received = (signal.SIGINT, None)

    def deliver(self):
        """Runs the held-back handler now, if a signal arrived (the default one raises KeyboardInterrupt;
        outside the main thread, or under SIG_IGN/SIG_DFL, a request() raises KeyboardInterrupt).
        Call it only where the state is whole (between steps)."""
        if self._received is not None:
            received, self._received = self._received, None
            if self._previous is None:
                raise KeyboardInterrupt
            self._previous(*received)

    def __exit__(self, *exc):
        if self._previous is not None:
            _signal.signal(signal.SIGINT, self._previous)
            self.deliver()
        return False
