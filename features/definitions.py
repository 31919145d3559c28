"""Feature groups: named, versioned, typed tables of features with a key and an event time."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

import pyarrow as pa

from orchard.errors import UsageError

if TYPE_CHECKING:
    from features.images import ImageSource, ImageSpec

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,127}\Z")
NAME_RULE = "must be lower_snake_case (at most 128 characters, starting with a letter)"
SQL_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")

EVENT_TIME_TYPE = pa.timestamp("us", tz="UTC")
EARLIEST_EVENT_TIME = datetime(1970, 1, 2, tzinfo=timezone.utc)
"""A group's default lower bound for event times: the epoch's first day is where zero and default dates land."""
EVENT_DATE_COLUMN = "event_date"
INGESTED_COLUMN = "_ingested"
"""Stored with every row of an aggregated group: the upstream table version of the run that wrote it. Of two rows
of one key at one event time, the later-ingested (a rewrite after late data) wins."""


class DefinitionError(UsageError):
    """A feature group or source is defined inconsistently."""


@dataclass(frozen=True)
class Feature:
    """One column of a feature group, with the expectations its values must meet."""

    name: str
    dtype: pa.DataType
    description: str
    sensitive: bool = False
    nullable: bool = False
    min_value: float | None = None
    max_value: float | None = None
    allowed_values: tuple[str, ...] | None = None
    computed: bool = False
    """Not read from sources: the group's `compute` function derives it from the other columns."""
    image: "ImageSpec | None" = None
    """An image feature (`features.images`): binary values of the spec's raw pixels, all of one size."""

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise DefinitionError(f"feature name {self.name!r} {NAME_RULE}")
        if not self.description.strip():
            raise DefinitionError(f"feature {self.name!r} needs a description")
        if self.image is not None and self.dtype != pa.binary():
            raise DefinitionError(f"image feature {self.name!r} must have dtype pa.binary() (its raw pixels)")


class _MapsColumns:
    """A source whose column names may differ from the group's feature names (its `columns` mapping)."""

    columns: Mapping[str, str]

    def source_column(self, feature: str) -> str:
        return self.columns.get(feature, feature)


@dataclass(frozen=True)
class FileSource(_MapsColumns):
    """Raw files of one format in one landing folder, mapped onto a group's schema.

    `columns` maps a feature name to the source's column name where they differ;
    `scale` multiplies a numeric column to convert the source's units into the group's.
    """

    name: str
    format: Literal["csv", "jsonl", "parquet"]
    location: str
    """Folder relative to the storage root (or an absolute URI)."""
    pattern: str
    columns: Mapping[str, str] = field(default_factory=dict)
    scale: Mapping[str, float] = field(default_factory=dict)



@dataclass(frozen=True)
class SqlSource(_MapsColumns):
    """Rows of one SQL table, read incrementally past a watermark column.

    `database` names a connection, not an address: its URL comes from the
    environment variable ORCHARD_SQL_<DATABASE> (so no password sits in code),
    and defaults to an embedded SQLite file `landing/<database>.sqlite` under a
    local storage root. Rows whose `watermark` is above the checkpoint's are new;
    the column must grow for every inserted or changed row (an insertion
    sequence or an update timestamp). `row_id` identifies a row in the
    quarantine table, as a line number does for a file.
    """

    name: str
    database: str
    table: str
    watermark: str
    row_id: str
    columns: Mapping[str, str] = field(default_factory=dict)
    scale: Mapping[str, float] = field(default_factory=dict)
    format: Literal["sql"] = "sql"

    def __post_init__(self) -> None:
        for label, value in (("database", self.database), ("table", self.table), ("watermark", self.watermark),
                             ("row_id", self.row_id), *(("column", c) for c in self.columns.values())):
            if not SQL_IDENTIFIER.match(value):
                raise DefinitionError(f"SQL source {self.name!r}: {label} {value!r} is not a plain SQL identifier")


    @property
    def label(self) -> str:
        """How quarantine rows name this source: database and table, never the URL."""
        return f"sql:{self.database}.{self.table}"


KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}\Z")


@dataclass(frozen=True)
class KafkaSource(_MapsColumns):
    """Messages of one Kafka topic, each a JSON object whose keys are the group's features (or `columns`' names).

    `broker` names a connection, not an address: its bootstrap servers come from the environment variable
    ORCHARD_KAFKA_<BROKER> (host:port[,host:port...]), so one definition runs against a laptop's broker and a
    cluster's. Every run reads each partition from the offset the table's checkpoint holds (the partition's start
    the first time) up to the end the broker reports when the run starts; the offsets reached are committed in the
    same Delta commit as the rows (`features.kafka`). A message that is not a UTF-8 JSON object, or whose values
    fail the group's checks, goes to quarantine with its reason, its partition and offset.
    """

    name: str
    broker: str
    topic: str
    columns: Mapping[str, str] = field(default_factory=dict)
    scale: Mapping[str, float] = field(default_factory=dict)
    format: Literal["kafka"] = "kafka"

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.broker):
            raise DefinitionError(f"Kafka source {self.name!r}: broker name {self.broker!r} must be lower_snake_case "
                                  "(its address comes from ORCHARD_KAFKA_<BROKER>)")
        if not KAFKA_TOPIC.match(self.topic) or self.topic in (".", ".."):
            raise DefinitionError(f"Kafka source {self.name!r}: {self.topic!r} is not a valid topic name (letters, "
                                  "digits, '.', '_', '-'; at most 249)")


    @property
    def label(self) -> str:
        """How quarantine rows and reports name this source: broker name and topic, never an address."""
        return f"kafka:{self.broker}/{self.topic}"


@dataclass(frozen=True)
class Aggregation:
    """A feature group computed from the new rows of another group, per key, incrementally.

    `partial` reduces one Arrow block of upstream rows to per-key partial
    totals (map side, so blocks shrink before anything moves); `combine` merges
    partial rows that share a key and must be associative and commutative, so
    totals merge in any grouping and order; `finish` turns totals into the
    group's feature columns.

    The group holds each key's totals as of the end of every `granularity`
    interval (of upstream event time) in which the key had events: a row's
    event time is that interval's end, and it counts every upstream event
    before it. So a value at a time depends only on the events before it,
    never on how often or in which slices the pipeline ran: a backfill in one
    run and one run per day write the same rows. Late data (an event older than
    rows already written) rewrites the key's later rows; the rewrite wins by its
    ingestion order (`INGESTED_COLUMN`). A finer granularity serves fresher
    values and writes more rows.

    A `reducer` (fit/transform with to_json/from_json) is fitted once, on the
    totals as of `reducer_fit_after` past the start of the UTC day of the first
    upstream event (or on all of the first run's, if it holds less), stored as
    JSON with the group version, and passed to `finish` on every run.
    """

    upstream: "FeatureGroup"
    partial: Callable[[pa.Table], pa.Table]
    combine: Callable[[pa.Table], pa.Table]
    finish: Callable[..., pa.Table]
    reducer: Callable[[], Any] | None = None
    reducer_from_json: Callable[[str], Any] | None = None
    granularity: timedelta = timedelta(hours=1)
    reducer_fit_after: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if self.granularity <= timedelta(0) or self.granularity % timedelta(microseconds=1):
            raise DefinitionError(f"aggregation granularity must be a positive whole number of microseconds, got "
                                  f"{self.granularity}")


@dataclass(frozen=True)
class FeatureGroup:
    name: str
    version: int
    description: str
    primary_key: tuple[str, ...]
    event_time: str
    features: tuple[Feature, ...]
    """Every column of the table, key and event time included."""
    sources: tuple["FileSource | SqlSource | KafkaSource | ImageSource", ...] = ()
    compute: Callable[[pa.Table], pa.Table] | None = None
    """Fills the `computed` features from the others (runs after conversion, before expectations)."""
    aggregation: Aggregation | None = None
    """Set for a group computed from another group instead of read from sources."""
    partition_by_event_date: bool = False
    """Store the table in one folder per UTC event date: worth it for long event streams, where a run's
    duplicate check then reads only the dates the run touches; not for small dimension tables."""
    online: bool = False
    """Keep each key's latest row in the online store too (`features.online`), for predictions by entity key:
    materialized after every run of the group and by `orchard features materialize`."""
    earliest_event_time: datetime = EARLIEST_EVENT_TIME
    """A source row with an earlier event time is quarantined (a zero or default date, seconds read as
    milliseconds)."""
    max_event_time_ahead: timedelta = timedelta(days=2)
    """A source row whose event time is further ahead of the moment it is checked is quarantined (a clock or time
    zone error); a source that publishes ahead (tomorrow's prices) sets more."""

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise DefinitionError(f"feature group name {self.name!r} {NAME_RULE}")
        if self.version < 1:
            raise DefinitionError(f"feature group {self.name!r}: version must be >= 1")
        if self.earliest_event_time.tzinfo is None or self.max_event_time_ahead < timedelta(0):
            raise DefinitionError(f"feature group {self.name!r}: earliest_event_time must carry a time zone and "
                                  "max_event_time_ahead must not be negative")
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise DefinitionError(f"feature group {self.name!r} defines {duplicated} twice")
        for column in (*self.primary_key, self.event_time):
            if column not in names:
                raise DefinitionError(f"feature group {self.name!r}: key column {column!r} is not a feature")
        if self.feature(self.event_time).dtype != EVENT_TIME_TYPE:
            raise DefinitionError(f"feature group {self.name!r}: event time must be {EVENT_TIME_TYPE}")
        if bool(self.sources) == (self.aggregation is not None):
            raise DefinitionError(f"feature group {self.name!r} needs either sources or an aggregation, not both")
        if any(f.computed for f in self.features) and self.compute is None:
            raise DefinitionError(f"feature group {self.name!r} has computed features but no compute function")
        if self.aggregation is not None and self.partition_by_event_date:
            raise DefinitionError(f"feature group {self.name!r}: an aggregated group's table is not partitioned by "
                                  "event date (its rows per key are few); drop partition_by_event_date")
        if EVENT_DATE_COLUMN in names:
            raise DefinitionError(f"feature group {self.name!r}: {EVENT_DATE_COLUMN!r} is reserved for partitioning")
        names_seen = [s.name for s in self.sources]
        if len(set(names_seen)) != len(names_seen):
            raise DefinitionError(f"feature group {self.name!r}: source names must be unique")
        for source in self.sources:
            if getattr(source, "format", None) == "image":
                self._check_image_source(source)
            elif any(f.image is not None for f in self.read_features):
                raise DefinitionError(f"feature group {self.name!r}: its image features can only be read by image "
                                      f"sources, and {source.name!r} is a {source.format} source")

    def _check_image_source(self, source: "ImageSource") -> None:
        where = f"feature group {self.name!r}, image source {source.name!r}"
        names = {f.name: f for f in self.features}
        if source.image not in names or names[source.image].image is None:
            raise DefinitionError(f"{where}: {source.image!r} is not an image feature of the group")
        fields = set(source.fields)
        unknown = sorted(fields - set(names))
        if unknown:
            raise DefinitionError(f"{where}: path field(s) {unknown} are not features of the group")
        unfilled = [f.name for f in self.read_features
                    if f.name not in fields and f.name not in (source.image, self.event_time)]
        if unfilled:
            raise DefinitionError(f"{where}: feature(s) {unfilled} come from no path field; name them as groups "
                                  f"in path_fields (e.g. '(?P<{unfilled[0]}>[^/]+)/')")

    @property
    def partition_columns(self) -> tuple[str, ...]:
        return (EVENT_DATE_COLUMN,) if self.partition_by_event_date else ()

    @property
    def order_column(self) -> str | None:
        """The column that orders rows of one key at one event time (aggregated groups), None if none may tie."""
        return INGESTED_COLUMN if self.aggregation is not None else None

    @property
    def table_schema(self) -> pa.Schema:
        """The stored table's schema: the features, the ingestion order of an aggregation, the partition column."""
        schema = self.schema
        if self.aggregation is not None:
            schema = schema.append(pa.field(INGESTED_COLUMN, pa.int64(), nullable=False, metadata={
                "description": "Upstream table version of the run that wrote the row (later wins at one time)."}))
        if not self.partition_by_event_date:
            return schema
        return schema.append(pa.field(EVENT_DATE_COLUMN, pa.date32(), nullable=False,
                                      metadata={"description": "UTC date of the event time (partition)."}))

    @property
    def read_features(self) -> tuple[Feature, ...]:
        """The features that sources provide (all but the computed ones)."""
        return tuple(f for f in self.features if not f.computed)

    @property
    def sensitive_features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.sensitive)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(f.name, f.dtype, nullable=f.nullable, metadata={"description": f.description})
             for f in self.features]
        )

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"feature group {self.ref} has no feature {name!r}")
