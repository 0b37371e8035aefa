"""scikit-learn estimators on fastbp's kernels: MLPClassifier and MLPRegressor.

They take scikit-learn's MLP parameters and conventions (sklearn.neural_network), so they drop into a
Pipeline, GridSearchCV or cross_val_score. Needs scikit-learn (pip install 'fastbp[sklearn]').

scikit-learn's twin: for the same random_state they make scikit-learn's run, in float32. One generator,
check_random_state(random_state) afresh on every fit and partial_fit call as scikit-learn's, draws in
its order: the initial network (_initial_params: each layer's W, then b, uniform in +-sqrt(6 / (fan_in +
fan_out)), 2 for 'logistic'; lbfgs starts there too), the early-stopping split (train_test_split,
stratified for one- or two-class targets only), and each epoch's shuffle of the last epoch's order,
cut into scikit-learn's batches (_ScikitLearnOrder, through Trainer.fit's shuffle function). Adam is
scikit-learn's (eps_hat: epsilon before the bias correction) and so is SGD's momentum across a change
of learning rate (adaptive, invscaling: _ScikitLearnStopping keeps lr x buffer). What differs is float32
rounding, and each batch's rows summed in increasing order.

Differences from scikit-learn's own MLP, where fastbp keeps PyTorch's conventions:
- alpha is scikit-learn's L2 penalty on the weights (not the biases): with solver='lbfgs' exactly
  (alpha / (2 n_samples) x the squared weights, n_samples the sample weights' sum when given, lbfgs.py);
  with the stochastic solvers as the Trainer's weight decay with decay_biases=False, alpha / (batch_size
  x the mean sample weight) (scikit-learn divides by each batch's rows, or its sample weights' sum: the two
  differ on a last, shorter batch, and by how far a batch's weights stray from the mean);
- sample_weight (fit, partial_fit): the weighted mean loss in fastbp's kernels (sample_weights.py), as
  scikit-learn's; loss_curve_ averages the batches' losses by their rows, as scikit-learn's (the Poisson
  deviance's constant terms excepted: averaged over all rows by their weights, not batch by batch);
- solver is 'lbfgs', 'adam' or 'sgd' (plus fastbp's 'adamw', 'adagrad', 'rmsprop'). 'lbfgs' is full-batch
  L-BFGS through SciPy with fastbp's compiled loss and gradient (max_iter, max_fun, tol as in scikit-learn);
- convergence: training stops when the training loss (or, with early_stopping, the validation score)
  has not improved by tol for n_iter_no_change epochs, as in scikit-learn.

Memory-mapped X (np.load(path, mmap_mode="r")) is checked in place and read batch by batch, early
stopping's validation split included (sources.RowSubset: no copy of the rows). Sparse X (CSR, CSC) is
read batch by batch too, its rows densified per batch only (sources.Rows).

comm (fastbp's own): an mpi4py communicator for data-parallel training (see Trainer); every rank calls
fit with the same X and y, and gets the same fitted model.
"""
import numbers
import warnings

import numpy as np
import scipy.sparse
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data

from . import class_weights, distributed, lbfgs, loop, row_order, sources
from .callbacks import Callback
from .keywords import suggest_keywords
from .sums import squared_weights
from .trainer import Trainer

# scikit-learn's activation names, and fastbp's own. fastbp's estimators also take a list of them, one per
# hidden layer (scikit-learn takes one name).
_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                "sigmoid": "sigmoid", "leaky_relu": "leaky_relu", "elu": "elu", "softplus": "softplus",
                "gelu": "gelu", "gelu_tanh": "gelu_tanh", "silu": "silu"}
_SOLVERS = ("lbfgs", "adam", "sgd", "adamw", "adagrad", "rmsprop")
_LEARNING_RATES = ("constant", "invscaling", "adaptive")  # scikit-learn's schedules, for solver="sgd" only


def _dtypes(mapped):
    """What validate_data may convert X to: nothing for a memory-mapped X (any real dtype; fastbp converts
    its rows per batch instead of copying it whole), else float64 or float32."""
    return None if mapped is not None else [np.float64, np.float32]


class _BaseMLP(BaseEstimator):
    @suggest_keywords
    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 warm_start=False, learning_rate="constant", power_t=0.5, comm=None):
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
        self.max_fun = max_fun
        self.warm_start = warm_start
        self.learning_rate = learning_rate
        self.power_t = power_t
        self.comm = comm

    # ---- what subclasses define ----
    _loss = None                  # fastbp loss for the data seen

    def _loss_scale(self):
        """scikit-learn's loss value (loss_, loss_curve_) over fastbp's loss."""
        raise NotImplementedError

    def _loss_offset(self, y, sample_weight=None):
        """What scikit-learn's loss value over targets y adds to scale x fastbp's: terms without a gradient."""
        return 0.0

    def _gradient_scale(self):
        """scikit-learn's gradient over fastbp's (different from _loss_scale where scikit-learn's loss value
        averages over the outputs and its gradient sums over them)."""
        raise NotImplementedError

    def _encode_targets(self, y, first_call, classes=None, warm_start=False):
        """y as the Trainer takes it. first_call: sets what the targets define (classes_, output count);
        warm_start: a fit continuing the fitted network, which must see the same classes."""
        raise NotImplementedError

    # ---- shared machinery ----

    def _check_params(self):
        names = [self.activation] if isinstance(self.activation, str) else self.activation
        if not isinstance(names, (list, tuple)) or any(not isinstance(a, str) or a not in _ACTIVATIONS
                                                       for a in names):
            raise ValueError(f"unknown activation {self.activation!r}; valid: {', '.join(sorted(_ACTIVATIONS))}, "
                             "or a list of them, one per hidden layer")
        if self.solver not in _SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; valid: {', '.join(_SOLVERS)}")
        hidden = self.hidden_layer_sizes
        hidden = [hidden] if isinstance(hidden, numbers.Integral) else list(hidden)
        if any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h <= 0 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        for name in ("max_iter", "max_fun"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.alpha, numbers.Real) and self.alpha >= 0):
            raise ValueError(f"alpha must be a non-negative number, got {self.alpha!r}")
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or
                                          not isinstance(self.batch_size, numbers.Integral) or self.batch_size <= 0):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {self.batch_size!r}")
        if self.learning_rate not in _LEARNING_RATES:
            raise ValueError(f"unknown learning_rate {self.learning_rate!r}; valid: {', '.join(_LEARNING_RATES)}")
        if isinstance(self.n_iter_no_change, bool) or not (isinstance(self.n_iter_no_change, numbers.Real)
                                                           and self.n_iter_no_change > 0):
            raise ValueError(f"n_iter_no_change must be a positive number (np.inf: never stop early), got "
                             f"{self.n_iter_no_change!r}")
        if self.early_stopping and not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        return [int(h) for h in hidden]

    def _trainer_activation(self):
        """The Trainer's activation argument: fastbp's name, or a tuple of one per hidden layer (a list whose
        length is not the number of hidden layers is the Trainer's ValueError)."""
        if isinstance(self.activation, str):
            return _ACTIVATIONS[self.activation]
        return tuple(_ACTIVATIONS[a] for a in self.activation)

    def _class_table(self, y, incremental):
        """Each class code's weight from class_weight (MLPClassifier), or None; regressors have none."""
        return None

    def _batch_size(self, n):
        return min(200, n) if self.batch_size == "auto" else int(min(self.batch_size, n))

    def _initial_params(self, random_state, sizes):
        """scikit-learn's initial network (its _initialize and _init_coef): layer by layer, W (fan_in,
        fan_out) then b (fan_out,), each uniform in +-sqrt(6 / (fan_in + fan_out)) (2 instead of 6 with the
        logistic activation), drawn in float64 from random_state in that order. With comm, rank 0's draw
        (with random_state=None each rank's global generator draws its own)."""
        factor = 2.0 if self._trainer_activation() == "sigmoid" else 6.0
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            W = random_state.uniform(-bound, bound, (fan_in, fan_out))
            params.append((W, random_state.uniform(-bound, bound, fan_out)))
        return distributed.wrap(self.comm).broadcast(params)

    def _new_trainer(self, sizes, batch, mean_weight=1.0):
        """A Trainer of scikit-learn's model and optimizer for layer sizes `sizes` and `batch` rows a step.
        Its weights are set by the caller: the Trainer's own initialization and row order (its seed) are
        not used, so that every draw comes from the estimator's random_state, in scikit-learn's order."""
        stochastic = self.solver != "lbfgs"  # lbfgs: the Trainer's kernels give loss and gradient only
        options = dict(sizes=sizes, activation=self._trainer_activation(), loss=self._loss,
                       optimizer=self.solver if stochastic else "sgd", lr=self.learning_rate_init,
                       batch_size=batch, seed=0, decay_biases=False)
        # scikit-learn's gradient is scale x fastbp's (_gradient_scale), so with the penalty it is
        # scale x (fastbp's gradient + alpha / (scale batch) W): SGD (momentum included) on it is SGD with
        # scale x the learning rate; Adam is blind to the gradient's scale but for epsilon, which scales too.
        scale = self._gradient_scale()
        options["weight_decay"] = self.alpha / (scale * batch * mean_weight) if stochastic else 0.0
        if not options["weight_decay"] <= float(np.finfo(np.float32).max):
            # The penalty per unit of weight: with weights this small it is beyond float32, which the update
            # computes in. Named as the user set it (alpha, sample_weight), not as the Trainer option it becomes.
            raise ValueError(f"alpha / (batch_size x the mean sample_weight) = {options['weight_decay']:.3g} is "
                             "beyond float32's range: with sample_weight this small the penalty (alpha over a "
                             "batch's summed weights, as scikit-learn takes it) swamps the loss; scale "
                             "sample_weight up or alpha down")
        if self.solver == "sgd":
            options["lr"] = self.learning_rate_init * scale
        if self.solver in ("adam", "adamw"):
            options.update(betas=(self.beta_1, self.beta_2), eps=self.epsilon / scale, eps_hat=True)
        elif self.solver == "sgd":
            options.update(momentum=self.momentum, nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
        elif self.solver == "rmsprop":
            options.update(momentum=self.momentum)
        return Trainer(**options, comm=self.comm)

    def _fit(self, X, y, incremental, classes=None, sample_weight=None):
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        # As scikit-learn: a new network unless partial_fit or warm_start continues the fitted one.
        first_call = not hasattr(self, "trainer_") or not (incremental or self.warm_start)
        mapped = X if isinstance(X, np.memmap) else None
        X, y = validate_data(self, X, y, reset=first_call, dtype=_dtypes(mapped), multi_output=True,
                             y_numeric=not isinstance(self, ClassifierMixin), accept_sparse=["csr", "csc"])
        values = X.data if sources.is_sparse(X) else X
        limit = np.finfo(np.float32).max
        # max and min, not abs(): no temporary copy of X
        if mapped is None and X.dtype == np.float64 and values.size and (values.max() > limit or values.min() < -limit):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large values "
                             "and need to be preprocessed: X holds values beyond float32's range, which fastbp "
                             "computes in")
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        if first_call:
            # The dtype coefs_, intercepts_ and predictions are given in, as scikit-learn follows the input's.
            self._dtype = np.float32 if X.dtype == np.float32 else np.float64
        y = self._encode_targets(y, first_call, classes, warm_start=not (first_call or incremental))
        if mapped is not None:
            X = mapped  # checked in place above; fastbp reads it batch by batch (np.asarray dropped the memmap)
        hidden = self._check_params()
        # scikit-learn's generator for this call, drawn from in its order: the initial network (a new one),
        # the early-stopping split, each epoch's shuffle. An integer random_state starts it afresh on every
        # call (fit, and each partial_fit), as scikit-learn's does.
        random_state = check_random_state(self.random_state)
        initial = self._initial_params(random_state, [X.shape[1], *hidden, self._n_trainer_outputs()]) \
            if first_call else None
        stochastic = self.solver != "lbfgs"
        validation = None
        class_table = self._class_table(y, incremental)
        if stochastic and self.early_stopping and not incremental:
            X, y, sample_weight, validation = self._validation_split(X, y, sample_weight, random_state)
        if class_table is not None:  # the training rows' weights (the validation score's stay the samples')
            sample_weight = class_weights.weighted_rows(class_table, np.asarray(y, np.int64), sample_weight)
        batch = self._batch_size(X.shape[0])
        if stochastic and self.batch_size != "auto" and self.batch_size > X.shape[0]:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        mean_weight = 1.0 if sample_weight is None else float(np.mean(sample_weight)) or 1.0
        if first_call or not incremental:
            # A new network, or a warm start: the fitted weights under a new optimizer with today's
            # parameters (learning rate, solver, alpha, ...), as scikit-learn makes a new optimizer every fit.
            weights = initial if first_call else self.trainer_.params
            self.trainer_ = self._new_trainer([X.shape[1], *hidden, self._n_trainer_outputs()], batch, mean_weight)
            self.trainer_.set_params(weights)
        if not stochastic:
            return self._fit_lbfgs(X, y, sample_weight)
        if first_call or not hasattr(self, "loss_curve_"):
            self.loss_curve_ = []
            self.n_iter_ = 0
            self.t_ = 0
            self.best_loss_ = np.inf
        if first_call or not hasattr(self, "validation_scores_") or (self.early_stopping and
                                                                      self.validation_scores_ is None):
            # scikit-learn's: lists with early stopping, None without.
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = None
        if not incremental:
            self.n_iter_ = 0  # a warm start counts its own epochs (t_ and loss_curve_ go on)
        epochs = 1 if incremental else self.max_iter
        record = _Record()
        callbacks = []
        if validation is not None:
            callbacks.append(_ValidationScore(self._validation_score, *validation))
        callbacks.insert(0, _ScikitLearnLoss(self._loss_scale(), self._loss_offset(y, sample_weight), self.alpha,
                                             None if sample_weight is None else float(np.sum(sample_weight))))
        if self.verbose:
            callbacks.append(_Progress(self.early_stopping and not incremental))
        stopper = None
        if not incremental:
            stopper = _ScikitLearnStopping(self, X.shape[0])
            callbacks.append(stopper)
        callbacks.append(record)  # last: an epoch is recorded once every callback has seen it
        diverged = None
        try:
            self.trainer_.fit(X, y, epochs=epochs, batch_size=batch,
                              shuffle=_ScikitLearnOrder(random_state, batch) if self.shuffle else False,
                              verbose=0, callbacks=callbacks, sample_weight=sample_weight)
        except FloatingPointError as exc:
            # As scikit-learn, a diverging loss is recorded (NaN), not raised; fastbp stops there, with the
            # parameters of the last finite step (or, with early stopping, of the best epoch).
            diverged = exc
            record.logs.append({"loss": np.nan, "val_score": np.nan})
            if stopper is not None:
                stopper.on_train_end(self.trainer_)
        finally:
            self.trainer_._step_log = None  # _ScikitLearnLoss's, also when fit raised before its end
        losses = [logs["loss"] for logs in record.logs]
        self.loss_curve_.extend(losses)
        self.loss_ = self.loss_curve_[-1]
        self.n_iter_ += len(losses)
        self.t_ += len(losses) * X.shape[0]  # samples seen, as scikit-learn counts them
        # scikit-learn's best_loss_ is the training loss's best, and None when early stopping watches the
        # validation score instead.
        self.best_loss_ = None if self.early_stopping else min(self.best_loss_ or np.inf, np.nanmin(losses + [np.inf]))
        if self.early_stopping and not incremental:
            self.validation_scores_.extend(float(logs.get("val_score", np.nan)) for logs in record.logs)
            self.best_validation_score_ = float(np.nanmax(self.validation_scores_ + [-np.inf]))
        if stopper is not None:
            self._no_improvement_count = stopper.no_improvement
        if diverged is not None:
            warnings.warn(f"fastbp: training stopped at epoch {self.n_iter_}: {diverged}", ConvergenceWarning)
        elif stopper is not None and not stopper.stopped and self.n_iter_ >= self.max_iter:
            warnings.warn(f"fastbp: stochastic optimizer reached max_iter={self.max_iter} before converging",
                          ConvergenceWarning)
        return self

    def _validation_split(self, X, y, sample_weight, random_state):
        """(X_train, y_train, sample_weight_train, (X_val, y_val, sample_weight_val)): scikit-learn's
        early-stopping split (train_test_split), validation_fraction of the rows drawn from random_state,
        stratified by class for single-label classifiers (train_test_split's own errors for classes too
        small to split). With comm, rank 0's draw. The weights are None without sample_weight."""
        from sklearn.model_selection import train_test_split
        stratify = self._stratify(y) if isinstance(self, ClassifierMixin) else None
        train, val = distributed.wrap(self.comm).broadcast(train_test_split(
            np.arange(X.shape[0]), random_state=random_state,
            test_size=self.validation_fraction, stratify=stratify))
        if val.size < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of your "
                             "dataset.")
        part = (lambda rows: None) if sample_weight is None else (lambda rows: sample_weight[rows])
        for which, what in ((train, "training"), (val, "validation")):
            if sample_weight is not None and not sample_weight[which].any():
                raise ValueError(f"sample_weight is 0 for every one of the {which.size} {what} rows of early "
                                 f"stopping's split (validation_fraction={self.validation_fraction}): their "
                                 f"{'loss' if what == 'training' else 'score'} would mean nothing")
        if isinstance(X, np.memmap) or sources.is_sparse(X):
            # Rows of X read when a batch needs them, not copied (X may be larger than memory); a sparse X
            # as CSR once for both parts.
            whole = sources.Rows(X) if sources.is_sparse(X) else X
            rows = lambda which: sources.RowSubset(whole, which)  # noqa: E731
        else:
            rows = lambda which: X[which]  # noqa: E731
        return rows(train), y[train], part(train), (rows(val), y[val], part(val))

    def _fit_lbfgs(self, X, y, sample_weight=None):
        """solver='lbfgs': full-batch L-BFGS (lbfgs.py) on scikit-learn's objective."""
        result = lbfgs.minimize(self.trainer_, X, y, alpha=self.alpha, max_iter=self.max_iter, max_fun=self.max_fun,
                                tol=self.tol, objective_scale=self._gradient_scale(), sample_weight=sample_weight)
        self.n_iter_ = int(result.nit)
        self.loss_ = float(result.fun) + self._loss_offset(y, sample_weight)
        if not np.isfinite(result.fun):
            # The objective overflowed float32 from the start: L-BFGS-B reports no error, and the network is
            # the untrained one. Said as the stochastic solvers say a diverging loss.
            warnings.warn(f"fastbp: lbfgs stopped after {result.nit} iteration(s) with a loss of {result.fun}: the "
                          "loss is not finite in float32 at these parameters (targets or features too large?); "
                          "scale the data, e.g. with StandardScaler", ConvergenceWarning)
        elif result.status != 0:
            warnings.warn(f"fastbp: lbfgs failed to converge after {result.nit} iteration(s) (status={result.status}): "
                          f"{result.message}. Increase the number of iterations (max_iter) or the number of "
                          "function evaluations (max_fun), or scale the data", ConvergenceWarning)
        return self

    def fit(self, X, y, sample_weight=None):
        """Trains from scratch (or, with warm_start, from the fitted network) for up to max_iter epochs.
        sample_weight: one weight >= 0 per sample (the loss is their weighted mean)."""
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    def _check_stochastic(self):
        if self.solver == "lbfgs":
            raise AttributeError(f"partial_fit is only available for stochastic optimizers; {self.solver} is not "
                                 "stochastic")
        return True

    def _forward(self, X):
        check_is_fitted(self, "trainer_")
        mapped = X if isinstance(X, np.memmap) else None
        X = validate_data(self, X, reset=False, dtype=_dtypes(mapped), accept_sparse=["csr", "csc"])
        if mapped is not None:
            X = mapped
        return self.trainer_.predict(X)

    def to_onnx(self, path, probabilities=True):
        """An ONNX model of the fitted network (Trainer.to_onnx): output "output" = the class probabilities
        (MLPClassifier; with two classes, P(classes_[1]) as one column) or the predictions (MLPRegressor,
        one column per target); probabilities=False gives the logits. Returns path."""
        check_is_fitted(self, "trainer_")
        return self.trainer_.to_onnx(path, probabilities)

    def to_torch(self):
        """The fitted network as a torch.nn.Sequential (Trainer.to_torch)."""
        check_is_fitted(self, "trainer_")
        return self.trainer_.to_torch()

    @property
    def coefs_(self):
        """[W (fan_in, fan_out), ...], copies in the training data's dtype (float32 or float64). Settable
        with a list of arrays of the same shapes (the network's weights are replaced, as a whole)."""
        check_is_fitted(self, "trainer_")
        return [W.astype(self._dtype) for W, _ in self.trainer_.params]

    @coefs_.setter
    def coefs_(self, weights):
        check_is_fitted(self, "trainer_")
        self.trainer_.set_params([(W, b) for W, (_, b) in zip(_one_per_layer(weights, self.trainer_, "coefs_"),
                                                              self.trainer_.params)])

    @property
    def intercepts_(self):
        """[b (fan_out,), ...], copies in the training data's dtype; settable as coefs_ is."""
        check_is_fitted(self, "trainer_")
        return [b.astype(self._dtype) for _, b in self.trainer_.params]

    @intercepts_.setter
    def intercepts_(self, biases):
        check_is_fitted(self, "trainer_")
        self.trainer_.set_params([(W, b) for (W, _), b in zip(self.trainer_.params,
                                                              _one_per_layer(biases, self.trainer_, "intercepts_"))])

    @property
    def n_layers_(self):
        check_is_fitted(self, "trainer_")
        return len(self.trainer_.sizes)

    @property
    def n_outputs_(self):
        check_is_fitted(self, "trainer_")
        return self.trainer_.sizes[-1]


def _one_per_layer(arrays, trainer, name):
    arrays = list(arrays)
    if len(arrays) != trainer.state.n_layers:
        raise ValueError(f"{name} needs one array per layer ({trainer.state.n_layers}), got {len(arrays)}")
    return arrays


class _ScikitLearnStopping(Callback):
    """scikit-learn's end-of-epoch logic for the stochastic solvers (its _fit_stochastic):
    - the count of epochs without an improvement by tol: of the training loss over its best, or with early
      stopping of the validation score (logs["val_score"]) over its best, whose parameters are kept and put
      back at the end;
    - when the count exceeds n_iter_no_change: stop, or with solver="sgd" and learning_rate="adaptive"
      divide the learning rate by 5 and count again (stop once it is below 1e-6);
    - learning_rate="invscaling" (sgd): learning_rate_init / (samples seen + 1) ** power_t after each epoch.
    n_samples: training rows per epoch."""

    def __init__(self, est, n_samples):
        self.est, self.n_samples = est, n_samples
        self.sgd = est.solver == "sgd"
        self.no_improvement = 0
        self.stopped = False
        self.best_loss = est.best_loss_ if isinstance(est.best_loss_, float) else np.inf
        self.best_score = -np.inf
        self.best_params = None
        self.samples = est.t_

    def _epochs_ahead(self, trainer):
        """Epochs that may run before this callback could act (loop.epochs_at_once): it stops, or lowers the
        learning rate, only once the count of epochs without improvement exceeds n_iter_no_change, which
        takes at least n_iter_no_change + 1 - count more epochs. With early stopping (the parameters of the
        best epoch are kept) or invscaling (a new rate every epoch) it acts after every epoch."""
        est = self.est
        if est.early_stopping or (self.sgd and est.learning_rate == "invscaling"):
            return 1
        return est.n_iter_no_change + 1 - self.no_improvement

    def on_epoch_end(self, epoch, logs, trainer):
        est = self.est
        self.samples += self.n_samples
        if est.early_stopping:
            score = logs["val_score"]
            self.no_improvement = self.no_improvement + 1 if not score >= self.best_score + est.tol else 0
            if score > self.best_score:
                self.best_score, self.best_params = score, trainer._flat_params()
        else:
            loss = logs["loss"]
            self.no_improvement = self.no_improvement + 1 if not loss <= self.best_loss - est.tol else 0
            self.best_loss = min(self.best_loss, loss)
        if self.sgd and est.learning_rate == "invscaling":
            self._set_rate(trainer, trainer.config.lr / (self.samples + 1) ** est.power_t)
        if self.no_improvement > est.n_iter_no_change:
            if self.sgd and est.learning_rate == "adaptive" and trainer.lr > 1e-6:
                self._set_rate(trainer, trainer.lr / 5.0)
                self.no_improvement = 0
                if est.verbose:
                    print(f"Setting learning rate to {trainer.lr:f}")
            else:
                trainer.stop_training = True
                self.stopped = True

    def _set_rate(self, trainer, lr):
        """A new SGD learning rate, its momentum carried over as scikit-learn's velocity (lr x buffer)."""
        old = trainer.lr
        trainer.lr = lr
        if self.est.momentum > 0 and trainer.lr != old:
            trainer._scale_moment1(old / trainer.lr)

    def on_train_end(self, trainer):
        if self.est.early_stopping and self.best_params is not None:
            trainer._set_flat_params(self.best_params)


class _ScikitLearnLoss(Callback):
    """logs["loss"] as scikit-learn reports it (first of the callbacks: the others see it so): the mean
    over the epoch's batches, weighted by their rows, of each batch's loss, which is scale x fastbp's
    (the weighted mean over its rows with sample weights), plus the terms without a gradient fastbp
    leaves out (offset), plus alpha / 2 x the squared weights / the batch's rows (or weights' sum).
    The batches' losses, rows and weights come from the Trainer's step log; scikit-learn takes each
    batch's squared weights before its update, this the mean of the epoch's first and last.
    weight_total: the training rows' summed sample weights (None without), to undo the power of two
    the Trainer scales the weights by (sample_weights.normalized)."""

    def __init__(self, scale, offset, alpha, weight_total=None):
        self.scale, self.offset, self.alpha, self.weight_total = scale, offset, alpha, weight_total
        self.squares_before = None

    @staticmethod
    def _squares(trainer):
        """The sum of the squared weights (not biases), in float64, read in place (sums.squared_weights,
        which the kernels call too where fit runs several epochs at once)."""
        with trainer._guard.lock:
            trainer._backend.pull()
            state = trainer.state
            return squared_weights(state.params, state.offsets, state.dims)

    def on_train_begin(self, trainer):
        self.squares_before = self._squares(trainer) if self.alpha else 0.0
        trainer._step_log = []

    @staticmethod
    def _epochs_ahead(trainer):
        """Any number of epochs may run before on_epoch_end (loop.epochs_at_once): it reads the step log,
        whose last entry of an epoch then carries the squared weights at its end."""
        return loop.MAX_EPOCHS_AT_ONCE

    def on_epoch_end(self, epoch, logs, trainer):
        # Python's sums over the log's (loss, rows, weight, squares) tuples: a small data set's epoch is one
        # or two steps, for which building arrays costs more than the step's own arithmetic.
        steps = trainer._step_log
        n = float(sum(step[1] for step in steps))
        logs["loss"] = sum(step[0] * step[1] for step in steps) / n * self.scale + self.offset
        if self.alpha:
            # The weights as the user gave them: the Trainer scaled them (sample_weights.normalized).
            factor = 1.0 if self.weight_total is None else self.weight_total / sum(step[2] for step in steps)
            squares = steps[-1][3] if steps[-1][3] is not None else self._squares(trainer)
            rows_per_weight = sum(step[1] / (step[2] * factor) if step[2] > 0 else 1.0 for step in steps) / n
            logs["loss"] += 0.25 * self.alpha * (self.squares_before + squares) * rows_per_weight
            self.squares_before = squares
        steps.clear()

    def on_train_end(self, trainer):
        trainer._step_log = None


class _ScikitLearnOrder(row_order.OwnOrder):
    """scikit-learn's batches for fit(shuffle=...) (row_order.py): every epoch, the last epoch's order (at
    first 0..n-1) shuffled with random_state as its _fit_stochastic does (sklearn.utils.shuffle, whose
    draw is random_state.shuffle(0..n-1); called directly, without its 0.1 ms of argument checks), cut
    into batches of batch_size rows. Each batch's rows are then given in increasing order: the same rows
    as scikit-learn's batch, summed in an order that does not depend on the draw (whole-batch steps are
    bitwise those of an unshuffled run, as they are in exact arithmetic), and read forward through a
    memory-mapped file."""

    def __init__(self, random_state, batch_size):
        self.random_state, self.batch_size = random_state, batch_size
        self.rows = None

    def __call__(self, n):
        if self.rows is None or self.rows.size != n:
            self.rows = np.arange(n, dtype=np.int64)
        # Shuffling the rows in place makes the swaps that shuffling 0..n-1 would (they depend on n and
        # the draws only): the same order, and the same draws taken from random_state.
        self.random_state.shuffle(self.rows)
        if self.batch_size >= n:  # one batch: its rows in increasing order, whatever the draw
            return np.arange(n, dtype=np.int64)
        order = self.rows.copy()
        whole = n - n % self.batch_size
        if self.batch_size > 1:
            order[:whole].reshape(-1, self.batch_size).sort(axis=1)
            order[whole:].sort()
        return order


class _Record(Callback):
    """Every finished epoch's logs, kept even when a later epoch raises."""

    def __init__(self):
        self.logs = []

    @staticmethod
    def _epochs_ahead(trainer):
        return loop.MAX_EPOCHS_AT_ONCE  # it only reads the logs

    def on_epoch_end(self, epoch, logs, trainer):
        self.logs.append(logs)


class _ValidationScore(Callback):
    """logs["val_score"]: score(X_val, y_val) at the end of each epoch, the estimator's own measure
    (accuracy, or R^2 for the regressor; weighted by w_val when given), as scikit-learn's early stopping
    watches it."""

    def __init__(self, score, X_val, y_val, w_val=None):
        self.score, self.X_val, self.y_val, self.w_val = score, X_val, y_val, w_val

    def on_epoch_end(self, epoch, logs, trainer):
        outputs = trainer.predict(self.X_val)
        logs["val_score"] = self.score(outputs, self.y_val, self.w_val) if np.isfinite(outputs).all() else np.nan


class _Progress(Callback):
    """scikit-learn's verbose lines: "Iteration n, loss = ..." per epoch, and the validation score with
    early stopping."""

    def __init__(self, validation):
        self.validation = validation

    @staticmethod
    def _epochs_ahead(trainer):
        return loop.MAX_EPOCHS_AT_ONCE  # it only prints the logs

    def on_epoch_end(self, epoch, logs, trainer):
        print(f"Iteration {epoch + 1}, loss = {logs['loss']:.8f}")
        if self.validation:
            print(f"Validation score: {logs['val_score']:f}")


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multilayer-perceptron classifier: softmax + cross-entropy for several classes, a sigmoid output
    with binary cross-entropy for two (as scikit-learn), and one sigmoid per label for multi-label
    targets (a 2-D 0/1 indicator matrix y, as scikit-learn takes it). Labels may be any hashable values.

    class_weight (fastbp's; scikit-learn's MLPClassifier has none, its other classifiers do): None, a dict
    {label: weight} or "balanced"; each training sample's weight is multiplied by its class's."""

    @suggest_keywords
    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 warm_start=False, learning_rate="constant", power_t=0.5, comm=None, class_weight=None):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate_init=learning_rate_init, max_iter=max_iter, shuffle=shuffle,
                         random_state=random_state, tol=tol, verbose=verbose, momentum=momentum,
                         nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         n_iter_no_change=n_iter_no_change, max_fun=max_fun, warm_start=warm_start,
                         learning_rate=learning_rate, power_t=power_t, comm=comm)
        self.class_weight = class_weight

    @property
    def _multilabel(self):
        return getattr(self, "_n_labels", None) is not None

    @property
    def _loss(self):
        return "bce" if self._multilabel or len(self.classes_) <= 2 else "cross_entropy"

    def _n_trainer_outputs(self):
        if self._multilabel:
            return self._n_labels
        return 1 if len(self.classes_) <= 2 else len(self.classes_)

    def _stratify(self, y):
        """What the early-stopping split stratifies on, as scikit-learn's own split: the boolean column its
        LabelBinarizer makes of two classes (or one); nothing for three classes or more, whose binarized
        targets have a column per class (scikit-learn stratifies only single-output targets), nor for
        multi-label targets."""
        if self._multilabel or len(self.classes_) > 2:
            return None
        return (np.asarray(y) == 1)[:, None]  # bool, as scikit-learn's (its messages name the class 'True')

    def _gradient_scale(self):
        """scikit-learn's loss (and its gradient) over fastbp's: its multi-label loss sums over the labels,
        fastbp's bce averages them."""
        return float(self._n_labels) if self._multilabel else 1.0

    _loss_scale = _gradient_scale

    def _encode_targets(self, y, first_call, classes=None, warm_start=False):
        if np.ndim(y) == 2 and y.shape[1] != 1:
            if type_of_target(y) != "multilabel-indicator":
                raise ValueError("a 2-D y must be a multi-label indicator matrix (0/1 per label); fastbp's "
                                 f"MLPClassifier takes no multi-output classes (got {type_of_target(y)!r})")
            if first_call:
                self._n_labels = y.shape[1]
                self.classes_ = np.arange(y.shape[1])
                # A sparse indicator matrix in, sparse predictions out (scikit-learn's LabelBinarizer does so).
                self._sparse_labels = scipy.sparse.issparse(y)
            elif not self._multilabel or y.shape[1] != self._n_labels:
                raise ValueError(f"y has {y.shape[1]} labels; this estimator was fitted with "
                                 f"{self._n_labels if self._multilabel else 'single-label targets'}")
            # (n, labels) float32: the targets the kernels read (a sparse y densified; labels are few).
            return (y.toarray() if scipy.sparse.issparse(y) else np.asarray(y)).astype(np.float32)
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if first_call:
            self._n_labels = None
            if classes is not None:
                self.classes_ = np.unique(classes)
            else:
                self.classes_ = np.unique(y)
        elif self._multilabel:
            raise ValueError(f"y holds 1-D labels; this estimator was fitted with {self._n_labels} labels per sample")
        if warm_start and not np.array_equal(np.unique(y), self.classes_):
            raise ValueError(f"warm_start can only be used where `y` has the same classes as in the previous call "
                             f"to fit. Previously got {self.classes_}, `y` has {np.unique(y)}")
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y holds labels {unknown.tolist()[:5]} not in classes_ {self.classes_.tolist()[:10]}")
        codes = np.searchsorted(self.classes_, y)
        # One class, as scikit-learn: a sigmoid output trained towards 0 (its LabelBinarizer's column).
        return codes.astype(np.float32) if len(self.classes_) <= 2 else codes

    def _class_table(self, y, incremental):
        """(classes,) float64 weight of each class code from class_weight, or None: a dict keyed by the labels
        (a label left out weighs 1) or "balanced", n / (classes x count) over the classes in y, as
        scikit-learn's compute_class_weight ("balanced" is refused in partial_fit, as SGDClassifier does:
        one batch's counts are not the data's)."""
        if self.class_weight is None:
            return None
        if self._multilabel:
            raise ValueError("class_weight applies to single-label targets, not to a multi-label indicator y")
        if isinstance(self.class_weight, str):
            if self.class_weight != "balanced":
                raise ValueError(f"class_weight must be None, a dict or 'balanced', got {self.class_weight!r}")
            if incremental:
                raise ValueError("class_weight 'balanced' is not supported for partial_fit: give a dict of the "
                                 "classes' weights computed on the whole data")
            return class_weights.class_table("balanced", np.asarray(y, np.int64), len(self.classes_))
        if not isinstance(self.class_weight, dict):
            raise ValueError(f"class_weight must be None, a dict or 'balanced', got {self.class_weight!r}")
        unknown = [label for label in self.class_weight if label not in set(self.classes_.tolist())]
        if unknown:
            raise ValueError(f"class_weight has labels {unknown[:5]} not in classes_ {self.classes_.tolist()[:10]}")
        by_code = {int(np.searchsorted(self.classes_, label)): weight for label, weight in self.class_weight.items()}
        return class_weights.class_table(by_code, np.asarray(y, np.int64), len(self.classes_))

    def _validation_score(self, outputs, y, sample_weight=None):
        """Accuracy of the network's outputs (n, outputs) against encoded targets y (subset accuracy for
        multi-label), weighted by sample_weight when given."""
        if self._multilabel:
            correct = ((outputs > 0.5) == (y > 0.5)).all(axis=1)
        elif len(self.classes_) <= 2:
            correct = (outputs[:, 0] > 0.5) == (y > 0.5)
        else:
            correct = outputs.argmax(axis=1) == y
        return float(np.average(correct, weights=sample_weight))

    @available_if(_BaseMLP._check_stochastic)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y). `classes` (all labels that will ever appear) is required on the first call;
        sample_weight as in fit."""
        if hasattr(self, "trainer_") and classes is not None and not np.array_equal(np.unique(classes),
                                                                                    self.classes_):
            raise ValueError(f"`classes={list(classes)}` is not the same as on the last call to partial_fit, "
                             f"was: {list(self.classes_)}")
        if not hasattr(self, "trainer_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            if type_of_target(np.asarray(classes)) not in ("binary", "multiclass"):
                raise ValueError("classes must be a 1-D array of labels")
        return self._fit(X, y, incremental=True, classes=classes, sample_weight=sample_weight)

    def predict_proba(self, X):
        """(n_samples, n_classes) class probabilities; multi-label: (n_samples, n_labels), each label's. In
        the training data's dtype."""
        P = self._forward(X).astype(self._dtype)
        if len(self.classes_) <= 2 and not self._multilabel:  # one class too, as scikit-learn: two columns
            return np.hstack([1 - P, P])
        return P

    def predict_log_proba(self, X):
        """log(predict_proba(X)): -inf where a probability rounds to 0, as in scikit-learn."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        proba = self.predict_proba(X)
        if self._multilabel:
            indicator = (proba > 0.5).astype(int)  # the indicator matrix, as scikit-learn returns it
            return scipy.sparse.csr_matrix(indicator) if getattr(self, "_sparse_labels", False) else indicator
        if len(self.classes_) == 1:
            return np.full(proba.shape[0], self.classes_[0])
        return self.classes_[proba.argmax(axis=1)]

    @property
    def out_activation_(self):
        check_is_fitted(self, "trainer_")
        return "logistic" if self._multilabel or len(self.classes_) == 2 else "softmax"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.input_tags.sparse = True  # CSR/CSC X, densified batch by batch (sources.Rows)
        return tags


_REGRESSION_LOSSES = {"squared_error": "mse", "poisson": "poisson"}  # scikit-learn's name: fastbp's


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multilayer-perceptron regressor: a linear output trained on squared error (loss="squared_error"),
    or log-rates trained on the Poisson deviance (loss="poisson": predictions exp(output), targets >= 0),
    as scikit-learn's."""

    @suggest_keywords
    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, comm=None):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate_init=learning_rate_init, max_iter=max_iter, shuffle=shuffle,
                         random_state=random_state, tol=tol, verbose=verbose, momentum=momentum,
                         nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         n_iter_no_change=n_iter_no_change, max_fun=max_fun, warm_start=warm_start,
                         learning_rate=learning_rate, power_t=power_t, comm=comm)
        self.loss = loss

    @property
    def _loss(self):
        if self.loss not in _REGRESSION_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid: {', '.join(_REGRESSION_LOSSES)}")
        return _REGRESSION_LOSSES[self.loss]

    def _n_trainer_outputs(self):
        return self._n_targets

    def _loss_scale(self):
        # scikit-learn's squared error is half of fastbp's mse (averaged over the targets); its Poisson loss
        # is the sum over the targets of fastbp's mean.
        return 0.5 if self._loss == "mse" else float(self._n_targets)

    def _loss_offset(self, y, sample_weight=None):
        # scikit-learn's Poisson deviance keeps y log(y) - y, which PyTorch's PoissonNLLLoss leaves out.
        if self._loss != "poisson":
            return 0.0
        from scipy.special import xlogy
        y = np.asarray(y, np.float64)
        return float(np.average((xlogy(y, y) - y).sum(axis=1), weights=sample_weight))

    def _gradient_scale(self):
        # Its squared error's gradient is that of the half squared error summed over the targets, not averaged.
        return 0.5 * self._n_targets if self._loss == "mse" else float(self._n_targets)

    def _validation_score(self, outputs, y, sample_weight=None):
        """R^2 of the outputs against the targets y (n, targets), averaged over the targets, as score()."""
        from sklearn.metrics import r2_score
        return float(r2_score(y, outputs, sample_weight=sample_weight))

    def _encode_targets(self, y, first_call, classes=None, warm_start=False):
        y = np.asarray(y, dtype=np.float64)
        if first_call:
            self._y_was_1d = y.ndim == 1
            self._n_targets = 1 if y.ndim == 1 else y.shape[1]
        y2 = y.reshape(len(y), -1)
        if y2.shape[1] != self._n_targets:
            raise ValueError(f"y has {y2.shape[1]} targets; this estimator was fitted with {self._n_targets}")
        return y2

    @available_if(_BaseMLP._check_stochastic)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y); sample_weight as in fit."""
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def predict(self, X):
        out = self._forward(X).astype(self._dtype)
        return out.ravel() if self._y_was_1d else out

    @property
    def out_activation_(self):
        check_is_fitted(self, "trainer_")
        return "exp" if self.trainer_.config.loss == "poisson" else "identity"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = True
        return tags
