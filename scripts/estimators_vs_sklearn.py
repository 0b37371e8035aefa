"""fastbp's estimators against scikit-learn's on scikit-learn's bundled data sets: wall time and score.

Each job is a pipeline (StandardScaler, then the MLP) cross-validated with cross_val_score (5 folds), at
max_iter 200 and scikit-learn's other defaults; fastbp's kernels are compiled (warm cache) before any
timing. Then GridSearchCV over fastbp's estimator with n_jobs=1 and n_jobs=2 (joblib's worker processes).
Run it with nothing else on the machine:

    python scripts/estimators_vs_sklearn.py
"""
import time
import warnings

import numpy as np
from sklearn import datasets
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.neural_network import MLPClassifier as SkClassifier, MLPRegressor as SkRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import fastbp

JOBS = [("iris", datasets.load_iris, "classifier"), ("wine", datasets.load_wine, "classifier"),
        ("breast_cancer", datasets.load_breast_cancer, "classifier"), ("digits", datasets.load_digits, "classifier"),
        ("diabetes", datasets.load_diabetes, "regressor"), ("linnerud", datasets.load_linnerud, "regressor")]


def timed(fn):
    began = time.perf_counter()
    result = fn()
    return time.perf_counter() - began, result


def main():
    warnings.simplefilter("ignore", ConvergenceWarning)
    print(f"{'data set':<30} {'rows':>6} {'sklearn s':>10} {'fastbp s':>9} {'speed-up':>9} {'sklearn score':>14} "
          f"{'fastbp score':>13}")
    for name, load, kind in JOBS:
        X, y = load(return_X_y=True)
        ours = fastbp.MLPClassifier if kind == "classifier" else fastbp.MLPRegressor
        theirs = SkClassifier if kind == "classifier" else SkRegressor
        make = lambda cls: make_pipeline(StandardScaler(), cls(random_state=0, max_iter=200))
        cross_val_score(make(ours), X, y, cv=5)  # compiles (or loads) fastbp's kernels for this shape
        times = {}
        scores = {}
        for label, cls in (("sklearn", theirs), ("fastbp", ours)):
            times[label], s = timed(lambda: cross_val_score(make(cls), X, y, cv=5))
            scores[label] = float(np.mean(s))
        print(f"{name:<30} {len(X):6d} {times['sklearn']:10.2f} {times['fastbp']:9.2f} "
              f"{times['sklearn'] / times['fastbp']:9.1f} {scores['sklearn']:14.3f} {scores['fastbp']:13.3f}")
    X, y = datasets.load_digits(return_X_y=True)
    grid = {"mlpclassifier__alpha": [1e-4, 1e-3, 1e-2], "mlpclassifier__hidden_layer_sizes": [(64,), (128,)]}
    for n_jobs in (1, 2):
        search = GridSearchCV(make_pipeline(StandardScaler(), fastbp.MLPClassifier(random_state=0)), grid, cv=3,
                              n_jobs=n_jobs)
        seconds, _ = timed(lambda: search.fit(X, y))
        print(f"GridSearchCV over fastbp.MLPClassifier on digits, 6 settings x 3 folds, n_jobs={n_jobs}: "
              f"{seconds:.2f} s (best score {search.best_score_:.3f})")


if __name__ == "__main__":
    main()
