"""Learning-rate schedules: the learning rate as a function of the epoch or step count.

A schedule is given to the Trainer (`Trainer(..., schedule=CosineWarmup(total=1000, warmup=100))`) and
sets `trainer.lr` from the base learning rate (the Trainer's `lr`) before every epoch (interval="epoch")
or every step (interval="step"). Its configuration and state are part of a checkpoint.
Formulas follow torch.optim.lr_scheduler (StepLR, ExponentialLR, ReduceLROnPlateau) and the usual
linear-warm-up cosine decay.
"""
import math
import numbers

from .options import finite_number, positive_int

INTERVALS = ("epoch", "step")


class Schedule:
    """Base class. Subclasses implement lr(base_lr, count); count is the number of epochs or steps done."""
    interval = "epoch"

    def lr(self, base_lr, count):
        raise NotImplementedError

    def on_epoch_end(self, logs):
        """Called with the epoch's metrics (e.g. {"loss": ..., "val_loss": ...}) after every epoch."""

    # checkpoint support: constructor arguments and mutable state, both JSON-serialisable
    def config(self):
        return {"interval": self.interval}

    def state(self):
        return {}

    def load_state(self, state):
        pass

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _interval(value):
    if value not in INTERVALS:
        raise ValueError(f"unknown interval {value!r}; valid: {', '.join(INTERVALS)}")
    return value


class Constant(Schedule):
    def __init__(self, interval="epoch"):
        self.interval = _interval(interval)

    def lr(self, base_lr, count):
        return base_lr


class StepDecay(Schedule):
    """base_lr * gamma ** (count // step_size) (PyTorch's StepLR)."""

    def __init__(self, step_size, gamma=0.1, interval="epoch"):
        self.step_size = positive_int("step_size", step_size)
        self.gamma = finite_number("gamma", gamma, low=0.0)
        self.interval = _interval(interval)

    def lr(self, base_lr, count):
        return base_lr * self.gamma ** (count // self.step_size)

    def config(self):
        return {"step_size": self.step_size, "gamma": self.gamma, "interval": self.interval}


class ExponentialDecay(Schedule):
    """base_lr * gamma ** count (PyTorch's ExponentialLR)."""

    def __init__(self, gamma, interval="epoch"):
        self.gamma = finite_number("gamma", gamma, low=0.0)
        self.interval = _interval(interval)

    def lr(self, base_lr, count):
        return base_lr * self.gamma ** count

    def config(self):
        return {"gamma": self.gamma, "interval": self.interval}


class CosineWarmup(Schedule):
    """Linear warm-up from base_lr / warmup to base_lr over `warmup` counts, then cosine decay to min_lr
    at count `total`, then min_lr."""

    def __init__(self, total, warmup=0, min_lr=0.0, interval="step"):
        self.total = positive_int("total", total)
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or not 0 <= warmup < self.total:
            raise ValueError(f"warmup must be an integer in [0, total), got {warmup!r}")
        self.warmup = warmup
        self.min_lr = finite_number("min_lr", min_lr, low=0.0)
        self.interval = _interval(interval)

    def lr(self, base_lr, count):
        if count < self.warmup:
            return base_lr * (count + 1) / self.warmup
        progress = min(1.0, (count - self.warmup) / (self.total - self.warmup))
        return self.min_lr + 0.5 * (base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def config(self):
        return {"total": self.total, "warmup": self.warmup, "min_lr": self.min_lr, "interval": self.interval}


class ReduceOnPlateau(Schedule):
    """Multiplies the rate by `factor` when `monitor` has not improved by more than min_delta for
    `patience` epochs, never below min_lr (PyTorch's ReduceLROnPlateau with threshold_mode='abs')."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_delta=1e-4, min_lr=0.0, mode="auto"):
        self.monitor = monitor
        self.factor = finite_number("factor", factor, low=0.0, low_inclusive=False, high=1.0)
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0:
            raise ValueError(f"patience must be a non-negative integer, got {patience!r}")
        self.patience = patience
        self.min_delta = finite_number("min_delta", min_delta, low=0.0)
        self.min_lr = finite_number("min_lr", min_lr, low=0.0)
        self.mode = resolve_mode(mode, monitor)
        self.interval = "epoch"
        self.scale, self.best, self.wait = 1.0, None, 0

    def lr(self, base_lr, count):
        return max(self.min_lr, base_lr * self.scale)

    def on_epoch_end(self, logs):
        current = monitored_value(logs, self.monitor, type(self).__name__)
        if improved(current, self.best, self.mode, self.min_delta):
            self.best, self.wait = current, 0
            return
        self.wait += 1
        if self.wait > self.patience:
            self.scale *= self.factor
            self.wait = 0

    def config(self):
        return {"monitor": self.monitor, "factor": self.factor, "patience": self.patience,
                "min_delta": self.min_delta, "min_lr": self.min_lr, "mode": self.mode}

    def state(self):
        return {"scale": self.scale, "best": self.best, "wait": self.wait}

    def load_state(self, state):
        self.scale, self.best, self.wait = state["scale"], state["best"], state["wait"]


SCHEDULES = {cls.__name__: cls for cls in (Constant, StepDecay, ExponentialDecay, CosineWarmup, ReduceOnPlateau)}


def to_dict(schedule):
    name = type(schedule).__name__
    if SCHEDULES.get(name) is not type(schedule):
        raise ValueError(f"only the built-in schedules ({', '.join(SCHEDULES)}) can be saved in a checkpoint, "
                         f"not {name}")
    return {"name": name, "config": schedule.config(), "state": schedule.state()}


def from_dict(d):
    if d["name"] not in SCHEDULES:
        raise ValueError(f"unknown schedule {d['name']!r}; valid: {', '.join(SCHEDULES)}")
    schedule = SCHEDULES[d["name"]](**d["config"])
    schedule.load_state(d["state"])
    return schedule


# ---- shared by schedules and callbacks that watch a metric ----

def resolve_mode(mode, monitor):
    """'min' or 'max'; 'auto' means max for accuracies, min for everything else (Keras's rule)."""
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"unknown mode {mode!r}; valid: auto, max, min")
    return mode


def monitored_value(logs, monitor, who):
    if monitor not in logs:
        raise ValueError(f"{who} monitors {monitor!r}, which this fit does not produce; available: "
                         f"{', '.join(sorted(logs))} (val_* needs validation_data or validation_split)")
    return logs[monitor]


def improved(current, best, mode, min_delta):
    if best is None:
        return True
    return current < best - min_delta if mode == "min" else current > best + min_delta
