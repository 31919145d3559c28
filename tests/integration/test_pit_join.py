"""The point-in-time join against a brute-force reference, plus the behaviours it promises by name."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.pit_join import AsOfSource, JoinStats, point_in_time_join

pytestmark = pytest.mark.ray

UTC = dt.timezone.utc
START = dt.datetime(2024, 3, 1, tzinfo=UTC)
TIME_TYPES = [pa.timestamp(unit, tz) for unit in ("s", "ms", "us", "ns") for tz in (None, "UTC", "Asia/Kolkata")]


def at(seconds: float) -> dt.datetime:
    return START + dt.timedelta(seconds=seconds)


def timestamps(values: list[dt.datetime | None], kind: pa.DataType) -> pa.Array:
    """Aware UTC datetimes as an Arrow column of `kind`; a naive kind holds the UTC wall time."""
    if kind.tz is None:
        values = [None if v is None else v.astimezone(UTC).replace(tzinfo=None) for v in values]
    return pa.array(values, kind)


def dataset(table: pa.Table, blocks: int = 1):
    import ray.data

    step = max(1, -(-table.num_rows // blocks))
    parts = [table.slice(start, step) for start in range(0, table.num_rows, step)] or [table]
    return ray.data.from_arrow(parts)


def joined_rows(labels: pa.Table, label_time: str, sources: list[AsOfSource], **options):
    out, stats = point_in_time_join(dataset(labels, 2), label_time, sources, **options)
    rows = sorted(out.take_all(), key=lambda row: row["label_id"])
    return rows, stats, out.schema().base_schema


# ---------------------------------------------------------------- the reference


def utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def reference_join(labels: list[dict], label_time: str, sources: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """For each label row, scan every feature row of every source; plain Python, no cleverness."""
    output, unmatched = [], {source["name"]: 0 for source in sources}
    for label in labels:
        row = dict(label)
        when = utc(label[label_time])
        for source in sources:
            wanted = [label[k] for k in source["label_keys"]]
            best = None
            for feature_row in source["rows"]:
                event = utc(feature_row[source["event_time"]])
                if when is None or None in wanted or event is None:
                    continue
                if [feature_row[k] for k in source["keys"]] != wanted or event > when:
                    continue
                if source["ttl"] is not None and event < when - source["ttl"]:
                    continue
                rank = (event, feature_row.get(source["order"], 0) if source["order"] else 0)
                if best is None or rank > best[0]:
                    best = (rank, feature_row)
            if best is None:
                unmatched[source["name"]] += 1
            for feature in source["features"]:
                value = None if best is None else best[1][feature]
                row[feature] = utc(value) if feature == source["event_time"] else value
        output.append(row)
    return sorted(output, key=lambda row: row["label_id"]), unmatched


# ---------------------------------------------------------------- random cases

USERS = st.sampled_from([None, 0, 1, 2, 3])
HOTELS = st.sampled_from([None, "h0", "h1", "h2"])


def instants(kind: pa.DataType):
    """Times on a half-second grid (whole seconds for a seconds column), sometimes missing."""
    step = 2 if kind.unit == "s" else 1
    return st.one_of(st.none(), st.integers(0, 12).map(lambda halves: at(halves * step / 2 * 1.0)))


@st.composite
def join_cases(draw):
    label_kind = draw(st.sampled_from(TIME_TYPES))
    labels = [
        {"label_id": i, "user_id": draw(USERS), "hotel_id": draw(HOTELS), "label_at": draw(instants(label_kind))}
        for i in range(draw(st.integers(0, 12)))
    ]
    sources = []
    # by_user: ties at equal event time, told apart by the order column; its event time is also a feature.
    kind = draw(st.sampled_from(TIME_TYPES))
    rows = [{"user": draw(USERS), "seen_at": draw(instants(kind)), "clicks": draw(st.integers(0, 99))}
            for _ in range(draw(st.integers(0, 15)))]
    for order, row in zip(draw(st.permutations(range(len(rows)))), rows):
        row["ingested"] = order
    sources.append(dict(name="by_user", rows=rows, keys=["user"], label_keys=["user_id"], event_time="seen_at",
                        features=["clicks", "seen_at"], order="ingested", kind=kind,
                        key_types={"user": pa.int32()}, ttl=draw(ttls())))
    # by_hotel_and_user: two keys, no order column, so key + event time is unique.
    kind = draw(st.sampled_from(TIME_TYPES))
    rows, seen = [], set()
    for _ in range(draw(st.integers(0, 15))):
        row = {"hotel": draw(HOTELS), "user": draw(USERS), "stay_at": draw(instants(kind)),
               "nights": draw(st.floats(0, 9, allow_nan=False))}
        identity = (row["hotel"], row["user"], row["stay_at"])
        if identity not in seen:
            seen.add(identity)
            rows.append(row)
    sources.append(dict(name="by_hotel_and_user", rows=rows, keys=["hotel", "user"],
                        label_keys=["hotel_id", "user_id"], event_time="stay_at", features=["nights"], order=None,
                        kind=kind, key_types={"hotel": pa.string(), "user": pa.int64()}, ttl=draw(ttls())))
    # by_hotel: string keys read as a dictionary column, ties with an order column.
    kind = draw(st.sampled_from(TIME_TYPES))
    rows = [{"hotel": draw(HOTELS), "rated_at": draw(instants(kind)), "rating": draw(st.sampled_from("abc")),
             "version": draw(st.integers(0, 5))} for _ in range(draw(st.integers(0, 15)))]
    for i, row in enumerate(rows):
        row["version"] = row["version"] * 100 + i  # distinct, so the tie-break is unambiguous
    sources.append(dict(name="by_hotel", rows=rows, keys=["hotel"], label_keys=["hotel_id"], event_time="rated_at",
                        features=["rating"], order="version", kind=kind,
                        key_types={"hotel": pa.dictionary(pa.int8(), pa.string())}, ttl=draw(ttls())))
    return labels, label_kind, sources, draw(st.integers(1, 3))


def ttls():
    return st.one_of(st.none(), st.integers(0, 8).map(lambda halves: dt.timedelta(seconds=halves / 2)))


def label_table(labels: list[dict], kind: pa.DataType) -> pa.Table:
    return pa.table({
        "label_id": pa.array([row["label_id"] for row in labels], pa.int64()),
        "user_id": pa.array([row["user_id"] for row in labels], pa.int64()),
        "hotel_id": pa.array([row["hotel_id"] for row in labels], pa.string()),
        "label_at": timestamps([row["label_at"] for row in labels], kind),
    })


def as_of_source(source: dict) -> AsOfSource:
    columns = {}
    for name in [*source["keys"], source["event_time"], *([source["order"]] if source["order"] else []),
                 *source["features"]]:
        values = [row[name] for row in source["rows"]]
        if name == source["event_time"]:
            columns[name] = timestamps(values, source["kind"])
        else:
            columns[name] = pa.array(values, source["key_types"].get(name))
    return AsOfSource(name=source["name"], dataset=dataset(pa.table(columns), 2), keys=tuple(source["keys"]),
                      label_keys=tuple(source["label_keys"]), event_time=source["event_time"],
                      features=tuple(source["features"]), ttl=source["ttl"], order=source["order"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=join_cases())
def test_join_matches_the_brute_force_reference(ray_cluster, case):
    labels, label_kind, sources, buckets = case
    rows, stats, _ = joined_rows(label_table(labels, label_kind), "label_at", [as_of_source(s) for s in sources],
                                 buckets=buckets)
    expected, unmatched = reference_join(labels, "label_at", sources)
    for row in rows:
        row["label_at"] = utc(row["label_at"])
    for row in expected:
        row["label_at"] = utc(row["label_at"])
    assert rows == expected
    assert stats == JoinStats(label_rows=len(labels), unmatched=unmatched)


# ---------------------------------------------------------------- named behaviours


def clicks_source(times: list[float], values: list[int], *, order: list[int] | None = None, ttl=None,
                  kind=pa.timestamp("us", "UTC"), users: list | None = None) -> AsOfSource:
    columns = {"user": pa.array(users or [1] * len(times), pa.int64()),
               "seen_at": timestamps([at(t) for t in times], kind),
               "clicks": pa.array(values, pa.int64())}
    if order is not None:
        columns["ingested"] = pa.array(order, pa.int64())
    return AsOfSource("clicks", dataset(pa.table(columns)), ("user",), ("user_id",), "seen_at", ("clicks",),
                      ttl=ttl, order="ingested" if order is not None else None)


def labels_at(times: list[float | None], users: list | None = None, kind=pa.timestamp("us", "UTC")) -> pa.Table:
    return pa.table({
        "label_id": pa.array(range(len(times)), pa.int64()),
        "user_id": pa.array(users or [1] * len(times), pa.int64()),
        "label_at": timestamps([None if t is None else at(t) for t in times], kind),
    })


def test_a_feature_row_from_the_future_is_never_used(ray_cluster):
    rows, stats, _ = joined_rows(labels_at([10, 20]), "label_at", [clicks_source([10.000001, 25], [1, 2])])
    assert [row["clicks"] for row in rows] == [None, 1]
    assert stats.unmatched == {"clicks": 1}


def test_ties_go_to_the_row_ingested_last(ray_cluster):
    source = clicks_source([5, 5, 5], [10, 30, 20], order=[1, 3, 2])
    rows, _, _ = joined_rows(labels_at([5, 6]), "label_at", [source])
    assert [row["clicks"] for row in rows] == [30, 30]


def test_ties_without_an_order_column_are_refused(ray_cluster):
    with pytest.raises(ValueError, match="same key and 'seen_at'"):
        joined_rows(labels_at([6]), "label_at", [clicks_source([5, 5], [1, 2])])


def test_ttl_bounds_are_inclusive(ray_cluster):
    source = clicks_source([0], [7], ttl=dt.timedelta(seconds=10))
    rows, stats, _ = joined_rows(labels_at([0, 10, 10.000001]), "label_at", [source])
    assert [row["clicks"] for row in rows] == [7, 7, None]
    assert stats.unmatched == {"clicks": 1}


def test_no_label_row_is_lost_or_duplicated(ray_cluster):
    # Repeated label rows, repeated feature rows, null keys and null times: still one output row per label row.
    times = [5, 5, None, 7, 7, 1]
    labels = labels_at(times, users=[1, 1, 1, None, 2, 2])
    source = clicks_source([4, 4, 6, 6], [1, 2, 3, 4], order=[1, 2, 3, 4], users=[1, 1, 2, 2])
    rows, stats, _ = joined_rows(labels, "label_at", [source], buckets=3)
    assert [row["label_id"] for row in rows] == list(range(len(times)))
    assert [row["clicks"] for row in rows] == [2, 2, None, None, 4, None]
    assert stats == JoinStats(label_rows=6, unmatched={"clicks": 3})


def test_sources_on_different_label_columns_each_match_their_own(ray_cluster):
    labels = labels_at([10, 10], users=[1, 2]).append_column("hotel_id", pa.array(["h1", "h1"]))
    hotels = pa.table({"hotel": ["h1", "h1"], "rated_at": timestamps([at(1), at(9)], pa.timestamp("s")),
                       "rating": [3.0, 4.5]})
    rating = AsOfSource("rating", dataset(hotels), ("hotel",), ("hotel_id",), "rated_at", ("rating",))
    rows, stats, _ = joined_rows(labels, "label_at", [clicks_source([2], [8], users=[2]), rating])
    assert [(row["clicks"], row["rating"]) for row in rows] == [(None, 4.5), (8, 4.5)]
    assert stats.unmatched == {"clicks": 1, "rating": 0}


def test_naive_and_aware_times_at_different_units_compare_exactly(ray_cluster):
    # A nanosecond after the label's whole second is the future; naive times are UTC.
    future = pa.table({"user": [1], "seen_at": pa.array([int(at(10).timestamp()) * 10**9 + 1], pa.timestamp("ns")),
                       "clicks": [1]})
    source = AsOfSource("clicks", dataset(future), ("user",), ("user_id",), "seen_at", ("clicks", "seen_at"))
    labels = labels_at([10, 11], kind=pa.timestamp("s", "America/New_York"))
    rows, _, schema = joined_rows(labels, "label_at", [source])
    assert [row["clicks"] for row in rows] == [None, 1]
    assert schema.field("seen_at").type == pa.timestamp("us", "UTC")
    assert schema.field("label_at").type == pa.timestamp("s", "America/New_York")


def test_an_empty_source_leaves_every_label_unmatched(ray_cluster):
    rows, stats, _ = joined_rows(labels_at([1, 2]), "label_at", [clicks_source([], [])])
    assert [row["clicks"] for row in rows] == [None, None]
    assert stats == JoinStats(label_rows=2, unmatched={"clicks": 2})


def _source(**changes) -> AsOfSource:
    table = pa.table({"user": [1], "seen_at": timestamps([at(0)], pa.timestamp("us")), "clicks": [1],
                      "label_at": [0]})
    fields = dict(name="clicks", dataset=dataset(table), keys=("user",), label_keys=("user_id",),
                  event_time="seen_at", features=("clicks",))
    return AsOfSource(**{**fields, **changes})


@pytest.mark.parametrize("changes, label_time, message", [
    ([{"keys": ("person",)}], "label_at", "source 'clicks' has no column.*'person'"),
    ([{"label_keys": ("person_id",)}], "label_at", "labels .*has no column.*'person_id'"),
    ([{"features": ("clicks", "likes")}], "label_at", "has no column.*'likes'"),
    ([{}], "when", "labels has no column.*'when'"),
    ([{"keys": ("user", "clicks")}], "label_at", "2 key column.*1 label key"),
    ([{"features": ("label_at",)}], "label_at", "feature 'label_at' has the name of a label column"),
    ([{}, {"name": "again"}], "label_at", "also a feature of source 'clicks'"),
    ([{}, {}], "label_at", "source names must be unique"),
    ([{"event_time": "clicks"}], "label_at", "event time column 'clicks' must be a timestamp, got int64"),
    ([{}], "user_id", "label time column 'user_id' must be a timestamp"),
    ([{"ttl": dt.timedelta(seconds=-1)}], "label_at", "negative ttl"),
    ([{"order": "seen_at"}], "label_at", "order column 'seen_at' must be an integer"),
    ([{"keys": ("seen_at",)}], "label_at", "key 'seen_at' is timestamp.*label column 'user_id'.*int64"),
], ids=["source key", "label key", "feature", "label time", "arity", "clash with label", "clash between sources",
        "repeated source name", "event time type", "label time type", "negative ttl", "order type", "key types"])
def test_an_ill_formed_join_is_refused_naming_the_problem(ray_cluster, changes, label_time, message):
    with pytest.raises(ValueError, match=message):
        point_in_time_join(dataset(labels_at([1])), label_time, [_source(**c) for c in changes])


def test_keys_and_times_too_wide_to_pack_match_the_same_rows(monkeypatch):
    # With a tiny packing limit every bucket renumbers its key combinations and ranks its times; labels 4 and 5
    # fall exactly on a feature row's time (equal times must get equal ranks: the bound is inclusive).
    from features import pit_join

    labels = pa.table({"label_id": [0, 1, 2, 3, 4, 5], "user_id": [1, 1, 2, 2, 1, 2],
                       "hotel_id": ["a", "b", "a", "a", "a", "a"],
                       "label_at": timestamps([at(5), at(5), at(3), at(9), at(4), at(8)], pa.timestamp("ns", "UTC"))})
    rows = pa.table({"user": [1, 1, 2, 2, 2], "hotel": ["a", "b", "a", "a", "b"],
                     "seen_at": timestamps([at(4), at(6), at(1), at(8), at(2)], pa.timestamp("s")),
                     "clicks": [10, 20, 30, 40, 50]})
    source = pit_join._SourcePlan(name="clicks", keys=("user", "hotel"), event_time="seen_at", features=("clicks",),
                                  order=None, ttl=dt.timedelta(seconds=6), schema=rows.schema,
                                  output_fields=(pa.field("clicks", pa.int64()),))
    group = pit_join._KeyGroup(("user_id", "hotel_id"), (pa.int64(), pa.large_string()), (source,))

    def clicks() -> list:
        joined, (label_rows, unmatched) = pit_join._join_bucket(group, "label_at", labels.schema, (1, 1), labels, rows)
        return joined["clicks"].to_pylist(), label_rows, unmatched

    packed = clicks()
    monkeypatch.setattr(pit_join, "_PACKED_LIMIT", 4)
    assert clicks() == packed == ([10, None, 30, 40, 10, 40], 6, [1])
