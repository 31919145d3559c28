"""Point-in-time correct join: each label row gets the feature values that were known at its time.

For every label row (entity keys, label time) and every feature source, the
join takes the source's latest row with the same keys whose event time is at or
before the label time, and no older than the source's TTL if it has one
(`label_time - ttl <= event_time <= label_time`, both bounds inclusive). A row
from the future is never used. Several rows at the same key and event time are
told apart by the source's `order` column (larger = ingested later, and the
later one wins); a source without one must not have such ties: the join fails
with a ValueError when it meets one among rows a label could use. Feature rows
with a null key or event time never match; a null `order` counts as ingested
first.

Label rows are never dropped or repeated: a row with no matching feature row,
a null key or a null label time keeps nulls for that source's features and is
counted in `JoinStats.unmatched`. Timestamps may be naive (read as UTC) or
timezone-aware, at any unit, on either side; they are compared exactly, at the
finer of the two units. A source's event time, when asked for as a feature,
comes out as timestamp[us, UTC]; other columns keep their Arrow types.

How it runs: sources joined on the same label columns form a group, and each
group is one hash exchange on Ray tasks. Every label block and every source
block is split by a hash of its key into one part per bucket (one bucket per
CPU, more for big inputs); one task per bucket then joins its labels with each
source of the group. There (key, time) becomes one int64 that sorts
lexicographically: the dense code of the key times the span of the times, plus
the time (or its rank, when that would overflow). The labels are sorted once,
each source once (by packed value, then order), and one binary search per label
row finds the last feature row at or before it. The labels that come out of a
group's buckets are the labels of the next group. The inputs stay in Ray's
object store; only row counts reach the driver.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

OUTPUT_EVENT_TIME = pa.timestamp("us", tz="UTC")
_UNIT_NANOSECONDS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
# Packed sort keys stay below this, so that key * span + time never overflows int64.
_PACKED_LIMIT = 1 << 62
# Input bytes (Arrow, in memory) one bucket's task may hold before the join uses more buckets than CPUs.
_BUCKET_BYTES = 256 << 20
_MAX_BUCKETS = 255  # split tasks write one bucket number per row as uint8
# Input bytes one split task takes at most (unless that would leave CPUs idle).
_SPLIT_BYTES = 64 << 20


@dataclass(frozen=True)
class AsOfSource:
    """One feature source of a point-in-time join."""

    name: str
    """For stats and errors."""
    dataset: "ray.data.Dataset"
    """Feature rows."""
    keys: tuple[str, ...]
    """Key columns in the feature dataset."""
    label_keys: tuple[str, ...]
    """The label columns they match, same length and order."""
    event_time: str
    features: tuple[str, ...]
    """Columns to bring into the output; the caller makes names unique."""
    ttl: datetime.timedelta | None = None
    """Oldest feature row still valid, relative to the label time (inclusive); None: no limit."""
    order: str | None = None
    """Ingestion order column (integer), larger = ingested later; breaks ties at equal event time."""


@dataclass(frozen=True)
class JoinStats:
    label_rows: int
    unmatched: dict[str, int]
    """Per source name: label rows that got no feature row (no match, null key or null label time)."""


# ---------------------------------------------------------------- plan and validation


@dataclass(frozen=True)
class _SourcePlan:
    """What a bucket task needs to know about one source (no dataset: it travels to every task)."""

    name: str
    keys: tuple[str, ...]
    event_time: str
    features: tuple[str, ...]
    order: str | None
    ttl: datetime.timedelta | None
    schema: pa.Schema
    """The source's columns as read: keys, event time, order, features."""
    output_fields: tuple[pa.Field, ...]


@dataclass(frozen=True)
class _KeyGroup:
    """Sources joined on the same label columns: one exchange for all of them."""

    label_keys: tuple[str, ...]
    key_types: tuple[pa.DataType, ...]
    """The type both sides' keys are cast to before hashing and matching."""
    sources: tuple[_SourcePlan, ...]


def _arrow_schema(dataset, what: str) -> pa.Schema:
    schema = dataset.schema()
    if schema is None:
        raise ValueError(f"{what} dataset has no schema (no blocks?)")
    base = getattr(schema, "base_schema", schema)
    if not isinstance(base, pa.Schema):
        base = pa.schema(list(zip(schema.names, schema.types)))
    return base


def _canonical_key_type(kind: pa.DataType) -> pa.DataType:
    """Key types that compare equal across sides: every integer as int64, every string as large_string."""
    if pa.types.is_dictionary(kind):
        return _canonical_key_type(kind.value_type)
    if pa.types.is_integer(kind):
        return pa.int64()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.large_string()
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return pa.large_binary()
    return kind


def _require(schema: pa.Schema, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ValueError(f"{what} has no column(s) {', '.join(repr(c) for c in missing)}; "
                         f"its columns are {', '.join(schema.names) or 'none'}")


def _require_timestamp(schema: pa.Schema, column: str, what: str) -> None:
    kind = schema.field(column).type
    if not pa.types.is_timestamp(kind):
        raise ValueError(f"{what} column {column!r} must be a timestamp, got {kind}")


def _plan(label_schema: pa.Schema, label_time: str, sources: Sequence[AsOfSource]) -> list[_KeyGroup]:
    """Check the join's columns and types; group the sources by the label columns they join on."""
    _require(label_schema, [label_time], "labels")
    _require_timestamp(label_schema, label_time, "label time")
    names = [s.name for s in sources]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"source names must be unique, got {', '.join(repr(n) for n in repeated)} more than once")
    feature_owner: dict[str, str] = {}
    groups: dict[tuple[str, ...], list[_SourcePlan]] = {}
    key_types: dict[tuple[str, ...], tuple[pa.DataType, ...]] = {}
    for source in sources:
        what = f"source {source.name!r}"
        keys, label_keys, features = tuple(source.keys), tuple(source.label_keys), tuple(source.features)
        if not keys:
            raise ValueError(f"{what} has no key columns; a point-in-time join needs at least one")
        if len(keys) != len(label_keys):
            raise ValueError(f"{what} has {len(keys)} key column(s) {list(keys)} but {len(label_keys)} "
                             f"label key column(s) {list(label_keys)}; they must pair up one to one")
        if source.ttl is not None and source.ttl < datetime.timedelta(0):
            raise ValueError(f"{what} has a negative ttl ({source.ttl}); expected zero or more")
        schema = _arrow_schema(source.dataset, what)
        _require(label_schema, label_keys, f"labels (label keys of {what})")
        needed = [*keys, source.event_time, *([source.order] if source.order else []), *features]
        _require(schema, needed, what)
        _require_timestamp(schema, source.event_time, f"{what} event time")
        order_type = schema.field(source.order).type if source.order is not None else None
        if order_type is not None and not (pa.types.is_integer(order_type) or pa.types.is_null(order_type)):
            raise ValueError(f"{what} order column {source.order!r} must be an integer, "
                             f"got {schema.field(source.order).type}")
        types = []
        for key, label_key in zip(keys, label_keys):
            ours, theirs = schema.field(key).type, label_schema.field(label_key).type
            # An all-null column (Arrow's null type) matches nothing, whatever the label side's type.
            if _canonical_key_type(ours) != _canonical_key_type(theirs) and not pa.types.is_null(ours):
                raise ValueError(f"{what} key {key!r} is {ours} but the label column {label_key!r} it matches "
                                 f"is {theirs}")
            types.append(_canonical_key_type(theirs))
        for feature in features:
            if feature in label_schema.names:
                raise ValueError(f"{what} feature {feature!r} has the name of a label column; rename one of them")
            if feature in feature_owner:
                raise ValueError(f"{what} feature {feature!r} is also a feature of source "
                                 f"{feature_owner[feature]!r}; rename one of them")
            feature_owner[feature] = source.name
        columns = list(dict.fromkeys(needed))
        read_schema = pa.schema([schema.field(c) for c in columns])
        output_fields = tuple(
            pa.field(f, OUTPUT_EVENT_TIME) if f == source.event_time else schema.field(f).with_nullable(True)
            for f in features)
        groups.setdefault(label_keys, []).append(_SourcePlan(
            name=source.name, keys=keys, event_time=source.event_time, features=features, order=source.order,
            ttl=source.ttl, schema=read_schema, output_fields=output_fields))
        key_types[label_keys] = tuple(types)
    return [_KeyGroup(label_keys, key_types[label_keys], tuple(plans)) for label_keys, plans in groups.items()]


# ---------------------------------------------------------------- per block and per bucket work


def _key_column(column: pa.ChunkedArray | pa.Array, kind: pa.DataType) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.cast(kind)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: consecutive integer ids spread evenly over buckets."""
    x = values.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _key_hash(columns: list[pa.Array]) -> np.ndarray:
    """A hash of each row's key that is the same in every block and on both sides of the join."""
    combined = np.zeros(len(columns[0]), dtype=np.uint64)
    for column in columns:
        if column.type == pa.int64():
            hashed = _mix(pc.fill_null(column, 0).to_numpy())
        else:  # as text with nulls spelled out: the same for a value whether or not its block holds a null
            text = pc.fill_null(pc.cast(column, pa.string()), "\u0000").to_numpy(zero_copy_only=False)
            hashed = pd.util.hash_array(text, categorize=False)
        combined = combined * np.uint64(0x9E3779B97F4A7C15) + hashed
    return combined


def _split_by_key(keys: tuple[str, ...], key_types: tuple[pa.DataType, ...], columns: list[str] | None, buckets: int,
                  *blocks: pa.Table):
    """Some blocks -> one part per bucket; rows with equal keys land in the same bucket on both sides."""
    if columns is not None:
        blocks = [block.select(columns) for block in blocks]
    table = pa.concat_tables(blocks, promote_options="permissive") if len(blocks) > 1 else blocks[0]
    if buckets == 1:
        return table
    if table.num_rows == 0:
        return [table] * buckets
    hashes = _key_hash([_key_column(table[k], t) for k, t in zip(keys, key_types)])
    bucket = (hashes % np.uint64(buckets)).astype(np.uint8)
    rows = np.argsort(bucket, kind="stable")
    ends = np.cumsum(np.bincount(bucket, minlength=buckets))
    starts = ends - np.bincount(bucket, minlength=buckets)
    # take copies: a slice would ship the whole block to every bucket's task.
    return [table.take(rows[start:end]) for start, end in zip(starts, ends)]


def _concat(parts: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [p for p in parts if p.num_rows]
    if not tables:
        return schema.empty_table()
    tables = [t if t.schema.equals(schema) else t.select(schema.names).cast(schema) for t in tables]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _as_numpy(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """int64 values with nulls as 0, and a validity mask (None: no nulls)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    valid = None
    if column.null_count:
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        column = pc.fill_null(column, 0)
    return column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), valid


def _times(column: pa.ChunkedArray, unit: str, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A timestamp column's UTC instants as int64 counts of `unit` (naive timestamps are UTC already)."""
    values, valid = _as_numpy(column.cast(pa.int64()))
    factor = _UNIT_NANOSECONDS[column.type.unit] // _UNIT_NANOSECONDS[unit]
    if factor > 1 and len(values):
        limit = np.iinfo(np.int64).max // factor
        widest = int(np.abs(values).max())
        if widest > limit:
            raise ValueError(f"{what} holds a time ({widest} {column.type.unit}) that cannot be compared "
                             f"at {unit} precision with the other side of the join")
        values = values * factor
    return values, valid


def _ttl_in(unit: str, ttl: datetime.timedelta) -> int:
    """The TTL in whole `unit`s, rounded down: for integer times, e >= l - ttl iff e >= l - floor(ttl)."""
    microseconds = ttl // datetime.timedelta(microseconds=1)
    return microseconds * 1000 // _UNIT_NANOSECONDS[unit]


def _codes(indices: pa.Array) -> np.ndarray:
    """Dictionary or lookup indices as int64, -1 where null."""
    values, valid = _as_numpy(indices)
    values = values.astype(np.int64, copy=True)
    if valid is not None:
        values[~valid] = -1
    return values


def _combine(codes: np.ndarray, column_codes: np.ndarray, cardinality: int) -> np.ndarray:
    combined = codes * cardinality + column_codes
    combined[(codes < 0) | (column_codes < 0)] = -1
    return combined


def _renumber(codes: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Codes as positions in the sorted array `present`; -1 for codes not in it."""
    if not len(present):
        return np.full(len(codes), -1, dtype=np.int64)
    position = np.minimum(np.searchsorted(present, codes), len(present) - 1)
    return np.where((codes >= 0) & (present[position] == codes), position, -1)


def _key_codes(label_keys: list[pa.Array], sources_keys: list[list[pa.Array]]) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Dense codes for the labels' keys and the same codes for each source's keys, and how many codes there are.

    -1 marks a key with a null in it, and a source key that no label row has: such rows can never match.
    """
    label_codes, source_codes, count = None, [], 1
    for i, label_column in enumerate(label_keys):
        encoded = pc.dictionary_encode(label_column)
        column_codes = _codes(encoded.indices)
        cardinality = max(len(encoded.dictionary), 1)
        source_column_codes = [_codes(pc.index_in(keys[i], value_set=encoded.dictionary)) for keys in sources_keys]
        if label_codes is None:
            label_codes, source_codes, count = column_codes, source_column_codes, cardinality
            continue
        if count * cardinality >= _PACKED_LIMIT:  # number only the key combinations the labels have
            present = np.unique(label_codes[label_codes >= 0])
            label_codes = _renumber(label_codes, present)
            source_codes = [_renumber(codes, present) for codes in source_codes]
            count = max(len(present), 1)
        label_codes = _combine(label_codes, column_codes, cardinality)
        source_codes = [_combine(codes, more, cardinality) for codes, more in zip(source_codes, source_column_codes)]
        count *= cardinality
    return label_codes, source_codes, count


def _dense_ranks(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Each value's rank among the distinct values (0 for the smallest), and how many distinct values there are.

    One sort and a scatter: `np.unique` (hashing in NumPy 2) and a binary search of every value in its result took
    18 s for 8M times in one bucket of the 4M-label benchmark, where this takes about 2 s.
    """
    order = np.argsort(values)
    ordered = values[order]
    new = np.empty(len(values), dtype=np.int64)
    new[:1] = 1
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:], casting="unsafe")
    distinct = np.cumsum(new, out=new)
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = distinct - 1
    return ranks, int(distinct[-1]) if len(values) else 0


def _finer_unit(*units: str) -> str:
    return min(units, key=_UNIT_NANOSECONDS.__getitem__)


@dataclass
class _Candidates:
    """A source's rows that could match some label row: their positions in the bucket, key codes and times."""

    rows: np.ndarray
    codes: np.ndarray
    times: np.ndarray


def _as_of_rows(group: _KeyGroup, labels: pa.Table, label_time: str, rows: list[pa.Table]) -> list[np.ndarray]:
    """Per source, for each label row the index of its feature row in that source's `rows`, or -1.

    Both sides' (key, time) pairs are packed into one int64 that sorts lexicographically; the labels are sorted
    once, each source once, and one binary search per label row then finds the last feature row at or before it.
    """
    n = labels.num_rows
    found = [np.full(n, -1, dtype=np.int64) for _ in rows]
    if n == 0:
        return found
    label_keys = [_key_column(labels[k], t) for k, t in zip(group.label_keys, group.key_types)]
    sources_keys = [[_key_column(table[k], t) for k, t in zip(source.keys, group.key_types)]
                    for source, table in zip(group.sources, rows)]
    label_codes, source_codes, key_count = _key_codes(label_keys, sources_keys)
    unit = _finer_unit(labels.schema.field(label_time).type.unit,
                       *(t.schema.field(s.event_time).type.unit for s, t in zip(group.sources, rows)))
    label_times, label_times_valid = _times(labels[label_time], unit, "label time")
    usable = label_codes >= 0
    if label_times_valid is not None:
        usable &= label_times_valid
    label_index = np.flatnonzero(usable)
    if not len(label_index):
        return found
    label_codes, label_times = label_codes[label_index], label_times[label_index]
    latest = int(label_times.max())

    candidates: list[_Candidates | None] = []
    for source, table, codes in zip(group.sources, rows, source_codes):
        times, valid = _times(table[source.event_time], unit, f"source {source.name!r} event time")
        usable = (codes >= 0) & (times <= latest)  # a row after the last label time can never be used
        if valid is not None:
            usable &= valid
        index = np.flatnonzero(usable)
        candidates.append(_Candidates(index, codes[index], times[index]) if len(index) else None)
    present = [c for c in candidates if c is not None]
    if not present:
        return found

    earliest = int(min(label_times.min(), *(c.times.min() for c in present)))
    span = time_span = latest - earliest + 1
    if key_count * span < _PACKED_LIMIT:
        label_offsets = label_times - earliest
        offsets = [None if c is None else c.times - earliest for c in candidates]
    else:  # too wide to pack as they are: times become their rank among all times of the bucket
        ranks, span = _dense_ranks(np.concatenate([label_times, *(c.times for c in present)]))
        ends = np.cumsum([len(label_times), *(len(c.times) for c in present)])
        label_offsets, *present_offsets = np.split(ranks, ends[:-1])
        ranked = iter(present_offsets)
        offsets = [None if c is None else next(ranked) for c in candidates]
        if int(key_count) * int(span) >= 1 << 63:  # would overflow int64: refuse rather than mis-sort
            raise ValueError(f"point-in-time join: {key_count} keys x {span} distinct times in one bucket are too many "
                             "to pack into 64 bits; join with more buckets")
    label_packed = label_codes * span + label_offsets
    label_order = np.argsort(label_packed)
    label_packed, label_codes = label_packed[label_order], label_codes[label_order]
    label_times, label_index = label_times[label_order], label_index[label_order]

    for source, table, candidate, offset, result in zip(group.sources, rows, candidates, offsets, found):
        if candidate is None:
            continue
        unsorted = candidate.codes * span + offset
        by_time = np.argsort(unsorted)
        packed = unsorted[by_time]
        if len(packed) > 1 and bool(np.any(packed[1:] == packed[:-1])):
            # Rows at the same key and event time: the one ingested last must come last.
            if source.order is None:
                raise ValueError(f"source {source.name!r} has several rows with the same key and "
                                 f"{source.event_time!r}; give it an `order` column to say which was ingested last")
            order, order_valid = _as_numpy(table[source.order])
            order = order[candidate.rows]
            if order_valid is not None:
                order[~order_valid[candidate.rows]] = np.iinfo(np.int64).min
            by_time = np.lexsort((order, unsorted))
            packed = unsorted[by_time]
        # The last feature row at or before (key, label time); it matches if it has the label's key.
        position = np.searchsorted(packed, label_packed, side="right") - 1
        hit = position >= 0
        position[~hit] = 0
        chosen = by_time[position]
        hit &= candidate.codes[chosen] == label_codes
        if source.ttl is not None:
            ttl = _ttl_in(unit, source.ttl)
            if ttl < time_span:  # a TTL longer than all the data excludes nothing (and might not fit int64)
                hit &= (label_times - candidate.times[chosen]) <= ttl
        result[label_index[hit]] = candidate.rows[chosen[hit]]
    return found


def _with_features(labels: pa.Table, rows: pa.Table, source: _SourcePlan, found: np.ndarray) -> pa.Table:
    indices = pa.array(found, mask=found < 0)
    for field in source.output_fields:
        column = rows[field.name]
        if column.num_chunks > 1:
            column = column.combine_chunks()
        values = column.take(indices) if rows.num_rows else pa.nulls(len(found), column.type)
        if not values.type.equals(field.type):
            values = values.cast(field.type, safe=False)  # ns event times truncate to us
        labels = labels.append_column(field, values)
    return labels


def _join_bucket(group: _KeyGroup, label_time: str, label_schema: pa.Schema, part_counts: tuple[int, ...],
                 *parts: pa.Table) -> tuple[pa.Table, tuple[int, list[int]]]:
    """One bucket: its label rows, each with every source's features appended; and the row counts."""
    ends = np.cumsum(part_counts)
    labels = _concat(parts[:ends[0]], label_schema)
    rows = [_concat(parts[start:end], source.schema)
            for source, start, end in zip(group.sources, ends[:-1], ends[1:])]
    found = _as_of_rows(group, labels, label_time, rows)
    joined = labels
    for source, table, index in zip(group.sources, rows, found):
        joined = _with_features(joined, table, source, index)
    return joined, (labels.num_rows, [int(np.count_nonzero(index < 0)) for index in found])


# ---------------------------------------------------------------- the join on Ray


def _parts_by_bucket(dataset: "ray.data.MaterializedDataset", keys: tuple[str, ...],
                     key_types: tuple[pa.DataType, ...], columns: list[str] | None, buckets: int,
                     cpus: int) -> list[list]:
    """Submit the split tasks of one materialized input; [bucket][split task] -> object ref of its part.

    One task splits several blocks (Ray Data may cut a read into hundreds of small blocks, and a task per
    block then costs more than the splitting), but no more than about _SPLIT_BYTES of them.
    """
    import ray

    refs = dataset.to_arrow_refs()
    if not refs:
        return [[] for _ in range(buckets)]
    tasks = min(len(refs), max(cpus, -(-dataset.size_bytes() // _SPLIT_BYTES)))
    split = ray.remote(_split_by_key).options(num_returns=buckets)
    bounds = np.linspace(0, len(refs), tasks + 1).astype(int)
    outputs = [split.remote(keys, key_types, columns, buckets, *refs[start:end])
               for start, end in zip(bounds[:-1], bounds[1:])]
    if buckets == 1:
        return [outputs]
    return [[parts[b] for parts in outputs] for b in range(buckets)]


def _columns_of(dataset: "ray.data.Dataset", columns: list[str]) -> "ray.data.Dataset":
    """A source with only the join's columns: pushed down into a read that has yet to run; for rows already in
    memory the split tasks drop the others (another pass of Ray Data over them would cost more)."""
    from ray.data.dataset import MaterializedDataset

    if isinstance(dataset, MaterializedDataset):
        return dataset
    return dataset.select_columns(columns)


def _bucket_count(cpus: int, input_bytes: int) -> int:
    """One bucket per CPU, more when a bucket's inputs would pass _BUCKET_BYTES (a task holds a whole bucket)."""
    return max(1, min(_MAX_BUCKETS, max(cpus, -(-input_bytes // _BUCKET_BYTES))))


def point_in_time_join(labels: "ray.data.Dataset", label_time: str, sources: list[AsOfSource], *,
                       buckets: int | None = None) -> tuple["ray.data.Dataset", JoinStats]:
    """Every label row with each source's features as of the label's time; see the module docstring.

    Runs the join (on Ray tasks) before returning, so that the stats are known; the rows stay in Ray's
    object store. `buckets` (per exchange) defaults to the cluster's CPU count, or more for big inputs.
    """
    import ray
    import ray.data

    schema = _arrow_schema(labels, "labels")
    groups = _plan(schema, label_time, sources)
    if buckets is not None and not 1 <= buckets <= _MAX_BUCKETS:
        raise ValueError(f"buckets must be between 1 and {_MAX_BUCKETS}, got {buckets}")
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # Inputs execute one after another: several Ray Data Parquet reads at once, each starting its own pool
    # of footer-reading actors, measured slower than in turn on a small machine.
    label_blocks = labels.materialize()
    datasets = {s.name: s.dataset for s in sources}
    read = {p.name: _columns_of(datasets[p.name], p.schema.names).materialize() for g in groups for p in g.sources}
    join = ray.remote(_join_bucket).options(num_returns=2)
    count_refs: list[tuple[_KeyGroup, list]] = []
    for group in groups:
        group_bytes = label_blocks.size_bytes() + sum(read[s.name].size_bytes() for s in group.sources)
        group_buckets = buckets or _bucket_count(cpus, group_bytes)
        label_parts = _parts_by_bucket(label_blocks, group.label_keys, group.key_types, None, group_buckets, cpus)
        parts = [_parts_by_bucket(read[s.name], s.keys, group.key_types, s.schema.names, group_buckets, cpus)
                 for s in group.sources]
        part_counts = (len(label_parts[0]), *(len(p[0]) for p in parts))
        outputs = [
            join.remote(group, label_time, schema, part_counts, *label_parts[b], *(ref for p in parts for ref in p[b]))
            for b in range(group_buckets)
        ]
        schema = pa.schema([*schema, *(f for s in group.sources for f in s.output_fields)])
        # The next group's labels: this group's output, still in the object store.
        label_blocks = ray.data.from_arrow_refs([table for table, _ in outputs]).materialize()
        count_refs.append((group, [counts for _, counts in outputs]))

    label_rows = None
    unmatched: dict[str, int] = {}
    for group, refs in count_refs:
        counts = ray.get(refs)
        label_rows = sum(rows for rows, _ in counts)
        for i, source in enumerate(group.sources):
            unmatched[source.name] = sum(per_source[i] for _, per_source in counts)
    if label_rows is None:  # no sources: the labels as they are
        label_rows = label_blocks.count()
    stats = JoinStats(label_rows=label_rows, unmatched=unmatched)
    log.info("point-in-time join: %d label rows, unmatched per source %s", stats.label_rows, stats.unmatched)
    return label_blocks, stats
