"""How logged predictions and outcomes pair up (the monitor's per-group functions, on small Arrow tables)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from monitoring import stats
from monitoring.monitor import _JOIN_SCHEMA, _pair, _parse_log_block, _prediction_keys
from monitoring.outcomes import entity_key

DAY = 86_400.0


def _log(*records: dict) -> pa.Table:
    return _parse_log_block(pa.table({"text": [json.dumps(r) for r in records]}), DAY, None, None)


def _record(version: int, request_id: str, time: str, outputs: list, **extra) -> dict:
    return {"time": time, "model": "m", "version": version, "request_id": request_id,
            "inputs": [{"x": 1.0}] * len(outputs), "outputs": outputs, **extra}


def _outcome(key: str, time: float, label: str, received: str) -> dict:
    return {"key": key, "side": "o", "ts": time, "outcome_label": label, "received": received}


def _paired(predictions: pa.Table, *outcomes: dict, horizon: float = 7 * DAY) -> list[dict]:
    keyed = _prediction_keys(predictions)
    rows = [*keyed.to_pylist(), *outcomes]
    out = []
    for key in sorted({r["key"] for r in rows}):
        group = pa.Table.from_pylist([r for r in rows if r["key"] == key], schema=_JOIN_SCHEMA)
        out += _pair(group, horizon).to_pylist()
    return out


def test_an_entity_request_logs_each_answer_at_its_position_in_the_response():
    # Entities 0 and 2 had features, entity 1 did not: the answer lists three, the log two.
    parsed = _log(_record(1, "r1", "2026-12-01T10:00:00+00:00", [0.5, 0.7], entities=[{"b": 1}, {"b": 3}],
                          positions=[0, 2]))
    assert parsed.column("rid").to_pylist() == ["r1:0", "r1:2"]
    paired = _paired(parsed, _outcome("r:r1:2", parsed["ts"][0].as_py(), None, "a|000000000"))
    assert [(p["side"], p["rid"]) for p in paired] == [("m", "r1:2")]


def test_the_last_outcome_received_for_a_request_wins_also_within_one_batch():
    parsed = _log(_record(1, "r1", "2026-12-01T10:00:00+00:00", [{"label": "apple"}]))
    first, correction = (_outcome("r:r1:0", 0.0, label, f"2026-12-02|{n:09d}") for n, label in
                         enumerate(("apple", "orange")))
    (pair,) = _paired(parsed, correction, first)
    assert pair["outcome_label"] == "orange"


def test_a_shadow_is_judged_on_the_same_requests_as_production():
    parsed = _log(_record(1, "r1", "2026-12-01T10:00:00+00:00", [{"label": "apple"}]),
                  _record(2, "r1", "2026-12-01T10:00:00.1+00:00", [{"label": "orange"}], shadow=True))
    pairs = _paired(parsed, _outcome("r:r1:0", 0.0, "orange", "x|000000000"))
    assert sorted((p["version"], p["shadow"], p["label"]) for p in pairs) == [(1, False, "apple"), (2, True, "orange")]


def test_an_entity_outcome_resolves_the_answer_that_was_returned_not_every_versions_latest():
    beach = {"b": 7}
    # A canary: version 2 answered at 10:00, version 1 (production) at 11:00; the outcome is observed at 12:00.
    parsed = _log(_record(2, "r1", "2026-12-01T10:00:00+00:00", [1.0], entities=[beach]),
                  _record(1, "r2", "2026-12-01T11:00:00+00:00", [2.0], entities=[beach]),
                  _record(2, "r2", "2026-12-01T11:00:00.1+00:00", [2.5], entities=[beach], shadow=True))
    noon = parsed["ts"][1].as_py() + 3600
    pairs = _paired(parsed, _outcome(f"e:{entity_key(beach)}", noon, None, "x|000000000"))
    matched = sorted((p["version"], p["rid"], p["shadow"]) for p in pairs if p["side"] == "m")
    assert matched == [(1, "r2:0", False), (2, "r2:0", True)]  # the 11:00 answer and its shadow, not 10:00's


def test_an_entity_outcome_beyond_the_horizon_resolves_nothing():
    parsed = _log(_record(1, "r1", "2026-12-01T10:00:00+00:00", [1.0], entities=[{"b": 7}]))
    late = parsed["ts"][0].as_py() + 8 * DAY
    (pair,) = _paired(parsed, _outcome(f"e:{entity_key({'b': '7'})}", late, None, "x|000000000"))
    assert pair["side"] == "u"


def test_a_constant_training_feature_gets_a_full_grid_and_its_drift_is_measured():
    edges = stats.grid_edges({"lo": 3.0, "hi": 3.0, "counts": [0] * stats.GRID_BINS})
    assert len(edges) == stats.GRID_BINS + 1 and edges[0] < 3.0 < edges[-1]
    counts = stats.numeric_counts(np.full(100, 3.0), edges)["counts"]
    reference = stats.numeric_reference("c", 3.0, 3.0, counts, n=100, nulls=0, mean=3.0, std=0.0)
    live = stats.numeric_counts(np.array([3.0] * 40 + [4.0] * 10), edges)
    result = stats.numeric_drift(reference, live, stats.DriftThresholds())
    assert result["out_of_range"] == 0.2 and result["ks"] > 0.15
