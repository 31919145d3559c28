"""The whole loop on data whose distribution shifts: drift is seen, a challenger is trained, gated, shadowed on live
traffic and promoted; a deliberately worse challenger is refused. Real HTTP to a running Serve app throughout."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import httpx
import pytest
from fruit.generate import fruit_frame, write_fruit
from typer.testing import CliRunner

from features.catalog import get_view
from features.datasets import RandomSplit, create_training_dataset
from features.pipeline import run_feature_pipeline
from monitoring.retraining import retrain_step
from orchard.registry import ModelRegistry
from orchard.storage import Storage
from pipelines.cli import app
from serve.prediction_log import read_predictions
from training import RetrainPolicy, SklearnFlavor
from training.catalog import get_spec
from training.trainer import train_model

pytestmark = pytest.mark.ray

MODEL = "fruit_classifier"
APP = "loop"
INPUTS = ["red", "green", "blue", "weight_g", "diameter_mm", "smoothness"]
POLICY = RetrainPolicy(drift=1, rollout="shadow", min_outcomes=100, tolerance=0.01)
SPEC = replace(get_spec(MODEL), retrain=POLICY)


def _traffic(url: str, storage: Storage, seed: int, rows: int = 150) -> list[dict]:
    """Requests of ten fruit of the new season (40% golden apples) to the production endpoint, then their
    outcomes by request id; returns the answers."""
    frame = fruit_frame(rows, seed=seed, golden_share=0.4)
    answers, outcomes = [], []
    with httpx.Client(timeout=60) as client:
        for start in range(0, rows, 10):
            part = frame.iloc[start:start + 10]
            answer = client.post(f"{url}/v1/models/{MODEL}:predict",
                                 json={"instances": part[INPUTS].to_dict("records")})
            assert answer.status_code == 200, answer.text
            answers.append({**answer.json(), "request_id": answer.headers["x-request-id"]})
            outcomes += [{"request_id": answer.headers["x-request-id"], "index": i, "outcome": label}
                         for i, label in enumerate(part["label"])]
        stored = client.post(f"{url}/v1/models/{MODEL}/outcomes", json={"outcomes": outcomes})
        assert stored.status_code == 200 and stored.json()["stored"] == rows, stored.text
    return answers


def _logged(storage: Storage, predicate, count: int) -> list[dict]:
    """Waits (the log is written about once a second) until `count` logged instances match."""
    found = []
    for _ in range(150):
        found = [r for r in read_predictions(storage, MODEL) if predicate(r)]
        if sum(len(r["inputs"]) for r in found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"only {sum(len(r['inputs']) for r in found)} of {count} instances logged")


@pytest.fixture(scope="module")
def loop(ray_cluster, tmp_path_factory, session_config):
    from ray import serve

    from serve.app import deploy

    storage = Storage(str(tmp_path_factory.mktemp("loop")))
    write_fruit(storage, rows=900, seed=7)
    run_feature_pipeline(storage, get_view("fruit_classification").label.group)
    create_training_dataset(storage, get_view("fruit_classification"), RandomSplit(seed=0))
    train_model(storage, SPEC, alias="production")
    url = deploy(session_config.with_overrides(storage=storage.root_uri), name=APP, route_prefix="/loop",
                 replica_cpus=0, alias_ttl_s=0.5)
    steps = {"url": url}
    # The season changes: golden apples arrive in the data and in the requests.
    write_fruit(storage, rows=900, seed=8, golden_share=0.4)
    run_feature_pipeline(storage, get_view("fruit_classification").label.group)
    steps["before"] = _traffic(url, storage, seed=1)
    _logged(storage, lambda r: r["version"] == 1, 150)
    steps["triggered"] = retrain_step(storage, MODEL, spec=SPEC)
    time.sleep(1.0)  # the service reads the registry's aliases and rollout at most every 0.5 s
    steps["shadowed"] = _traffic(url, storage, seed=2)
    steps["shadow_log"] = _logged(storage, lambda r: r.get("shadow"), 150)
    steps["judged"] = retrain_step(storage, MODEL, spec=SPEC)
    time.sleep(1.0)
    steps["after"] = _traffic(url, storage, seed=3, rows=10)
    yield storage, steps
    serve.delete(APP)


def test_drift_of_the_new_season_triggers_a_challenger_that_passes_the_gate_into_shadow(loop):
    _, steps = loop
    step = steps["triggered"]
    assert step["action"] == "rollout_started", step
    assert any("drifted since version 1 was promoted" in reason for reason in step["reasons"])
    assert step["challenger"] == 2 and step["champion"] == 1
    gate = step["gate"]
    assert gate["passed"] and gate["challenger"]["accuracy"] > gate["champion"]["accuracy"]
    assert gate["dataset"]["version"] == 2  # both judged on the new dataset's test split


def test_the_shadow_answers_every_request_but_only_production_answers_the_client(loop):
    _, steps = loop
    assert all(answer["version"] == 1 for answer in steps["shadowed"])
    shadow = steps["shadow_log"]
    assert {r["version"] for r in shadow} == {2}
    # The challenger answered exactly the requests production answered while it was in shadow, row for row.
    assert sorted(r["request_id"] for r in shadow) == sorted(a["request_id"] for a in steps["shadowed"])
    assert all(len(r["outputs"]) == 10 for r in shadow)


def test_the_challenger_is_promoted_on_its_live_metrics_with_the_reason_recorded(loop):
    storage, steps = loop
    step = steps["judged"]
    assert step["action"] == "promoted", step
    assert step["outcomes"] >= POLICY.min_outcomes
    registry = ModelRegistry(storage)
    assert registry.aliases(MODEL) == {"production": 2}
    assert registry.rollout(MODEL) is None
    last = [entry for entry in registry.alias_history(MODEL) if entry["alias"] == "production"][-1]
    assert (last["from"], last["to"]) == (1, 2) and "shadow of version 2" in last["reason"]
    assert [e["event"] for e in registry.events(MODEL)] == ["triggered", "trained", "gated", "rollout_started",
                                                             "promoted"]
    assert all(answer["version"] == 2 for answer in steps["after"])  # the service follows the promotion


def test_a_deliberately_worse_challenger_is_refused_and_production_stays(loop):
    storage, _ = loop
    stump = replace(SPEC, flavor=SklearnFlavor("sklearn.tree.DecisionTreeClassifier",
                                               params={"random_state": 0, "max_depth": 1}))
    worse = train_model(storage, stump, force=True)["version"]
    result = CliRunner().invoke(app, ["--storage", storage.root_uri, "retrain", MODEL, "--challenger", str(worse),
                                      "--json"])
    assert result.exit_code == 0, result.output
    step = json.loads(result.stdout)
    assert step["action"] == "rejected" and f"version {worse} refused" in step["message"]
    assert not step["gate"]["passed"]
    registry = ModelRegistry(storage)
    assert registry.aliases(MODEL) == {"production": 2}
    assert registry.events(MODEL)[-1]["event"] == "gated" and registry.events(MODEL)[-1]["passed"] is False
    # The policy's drift was measured until this attempt: with no new traffic since, nothing triggers again.
    assert retrain_step(storage, MODEL, spec=SPEC)["action"] == "none"


def _answering_versions(url: str, count: int = 20) -> set[int]:
    row = fruit_frame(1, seed=9)[INPUTS].to_dict("records")
    return {httpx.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": row}, timeout=30).json()["version"]
            for _ in range(count)}


def test_a_canary_answers_its_share_of_the_requests_until_its_rollout_ends(loop):
    storage, steps = loop
    registry = ModelRegistry(storage)
    registry.start_rollout(MODEL, {"challenger": 1, "champion": 2, "mode": "canary", "share": 1.0,
                                   "started_at": "2026-12-01T00:00:00+00:00", "until": "2026-12-08T00:00:00+00:00",
                                   "min_outcomes": 10, "tolerance": 0.01}, reason="a canary for the test")
    time.sleep(1.0)
    assert _answering_versions(steps["url"]) == {1}  # the whole share: every request the canary's
    pinned = httpx.post(f"{steps['url']}/v1/models/{MODEL}/versions/2:predict",
                        json={"instances": fruit_frame(1, seed=9)[INPUTS].to_dict("records")}, timeout=30)
    assert pinned.json()["version"] == 2  # a request for an exact version is never rerouted
    registry.end_rollout(MODEL, 1, promote=False, reason="the test is over")
    time.sleep(1.0)
    assert _answering_versions(steps["url"]) == {2}
    assert registry.aliases(MODEL) == {"production": 2}
    assert registry.alias_history(MODEL)[-1] == {**registry.alias_history(MODEL)[-1], "alias": "challenger",
                                                  "from": 1, "to": None, "reason": "the test is over"}
