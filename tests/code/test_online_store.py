"""The online store, both implementations against real stores: an SQLite file and a real Redis server."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pytest

from features import EVENT_TIME_TYPE, Feature, FeatureGroup, FileSource
from features.online import EntityError, OnlineStoreError, RedisOnlineStore, SqliteOnlineStore, open_online_store
from orchard.errors import ConfigError
from orchard.storage import Storage

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)

GROUP = FeatureGroup(
    name="stays",
    version=1,
    description="Test group with a two-column key and one column of every stored type.",
    primary_key=("hotel_id", "week_start"),
    event_time="as_of",
    features=(
        Feature("hotel_id", pa.string(), "Hotel."),
        Feature("week_start", pa.date32(), "Monday of the week."),
        Feature("as_of", EVENT_TIME_TYPE, "Event time."),
        Feature("nights", pa.int64(), "Room nights.", nullable=True),
        Feature("share", pa.float64(), "A share.", nullable=True),
        Feature("band", pa.string(), "A category.", nullable=True),
        Feature("seen_at", EVENT_TIME_TYPE, "Another instant.", nullable=True),
        Feature("flag", pa.bool_(), "A flag.", nullable=True),
    ),
    sources=(FileSource(name="files", format="csv", location="landing/stays", pattern="*.csv"),),
    online=True,
)


def rows(*items) -> pa.Table:
    """(hotel, week, event time, nights[, share, band]) tuples as the group's table."""
    columns = {name: [] for name in GROUP.schema.names}
    for hotel, week, event, nights, *rest in items:
        share, band = (rest + [0.5, "a"])[:2] if rest else (0.5, "a")
        for name, value in zip(GROUP.schema.names, (hotel, week, event, nights, share, band, event, nights % 2 == 0)):
            columns[name].append(value)
    return pa.table(columns, schema=GROUP.schema)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        online = open_online_store(None, Storage(str(tmp_path)))
        assert isinstance(online, SqliteOnlineStore)
    else:
        url = request.getfixturevalue("redis_url")
        online = open_online_store(url, Storage(str(tmp_path)))
        assert isinstance(online, RedisOnlineStore)
        online._client.flushdb()
    yield online
    online.close()


def test_a_row_comes_back_with_its_types(store):
    week = date(2026, 3, 2)
    store.write(GROUP, rows(("h1", week, T0, 10, float("nan"), "b")), order=1)
    found = store.read(GROUP, [("h1", "2026-03-02"), ("h1", week), ("h2", "2026-03-02")])
    assert found.found == [True, True, False]
    assert found.event_times.to_pylist() == [T0, T0, None]
    assert found.values.schema.field("seen_at").type == EVENT_TIME_TYPE
    values = found.values.to_pylist()
    assert values[0]["nights"] == 10 and values[0]["band"] == "b" and values[0]["seen_at"] == T0
    assert values[0]["flag"] is True and "week_start" not in values[0]  # keys are what was asked
    assert values[0]["share"] != values[0]["share"]  # NaN survives (JSON has none: stored as text)
    assert values[1]["nights"] == 10
    assert values[2] == {name: None for name in values[2]}


def test_an_older_row_never_replaces_a_newer_one_and_ties_go_to_the_later_order(store):
    week = date(2026, 3, 2)
    store.write(GROUP, rows(("h1", week, T0 + timedelta(hours=2), 2)), order=1)
    store.write(GROUP, rows(("h1", week, T0, 1)), order=5)  # older event, later run: stays out
    assert store.read(GROUP, [("h1", week)]).values.column("nights").to_pylist() == [2]
    store.write(GROUP, rows(("h1", week, T0 + timedelta(hours=2), 3)), order=0)  # same instant, earlier order
    assert store.read(GROUP, [("h1", week)]).values.column("nights").to_pylist() == [2]
    store.write(GROUP, rows(("h1", week, T0 + timedelta(hours=2), 4)), order=2)  # same instant, later order
    assert store.read(GROUP, [("h1", week)]).values.column("nights").to_pylist() == [4]
    assert store.count(GROUP) == 1


def test_blocks_written_in_any_order_leave_the_latest_row_of_every_key(store):
    generator = random.Random(3)
    weeks = [date(2026, 3, 2) + timedelta(weeks=i) for i in range(3)]
    items = [(f"h{generator.randrange(6)}", generator.choice(weeks), T0 + timedelta(minutes=i), i)
             for i in generator.sample(range(400), 400)]
    blocks = [items[i:i + 37] for i in range(0, len(items), 37)]
    generator.shuffle(blocks)
    for block in blocks:
        store.write(GROUP, rows(*block), order=1)
    latest: dict = {}
    for hotel, week, event, nights in items:
        if (hotel, week) not in latest or event > latest[(hotel, week)][0]:
            latest[(hotel, week)] = (event, nights)
    keys = sorted(latest)
    found = store.read(GROUP, keys + [("nobody", weeks[0])])
    assert found.found == [True] * len(keys) + [False]
    assert found.values.column("nights").to_pylist()[:-1] == [latest[k][1] for k in keys]
    assert found.event_times.to_pylist()[:-1] == [latest[k][0] for k in keys]
    assert store.count(GROUP) == len(keys)
    # The plain-Python read that serving uses gives the same values, types and times as the Arrow one.
    plain = store.read_rows(GROUP, [(hotel, week.isoformat()) for hotel, week in keys])
    assert [values for _, values in plain] == found.values.to_pylist()[:-1]
    assert [event for event, _ in plain] == [int(e.timestamp() * 1_000_000) for e in found.event_times.to_pylist()[:-1]]


def test_rows_with_a_null_key_are_not_stored(store):
    table = rows(("h1", date(2026, 3, 2), T0, 1))
    table = table.set_column(0, "hotel_id", pa.array([None], pa.string()))
    assert store.write(GROUP, table, order=1) == 0
    assert store.count(GROUP) == 0


def test_the_materialized_version_is_kept_per_group(store):
    assert store.materialized_version(GROUP) is None
    store.set_materialized_version(GROUP, 4)
    store.set_materialized_version(GROUP, 5)
    assert store.materialized_version(GROUP) == 5


def test_a_key_that_cannot_be_read_as_the_key_type_is_named(store):
    with pytest.raises(EntityError, match="week_start.*date32.*not a date"):
        store.read(GROUP, [("h1", "not a date")])


def test_an_unknown_store_url_and_a_remote_root_without_one_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="redis://.*'postgres'"):
        open_online_store("postgres://somewhere/db", Storage(str(tmp_path)))


def test_redis_errors_name_the_server_but_never_the_password(tmp_path):
    store = open_online_store("redis://:hunter2@127.0.0.1:1/0", Storage(str(tmp_path)))
    with pytest.raises(OnlineStoreError) as raised:
        store.read(GROUP, [("h1", "2026-03-02")])
    assert "127.0.0.1:1" in str(raised.value) and "hunter2" not in str(raised.value)
