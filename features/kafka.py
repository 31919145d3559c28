"""Kafka topics as feature-group sources: bounded reads from the table's committed offsets.

Ray Data's `read_kafka` reads bounded offset ranges and commits nothing to the broker, so Orchard keeps the
consumer offsets itself, in the feature table's checkpoint: a run

1. asks the broker for each partition's end offset (its high watermark) once, at the start;
2. reads every partition from the offset the checkpoint holds (the partition's start offset the first time) up to
   that end, one bounded `read_kafka`, and parses each message as one JSON object (`parse_messages`), keeping the
   partition and offset of every message, valid or quarantined;
3. commits the new offsets with the rows, in the same Delta commit (`features.pipeline`).

A run that dies between reading and committing leaves the old offsets in the table, so the next run reads the same
messages again: nothing is lost, and nothing is written twice. Messages produced after step 1 wait for the next
run (`orchard features run GROUP --follow` runs one every interval: micro-batches).

The broker's address comes from ORCHARD_KAFKA_<BROKER> in the environment of the process that runs the pipeline;
extra consumer settings (security, for instance) from ORCHARD_KAFKA_<BROKER>_CONFIG, a JSON object of librdkafka
settings. Neither is ever logged or stored.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from features.definitions import FeatureGroup, KafkaSource
from orchard.errors import UsageError

KAFKA_ENV_PREFIX = "ORCHARD_KAFKA_"
TIMEOUT_S = 30.0
"""For the broker's answers about a topic (metadata, offsets)."""
READ_TIMEOUT_S = 120.0
"""How long one partition's read may wait for its end offset; a read cut short commits only what it read."""

log = logging.getLogger(__name__)


class KafkaSourceError(UsageError):
    """A Kafka source cannot be read: no address configured, the broker does not answer, no such topic."""


def checkpoint_key(source: KafkaSource, partition: int) -> str:
    """The checkpoint entry holding the next offset to read of one partition."""
    return f"{source.name}:partition:{partition}"


@dataclass(frozen=True)
class KafkaRead:
    """What one run reads of one source: [start, end) offsets of every partition the topic had at the start of the
    run (start == end where there is nothing new), and each partition's ordinal (rows are ordered by
    (ordinal << 40) + offset)."""

    source: KafkaSource
    ranges: Mapping[int, tuple[int, int]]
    ordinals: Mapping[int, int]

    @property
    def messages(self) -> int:
        return sum(end - start for start, end in self.ranges.values())


def connection(source: KafkaSource, env: Mapping[str, str] | None = None) -> tuple[str, dict]:
    """(bootstrap servers, extra consumer settings) of the source's broker, from the environment."""
    env = os.environ if env is None else env
    name = f"{KAFKA_ENV_PREFIX}{source.broker.upper()}"
    servers = env.get(name, "").strip()
    if not servers:
        raise KafkaSourceError(f"Kafka source {source.name!r} ({source.label}): set {name} to the broker's "
                               "bootstrap servers (host:port[,host:port])")
    extra = env.get(f"{name}_CONFIG", "").strip()
    try:
        settings = json.loads(extra) if extra else {}
    except json.JSONDecodeError as error:
        raise KafkaSourceError(f"{name}_CONFIG must be a JSON object of consumer settings: {error.msg}") from None
    if not isinstance(settings, dict):
        raise KafkaSourceError(f"{name}_CONFIG must be a JSON object of consumer settings")
    return servers, settings


def end_offsets(source: KafkaSource) -> dict[int, tuple[int, int]]:
    """Each partition's (start, end) offsets as the broker reports them now."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    servers, settings = connection(source)
    consumer = Consumer({"bootstrap.servers": servers, "group.id": "orchard-offsets", "enable.auto.commit": False,
                         "log_level": 3, **settings})
    try:
        metadata = consumer.list_topics(source.topic, timeout=TIMEOUT_S)
        topic = metadata.topics.get(source.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            why = topic.error.str() if topic is not None and topic.error is not None else "it has no partitions"
            raise KafkaSourceError(f"Kafka source {source.name!r}: topic {source.topic!r} cannot be read ({why})")
        return {partition: consumer.get_watermark_offsets(TopicPartition(source.topic, partition), timeout=TIMEOUT_S)
                for partition in sorted(topic.partitions)}
    except KafkaException as error:
        raise KafkaSourceError(f"Kafka source {source.name!r} ({source.label}): the broker did not answer: "
                               f"{error.args[0].str() if error.args else error}") from None
    finally:
        consumer.close()


def pending_reads(group: FeatureGroup, watermarks: Mapping[str, str], first_ordinal: int) -> list[KafkaRead]:
    """The group's Kafka sources with messages past their committed offsets."""
    reads = []
    ordinal = first_ordinal
    for source in group.sources:
        if not isinstance(source, KafkaSource):
            continue
        ranges, ordinals = {}, {}
        for partition, (low, high) in end_offsets(source).items():
            committed = watermarks.get(checkpoint_key(source, partition))
            start = low if committed is None else int(committed)
            if start > high:
                raise KafkaSourceError(
                    f"Kafka source {source.name!r}: partition {partition} of topic {source.topic!r} ends at offset "
                    f"{high}, before the offset {start} the table has read up to: was the topic deleted and "
                    f"created again? Its new messages would be skipped; a new version of group {group.ref} reads "
                    "it from the start")
            if start < low:
                log.warning("%s: partition %d of topic %s no longer holds offsets %d to %d (the broker's retention "
                            "removed them before they were read); reading from %d", group.ref, partition,
                            source.topic, start, low - 1, low)
                start = low
            ranges[partition], ordinals[partition] = (start, high), ordinal
            ordinal += 1
        if any(end > start for start, end in ranges.values()):
            reads.append(KafkaRead(source, ranges, ordinals))
    return reads


def read(kafka_read: KafkaRead, group: FeatureGroup):
    """One bounded Ray Data read of the source's pending offsets, parsed into the pipeline's bookkeeping rows."""
    import ray.data

    source = kafka_read.source
    servers, settings = connection(source)
    # Every partition the topic had is named (Ray reads an unnamed one from its start to its end); one that
    # appeared since is still read by Ray, and dropped by parse_messages until a run names it.
    starts = {source.topic: {p: start for p, (start, _) in kafka_read.ranges.items()}}
    ends = {source.topic: {p: end for p, (_, end) in kafka_read.ranges.items()}}
    return ray.data.read_kafka(source.topic, bootstrap_servers=servers, start_offset=starts, end_offset=ends,
                               consumer_config=settings or None, timeout_ms=int(READ_TIMEOUT_S * 1000)).map_batches(
        parse_messages, fn_kwargs={"source": source, "group": group, "ordinals": dict(kafka_read.ordinals),
                                   "ranges": dict(kafka_read.ranges)},
        batch_format="pyarrow", batch_size=None)


def committed_offsets(kafka_read: KafkaRead, reached: Mapping[int, int] | None = None) -> dict[str, str]:
    """The checkpoint entries after this read: each partition's next offset to read. `reached` (partition -> the
    highest offset read) holds a partition back where its read stopped short of the end (it timed out: a leader
    that was down, or a transaction's control records at the end), so that nothing unread is ever skipped."""
    offsets = {}
    for partition, (start, end) in kafka_read.ranges.items():
        if reached is not None and end > start:
            end = min(end, reached.get(partition, start - 1) + 1)
        offsets[checkpoint_key(kafka_read.source, partition)] = str(end)
    return offsets


def messages_read(kafka_read: KafkaRead, reached: Mapping[int, int]) -> int:
    """How many offsets of the read's ranges were read (the highest offset read per partition)."""
    return sum(min(end, reached.get(p, start - 1) + 1) - start
               for p, (start, end) in kafka_read.ranges.items() if end > start)


def offsets_reached(parsed, kafka_reads: list[KafkaRead]) -> dict[str, dict[int, int]]:
    """Per source, the highest offset read of each partition, from the parsed rows (one small pass)."""
    from features.ingest import LINE_COLUMN, SOURCE_COLUMN

    prefixes = {f"{read.source.label}/": read.source.name for read in kafka_reads}

    def highest(batch: pa.Table) -> pa.Table:
        found: dict[tuple[str, int], int] = {}
        for source, line in zip(batch.column(SOURCE_COLUMN).to_pylist(), batch.column(LINE_COLUMN).to_pylist()):
            for prefix, name in prefixes.items():
                if source.startswith(prefix) and line is not None:
                    key = (name, int(source[len(prefix):]))
                    found[key] = max(found.get(key, line), line)
        return pa.table({"source": [k[0] for k in found], "partition": [k[1] for k in found],
                         "offset": pa.array(list(found.values()), pa.int64())})

    reached: dict[str, dict[int, int]] = {}
    for row in parsed.map_batches(highest, batch_format="pyarrow", batch_size=None).take_all():
        partitions = reached.setdefault(row["source"], {})
        partitions[row["partition"]] = max(partitions.get(row["partition"], row["offset"]), row["offset"])
    return reached


def parse_messages(batch: pa.Table, source: KafkaSource, group: FeatureGroup, ordinals: Mapping[int, int],
                   ranges: Mapping[int, tuple[int, int]] | None = None) -> pa.Table:
    """Messages (read_kafka's columns) as rows of the pipeline's bookkeeping schema: the source column names the
    partition, the line column holds the offset. Messages outside `ranges` (a partition added since the run began)
    are left for a later run."""
    from features.ingest import (
        LINE_COLUMN,
        ORDER_COLUMN,
        RAW_COLUMN,
        REASON_COLUMN,
        SOURCE_COLUMN,
        bookkeeping_schema,
        convert,
        json_records,
    )

    if ranges is not None:
        keep = [p in ranges and ranges[p][0] <= o < ranges[p][1]
                for p, o in zip(batch.column("partition").to_pylist(), batch.column("offset").to_pylist())]
        batch = batch.filter(pa.array(keep, pa.bool_()))
    texts, reasons = [], []
    for value in batch.column("value").to_pylist():
        if value is None:
            texts.append("")
            reasons.append("message has no value")
            continue
        try:
            texts.append(value.decode("utf-8"))
            reasons.append(None)
        except UnicodeDecodeError as error:
            texts.append(value.decode("utf-8", errors="replace"))
            reasons.append(f"message is not valid UTF-8 at byte {error.start}")
    wanted = [source.source_column(f.name) for f in group.read_features]
    raw = json_records(texts, wanted, reasons, "message")
    rows, reason = convert(raw, source, group)
    partitions = batch.column("partition").cast(pa.int64())
    offsets = batch.column("offset").cast(pa.int64())
    shift = pa.array([ordinals[p] << 40 for p in partitions.to_pylist()], pa.int64())
    rows = rows.append_column(SOURCE_COLUMN, pc.binary_join_element_wise(
        f"{source.label}/", pc.cast(partitions, pa.string()), ""))
    rows = rows.append_column(LINE_COLUMN, offsets)
    rows = rows.append_column(ORDER_COLUMN, pc.add(offsets, shift))
    rows = rows.append_column(REASON_COLUMN, reason)
    rows = rows.append_column(RAW_COLUMN, raw.column(RAW_COLUMN))
    return rows.select(bookkeeping_schema(group).names).cast(bookkeeping_schema(group))
