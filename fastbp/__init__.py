"""fastbp: multilayer perceptrons trained by backpropagation with fused, Numba-compiled kernels."""
from . import callbacks, datasets, reference, schedules
from .history import History
from .trainer import Trainer

__version__ = "0.1.0"
__all__ = ["Trainer", "History", "MLPClassifier", "MLPRegressor", "callbacks", "datasets", "reference", "schedules",
           "__version__"]


def __getattr__(name):
    # The scikit-learn estimators import scikit-learn, an optional dependency: only when asked for.
    if name in ("MLPClassifier", "MLPRegressor"):
        try:
            from . import estimators
        except ImportError as exc:
            raise ImportError(f"fastbp.{name} needs scikit-learn: pip install 'fastbp[sklearn]' ({exc})") from None
        return getattr(estimators, name)
    raise AttributeError(f"module 'fastbp' has no attribute {name!r}")
