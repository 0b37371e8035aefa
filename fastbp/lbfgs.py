"""Full-batch L-BFGS over a Trainer's parameters, as scikit-learn's solver="lbfgs" does it.

scipy.optimize.minimize(method="L-BFGS-B") drives the search over the flat parameter vector, laid out as
the network state's flat buffer (state.py: each layer's W row-major, then its b), float64 on SciPy's
side and rounded to float32 for the kernels. Each evaluation is fastbp's compiled loss and gradient over
the whole data set (Trainer.gradients, the data checked and converted once for all evaluations; the
weighted mean with sample_weight), plus scikit-learn's L2
penalty, alpha / (2 n) x the sum of the squared weights (biases not penalized; n the rows, or the sample
weights' sum), and its gradient, alpha / n x W, added here in float64.
objective_scale multiplies the data loss: scikit-learn's gradient is that of half the squared error summed
over the targets (fastbp's mse averages them), and of the multi-label loss summed over the labels.
"""
import numpy as np
import scipy.optimize


def minimize(trainer, X, y, alpha=0.0, max_iter=200, max_fun=15000, tol=1e-4, objective_scale=1.0,
             sample_weight=None):
    """Trains trainer's parameters to a (local) minimum; returns scipy's OptimizeResult (x: the flat
    float64 parameters, also left in trainer; fun: the objective there; nit, nfev, status, message)."""
    n = int(np.shape(X)[0]) if sample_weight is None else float(np.sum(sample_weight))
    state = trainer.state
    weights = np.zeros(state.params.size, bool)  # which entries of the flat buffer the penalty covers
    for l, (fan_in, fan_out) in enumerate(zip(trainer.sizes[:-1], trainer.sizes[1:])):
        weights[state.offsets[l]:state.offsets[l] + fan_in * fan_out] = True

    source = trainer._gradient_source(X, y, sample_weight)

    def objective(flat):
        trainer._set_flat_params(flat.astype(np.float32))
        try:
            loss, grads = trainer._source_gradients(source)
        except FloatingPointError:  # a step too far: an infinite objective makes the line search back off
            return np.inf, np.zeros_like(flat)
        grad = np.concatenate([np.concatenate([dW.ravel(), db]) for dW, db in grads]).astype(np.float64)
        grad *= objective_scale
        value = float(loss) * objective_scale
        if alpha:
            W = np.where(weights, flat, 0.0)
            value += alpha / (2 * n) * float(W @ W)
            grad += alpha / n * W
        return value, grad

    result = scipy.optimize.minimize(objective, trainer._flat_params().astype(np.float64), method="L-BFGS-B",
                                     jac=True, options={"maxfun": max_fun, "maxiter": max_iter, "gtol": tol})
    trainer._set_flat_params(result.x.astype(np.float32))
    return result
