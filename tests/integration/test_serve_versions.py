"""Versions over real HTTP: exact versions, alias promotion during traffic, a canary split, the prediction log,
and a replica killed under load.

Each model's two versions are different trees (version 1 grown in full, version 2 a single split), so they give
different answers to the same rows: every answer is compared with the prediction of the version it says it came
from, and a service that answered "version 2" with version 1's model would fail."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections import Counter

import httpx
import pytest

from orchard.registry import ModelRegistry
from orchard.storage import Storage
from serve.prediction_log import read_predictions
from tests.conftest import prepare_domains
from tests.helpers import serve_metric_lines
from tests.integration.test_serve import _instances
from training.predictor import Predictor
from training.trainer import get_spec, train_model

pytestmark = [pytest.mark.ray, pytest.mark.serve]

CANARY_SHARE = 0.3
ALIAS_TTL_S = 1.0


@pytest.fixture(scope="module")
def app(ray_cluster, serve_url, session_config, tmp_path_factory):
    """A second application on the session's Serve, over a storage root with two versions of each tree."""
    from ray import serve

    from serve.app import deploy

    storage = Storage(str(tmp_path_factory.mktemp("serve-versions")))
    prepare_domains(storage, fruit_rows=600, surf_rows=300)
    registry = ModelRegistry(storage)
    for name in ("fruit_classifier", "surf_regressor"):
        spec = get_spec(name)
        for depth in (None, 1):  # a tree grown in full has pure leaves, a stump mixed ones: no row gets equal answers
            flavor = dataclasses.replace(spec.flavor, params={**spec.flavor.params, "max_depth": depth}, grid={})
            train_model(storage, dataclasses.replace(spec, flavor=flavor), force=True)
        registry.promote(name, 1, "production")
        registry.promote(name, 2, "staging")
    config = session_config.with_overrides(storage=storage.root_uri)
    url = deploy(config, name="versions", route_prefix="/versions", replica_cpus=0, alias_ttl_s=ALIAS_TTL_S,
                 canary={"fruit_classifier": {"staging": CANARY_SHARE}})
    yield url, storage
    serve.delete("versions")


def _post(client, url, instances):
    return client.post(url, json={"instances": instances}, timeout=30)


def _telling_apart(storage, name: str, count: int) -> tuple[list[dict], dict[int, list]]:
    """`count` test rows on which the two versions disagree, and each version's own predictions of them."""
    registry = ModelRegistry(storage)
    predictors = {version: Predictor.load(registry, name, version) for version in (1, 2)}
    rows = _instances(storage, name, count=200)
    own = {version: predictor.predict(rows) for version, predictor in predictors.items()}
    differing = [i for i in range(len(rows)) if own[1][i] != own[2][i]][:count]
    assert len(differing) == count, f"{name}: versions 1 and 2 agree on all but {len(differing)} of {len(rows)} rows"
    return [rows[i] for i in differing], {v: [own[v][i] for i in differing] for v in own}


def test_each_exact_version_answers_as_itself(app):
    url, storage = app
    for name in ("fruit_classifier", "surf_regressor"):
        instances, own = _telling_apart(storage, name, count=2)
        with httpx.Client() as client:
            for version in (1, 2):
                body = _post(client, f"{url}/v1/models/{name}/versions/{version}:predict", instances).json()
                assert (body["version"], body["predictions"]) == (version, own[version]), name


def test_the_canary_split_sends_its_share_to_staging(app):
    url, storage = app
    instances, own = _telling_apart(storage, "fruit_classifier", count=1)
    requests = 400
    with httpx.Client() as client:
        bodies = [_post(client, f"{url}/v1/models/fruit_classifier:predict", instances).json() for _ in range(requests)]
    assert [b for b in bodies if b["predictions"] != own[b["version"]]] == []
    versions = Counter(body["version"] for body in bodies)
    assert set(versions) == {1, 2}
    expected, spread = requests * CANARY_SHARE, (requests * CANARY_SHARE * (1 - CANARY_SHARE)) ** 0.5
    assert abs(versions[2] - expected) < 4.5 * spread, versions  # fails by chance about once in 150,000 runs


def test_promotion_takes_effect_during_traffic_without_a_failed_request(app):
    url, storage = app
    instances, own = _telling_apart(storage, "surf_regressor", count=3)
    answers, stop = [], threading.Event()

    def traffic():
        with httpx.Client() as client:
            while not stop.is_set():
                try:
                    response = _post(client, f"{url}/v1/models/surf_regressor:predict", instances)
                except httpx.HTTPError as error:  # a refused or dropped connection is a failed request too
                    answers.append((time.monotonic(), type(error).__name__, None))
                    continue
                answers.append((time.monotonic(), response.status_code,
                                response.json() if response.status_code == 200 else response.text))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(1.0)
        promoted_at = time.monotonic()
        ModelRegistry(storage).promote("surf_regressor", 2, "production")
        deadline = promoted_at + 10
        while time.monotonic() < deadline and not any(c == 200 and b["version"] == 2 and t > promoted_at
                                                      for t, c, b in list(answers)):
            time.sleep(0.1)
        time.sleep(ALIAS_TTL_S + 0.5)
    finally:
        stop.set()
        thread.join(30)
        ModelRegistry(storage).promote("surf_regressor", 1, "production")
    assert [(t, c, b) for t, c, b in answers if c != 200] == []
    assert [b for _, _, b in answers if b["predictions"] != own[b["version"]]] == []
    versions = [(t, b["version"]) for t, _, b in answers]
    switched = min(t for t, v in versions if v == 2)
    assert switched - promoted_at < 10
    assert {v for t, v in versions if t < promoted_at} == {1}
    assert {v for t, v in versions if t > switched + ALIAS_TTL_S} == {2}


def test_every_prediction_is_logged_with_its_version_and_request_id(app):
    url, storage = app
    instances = _instances(storage, "fruit_classifier", count=2)
    with httpx.Client() as client:
        response = client.post(f"{url}/v1/models/fruit_classifier/versions/2:predict", json={"instances": instances},
                               headers={"x-request-id": "logged-request-1"}, timeout=30)
    assert response.status_code == 200
    deadline, records = time.monotonic() + 10, []
    while time.monotonic() < deadline and not records:
        records = [r for r in read_predictions(storage, "fruit_classifier")
                   if r["request_id"] == "logged-request-1"]
        time.sleep(0.2)
    assert len(records) == 1, "the prediction was not logged within 10 s"
    record = records[0]
    assert (record["model"], record["version"]) == ("fruit_classifier", 2)
    assert record["inputs"] == instances and record["outputs"] == response.json()["predictions"]
    assert record["time"].endswith("+00:00")


def test_a_killed_replica_is_replaced_and_the_service_recovers(app):
    import ray

    url, storage = app
    instances = _instances(storage, "surf_regressor", count=1)
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::versions#PredictionService#")]
    assert len(replicas) == 1, replicas
    answers, stop = [], threading.Event()

    def traffic():
        with httpx.Client() as client:
            while not stop.is_set():
                try:
                    code = _post(client, f"{url}/v1/models/surf_regressor:predict", instances).status_code
                except httpx.HTTPError as error:
                    code = type(error).__name__
                answers.append((time.monotonic(), code))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(1.0)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
        deadline = killed_at + 60
        replaced_at = None
        while time.monotonic() < deadline:  # ray.kill is asynchronous: first the old replica gone, a new one there
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["name"].startswith("SERVE_REPLICA::versions#PredictionService#")]
            if replaced_at is None and names and replicas[0]["name"] not in names:
                replaced_at = time.monotonic()
            if replaced_at is not None and _recovered(answers, replaced_at):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(60)
    assert replaced_at is not None, "the killed replica was not replaced within 60 s"
    assert _recovered(answers, replaced_at), Counter(code for _, code in answers)  # answered by the new replica
    assert all(code == 200 for t, code in answers if t < killed_at)


def _recovered(answers, since: float, streak: int = 20) -> bool:
    """The last `streak` answers after `since` all succeeded."""
    after = [code for t, code in answers if t > since]
    return len(after) >= streak and all(code == 200 for code in after[-streak:])


def _metric_lines(name: str) -> list[str]:
    return serve_metric_lines(name, "versions")


def test_prometheus_counts_requests_per_model_and_version_and_errors_by_status(app):
    url, storage = app
    instances = _instances(storage, "surf_regressor", count=1)
    with httpx.Client() as client:
        for _ in range(3):
            assert _post(client, f"{url}/v1/models/surf_regressor/versions/2:predict", instances).status_code == 200
        bad = _post(client, f"{url}/v1/models/surf_regressor/versions/2:predict", [{"bottom": "sand"}])
        assert bad.status_code == 422
    deadline, requests, errors = time.monotonic() + 30, [], []
    while time.monotonic() < deadline and not (requests and errors):
        time.sleep(1)  # Ray exports metrics every few seconds
        requests = [line for line in _metric_lines("ray_orchard_predict_requests_total")
                    if 'model="surf_regressor"' in line and 'version="2"' in line and 'protocol="v1"' in line]
        errors = [line for line in _metric_lines("ray_orchard_predict_errors_total")
                  if 'model="surf_regressor"' in line and 'status="422"' in line]
    assert requests and float(requests[0].rsplit(" ", 1)[1]) >= 3
    assert errors and float(errors[0].rsplit(" ", 1)[1]) >= 1


def test_a_replica_keeps_at_most_max_models_and_evicts_the_least_recently_used(app, session_config):
    """With room for two versions, asking for fruit 1, fruit 2, fruit 1 again, then surf 1 evicts fruit 2 (used
    longer ago than fruit 1), so fruit 2 is loaded a second time; keeping every version, or evicting the first
    loaded, would load fruit 2 once."""
    from ray import serve

    from serve.app import deploy

    url, storage = app
    config = session_config.with_overrides(storage=storage.root_uri)
    lru = deploy(config, name="lru", route_prefix="/lru", replica_cpus=0, max_models_per_replica=2)
    try:
        rows = {name: _instances(storage, name, count=1) for name in ("fruit_classifier", "surf_regressor")}
        asked = [("fruit_classifier", 1), ("fruit_classifier", 2), ("fruit_classifier", 1), ("surf_regressor", 1),
                 ("fruit_classifier", 2)]
        with httpx.Client() as client:
            for name, version in asked:
                response = _post(client, f"{lru}/v1/models/{name}/versions/{version}:predict", rows[name])
                assert response.status_code == 200, response.text
        deadline, loads = time.monotonic() + 30, {}
        while sum(loads.values()) < 4 and time.monotonic() < deadline:
            time.sleep(1)  # Ray exports metrics every few seconds
            loads = {}
            for line in serve_metric_lines("ray_orchard_model_loads_total", "lru"):
                key = tuple(re.search(rf'[{{,]{tag}="([^"]*)"', line).group(1) for tag in ("model", "version"))
                loads[key] = loads.get(key, 0) + float(line.rsplit(" ", 1)[1])
        assert loads == {("fruit_classifier", "1"): 1, ("fruit_classifier", "2"): 2, ("surf_regressor", "1"): 1}
    finally:
        serve.delete("lru")
