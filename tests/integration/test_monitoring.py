"""`orchard monitor` on a trained model's prediction log: outcomes joined, performance per window, drift, report."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from features.catalog import get_view
from features.datasets import TrainingDataset
from monitoring.outcomes import check_outcomes, store_outcomes
from orchard.registry import ModelRegistry
from orchard.storage import Storage
from pipelines.cli import app
from serve.prediction_log import PredictionLog
from tests.conftest import prepare_domains
from training.predictor import Predictor
from training.trainer import train_model

pytestmark = pytest.mark.ray

MODEL = "fruit_classifier"
DAY_1 = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
DAY_2 = DAY_1 + timedelta(days=1)
DAY_3 = DAY_1 + timedelta(days=2)
PNG = b"\x89PNG\r\n\x1a\n"


def _requests(rows: list[dict], size: int = 10) -> list[list[dict]]:
    return [rows[start:start + size] for start in range(0, len(rows), size)]


@pytest.fixture(scope="module")
def monitored(ray_cluster, tmp_path_factory):
    """Three days of logged fruit predictions: day 1 as in training, day 2 with every fruit 60% heavier (drift),
    day 3 made for entity keys; outcomes by request id (day 1 but its last request, all of day 2), by entity
    (day 3, one of them too late), and one for a request nobody made."""
    storage = Storage(str(tmp_path_factory.mktemp("monitoring")))
    prepare_domains(storage, fruit_rows=900, surf_rows=60)
    train_model(storage, MODEL, alias="production")
    registry = ModelRegistry(storage)
    predictor = Predictor.load(registry, MODEL)
    names = [item["name"] for item in registry.get(MODEL).card["signature"]["inputs"]]
    test = TrainingDataset.open(storage, get_view("fruit_classification")).read("test").take_all()
    rows, labels = [{n: row[n] for n in names} for row in test], [row["label"] for row in test]
    heavier = [{**row, "weight_g": row["weight_g"] * 1.6} for row in rows]
    log = PredictionLog(storage)
    expected, outcomes = {}, []
    for day, inputs, tag in ((DAY_1, rows, "d1"), (DAY_2, heavier, "d2")):
        hits = answered = 0
        for number, request in enumerate(_requests(inputs)):
            outputs = predictor.predict(request)
            request_id = f"{tag}-{number}"
            log.record(MODEL, 1, request_id, request, outputs, time=day + timedelta(minutes=number))
            truth = labels[number * 10:number * 10 + len(request)]
            if tag == "d1" and number == len(_requests(inputs)) - 1:
                continue  # this request's outcomes never arrive
            outcomes += [{"request_id": request_id, "index": i, "outcome": t} for i, t in enumerate(truth)]
            hits += sum(o["label"] == t for o, t in zip(outputs, truth))
            answered += len(truth)
        expected[tag] = {"predictions": len(inputs), "with_outcome": answered, "accuracy": hits / answered}
    day3 = rows[:30]
    outputs = predictor.predict(day3)
    log.record(MODEL, 1, "d3", day3, outputs, entities=[{"fruit_id": i} for i in range(30)], time=DAY_3)
    outcomes += [{"entity": {"fruit_id": str(i)}, "time": (DAY_3 + timedelta(hours=5)).isoformat(),
                  "outcome": labels[i]} for i in range(29)]
    outcomes.append({"entity": {"fruit_id": 29}, "time": (DAY_3 + timedelta(days=9)).isoformat(),
                     "outcome": labels[29]})  # beyond the 7-day horizon
    outcomes.append({"request_id": "nobody-sent-this", "outcome": "apple"})
    expected["d3"] = {"accuracy": sum(o["label"] == t for o, t in zip(outputs[:29], labels[:29])) / 29}
    log.close()
    signature = registry.get(MODEL).card["signature"]
    store_outcomes(storage, MODEL, check_outcomes(signature, outcomes[:100]))
    store_outcomes(storage, MODEL, check_outcomes(signature, outcomes[100:]))
    day_one = storage.path(f"predictions/{MODEL}/2026-11-01")
    with open(os.path.join(day_one, os.listdir(day_one)[0]), "a") as handle:
        handle.write("{this line was cut off by a full disk\n")
    result = CliRunner().invoke(app, ["--storage", storage.root_uri, "monitor", MODEL, "--json"])
    assert result.exit_code == 0, result.output
    return storage, json.loads(result.stdout), expected


def test_each_day_is_a_window_with_its_predictions_outcome_share_and_accuracy(monitored):
    _, report, expected = monitored
    windows = report["versions"]["1"]["windows"]
    assert [w["start"][:10] for w in windows] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    for window, tag in zip(windows, ("d1", "d2")):
        assert window["predictions"] == expected[tag]["predictions"]
        assert window["with_outcome"] == expected[tag]["with_outcome"]
        assert window["performance"]["metrics"]["accuracy"] == pytest.approx(expected[tag]["accuracy"])
    assert windows[0]["outcome_share"] < 1 and windows[1]["outcome_share"] == 1


def test_outcomes_by_entity_resolve_the_latest_prediction_within_the_horizon(monitored):
    _, report, expected = monitored
    day3 = report["versions"]["1"]["windows"][2]
    assert (day3["predictions"], day3["with_outcome"]) == (30, 29)
    assert day3["performance"]["metrics"]["accuracy"] == pytest.approx(expected["d3"]["accuracy"])
    assert report["outcomes_unmatched"] == 2  # the late one and the one for a request nobody made


def test_the_heavier_fruit_drift_in_weight_only_and_day_one_does_not(monitored):
    _, report, _ = monitored
    day1, day2, _ = report["versions"]["1"]["windows"]
    assert day1["drifted_features"] == []
    assert day2["drifted_features"] == ["weight_g"]
    weight = day2["drift"]["weight_g"]
    assert weight["psi"] > 0.2 and weight["ks_p_value"] < 0.001 and weight["out_of_range"] > 0.2
    assert report["versions"]["1"]["reference"]["dataset"]["version"] == 1
    assert any("feature weight_g drifted" in alert for alert in report["alerts"])


def test_a_malformed_log_line_is_counted_not_fatal(monitored):
    _, report, _ = monitored
    assert report["malformed_log_lines"] == 1


def test_the_report_is_stored_with_page_plots_and_gauges(monitored):
    storage, report, _ = monitored
    folder = report["folder"]
    assert storage.read_json(f"monitoring/{MODEL}/latest.json")["folder"] == folder
    page = storage.read_bytes(f"{folder}/report.html").decode()
    for plot in ("performance.png", "confusion_over_time.png", "drift.png"):
        assert storage.read_bytes(f"{folder}/{plot}").startswith(PNG) and f"src='{plot}'" in page
    assert "weight_g" in page and "Alerts" in page
    gauges = storage.read_bytes(f"{folder}/metrics.prom").decode()
    assert '# TYPE orchard_monitor_feature_psi gauge' in gauges
    assert 'orchard_monitor_feature_drifted{model="fruit_classifier",version="1",feature="weight_g"} 1' in gauges
    predictions = report["versions"]["1"]["overall"]["predictions"]
    assert f'orchard_monitor_predictions{{model="fruit_classifier",version="1"}} {predictions}' in gauges
    assert storage.exists(f"monitoring/{MODEL}/reference/v1.json")  # the training split's summaries, kept
