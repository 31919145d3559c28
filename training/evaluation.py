"""Test-split metrics, merged from per-block partial sums, each beside a trivial baseline's.

A model is evaluated where its test rows are: every block of predictions is
reduced to sums (a confusion matrix for a classifier; error sums for a
regressor), the sums are added up, and `finish` turns them into metrics. The
same sums give the baseline's metrics: the majority class of the training split
for a classifier, the training split's mean for a regressor.

A model *beats its baseline* when it is strictly better on the metric the
baseline is the best constant for: accuracy (the majority class is the most
accurate constant) or RMSE (the mean is the constant with the least squared
error). Macro-F1 is reported but not compared: any non-constant guess beats a
constant's macro-F1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from orchard.errors import UsageError
from orchard.registry import HIGHER_IS_BETTER

COMPARED_ON = {"classification": "accuracy", "regression": "rmse"}


class EvaluationError(UsageError):
    """Predictions or partial sums that cannot be evaluated."""


def partials(task: str, y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int = 0,
             train_mean: float | None = None) -> dict[str, Any]:
    """One block's sums. Classification: class indices in 0..n_classes-1; regression: values and the train mean."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise EvaluationError(f"targets {y_true.shape} and predictions {y_pred.shape} must be vectors of one length")
    if task == "classification":
        if n_classes < 2:
            raise EvaluationError(f"a classifier needs at least 2 classes, got {n_classes}")
        true, predicted = y_true.astype(np.int64), y_pred.astype(np.int64)
        for name, values in (("target", true), ("prediction", predicted)):
            if len(values) and (values.min() < 0 or values.max() >= n_classes):
                raise EvaluationError(f"a {name} class index is outside 0..{n_classes - 1}")
        matrix = np.bincount(true * n_classes + predicted, minlength=n_classes * n_classes)
        return {"confusion_matrix": matrix.reshape(n_classes, n_classes).tolist()}
    if task != "regression":
        raise EvaluationError(f"task must be classification or regression, got {task!r}")
    if train_mean is None or not math.isfinite(train_mean):
        raise EvaluationError(f"a regressor's baseline needs the training split's mean, got {train_mean!r}")
    true, predicted = y_true.astype(np.float64), y_pred.astype(np.float64)
    if not np.all(np.isfinite(predicted)):
        raise EvaluationError(f"{int(np.sum(~np.isfinite(predicted)))} prediction(s) are not finite")
    error, deviation = predicted - true, true - train_mean
    # Sums of deviations from the training mean, not of raw values: targets with a large mean would make
    # sum(y^2) - sum(y)^2 / n cancel out.
    return {"n": int(len(true)), "sum_deviation": float(deviation.sum()),
            "abs_error": float(np.abs(error).sum()), "sq_error": float(np.square(error).sum()),
            "baseline_abs_error": float(np.abs(deviation).sum()),
            "baseline_sq_error": float(np.square(deviation).sum())}


def merge(a: dict | None, b: dict) -> dict:
    """The sums of two blocks (`a` may be None for the first)."""
    if a is None:
        return b
    if "confusion_matrix" in a:
        return {"confusion_matrix": (np.asarray(a["confusion_matrix"]) + np.asarray(b["confusion_matrix"])).tolist()}
    return {key: a[key] + b[key] for key in a}


def _classification(matrix: np.ndarray) -> dict[str, Any]:
    n = int(matrix.sum())
    true_positive = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)  # predicted + actual = 2TP + FP + FN
    present = denominator > 0  # a class neither present nor predicted has no F1 (as in scikit-learn)
    f1 = 2 * true_positive[present] / denominator[present]
    actual = matrix.sum(axis=1)
    # Per class (in the classes' order): the share of its test rows predicted as it; None for a class absent there.
    recall = [float(true_positive[i] / actual[i]) if actual[i] else None for i in range(len(matrix))]
    return {"accuracy": float(true_positive.sum() / n), "macro_f1": float(f1.mean()) if len(f1) else 0.0,
            "per_class_recall": recall, "confusion_matrix": matrix.astype(int).tolist(), "n": n}


def finish(task: str, sums: dict | None, *, majority_class: int | None = None) -> dict[str, Any]:
    """{"test": metrics, "baseline": the baseline's metrics, "beats_baseline", "compared_on"} from merged sums."""
    if sums is None:
        raise EvaluationError("there are no test rows to evaluate on")
    if task == "classification":
        matrix = np.asarray(sums["confusion_matrix"], dtype=np.int64)
        if matrix.sum() == 0:
            raise EvaluationError("there are no test rows to evaluate on")
        if majority_class is None or not 0 <= majority_class < len(matrix):
            raise EvaluationError(f"the majority class index {majority_class!r} is outside 0..{len(matrix) - 1}")
        baseline = np.zeros_like(matrix)
        baseline[:, majority_class] = matrix.sum(axis=1)  # every row predicted as the majority class
        test, base = _classification(matrix), _classification(baseline)
    else:
        n = sums["n"]
        if n == 0:
            raise EvaluationError("there are no test rows to evaluate on")
        # Squared deviations from the test mean, from those around the training mean (Steiner's theorem).
        total_squares = sums["baseline_sq_error"] - sums["sum_deviation"] ** 2 / n

        def regression(abs_error: float, sq_error: float) -> dict:
            r2 = 1 - sq_error / total_squares if total_squares > 1e-12 * max(1.0, sums["baseline_sq_error"]) else None
            return {"mae": abs_error / n, "rmse": math.sqrt(sq_error / n), "r2": r2, "n": n}

        test = regression(sums["abs_error"], sums["sq_error"])
        base = regression(sums["baseline_abs_error"], sums["baseline_sq_error"])
    metric = COMPARED_ON[task]
    better = test[metric] > base[metric] if HIGHER_IS_BETTER[metric] else test[metric] < base[metric]
    return {"test": test, "baseline": base, "beats_baseline": bool(better), "compared_on": metric}


def summary(task: str, evaluation: dict) -> str:
    """One line: the compared metric beside the baseline's, and the other metrics."""
    metric, test, base = evaluation["compared_on"], evaluation["test"], evaluation["baseline"]
    shown = [f"{metric} {test[metric]:.4f} (baseline {base[metric]:.4f})"]
    shown += [f"{name} {test[name]:.4f}" for name in ("macro_f1", "mae", "r2")
              if name in test and name != metric and test[name] is not None]
    return ", ".join(shown)
