"""Test-split metrics merged from block sums agree with scikit-learn computed on the whole split."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn import metrics

from training import evaluation
from training.evaluation import EvaluationError


def _blocks(values: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    return np.split(values, sorted(set(c % (len(values) + 1) for c in cuts)))


def _merged(task, y_true, y_pred, cuts, **kwargs):
    sums = None
    for true, predicted in zip(_blocks(y_true, cuts), _blocks(y_pred, cuts)):
        sums = evaluation.merge(sums, evaluation.partials(task, true, predicted, **kwargs))
    return sums


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=60),
    st.lists(st.integers(0, 60), max_size=4))))
def test_classification_metrics_equal_scikit_learns_however_the_split_is_cut(case):
    n_classes, pairs, cuts = case
    y_true, y_pred = (np.array(column) for column in zip(*pairs))
    result = evaluation.finish("classification", _merged("classification", y_true, y_pred, cuts, n_classes=n_classes),
                               majority_class=0)
    labels = list(range(n_classes))
    assert result["test"]["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    assert result["test"]["macro_f1"] == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert result["test"]["confusion_matrix"] == metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    present = sorted(set(y_true.tolist()))
    recalls = metrics.recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    assert [result["test"]["per_class_recall"][c] for c in present] == pytest.approx(recalls.tolist())
    assert all(result["test"]["per_class_recall"][c] is None for c in labels if c not in present)
    baseline = np.zeros_like(y_true)
    assert result["baseline"]["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, baseline))
    assert result["baseline"]["macro_f1"] == pytest.approx(
        metrics.f1_score(y_true, baseline, average="macro", zero_division=0))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), min_size=2, max_size=60),
       st.floats(-50, 50), st.lists(st.integers(0, 60), max_size=4))
@example(pairs=[(0.0, 0.0), (0.005, 1.0)], train_mean=2.0, cuts=[])  # R² -79201: beyond an absolute tolerance
def test_regression_metrics_equal_scikit_learns_however_the_split_is_cut(pairs, train_mean, cuts):
    y_true, y_pred = (np.array(column) for column in zip(*pairs))
    result = evaluation.finish("regression", _merged("regression", y_true, y_pred, cuts, train_mean=train_mean))
    assert result["test"]["mae"] == pytest.approx(metrics.mean_absolute_error(y_true, y_pred), abs=1e-9)
    assert result["test"]["rmse"] == pytest.approx(math.sqrt(metrics.mean_squared_error(y_true, y_pred)), abs=1e-9)
    constant = np.full_like(y_true, train_mean)
    assert result["baseline"]["mae"] == pytest.approx(metrics.mean_absolute_error(y_true, constant), abs=1e-9)
    baseline_rmse = math.sqrt(metrics.mean_squared_error(y_true, constant))
    assert result["baseline"]["rmse"] == pytest.approx(baseline_rmse, abs=1e-9)
    if abs(result["test"]["rmse"] - baseline_rmse) > 1e-9:
        assert result["beats_baseline"] == (result["test"]["rmse"] < baseline_rmse)
    if np.var(y_true) > 1e-6:
        # R² divides by the spread of y_true, which the merged sums get as sum((y - train_mean)^2) minus a square:
        # its float error grows with how much larger the first is than the spread (the condition number).
        condition = float(np.sum((y_true - train_mean) ** 2) / np.sum((y_true - y_true.mean()) ** 2))
        tolerance = {"rel": max(1e-9, 1e-13 * condition), "abs": 1e-6}
        assert result["test"]["r2"] == pytest.approx(metrics.r2_score(y_true, y_pred), **tolerance)
        assert result["baseline"]["r2"] == pytest.approx(metrics.r2_score(y_true, constant), **tolerance)


def test_a_classifier_beats_the_majority_class_only_with_strictly_higher_accuracy():
    y_true = np.array([0, 0, 0, 1])
    as_majority = evaluation.finish("classification", evaluation.partials(
        "classification", y_true, np.array([0, 0, 0, 0]), n_classes=2), majority_class=0)
    assert (as_majority["beats_baseline"], as_majority["compared_on"]) == (False, "accuracy")
    # Predicting the minority class sometimes raises macro-F1 above the baseline's, but not accuracy.
    guessing = evaluation.finish("classification", evaluation.partials(
        "classification", y_true, np.array([0, 1, 0, 1]), n_classes=2), majority_class=0)
    assert guessing["test"]["macro_f1"] > guessing["baseline"]["macro_f1"]
    assert guessing["beats_baseline"] is False
    right = evaluation.finish("classification", evaluation.partials(
        "classification", y_true, y_true, n_classes=2), majority_class=0)
    assert right["beats_baseline"] is True


def test_a_regressor_beats_the_mean_only_with_a_lower_rmse():
    y_true = np.array([1.0, 2.0, 3.0])
    at_mean = evaluation.finish("regression", evaluation.partials("regression", y_true, np.full(3, 2.0), train_mean=2.0))
    assert (at_mean["beats_baseline"], at_mean["compared_on"]) == (False, "rmse")
    closer = evaluation.finish("regression", evaluation.partials("regression", y_true, y_true + 0.1, train_mean=2.0))
    assert closer["beats_baseline"] is True


def test_constant_targets_have_no_r2():
    result = evaluation.finish("regression", evaluation.partials("regression", np.ones(3), np.ones(3), train_mean=1.0))
    assert result["test"]["r2"] is None and result["test"]["rmse"] == 0.0


@pytest.mark.parametrize("call, message", [
    (lambda: evaluation.partials("classification", np.array([0, 2]), np.array([0, 1]), n_classes=2),
     "target class index is outside 0..1"),
    (lambda: evaluation.partials("classification", np.array([0]), np.array([0, 1]), n_classes=2), "one length"),
    (lambda: evaluation.partials("classification", np.array([0]), np.array([0]), n_classes=1), "at least 2 classes"),
    (lambda: evaluation.partials("regression", np.array([1.0]), np.array([np.nan]), train_mean=0.0), "not finite"),
    (lambda: evaluation.partials("regression", np.array([1.0]), np.array([1.0])), "training split's mean"),
    (lambda: evaluation.partials("ranking", np.array([1.0]), np.array([1.0])), "task must be"),
    (lambda: evaluation.finish("regression", None), "no test rows"),
    (lambda: evaluation.finish("classification", {"confusion_matrix": [[0, 0], [0, 0]]}, majority_class=0),
     "no test rows"),
    (lambda: evaluation.finish("classification", {"confusion_matrix": [[1, 0], [0, 1]]}, majority_class=2),
     "majority class index 2"),
])
def test_bad_input_is_refused_with_a_clear_error(call, message):
    with pytest.raises(EvaluationError, match=message):
        call()


def test_r2_stays_exact_for_targets_far_from_zero():
    rng = np.random.default_rng(0)
    y_true = 1e6 + rng.normal(size=500)
    y_pred = y_true + rng.normal(scale=0.5, size=500)
    result = evaluation.finish("regression", evaluation.partials("regression", y_true, y_pred, train_mean=1e6))
    assert result["test"]["r2"] == pytest.approx(metrics.r2_score(y_true, y_pred), abs=1e-6)
