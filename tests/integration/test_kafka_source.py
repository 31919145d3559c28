"""A Kafka topic as a feature-group source, against a real Kafka-protocol broker (Tansu) started by the session.

The group is the `sensors` test project's (tests/projects/sensors): readings published as JSON messages on a topic
of two partitions. Runs read each partition from the offsets the table's checkpoint holds to the end the broker
reports at the start of the run; a run killed between reading and committing leaves the offsets where they were,
so the next run writes every message exactly once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pyarrow.compute as pc
import pytest

from features.pipeline import run_feature_pipeline
from features.store import OfflineStore
from orchard.storage import Storage
from tests.helpers import REPOSITORY, stop_child
from tests.integration.test_follow import _Lines

pytestmark = pytest.mark.ray

PROJECT = REPOSITORY / "tests" / "projects" / "sensors"


def _readings_group():
    spec = importlib.util.spec_from_file_location("sensors_groups_for_tests", PROJECT / "groups.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.READINGS, module.TOPIC


READINGS, TOPIC = _readings_group()
START = datetime(2026, 11, 30, 8, tzinfo=timezone.utc)


def _reading(number: int, temperature: float = 21.5) -> bytes:
    return json.dumps({"reading_id": f"r-{number:04d}", "sensor_id": f"s-{number % 3}",
                       "measured_at": (START + timedelta(minutes=number)).isoformat(),
                       "temperature_c": temperature}).encode()


def _topic(address: str, name: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": address})  # kept until the futures resolve: they need its handle
    for future in admin.create_topics([NewTopic(name, num_partitions=2)]).values():
        future.result(timeout=30)


def _produce(address: str, topic: str, values: list[bytes]) -> None:
    """One message per request (Tansu reports a partition's end offset wrongly after multi-record batches)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": address, "linger.ms": 0})
    for number, value in enumerate(values):
        producer.produce(topic, value=value, partition=number % 2)
        assert producer.flush(30) == 0
    del producer


@pytest.fixture()
def topic(kafka_broker, monkeypatch, request):
    """A fresh topic for the test, and ORCHARD_KAFKA_GREENHOUSE pointing at the broker. The group names its topic,
    so each test gets a group whose source reads a topic of its own."""
    import dataclasses

    name = f"{TOPIC}-{request.node.name[:40].replace('_', '-')}"
    _topic(kafka_broker, name)
    monkeypatch.setenv("ORCHARD_KAFKA_GREENHOUSE", kafka_broker)
    source = dataclasses.replace(READINGS.sources[0], topic=name)
    return name, dataclasses.replace(READINGS, sources=(source,))


def _project_reading(tmp_path, topic_name: str):
    """A copy of the sensors project whose group reads `topic_name`, for a subprocess to load with --project."""
    project = tmp_path / "sensors"
    project.mkdir()
    (project / "__init__.py").write_text((PROJECT / "__init__.py").read_text())
    (project / "groups.py").write_text((PROJECT / "groups.py").read_text().replace(
        f'TOPIC = "{TOPIC}"', f'TOPIC = "{topic_name}"'))
    return project


@pytest.mark.slow  # ~30 s: keeps `make test` within its 15 minutes
def test_messages_are_written_exactly_once_across_a_crash_between_read_and_commit(ray_cluster, tmp_path, topic,
                                                                                  kafka_broker):
    name, group = topic
    bad = [b"{not json", b"\xff\xfe not utf-8", _reading(900, temperature=100.0)]  # the last fails a check
    _produce(kafka_broker, name, [_reading(n) for n in range(27)] + bad)

    project = _project_reading(tmp_path, name)
    import ray

    killed = subprocess.run(
        [sys.executable, "-m", "pipelines.features", "sensor_readings", "--storage", str(tmp_path / "store"),
         "--project", str(project), "--ray-address", ray.get_runtime_context().gcs_address],
        env={**os.environ, "ORCHARD_CRASH_AT": "before_feature_commit"}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 86, killed.stdout[-2000:] + killed.stderr[-2000:]
    store_storage = Storage(str(tmp_path / "store"))
    store = OfflineStore(store_storage)
    assert not store.exists(group) or store.read_table(group).num_rows == 0  # read, never committed

    first = run_feature_pipeline(store_storage, group)
    assert (first.kafka_messages_read, first.rows_read, first.rows_written, first.rows_quarantined) == (30, 30, 27, 3)
    quarantine = store.read_quarantine(group).filter(pc.is_valid(pc.field("line")))
    reasons = sorted(quarantine.column("reason").to_pylist())
    assert [reason.split(" ")[0] for reason in reasons] == ["feature", "message", "not"], reasons
    assert "temperature_c" in reasons[0] and "UTF-8" in reasons[1] and "JSON" in reasons[2]
    assert set(quarantine.column("source").to_pylist()) <= {f"kafka:greenhouse/{name}/0", f"kafka:greenhouse/{name}/1"}

    # more messages, two of them repeats of readings already stored (a sensor resending)
    _produce(kafka_broker, name, [_reading(n) for n in range(27, 35)] + [_reading(3), _reading(4)])
    second = run_feature_pipeline(store_storage, group)
    assert (second.rows_read, second.rows_written, second.rows_duplicate) == (10, 8, 2)
    third = run_feature_pipeline(store_storage, group)
    assert third.rows_read == 0  # nothing new: the offsets are where the last commit left them

    ids = store.read_table(group).column("reading_id").to_pylist()
    assert len(ids) == len(set(ids)) == 35
    offsets = {key: int(value) for key, value in store.checkpoint(group).watermarks.items()}
    assert offsets == {"readings_topic:partition:0": 20, "readings_topic:partition:1": 20}


@pytest.mark.slow  # ~20 s: keeps `make test` within its 15 minutes
def test_follow_runs_micro_batches_as_messages_arrive_and_stops_on_sigterm(ray_cluster, tmp_path, topic,
                                                                            kafka_broker):
    import ray

    name, group = topic
    project = _project_reading(tmp_path, name)
    _produce(kafka_broker, name, [_reading(n) for n in range(6)])
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "--storage", str(tmp_path / "store"), "--project", str(project),
         "--ray-address", ray.get_runtime_context().gcs_address,
         "features", "run", "sensor_readings", "--follow", "--interval", "0.5", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        reports = _Lines(process.stdout)
        reports.wait_for(lambda r: r["rows_written"] == 6)
        reports.wait_for(lambda r: r["rows_read"] == 0)  # caught up
        _produce(kafka_broker, name, [_reading(n) for n in range(6, 10)])  # arrives while the loop runs
        picked_up = reports.wait_for(lambda r: r["rows_written"] == 4)
        assert picked_up["kafka_messages_read"] == 4
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read()[-2000:]
    finally:
        stop_child(process)
    ids = OfflineStore(Storage(str(tmp_path / "store"))).read_table(group).column("reading_id").to_pylist()
    assert len(ids) == len(set(ids)) == 10


def test_a_missing_broker_address_is_an_error_that_names_the_variable(ray_cluster, tmp_path, monkeypatch):
    from features.kafka import KafkaSourceError

    monkeypatch.delenv("ORCHARD_KAFKA_GREENHOUSE", raising=False)
    with pytest.raises(KafkaSourceError, match="ORCHARD_KAFKA_GREENHOUSE"):
        run_feature_pipeline(Storage(str(tmp_path)), READINGS)
