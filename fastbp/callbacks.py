"""Callbacks for Trainer.fit, on Keras's model: objects with any of these methods, called between epochs.

    on_train_begin(trainer)
    on_epoch_end(epoch, logs, trainer)    epoch: 0-based index; logs: {"loss": ..., "val_loss": ..., ...}
    on_train_end(trainer)

Setting `trainer.stop_training = True` ends fit after the current epoch. Subclass Callback for no-op
defaults, or pass any object that has the methods it needs.
"""
import os

from .schedules import improved, monitored_value, resolve_mode


class Callback:
    def on_train_begin(self, trainer):
        pass

    def on_epoch_end(self, epoch, logs, trainer):
        pass

    def on_train_end(self, trainer):
        pass


class EarlyStopping(Callback):
    """Stops when `monitor` has not improved by more than min_delta for `patience` epochs.

    restore_best_weights: at the end of training, put back the parameters of the best epoch seen
    (optimizer state is left as it is, as in Keras). verbose=1: a line when it stops training and when
    it restores weights (Keras's messages; with MPI, rank 0's)."""

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto", restore_best_weights=False,
                 verbose=0):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = resolve_mode(mode, monitor)
        self.restore_best_weights = restore_best_weights
        self.verbose = verbose
        self.best = self.best_epoch = self.best_params = None
        self.wait = 0
        self.stopped_epoch = None

    def on_train_begin(self, trainer):
        self.best = self.best_epoch = self.best_params = None
        self.wait = 0
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs, trainer):
        current = monitored_value(logs, self.monitor, "EarlyStopping")
        if improved(current, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                self.best_params = trainer._flat_params()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.stop_training = True
            self._say(trainer, f"Epoch {epoch + 1}: early stopping ({self.monitor} did not improve for "
                               f"{self.wait} epoch{'s' if self.wait != 1 else ''})")

    def on_train_end(self, trainer):
        if self.restore_best_weights and self.best_params is not None:
            trainer._set_flat_params(self.best_params)
            self._say(trainer, f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1} "
                               f"({self.monitor} {self.best:.4g})")

    def _say(self, trainer, line):
        if self.verbose and trainer._comm.is_root:
            print(line, flush=True)


class ModelCheckpoint(Callback):
    """Saves the trainer (Trainer.save: atomic) after every epoch, or only when `monitor` improved.

    path may hold format fields: "{epoch}" (1-based) and any metric, e.g. "model-{epoch:03d}-{val_loss:.3f}.npz".
    """

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto"):
        self.path = os.fspath(path)
        self.monitor, self.save_best_only = monitor, save_best_only
        self.mode = resolve_mode(mode, monitor)
        self.best = None

    def on_epoch_end(self, epoch, logs, trainer):
        if self.save_best_only:
            current = monitored_value(logs, self.monitor, "ModelCheckpoint")
            if not improved(current, self.best, self.mode, 0.0):
                return
            self.best = current
        trainer.save(self.path.format(epoch=epoch + 1, **logs))


class LambdaCallback(Callback):
    """on_epoch_end from a function: LambdaCallback(lambda epoch, logs, trainer: print(epoch, logs))."""

    def __init__(self, on_epoch_end):
        self._on_epoch_end = on_epoch_end

    def on_epoch_end(self, epoch, logs, trainer):
        self._on_epoch_end(epoch, logs, trainer)


def call(callbacks, method, *args):
    for cb in callbacks:
        fn = getattr(cb, method, None)
        if fn is not None:
            fn(*args)


def check(callbacks):
    """A list of objects each with at least one callback method."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks must be a list of callbacks, got {callbacks!r}")
    callbacks = list(callbacks)
    for cb in callbacks:
        if not any(callable(getattr(cb, m, None)) for m in ("on_train_begin", "on_epoch_end", "on_train_end")):
            raise TypeError(f"{cb!r} is not a callback: it has none of on_train_begin, on_epoch_end, on_train_end")
    return callbacks
