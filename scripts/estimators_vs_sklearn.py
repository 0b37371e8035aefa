"""fastbp's estimators against scikit-learn's on scikit-learn's bundled data sets: wall time and score.

Each job is a pipeline (StandardScaler, then the MLP at scikit-learn's defaults but max_iter)
cross-validated with cross_val_score (5 folds), for random_state 0, 1 and 2 (the two estimators are
twins: the same random_state draws the same initial network, splits and shuffles), at max_iter 10 and
200; scores and times are over the 15 fits. fastbp's kernels are compiled (warm cache) before any
timing. The floor column is the same cross-validation of a pipeline whose model is scikit-learn's
DummyClassifier / DummyRegressor: what splitting, scaling and scoring cost any estimator. Then
GridSearchCV over fastbp's estimator, and over scikit-learn's as the control, with n_jobs=1, then n_jobs=2
twice (joblib's worker processes: started by the first call, reused by the second). Run it with nothing
else on the machine:

    python scripts/estimators_vs_sklearn.py
"""
import time
import warnings

import numpy as np
from sklearn import datasets
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.neural_network import MLPClassifier as SkClassifier, MLPRegressor as SkRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import fastbp


def five_classes(return_X_y=True):
    """The issue's synthetic problem: 5 classes, 20 features, 1000 rows."""
    return datasets.make_classification(n_samples=1000, n_features=20, n_informative=10, n_classes=5,
                                        random_state=0)


JOBS = [("iris", datasets.load_iris, "classifier"), ("wine", datasets.load_wine, "classifier"),
        ("breast_cancer", datasets.load_breast_cancer, "classifier"), ("digits", datasets.load_digits, "classifier"),
        ("5 classes (synthetic)", five_classes, "classifier"),
        ("diabetes", datasets.load_diabetes, "regressor"), ("linnerud", datasets.load_linnerud, "regressor")]
SEEDS = (0, 1, 2)


def timed(fn):
    began = time.perf_counter()
    result = fn()
    return time.perf_counter() - began, result


def main():
    warnings.simplefilter("ignore", ConvergenceWarning)
    print(f"{'data set':<22} {'rows':>5} {'max_iter':>8} {'sklearn s':>10} {'fastbp s':>9} {'speed-up':>9} "
          f"{'floor s':>8} {'sklearn score':>14} {'fastbp score':>13} {'difference':>11}")
    for name, load, kind in JOBS:
        X, y = load(return_X_y=True)
        ours = fastbp.MLPClassifier if kind == "classifier" else fastbp.MLPRegressor
        theirs = SkClassifier if kind == "classifier" else SkRegressor
        dummy = DummyClassifier if kind == "classifier" else DummyRegressor
        floor = min(timed(lambda: [cross_val_score(make_pipeline(StandardScaler(), dummy()), X, y, cv=5)
                                   for _ in SEEDS])[0] for _ in range(3))
        for max_iter in (10, 200):
            def make(cls, seed):
                return make_pipeline(StandardScaler(), cls(random_state=seed, max_iter=max_iter))
            cross_val_score(make(ours, 0), X, y, cv=5)  # compiles (or loads) fastbp's kernels for this shape
            times = {"sklearn": 0.0, "fastbp": 0.0}
            scores = {"sklearn": [], "fastbp": []}
            for seed in SEEDS:  # interleaved: a drift of the machine's speed hits both alike
                for label, cls in (("sklearn", theirs), ("fastbp", ours)):
                    seconds, s = timed(lambda: cross_val_score(make(cls, seed), X, y, cv=5))
                    times[label] += seconds
                    scores[label].extend(s)
            mean = {label: float(np.mean(v)) for label, v in scores.items()}
            print(f"{name:<22} {len(X):5d} {max_iter:8d} {times['sklearn']:10.2f} {times['fastbp']:9.2f} "
                  f"{times['sklearn'] / times['fastbp']:9.1f} {floor:8.3f} {mean['sklearn']:14.4f} "
                  f"{mean['fastbp']:13.4f} "
                  f"{mean['fastbp'] - mean['sklearn']:+11.4f}", flush=True)
    X, y = datasets.load_digits(return_X_y=True)
    grid = {"mlpclassifier__alpha": [1e-4, 1e-3, 1e-2], "mlpclassifier__hidden_layer_sizes": [(64,), (128,)]}
    # joblib keeps its worker processes between calls: the first n_jobs=2 search starts them (each imports
    # scikit-learn and fastbp and loads the kernels), the second finds them ready. scikit-learn's own
    # estimator runs the same searches, as the control.
    for label, cls in (("fastbp.MLPClassifier", fastbp.MLPClassifier), ("sklearn's MLPClassifier", SkClassifier)):
        for n_jobs, call in ((1, ""), (2, ", workers started"), (2, ", workers ready")):
            search = GridSearchCV(make_pipeline(StandardScaler(), cls(random_state=0)), grid, cv=3, n_jobs=n_jobs)
            seconds, _ = timed(lambda: search.fit(X, y))
            print(f"GridSearchCV over {label} on digits, 6 settings x 3 folds, n_jobs={n_jobs}{call}: "
                  f"{seconds:.2f} s (best score {search.best_score_:.3f})", flush=True)
        from joblib.externals.loky import get_reusable_executor
        get_reusable_executor().shutdown(wait=True)  # the control starts its own workers


if __name__ == "__main__":
    main()
