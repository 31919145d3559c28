"""The surf and hotel domains end to end: generated raw data -> every feature group, day after day."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hotel.embedding import PAGES, count_column
from hotel.generate import _HABITS, write_hotel
from hotel.groups import FEATURE_GROUPS as HOTEL_GROUPS
from surf.generate import write_surf
from surf.groups import FEATURE_GROUPS as SURF_GROUPS

from features.catalog import get_group
from features.pipeline import run_feature_pipeline
from features.store import OfflineStore
from orchard.storage import Storage

pytestmark = pytest.mark.ray


def _run_all(storage: Storage, groups) -> dict:
    """Sources first, then the groups computed from them (the domain modules list them in that order)."""
    return {group.name: run_feature_pipeline(storage, group) for group in groups}


def test_surf_generator_feeds_every_surf_group_and_bad_records_end_in_quarantine(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    generated = write_surf(storage, rows=200, seed=5, bad_fraction=0.05)
    reports = _run_all(storage, SURF_GROUPS)
    assert all(r.rows_written > 0 for r in reports.values())
    assert sum(r.rows_quarantined for r in reports.values()) == generated.bad_records
    assert sum(r.files_quarantined for r in reports.values()) == len(generated.corrupt_files) == 1
    for report in reports.values():
        assert report.rows_read == report.rows_written + report.rows_quarantined + report.rows_duplicate


def _booked_weeks(bookings):
    """(hotel, Monday of the night, booking row) for every night of every confirmed booking."""
    for row in bookings.to_pylist():
        if row["status"] != "confirmed":
            continue
        for night in range(row["nights"]):
            day = row["check_in"] + timedelta(days=night)
            yield (row["hotel_id"], day - timedelta(days=day.weekday())), row


def _weekly_reference(bookings) -> dict:
    """Brute force, night by night: (hotel, Monday) -> (room-nights, bookings, capacity)."""
    nights_booked, bookings_seen, capacity = defaultdict(int), defaultdict(set), {}
    for key, row in _booked_weeks(bookings):
        nights_booked[key] += row["rooms"]
        bookings_seen[key].add(row["booking_id"])
        capacity[key] = max(capacity.get(key, 0), row["hotel_rooms"])
    return {key: (nights_booked[key], len(bookings_seen[key]), capacity[key]) for key in nights_booked}


def _newest_counted_booking(bookings) -> dict:
    """(hotel, Monday) -> the latest booked_at among the confirmed bookings with a night in that week."""
    newest = {}
    for key, row in _booked_weeks(bookings):
        newest[key] = max(newest.get(key, row["booked_at"]), row["booked_at"])
    return newest


def _latest(table, key_columns, event_time="as_of") -> dict:
    """Each key's newest row (of rows at one time, the last ingested: an aggregation's rewrite after late data)."""
    latest = {}
    for row in table.to_pylist():
        key = tuple(row[c] for c in key_columns)
        order = (row[event_time], row.get("_ingested", 0))
        if key not in latest or order > (latest[key][event_time], latest[key].get("_ingested", 0)):
            latest[key] = row
    return latest


def test_hotel_groups_build_incrementally_day_after_day(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    store = OfflineStore(storage)
    vacancy_group, embedding_group = get_group("hotel_weekly_vacancy"), get_group("user_session_embedding")

    first_day = write_hotel(storage, rows=300, seed=6, bad_fraction=0.05)
    first = _run_all(storage, HOTEL_GROUPS)
    ingested = [r for r in first.values() if r.kind == "ingest"]
    assert sum(r.rows_quarantined for r in ingested) == first_day.bad_records
    assert sum(r.files_quarantined for r in ingested) == len(first_day.corrupt_files) == 1
    reducer_json = storage.read_bytes(store.reducer_location(embedding_group))
    first_vacancy = store.read_table(vacancy_group)

    write_hotel(storage, rows=300, seed=6)
    second = _run_all(storage, HOTEL_GROUPS)
    assert second["hotel_bookings"].rows_read == 300  # only the new day's bookings
    assert second["hotel_weekly_vacancy"].rows_read == 300  # ... and only they reach the aggregation
    assert storage.read_bytes(store.reducer_location(embedding_group)) == reducer_json  # fitted once per version

    # Weekly vacancy: the newest row per (hotel, week) equals a night-by-night count over all bookings.
    bookings = store.read_table(get_group("hotel_bookings"))
    reference = _weekly_reference(bookings)
    latest = _latest(store.read_table(vacancy_group), ("hotel_id", "week_start"))
    assert set(latest) == set(reference)
    for key, row in latest.items():
        booked, count, rooms = reference[key]
        assert (row["booked_room_nights"], row["bookings"], row["hotel_rooms"]) == (booked, count, rooms), key
        assert row["vacancy"] == pytest.approx(max(0.0, 1 - booked / (rooms * 7)))
    # A total never claims an event newer than its as_of, and rows of the first day stay as they were.
    newest_counted = _newest_counted_booking(bookings)
    assert all(row["as_of"] > newest_counted[key] for key, row in latest.items())  # strictly: no label sees its own
    assert store.read_table(vacancy_group, version=first["hotel_weekly_vacancy"].table_version).equals(first_vacancy)
    assert run_feature_pipeline(storage, vacancy_group).rows_written == 0

    # Session embedding: click counts add up over days; users of one browsing habit sit together.
    clicks = store.read_table(get_group("hotel_web_sessions"))
    embedding = _latest(store.read_table(embedding_group), ("user_id",))
    per_user = defaultdict(lambda: defaultdict(int))
    for row in clicks.to_pylist():
        per_user[row["user_id"]][row["page"]] += 1
    assert set(embedding) == {(user,) for user in per_user}
    for (user,), row in embedding.items():
        assert [row[count_column(p)] for p in PAGES] == [per_user[user][p] for p in PAGES]
    busy = [row for row in embedding.values() if sum(row[count_column(p)] for p in PAGES) >= 20]
    vectors = np.array([[row[f"session_emb_{i}"] for i in range(4)] for row in busy])
    habits = np.array([int(row["user_id"][2:]) % len(_HABITS) for row in busy])
    distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
    same = habits[:, None] == habits[None]
    off_diagonal = ~np.eye(len(busy), dtype=bool)
    assert distances[same & off_diagonal].mean() < 0.5 * distances[~same].mean()


def test_a_partitioned_table_has_one_folder_per_event_date_and_still_catches_duplicates(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    bookings_group = get_group("hotel_bookings")
    generated = write_hotel(storage, rows=200, seed=8)
    first = run_feature_pipeline(storage, bookings_group)
    table_folder = tmp_path / OfflineStore(storage).table_location(bookings_group)
    assert sorted(p.name for p in table_folder.glob("event_date=*")) == ["event_date=2026-01-01"]

    # The booking system sends the same export again under another name: every row is a duplicate.
    original = next(f for f in generated.files if f.endswith("bookings.csv"))
    storage.write_bytes(original.replace("bookings.csv", "bookings_resent.csv"), storage.read_bytes(original))
    resent = run_feature_pipeline(storage, bookings_group)
    assert (resent.rows_read, resent.rows_written, resent.rows_duplicate) == (200, 0, 200)
    table = OfflineStore(storage).read_table(bookings_group)
    assert table.num_rows == first.rows_written == 200
    assert set(table.column("event_date").to_pylist()) == {date(2026, 1, 1)}

    # The duplicate check reads only the partitions of the dates a run brings.
    import ray

    from features.pipeline import _existing_keys

    next_day = table.slice(0, 1).set_column(
        table.schema.get_field_index("booked_at"), "booked_at",
        pa.array([datetime(2026, 1, 2, 9, tzinfo=timezone.utc)], table.schema.field("booked_at").type))
    same_day = table.slice(0, 1)
    assert _existing_keys(OfflineStore(storage), bookings_group, [ray.put(next_day)]).count() == 0
    assert _existing_keys(OfflineStore(storage), bookings_group, [ray.put(same_day)]).count() == 200


def test_the_cli_generates_and_runs_a_domain_with_no_other_flag(ray_cluster, tmp_path):
    import json

    from typer.testing import CliRunner

    from pipelines.cli import app

    def orchard(*args: str) -> dict:
        result = CliRunner().invoke(app, ["--storage", str(tmp_path), *args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert orchard("generate", "surf", "--rows", "100")["bad_records"] == 0
    for group in ("buoy_readings", "beaches", "surf_observations"):
        assert orchard("features", "run", group)["rows_written"] > 0
    shown = orchard("features", "show", "beaches")
    assert shown["rows"] == 6 and shown["last_run"]["sql_sources_read"] == 1
    # The runs materialized the online groups; a materialization now finds nothing new.
    reports = {r["group"]: r for r in orchard("features", "materialize")}
    assert set(reports) == {"buoy_readings:1", "beaches:1"}
    assert all(r["files_read"] == 0 and r["from_version"] == r["table_version"] for r in reports.values())
    vector = orchard("features", "get", "surf_height", "beach_id=ocean-beach")
    assert vector["features"]["buoy_id"] == "buoy-46026" and vector["groups"]["beaches:1"]["status"] == "ok"
    assert vector["groups"]["buoy_readings:1"]["status"] == "expired"  # the generated day is long past: TTL 3 h
    result = CliRunner().invoke(app, ["--storage", str(tmp_path), "features", "get", "surf_height", "beach=x"])
    assert result.exit_code == 2 and "lacks beach_id" in result.output


def test_late_bookings_move_a_total_forward_in_time_never_back(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    store = OfflineStore(storage)
    bookings_group, vacancy_group = get_group("hotel_bookings"), get_group("hotel_weekly_vacancy")
    write_hotel(storage, rows=100, seed=9)
    run_feature_pipeline(storage, bookings_group)
    run_feature_pipeline(storage, vacancy_group)
    before = _latest(store.read_table(vacancy_group), ("hotel_id", "week_start"))

    # A booking made early on day one arrives late, in a file of its own, for a week already totalled.
    key, row = next(iter(before.items()))
    late = (f"booking_id,hotel_id,user_id,booked_at,check_in,nights,rooms,hotel_rooms,status,price_eur\n"
            f"late-1,{key[0]},u-000001,2026-01-01T00:00:01.000000Z,{key[1] + timedelta(days=1)},1,2,"
            f"{row['hotel_rooms']},confirmed,100.0\n")
    storage.write_bytes("landing/hotel/bookings/day-0001/late.csv", late.encode())
    assert run_feature_pipeline(storage, bookings_group).rows_written == 1
    rewritten = run_feature_pipeline(storage, vacancy_group).rows_written
    stored = [r for r in store.read_table(vacancy_group).to_pylist() if (r["hotel_id"], r["week_start"]) == key]
    assert rewritten >= 1 and sum(r["_ingested"] == max(x["_ingested"] for x in stored) for r in stored) == rewritten

    # Every total of the key, as of its time, now counts the late booking: a brute-force count of the bookings
    # made before each row's time equals the row that wins there (the rewrite, ingested last).
    bookings = store.read_table(bookings_group)
    rows = [r for r in store.read_table(vacancy_group).to_pylist() if (r["hotel_id"], r["week_start"]) == key]
    winners = {}
    for row in rows:
        if row["as_of"] not in winners or row["_ingested"] > winners[row["as_of"]]["_ingested"]:
            winners[row["as_of"]] = row
    assert len(rows) > len(winners)  # rows at times already written were rewritten, not moved
    for as_of, row in winners.items():
        known = bookings.filter(pc.less(bookings.column("booked_at"), pa.scalar(as_of, bookings.schema.field(
            "booked_at").type)))
        assert row["booked_room_nights"] == _weekly_reference(known).get(key, (0, 0, 0))[0], as_of
    newest = winners[max(winners)]
    assert newest["booked_room_nights"] == before[key]["booked_room_nights"] + 2
