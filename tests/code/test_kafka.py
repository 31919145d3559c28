"""Kafka sources without a broker: definitions, the connection settings, and how messages become rows."""

import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from features import EVENT_TIME_TYPE, Feature, FeatureGroup, KafkaSource, kafka
from features.definitions import DefinitionError
from features.kafka import (
    KafkaRead,
    KafkaSourceError,
    checkpoint_key,
    committed_offsets,
    connection,
    messages_read,
    parse_messages,
    pending_reads,
)

SOURCE = KafkaSource(name="readings", broker="plant", topic="sensor.readings-v1")
GROUP = FeatureGroup(
    name="readings", version=1, description="Readings.", primary_key=("reading_id",), event_time="at",
    features=(Feature("reading_id", pa.string(), "Id."), Feature("at", EVENT_TIME_TYPE, "Time."),
              Feature("celsius", pa.float64(), "Temperature.", min_value=-20, max_value=60)),
    sources=(SOURCE,))


@pytest.mark.parametrize("broker, topic, message", [
    ("Plant", "t", "broker name"), ("plant", "a/b", "not a valid topic"), ("plant", "..", "not a valid topic"),
    ("plant", "x" * 250, "not a valid topic")])
def test_a_bad_broker_or_topic_name_is_refused_by_name(broker, topic, message):
    with pytest.raises(DefinitionError, match=message):
        KafkaSource(name="s", broker=broker, topic=topic)


def test_the_address_and_settings_come_from_the_environment_and_errors_name_the_variable():
    assert connection(SOURCE, {"ORCHARD_KAFKA_PLANT": "a:9092,b:9092"}) == ("a:9092,b:9092", {})
    assert connection(SOURCE, {"ORCHARD_KAFKA_PLANT": "a:1", "ORCHARD_KAFKA_PLANT_CONFIG": '{"security.protocol": '
                                                                                         '"SSL"}'})[1] == {
        "security.protocol": "SSL"}
    with pytest.raises(KafkaSourceError, match="set ORCHARD_KAFKA_PLANT"):
        connection(SOURCE, {})
    with pytest.raises(KafkaSourceError, match="ORCHARD_KAFKA_PLANT_CONFIG must be a JSON object"):
        connection(SOURCE, {"ORCHARD_KAFKA_PLANT": "a:1", "ORCHARD_KAFKA_PLANT_CONFIG": "[1]"})


def _messages(values: list, partitions: list[int], offsets: list[int]) -> pa.Table:
    return pa.table({"offset": pa.array(offsets, pa.int64()), "key": pa.nulls(len(values), pa.binary()),
                     "value": pa.array(values, pa.binary()), "topic": [SOURCE.topic] * len(values),
                     "partition": pa.array(partitions, pa.int32())})


def test_each_message_becomes_a_row_or_a_rejection_with_its_partition_and_offset():
    at = datetime(2026, 12, 1, tzinfo=timezone.utc).isoformat()
    good = json.dumps({"reading_id": "r1", "at": at, "celsius": 21.5}).encode()
    rows = parse_messages(_messages(
        [good, b"[1, 2]", b"\xff", None, json.dumps({"reading_id": "r2", "at": at, "celsius": 99}).encode()],
        [0, 0, 1, 1, 1], [7, 8, 3, 4, 5]), SOURCE, GROUP, {0: 2, 1: 3}).to_pylist()
    assert [r["_reason"] is None for r in rows] == [True, False, False, False, False]
    assert rows[0]["celsius"] == 21.5 and rows[0]["_source"] == "kafka:plant/sensor.readings-v1/0"
    assert [r["_line"] for r in rows] == [7, 8, 3, 4, 5]  # the offset
    assert [r["_order"] >> 40 for r in rows] == [2, 2, 3, 3, 3]  # each partition's ordinal
    assert "not a JSON object" in rows[1]["_reason"] and "UTF-8" in rows[2]["_reason"]
    assert "no value" in rows[3]["_reason"] and "celsius" in rows[4]["_reason"]


def test_a_read_commits_each_partitions_next_offset():
    read = KafkaRead(SOURCE, {0: (5, 9), 2: (0, 3)}, {0: 0, 2: 1})
    assert read.messages == 7
    assert committed_offsets(read) == {checkpoint_key(SOURCE, 0): "9", checkpoint_key(SOURCE, 2): "3"}


def test_a_read_cut_short_commits_only_what_it_read():
    read = KafkaRead(SOURCE, {0: (5, 9), 1: (2, 6), 2: (3, 3)}, {0: 0, 1: 1, 2: 2})
    reached = {0: 8, 1: 3}  # partition 1 timed out after offset 3
    assert committed_offsets(read, reached) == {checkpoint_key(SOURCE, 0): "9", checkpoint_key(SOURCE, 1): "4",
                                                checkpoint_key(SOURCE, 2): "3"}
    assert messages_read(read, reached) == 4 + 2
    assert committed_offsets(read, {})[checkpoint_key(SOURCE, 0)] == "5"  # nothing read: nothing skipped


def test_messages_outside_the_runs_ranges_are_left_for_a_later_run():
    at = datetime(2026, 12, 1, tzinfo=timezone.utc).isoformat()
    good = json.dumps({"reading_id": "r1", "at": at, "celsius": 21.5}).encode()
    rows = parse_messages(_messages([good] * 4, [0, 0, 1, 7], [4, 5, 9, 0]), SOURCE, GROUP, {0: 0, 1: 1},
                          ranges={0: (5, 6), 1: (0, 10)}).to_pylist()
    assert [(r["_source"][-1], r["_line"]) for r in rows] == [("0", 5), ("1", 9)]


def test_every_partition_is_read_from_its_committed_offset_and_a_rewound_topic_is_refused(monkeypatch):
    monkeypatch.setattr(kafka, "end_offsets", lambda source: {0: (0, 10), 1: (4, 8), 2: (0, 3)})
    reads = pending_reads(GROUP, {checkpoint_key(SOURCE, 0): "10", checkpoint_key(SOURCE, 1): "2"}, first_ordinal=5)
    # partition 0 is caught up but still named, 1 starts where retention left it, 2 from its start
    assert reads[0].ranges == {0: (10, 10), 1: (4, 8), 2: (0, 3)} and reads[0].ordinals == {0: 5, 1: 6, 2: 7}
    assert pending_reads(GROUP, {checkpoint_key(SOURCE, p): str(end) for p, end in ((0, 10), (1, 8), (2, 3))},
                         0) == []
    with pytest.raises(KafkaSourceError, match="deleted and created again"):
        pending_reads(GROUP, {checkpoint_key(SOURCE, 0): "12"}, first_ordinal=0)
