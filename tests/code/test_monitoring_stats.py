"""Drift measures from mergeable summaries, against scipy's exact ones on the same data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp, wasserstein_distance

from monitoring import stats
from monitoring.outcomes import OutcomeError, check_outcomes, entity_key, read_outcome_file

THRESHOLDS = stats.DriftThresholds()


def _reference(values: np.ndarray) -> dict:
    lo, hi = float(values.min()), float(values.max())
    edges = stats.grid_edges({"lo": lo, "hi": hi, "counts": [0] * stats.GRID_BINS})
    counts = stats.numeric_counts(values, edges)["counts"]
    return stats.numeric_reference("x", lo, hi, counts, n=len(values), nulls=0, mean=values.mean(), std=values.std())


def _current(reference: dict, values: np.ndarray, parts: int = 3) -> dict:
    """Summaries of `parts` blocks, merged: what the monitor does per block."""
    edges = stats.grid_edges(reference)
    merged = None
    for block in np.array_split(values, parts):
        merged = stats.merge(merged, stats.numeric_counts(block, edges))
    return merged


@settings(max_examples=60, deadline=None)
@given(shift=st.floats(-1.5, 1.5), scale=st.floats(0.5, 2.0), seed=st.integers(0, 10_000))
def test_ks_and_wasserstein_from_the_grid_match_scipy_on_the_raw_values(shift, scale, seed):
    rng = np.random.default_rng(seed)
    train, live = rng.normal(0, 1, 2000), rng.normal(shift, scale, 800)
    result = stats.numeric_drift(_reference(train), _current(_reference(train), live), THRESHOLDS)
    exact = ks_2samp(train, live).statistic
    # At the grid's edges only: never above the exact statistic, and within a fine bin's mass of it.
    assert exact - 0.03 <= result["ks"] <= exact + 1e-9
    assert result["wasserstein"] == pytest.approx(wasserstein_distance(train, live), abs=0.02)
    assert result["out_of_range"] == pytest.approx(np.mean((live < train.min()) | (live > train.max())))


def test_the_same_distribution_does_not_drift_and_a_shifted_one_does():
    rng = np.random.default_rng(1)
    train = rng.normal(10, 2, 900)
    same = stats.numeric_drift(_reference(train), _current(_reference(train), rng.normal(10, 2, 300)), THRESHOLDS)
    moved = stats.numeric_drift(_reference(train), _current(_reference(train), rng.normal(11.5, 2, 300)), THRESHOLDS)
    assert same["drifted"] is False and same["psi"] < 0.1 and same["test"]["method"] == "ks"
    assert moved["drifted"] is True and moved["psi"] > 0.2 and moved["ks_p_value"] < 1e-6
    assert any(reason.startswith("ks p-value") for reason in moved["reasons"])


def test_psi_uses_ten_bins_of_equal_training_mass():
    rng = np.random.default_rng(2)
    train = rng.exponential(1.0, 5000)  # skewed: equal-width bins would put most rows in one
    groups = stats.equal_mass_groups(_reference(train)["counts"])
    shares = np.bincount(groups, weights=_reference(train)["counts"]) / len(train)
    assert len(shares) == stats.PSI_BINS and np.all(np.abs(shares - 0.1) < 0.02)


def test_a_large_reference_is_judged_by_normed_wasserstein_not_by_a_test():
    rng = np.random.default_rng(3)
    train = rng.normal(0, 1, 5000)
    tiny_shift = stats.numeric_drift(_reference(train), _current(_reference(train), rng.normal(0.05, 1, 5000)),
                                     THRESHOLDS)
    assert tiny_shift["test"]["method"] == "wasserstein_normed" and tiny_shift["drifted"] is False


def test_too_few_rows_give_no_verdict():
    train = np.random.default_rng(4).normal(0, 1, 500)
    result = stats.numeric_drift(_reference(train), _current(_reference(train), np.array([5.0] * 10), 1), THRESHOLDS)
    assert result["drifted"] is None and result["reasons"] == ["insufficient data"]
    assert result["alerts"] == ["100.0% of values outside the training range"]


def test_categories_give_psi_jensen_shannon_chi2_and_unseen_values():
    reference = {"name": "colour", **stats.categorical_counts(["red"] * 500 + ["green"] * 300 + ["yellow"] * 200)}
    live = stats.merge(stats.categorical_counts(["red"] * 100 + ["green"] * 150),
                       stats.categorical_counts(["yellow"] * 30 + ["purple"] * 20 + [None] * 25))
    result = stats.categorical_drift(reference, live, THRESHOLDS)
    ref_p = np.array([300, 0, 500, 200]) / 1000  # green, purple, red, yellow
    cur_p = np.array([150, 20, 100, 30]) / 300
    assert result["jensen_shannon"] == pytest.approx(jensenshannon(ref_p, cur_p, base=2))
    assert result["out_of_range"] == pytest.approx(20 / 300) and result["null_rate"] == pytest.approx(25 / 325)
    assert result["drifted"] is True and result["test"]["method"] == "chi2"
    assert any("never seen in training" in alert for alert in result["alerts"])
    assert any("null rate" in alert for alert in result["alerts"])


def test_summaries_merge_in_any_order_to_the_summary_of_all():
    reference = _reference(np.random.default_rng(5).normal(0, 1, 1000))
    edges = stats.grid_edges(reference)
    values = np.random.default_rng(6).normal(0.5, 1.5, 600)
    whole = stats.numeric_counts(values, edges)
    parts = [stats.numeric_counts(block, edges) for block in np.array_split(values, 5)]
    merged = None
    for part in reversed(parts):
        merged = stats.merge(merged, part)
    assert merged["counts"] == whole["counts"] and merged["n"] == whole["n"]
    assert merged["below_distance"] == pytest.approx(whole["below_distance"])


@pytest.mark.parametrize(("values", "message"), [
    ({"psi": -1}, "drift threshold psi must be a non-negative number"),
    ({"p_value": 1.5}, "p_value must be between 0 and 1"),
    ({"psy": 0.2}, "unknown drift threshold(s) ['psy']"),
])
def test_bad_thresholds_are_refused_by_name(values, message):
    with pytest.raises(stats.DriftSettingsError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        stats.DriftThresholds.from_mapping(values)


# -- outcomes

CLASSIFIER = {"task": "classification", "classes": ["apple", "orange"]}
REGRESSOR = {"task": "regression"}


def test_outcomes_by_request_or_entity_are_checked_and_normalized():
    checked = check_outcomes(CLASSIFIER, [{"request_id": "r1", "outcome": "apple"},
                                          {"entity": {"fruit_id": 3}, "time": "2026-12-01T10:00:00",
                                           "outcome": "orange"}])
    assert checked[0]["index"] == 0 and checked[0]["outcome"] == "apple"
    assert checked[1]["time"] == "2026-12-01T10:00:00+00:00" and checked[1]["entity"] == {"fruit_id": 3}


@pytest.mark.parametrize(("signature", "record", "message"), [
    (CLASSIFIER, {"request_id": "r", "outcome": "pear"}, "outcome 'pear' is not one of the model's classes"),
    (REGRESSOR, {"request_id": "r", "outcome": float("nan")}, "outcome must be a finite number"),
    (REGRESSOR, {"outcome": 1.0}, "must name its prediction by request_id (and index) or by entity"),
    (REGRESSOR, {"request_id": "r", "entity": {"a": 1}, "outcome": 1.0}, "and not by both"),
    (REGRESSOR, {"request_id": "r", "index": -1, "outcome": 1.0}, "index must be a non-negative integer"),
    (REGRESSOR, {"entity": {"a": 1}, "time": "yesterday", "outcome": 1.0}, "time 'yesterday' is not an ISO 8601"),
    (REGRESSOR, {"request_id": "r", "outcome": 1.0, "note": "x"}, "unknown field(s) ['note']"),
    (REGRESSOR, {"request_id": "r"}, "has no outcome"),
])
def test_a_bad_outcome_is_refused_with_its_position_and_reason(signature, record, message):
    with pytest.raises(OutcomeError) as error:
        check_outcomes(signature, [{"request_id": "ok", "outcome": "apple" if signature is CLASSIFIER else 1.0},
                                   record])
    assert str(error.value).startswith("outcome 1") and message in str(error.value)


def test_outcome_files_in_csv_and_json_lines_read_alike():
    csv_rows = read_outcome_file(b"request_id,index,outcome\nr1,2,apple\n,,orange\n", "o.csv")
    assert csv_rows[0] == {"request_id": "r1", "index": 2, "outcome": "apple"}
    assert "entity" in csv_rows[1]
    lines = read_outcome_file(b'{"request_id": "r1", "index": 2, "outcome": "apple"}\n\n', "o.jsonl")
    assert lines == [csv_rows[0]]
    with pytest.raises(OutcomeError, match="o.jsonl line 1 is not valid JSON"):
        read_outcome_file(b"{nope\n", "o.jsonl")


def test_entity_keys_ignore_column_order_and_compare_values_as_text():
    assert entity_key({"a": 1, "b": "x"}) == entity_key({"b": "x", "a": "1"})


def test_psi_of_a_small_sample_is_reported_but_not_judged():
    rng = np.random.default_rng(7)
    train = rng.normal(0, 1, 2000)
    small = stats.numeric_drift(_reference(train), _current(_reference(train), rng.normal(0, 1, 40), 1), THRESHOLDS)
    assert small["psi_judged"] is False and small["drifted"] is False  # its PSI alone may well exceed 0.2
    large = stats.numeric_drift(_reference(train), _current(_reference(train), rng.normal(0, 1, 800), 1), THRESHOLDS)
    assert large["psi_judged"] is True


def test_tests_over_many_inputs_are_bonferroni_corrected():
    reference = {"name": "side", **stats.categorical_counts(["left"] * 500 + ["right"] * 500)}
    live = stats.categorical_counts(["left"] * 60 + ["right"] * 40)  # chi-squared 4.0, p = 0.046
    alone = stats.drift(reference, live, THRESHOLDS)
    among_six = stats.drift(reference, live, THRESHOLDS, family=6)
    assert alone["chi2_p_value"] == pytest.approx(0.0455, abs=1e-3)
    assert alone["drifted"] is True and among_six["drifted"] is False
