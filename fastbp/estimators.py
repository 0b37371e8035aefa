"""scikit-learn estimators on fastbp's kernels: MLPClassifier and MLPRegressor.

They take scikit-learn's MLP parameters and conventions (sklearn.neural_network), so they drop into a
Pipeline, GridSearchCV or cross_val_score. Needs scikit-learn (pip install 'fastbp[sklearn]').

Differences from scikit-learn's own MLP, where fastbp keeps PyTorch's conventions:
- alpha is applied as L2 weight decay alpha / batch_size on every parameter, biases included
  (scikit-learn penalises weights only);
- solver is 'adam' or 'sgd' (plus fastbp's 'adamw', 'adagrad', 'rmsprop'); no 'lbfgs';
- convergence: training stops when the training loss (or, with early_stopping, the validation score)
  has not improved by tol for n_iter_no_change epochs, as in scikit-learn.

Memory-mapped X (np.load(path, mmap_mode="r")) is checked in place and read batch by batch, except
with early_stopping, whose random validation split copies the rows.

comm (fastbp's own): an mpi4py communicator for data-parallel training (see Trainer); every rank calls
fit with the same X and y, and gets the same fitted model.
"""
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from . import distributed
from .callbacks import EarlyStopping
from .trainer import Trainer

# scikit-learn's activation names, and fastbp's own.
_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                "sigmoid": "sigmoid", "leaky_relu": "leaky_relu"}
_SOLVERS = ("adam", "sgd", "adamw", "adagrad", "rmsprop")


def _dtypes(mapped):
    """What validate_data may convert X to: nothing for a memory-mapped X (any real dtype; fastbp converts
    its rows per batch instead of copying it whole), else float64 or float32."""
    return None if mapped is not None else [np.float64, np.float32]


class _BaseMLP(BaseEstimator):
    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, comm=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.comm = comm

    # ---- what subclasses define ----
    _loss = None                  # fastbp loss for the data seen
    _early_stopping_monitor = None

    def _encode_targets(self, y, first_call, classes=None):
        raise NotImplementedError

    # ---- shared machinery ----

    def _check_params(self):
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: {', '.join(sorted(_ACTIVATIONS))}")
        if self.solver not in _SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; valid: {', '.join(_SOLVERS)} (no 'lbfgs')")
        hidden = self.hidden_layer_sizes
        hidden = [hidden] if isinstance(hidden, numbers.Integral) else list(hidden)
        if any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h <= 0 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral) or self.max_iter <= 0:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.alpha, numbers.Real) and self.alpha >= 0):
            raise ValueError(f"alpha must be a non-negative number, got {self.alpha!r}")
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or
                                          not isinstance(self.batch_size, numbers.Integral) or self.batch_size <= 0):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {self.batch_size!r}")
        if self.early_stopping and not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        return [int(h) for h in hidden]

    def _batch_size(self, n):
        return min(200, n) if self.batch_size == "auto" else int(min(self.batch_size, n))

    def _new_trainer(self, n_features, n_outputs, n_samples):
        hidden = self._check_params()
        batch = self._batch_size(n_samples)
        seed = int(check_random_state(self.random_state).randint(2 ** 31 - 1))
        options = dict(sizes=[n_features, *hidden, n_outputs], activation=_ACTIVATIONS[self.activation],
                       loss=self._loss, optimizer=self.solver, lr=self.learning_rate_init, batch_size=batch,
                       seed=seed, weight_decay=self.alpha / batch)
        if self.solver in ("adam", "adamw"):
            options.update(betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        elif self.solver == "sgd":
            options.update(momentum=self.momentum, nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
        elif self.solver == "rmsprop":
            options.update(momentum=self.momentum)
        return Trainer(**options, comm=self.comm)

    def _fit(self, X, y, incremental, classes=None):
        first_call = not (incremental and hasattr(self, "trainer_"))
        mapped = X if isinstance(X, np.memmap) else None
        X, y = validate_data(self, X, y, reset=first_call, dtype=_dtypes(mapped), multi_output=True,
                             y_numeric=not isinstance(self, ClassifierMixin))
        y = self._encode_targets(y, first_call, classes)
        if mapped is not None:
            X = mapped  # checked in place above; fastbp reads it batch by batch (np.asarray dropped the memmap)
        if first_call:
            self.trainer_ = self._new_trainer(X.shape[1], self._n_trainer_outputs(), X.shape[0])
            self.loss_curve_ = []
            self.n_iter_ = 0
            self.t_ = 0
            self.best_loss_ = np.inf
            self._no_improvement = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = None
        epochs = 1 if incremental else self.max_iter
        val_split = self.validation_fraction if self.early_stopping and not incremental else 0.0
        if val_split and int(round(X.shape[0] * val_split)) < 1:
            raise ValueError(f"early_stopping needs a validation set: validation_fraction={val_split} of "
                             f"{X.shape[0]} samples is empty")
        callbacks = []
        stopper = None
        if not incremental:
            monitor = self._early_stopping_monitor if self.early_stopping else "loss"
            # scikit-learn stops after n_iter_no_change + 1 epochs without an improvement of tol.
            stopper = EarlyStopping(monitor=monitor, patience=self.n_iter_no_change + 1, min_delta=self.tol,
                                    restore_best_weights=self.early_stopping)
            callbacks.append(stopper)
        if val_split:
            # scikit-learn draws a stratified/random validation set; fastbp's validation_split takes the
            # last rows, so shuffle first with the estimator's own random state.
            order = distributed.wrap(self.comm).broadcast(check_random_state(self.random_state)
                                                          .permutation(X.shape[0]))  # rank 0's, on every rank
            X, y = X[order], y[order]
        history = self.trainer_.fit(X, y, epochs=epochs, batch_size=self._batch_size(X.shape[0]),
                                    validation_split=val_split, shuffle=self.shuffle,
                                    verbose=2 if self.verbose else 0, callbacks=callbacks)
        self.loss_curve_.extend(history.history["loss"])
        self.n_iter_ += len(history.epoch)
        self.t_ = self.trainer_.state.step_count
        self.best_loss_ = min(self.best_loss_, min(history.history["loss"]))
        if self.early_stopping and not incremental:
            key = self._early_stopping_monitor
            scores = history.history[key]
            self.validation_scores_.extend(-s if key == "val_loss" else s for s in scores)
            self.best_validation_score_ = max(self.validation_scores_)
        if stopper is not None and stopper.stopped_epoch is None and self.n_iter_ >= self.max_iter:
            warnings.warn(f"fastbp: stochastic optimizer reached max_iter={self.max_iter} before converging",
                          ConvergenceWarning)
        return self

    def fit(self, X, y):
        """Trains from scratch for up to max_iter epochs."""
        return self._fit(X, y, incremental=False)

    def _forward(self, X):
        check_is_fitted(self, "trainer_")
        mapped = X if isinstance(X, np.memmap) else None
        X = validate_data(self, X, reset=False, dtype=_dtypes(mapped))
        if mapped is not None:
            X = mapped
        return self.trainer_.predict(X)

    @property
    def coefs_(self):
        check_is_fitted(self, "trainer_")
        return [W for W, _ in self.trainer_.params]

    @property
    def intercepts_(self):
        check_is_fitted(self, "trainer_")
        return [b for _, b in self.trainer_.params]

    @property
    def n_layers_(self):
        check_is_fitted(self, "trainer_")
        return len(self.trainer_.sizes)

    @property
    def n_outputs_(self):
        check_is_fitted(self, "trainer_")
        return self.trainer_.sizes[-1]


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multilayer-perceptron classifier: softmax + cross-entropy for several classes, a sigmoid output
    with binary cross-entropy for two (as scikit-learn). Labels may be any hashable values."""
    _early_stopping_monitor = "val_accuracy"

    @property
    def _loss(self):
        return "bce" if len(self.classes_) == 2 else "cross_entropy"

    def _n_trainer_outputs(self):
        return 1 if len(self.classes_) == 2 else len(self.classes_)

    def _encode_targets(self, y, first_call, classes=None):
        if np.ndim(y) == 2 and y.shape[1] != 1:
            raise ValueError("fastbp.MLPClassifier takes 1-D class labels (no multi-label or multi-output)")
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if first_call:
            if classes is not None:
                self.classes_ = np.unique(classes)
            else:
                self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise ValueError(f"the data has only one class ({self.classes_[0]!r}); need at least 2")
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y holds labels {unknown.tolist()[:5]} not in classes_ {self.classes_.tolist()[:10]}")
        codes = np.searchsorted(self.classes_, y)
        return codes.astype(np.float32) if len(self.classes_) == 2 else codes

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y). `classes` (all labels that will ever appear) is required on the first call."""
        if not hasattr(self, "trainer_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            if type_of_target(np.asarray(classes)) not in ("binary", "multiclass"):
                raise ValueError("classes must be a 1-D array of labels")
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X):
        """(n_samples, n_classes) class probabilities."""
        P = self._forward(X).astype(np.float64)
        if len(self.classes_) == 2:
            return np.hstack([1 - P, P])
        return P

    def predict_log_proba(self, X):
        return np.log(np.clip(self.predict_proba(X), 1e-300, None))

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    @property
    def out_activation_(self):
        check_is_fitted(self, "trainer_")
        return "logistic" if len(self.classes_) == 2 else "softmax"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multilayer-perceptron regressor: a linear output trained on mean squared error."""
    _loss = "mse"
    _early_stopping_monitor = "val_loss"

    def _n_trainer_outputs(self):
        return self._n_targets

    def _encode_targets(self, y, first_call, classes=None):
        y = np.asarray(y, dtype=np.float64)
        if first_call:
            self._y_was_1d = y.ndim == 1
            self._n_targets = 1 if y.ndim == 1 else y.shape[1]
        y2 = y.reshape(len(y), -1)
        if y2.shape[1] != self._n_targets:
            raise ValueError(f"y has {y2.shape[1]} targets; this estimator was fitted with {self._n_targets}")
        return y2

    def partial_fit(self, X, y):
        """One epoch over (X, y)."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        out = self._forward(X).astype(np.float64)
        return out.ravel() if self._y_was_1d else out

    @property
    def out_activation_(self):
        check_is_fitted(self, "trainer_")
        return "identity"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
