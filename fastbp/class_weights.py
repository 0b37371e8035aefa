"""Class weights (Trainer.fit(class_weight=...), the estimators' class_weight): each row's sample weight
times the weight of its class, so that a class counts as if its rows were repeated.

A row's class is its label (loss "cross_entropy"), or its 0/1 target (loss "bce" with one output, Keras'
binary case). class_weight is a dict {class index: weight >= 0} (Keras; a class it leaves out weighs 1, as
in scikit-learn) or "balanced": n_rows / (n_classes x the class's row count), scikit-learn's
compute_class_weight, over the classes present.
"""
import numbers

import numpy as np

from . import sample_weights, validation


def row_classes(y, loss, n_outputs, name="y"):
    """(n,) int64 class of each row (checked as the Trainer checks y), and the number of classes."""
    if loss == "cross_entropy":
        return validation.class_labels(y, validation.row_count(y), n_outputs, name), n_outputs
    if loss == "bce" and n_outputs == 1:
        targets = validation.regression_targets(y, validation.row_count(y), 1, name, probabilities=True)[:, 0]
        if ((targets != 0) & (targets != 1)).any():
            raise ValueError(f"class_weight with loss='bce' needs {name} of 0s and 1s (the row's class), found "
                             f"{targets[(targets != 0) & (targets != 1)][0]}")
        return targets.astype(np.int64), 2
    raise ValueError(f"class_weight applies to loss='cross_entropy', or 'bce' with one output; not to "
                     f"loss={loss!r} with {n_outputs} outputs")


def class_table(class_weight, classes, n_classes):
    """(n_classes,) float64 weight of each class index, from a dict or "balanced"; ValueError naming what
    is wrong."""
    table = np.ones(n_classes, np.float64)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict of class index to weight, or 'balanced'; got "
                             f"{class_weight!r}")
        counts = np.bincount(classes, minlength=n_classes)
        present = counts > 0
        table[present] = classes.size / (present.sum() * counts[present])
        return table
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be a dict of class index to weight, or 'balanced'; got "
                        f"{type(class_weight).__name__}")
    for key, weight in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, numbers.Integral) or not 0 <= key < n_classes:
            raise ValueError(f"class_weight has key {key!r}: the classes are the integers 0 .. {n_classes - 1}")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not np.isfinite(weight) \
                or weight < 0:
            raise ValueError(f"class_weight[{key}] must be a finite number >= 0, got {weight!r}")
        table[int(key)] = float(weight)
    return table


def weighted_rows(table, classes, sample_weight=None):
    """(n,) float64: sample_weight (n,) or 1, times table[classes] (classes (n,) int64 codes)."""
    weights = table[classes]
    if sample_weight is not None:
        weights = weights * sample_weight
    if classes.size and not weights.any():
        raise ValueError("class_weight (with sample_weight) gives every row a weight of 0: nothing to learn from")
    return weights


def row_weights(class_weight, y, loss, n_outputs, sample_weight=None):
    """(n,) float64: sample_weight (1 for every row when None) x the weight of each row's class."""
    classes, n_classes = row_classes(y, loss, n_outputs)
    return weighted_rows(class_table(class_weight, classes, n_classes), classes,
                         None if sample_weight is None else sample_weights.check(sample_weight, classes.size))
