"""The names users choose from, their integer codes for the kernels, and the validated configuration.

Kernels receive small integer codes (not strings) so one compiled function serves every choice.
"""
import math
import numbers
from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np

ACTIVATIONS = {"identity": 0, "relu": 1, "leaky_relu": 2, "tanh": 3, "sigmoid": 4, "elu": 5, "softplus": 6,
               "gelu": 7, "gelu_tanh": 8, "silu": 9}
# Activations whose derivative is not a function of their output (GELU and SiLU are not monotonic): the
# kernels store act'(Z) beside A in the forward pass (cpu/dense_forward.py's slope blocks).
SLOPE_ACTIVATIONS = ("gelu", "gelu_tanh", "silu")
LOSSES = {"mse": 0, "cross_entropy": 1, "bce": 2, "poisson": 3, "huber": 4, "l1": 5}
CLASSIFICATION_LOSSES = ("cross_entropy", "bce")  # the ones with an accuracy
OPTIMIZERS = {"sgd": 0, "adam": 1, "adamw": 2, "adagrad": 3, "rmsprop": 4}
DEVICES = ("cpu", "cuda")

# PyTorch's default negative slope for LeakyReLU.
LEAKY_SLOPE = 0.01
# PyTorch's defaults where they differ between optimizers, used when the user gives none.
ADAMW_DEFAULT_WEIGHT_DECAY = 0.01
DEFAULT_EPS = {"adagrad": 1e-10}  # every other optimizer: 1e-8
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")


def _choice(kind, value, valid):
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(sorted(valid))}")
    return value


def finite_number(name, value, low=None, low_inclusive=True, high=None, high_inclusive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        bound = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {bound} {low}, got {value!r}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        bound = "<=" if high_inclusive else "<"
        raise ValueError(f"{name} must be {bound} {high}, got {value!r}")
    return float(value)


# The kernels compute in float32: a setting beyond its range would be inf (or eps flushed to 0) there.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32; the kernels flush subnormals to zero
# Dropout keeps a unit when a 24-bit hash reaches rate * 2^24 (rounded): rates closer to 1 than this would
# drop every unit and scale by 1 / (1 - rate) beyond float32's precision.
MAX_DROPOUT = 1.0 - 2.0 ** -24


def float32_number(name, value, low=None, low_inclusive=True, high=None, high_inclusive=False):
    """finite_number, also within float32's range: |value| <= FLOAT32_MAX, and 0 or |value| >= FLOAT32_TINY."""
    value = finite_number(name, value, low, low_inclusive, high, high_inclusive)
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"{name}={value!r} is beyond float32's range (max {FLOAT32_MAX:.4g}), which the "
                         "kernels compute in")
    if value != 0 and abs(value) < FLOAT32_TINY:
        raise ValueError(f"{name}={value!r} is below float32's smallest normal number ({FLOAT32_TINY:.4g}) and "
                         "would be 0 in the kernels")
    return value


def _activation_choice(activation, n_hidden):
    """One activation name, or a list/tuple of one per hidden layer (returned as a tuple)."""
    if isinstance(activation, str):
        return _choice("activation", activation, ACTIVATIONS)
    if not isinstance(activation, (list, tuple)):
        raise TypeError(f"activation must be a name or a list of one name per hidden layer, got {activation!r}")
    if len(activation) != n_hidden:
        raise ValueError(f"activation lists {len(activation)} names, but the network has {n_hidden} hidden "
                         f"layer{'s' if n_hidden != 1 else ''} (one name each)")
    return tuple(_choice("activation", a, ACTIVATIONS) for a in activation)


def positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


@dataclass(frozen=True)
class Config:
    """Everything that defines a Trainer; validated on construction, saved in checkpoints as JSON."""
    sizes: Tuple[int, ...]
    activation: Union[str, Tuple[str, ...]] = "relu"  # one name, or one per hidden layer
    loss: str = "mse"
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 32
    device: str = "cpu"
    seed: Optional[int] = None
    weight_decay: Optional[float] = None
    momentum: float = 0.0
    nesterov: bool = False
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: Optional[float] = None
    eps_hat: bool = False
    alpha: float = 0.99
    clip_norm: Optional[float] = None
    dropout: float = 0.0
    decay_biases: bool = True
    input_dropout: float = 0.0
    max_norm: Optional[float] = None
    huber_delta: float = 1.0
    label_smoothing: float = 0.0

    def __post_init__(self):
        sizes = self.sizes
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
            raise TypeError(f"sizes must be a list of layer widths, got {sizes!r}")
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least an input and an output width, got {list(sizes)!r}")
        object.__setattr__(self, "sizes", tuple(positive_int("every entry of sizes", s) for s in sizes))
        object.__setattr__(self, "activation", _activation_choice(self.activation, len(self.sizes) - 2))
        _choice("loss", self.loss, LOSSES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("device", self.device, DEVICES)
        if self.loss == "cross_entropy" and self.sizes[-1] < 2:
            raise ValueError("cross_entropy needs at least 2 output classes; for one output use loss='bce'")
        object.__setattr__(self, "lr", float32_number("lr", self.lr, low=0.0))
        object.__setattr__(self, "batch_size", positive_int("batch_size", self.batch_size))
        if self.seed is not None:
            seed = self.seed
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
                raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")
            object.__setattr__(self, "seed", int(seed))
        wd = self.weight_decay
        if wd is None:
            wd = ADAMW_DEFAULT_WEIGHT_DECAY if self.optimizer == "adamw" else 0.0
        object.__setattr__(self, "weight_decay", float32_number("weight_decay", wd, low=0.0))
        object.__setattr__(self, "momentum", finite_number("momentum", self.momentum, low=0.0, high=1.0))
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"nesterov must be True or False, got {self.nesterov!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0.0):
            raise ValueError("nesterov=True needs optimizer='sgd' with momentum > 0")
        if self.momentum and self.optimizer not in MOMENTUM_OPTIMIZERS:
            raise ValueError(f"momentum applies to optimizer='sgd' or 'rmsprop', not {self.optimizer!r} "
                             "(Adam's first-moment decay is betas[0])")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        betas = tuple(finite_number("each of betas", b, low=0.0, high=1.0) for b in self.betas)
        object.__setattr__(self, "betas", betas)
        eps = DEFAULT_EPS.get(self.optimizer, 1e-8) if self.eps is None else self.eps
        object.__setattr__(self, "eps", float32_number("eps", eps, low=0.0, low_inclusive=False))
        if not isinstance(self.eps_hat, bool):
            raise TypeError(f"eps_hat must be True or False, got {self.eps_hat!r}")
        if self.eps_hat and self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"eps_hat applies to optimizer='adam' or 'adamw', not {self.optimizer!r}")
        object.__setattr__(self, "alpha", finite_number("alpha", self.alpha, low=0.0, high=1.0))
        if self.clip_norm is not None:
            object.__setattr__(self, "clip_norm", float32_number("clip_norm", self.clip_norm, low=0.0,
                                                                 low_inclusive=False))
        object.__setattr__(self, "dropout", finite_number("dropout", self.dropout, low=0.0, high=MAX_DROPOUT,
                                                          high_inclusive=True))
        if not isinstance(self.decay_biases, bool):
            raise TypeError(f"decay_biases must be True or False, got {self.decay_biases!r}")
        if self.dropout and len(self.sizes) < 3:
            raise ValueError("dropout applies to hidden layers, and this network has none")
        object.__setattr__(self, "input_dropout", finite_number("input_dropout", self.input_dropout, low=0.0,
                                                                high=MAX_DROPOUT, high_inclusive=True))
        object.__setattr__(self, "huber_delta", float32_number("huber_delta", self.huber_delta, low=0.0,
                                                               low_inclusive=False))
        if self.huber_delta != 1.0 and self.loss != "huber":
            raise ValueError(f"huber_delta applies to loss='huber', not {self.loss!r}")
        object.__setattr__(self, "label_smoothing", finite_number("label_smoothing", self.label_smoothing, low=0.0,
                                                                  high=1.0, high_inclusive=True))
        if self.label_smoothing and self.loss != "cross_entropy":
            raise ValueError(f"label_smoothing applies to loss='cross_entropy', not {self.loss!r}")
        if self.max_norm is not None:
            object.__setattr__(self, "max_norm", float32_number("max_norm", self.max_norm, low=0.0,
                                                                low_inclusive=False))

    @property
    def n_layers(self):
        return len(self.sizes) - 1

    @property
    def hidden_activations(self):
        """The activation of each hidden layer: a tuple of len(sizes) - 2 names."""
        if isinstance(self.activation, str):
            return (self.activation,) * (len(self.sizes) - 2)
        return self.activation

    def activation_codes(self):
        """(L,) int64 for the kernels: entry l is the activation applied to layer l's output (the last,
        the output layer's, is identity: its activation lives in the loss)."""
        return np.array([ACTIVATIONS[a] for a in self.hidden_activations] + [ACTIVATIONS["identity"]], np.int64)

    def to_dict(self):
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        d["betas"] = list(self.betas)
        if not isinstance(self.activation, str):
            d["activation"] = list(self.activation)
        return d

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["sizes"] = tuple(d["sizes"])
        d["betas"] = tuple(d["betas"])
        return cls(**d)


class LossSettings(NamedTuple):
    """What the loss kernels need, passed to the compiled CPU kernels as a tuple: the loss code, Huber's
    delta (loss "huber") and the label smoothing (loss "cross_entropy")."""
    kind: int
    huber_delta: float
    label_smoothing: float

    @classmethod
    def of(cls, config):
        return cls(LOSSES[config.loss], config.huber_delta, config.label_smoothing)


class OptimizerSettings(NamedTuple):
    """What one optimizer update needs, passed to the compiled kernels as a tuple. step: 1 for the first."""
    kind: int
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    momentum: float
    nesterov: bool
    step: int
    alpha: float
    clip_norm: float  # 0: no clipping
    eps_hat: bool  # Adam's eps added before the bias correction of sqrt(v) (Config.eps_hat)
    max_norm: float  # after the update, every unit's incoming weights held to this norm; 0: no constraint

    @classmethod
    def for_step(cls, config, lr, step):
        return cls(kind=OPTIMIZERS[config.optimizer], lr=lr, beta1=config.betas[0], beta2=config.betas[1],
                   eps=config.eps, weight_decay=config.weight_decay, momentum=config.momentum,
                   nesterov=config.nesterov, step=step, alpha=config.alpha, clip_norm=config.clip_norm or 0.0,
                   eps_hat=config.eps_hat, max_norm=config.max_norm or 0.0)
