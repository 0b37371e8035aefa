"""Full-batch L-BFGS over a Trainer's parameters, as scikit-learn's solver="lbfgs" does it.

scipy.optimize.minimize(method="L-BFGS-B") drives the search over the flat parameter vector (float64 on
scipy's side, rounded to float32 for the kernels); each evaluation is fastbp's compiled loss and gradient
over the whole data set (Trainer.gradients), plus scikit-learn's L2 penalty, alpha / (2 n) x the sum of
the squared weights (biases not penalized), and its gradient, alpha / n x W, added here in float64.
objective_scale multiplies the data loss: scikit-learn's squared error is half of fastbp's mse.
"""
import numpy as np
import scipy.optimize


def _flat(params):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in params]).astype(np.float64)


def _layers(flat, sizes):
    """[(W, b), ...] float32 from a flat vector laid out as _flat lays it out."""
    out, start = [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        W = flat[start:start + fan_in * fan_out].reshape(fan_in, fan_out)
        start += fan_in * fan_out
        b = flat[start:start + fan_out]
        start += fan_out
        out.append((W.astype(np.float32), b.astype(np.float32)))
    return out


def minimize(trainer, X, y, alpha=0.0, max_iter=200, max_fun=15000, tol=1e-4, objective_scale=1.0):
    """Trains trainer's parameters to a (local) minimum; returns scipy's OptimizeResult (x: the flat
    float64 parameters, also left in trainer; fun: the objective there; nit, nfev, status, message)."""
    sizes = trainer.sizes
    n = int(np.shape(X)[0])

    def objective(flat):
        trainer.set_params(_layers(flat, sizes))
        try:
            loss, grads = trainer.gradients(X, y)
        except FloatingPointError:  # a step too far: an infinite objective makes the line search back off
            return np.inf, np.zeros_like(flat)
        grad = _flat(grads) * objective_scale
        value = float(loss) * objective_scale
        if alpha:
            start = 0
            for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
                W = flat[start:start + fan_in * fan_out]
                value += alpha / (2 * n) * float(W @ W)
                grad[start:start + fan_in * fan_out] += alpha / n * W
                start += (fan_in + 1) * fan_out
        return value, grad

    result = scipy.optimize.minimize(objective, _flat(trainer.params), method="L-BFGS-B", jac=True,
                                     options={"maxfun": max_fun, "maxiter": max_iter, "gtol": tol})
    trainer.set_params(_layers(result.x, sizes))
    return result
