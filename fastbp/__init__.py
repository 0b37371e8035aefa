"""fastbp: multilayer perceptrons trained by backpropagation with fused, Numba-compiled kernels."""
from . import reference
from .history import History
from .trainer import Trainer

__version__ = "0.1.0"
__all__ = ["Trainer", "History", "reference", "__version__"]
