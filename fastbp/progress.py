"""What fit prints: a tqdm bar per epoch on a terminal, one line per epoch otherwise."""
import sys


def _is_terminal(stream):
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class EpochProgress:
    """verbose 0: nothing; 1: a progress bar (samples/s, running loss) when stdout is a terminal, then the
    epoch's line; else one line per epoch; 2: one line per epoch (Keras's levels)."""

    def __init__(self, verbose, epochs, n_samples, stream=None):
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        self.stream = stream or sys.stdout
        self.bar_wanted = verbose == 1 and _is_terminal(self.stream)
        self.lines_wanted = verbose == 2 or (verbose == 1 and not self.bar_wanted)
        self.epochs, self.n = epochs, n_samples
        self.bar = None

    def compiling(self):
        """Said before a first run compiles the kernels (seconds, while nothing else moves)."""
        if self.bar_wanted or self.lines_wanted:
            print("fastbp: compiling the kernels for this network (once per machine and version: later runs load "
                  "them from Numba's cache) ...", file=self.stream, flush=True)

    def start_epoch(self, epoch):
        if self.bar_wanted:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.n, unit="samples", unit_scale=True, file=self.stream, leave=True,
                            desc=f"epoch {epoch + 1}/{self.epochs}", dynamic_ncols=True)

    def batch_done(self, rows, running_loss):
        if self.bar is not None:
            self.bar.update(rows)
            self.bar.set_postfix(loss=f"{running_loss:.4f}", refresh=False)

    def end_epoch(self, epoch, logs, seconds, samples=None):
        """samples: the epoch's rows when they were not known at the start (a stream)."""
        if self.bar is not None:
            # The metrics go on a line of their own: as the bar's postfix, a terminal of 80 columns cut
            # them off (accuracy and val_accuracy were lost).
            self.bar.close()
            self.bar = None
        if self.bar_wanted or self.lines_wanted:
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
            print(f"epoch {epoch + 1}/{self.epochs}: {metrics}  {(samples or self.n) / seconds:,.0f} samples/s",
                  file=self.stream, flush=True)

    def abort(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
