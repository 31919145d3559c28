"""Domain definitions: hotel and surf groups, their computed and on-demand features, their generators."""

from __future__ import annotations

from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa
import pytest
from hotel.generate import write_hotel
from hotel.groups import HOTEL_USERS, days_until_check_in
from surf.generate import surf_height, write_surf

from features.catalog import all_groups, generators, get_group
from features.definitions import EVENT_TIME_TYPE, Aggregation, DefinitionError, Feature, FeatureGroup, FileSource
from features.ingest import REASON_COLUMN
from orchard.storage import Storage


def _utc(*parts) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def test_every_domain_has_groups_and_a_generator():
    names = {g.name for g in all_groups()}
    assert {"fruit_measurements", "buoy_readings", "beaches", "surf_observations", "hotel_bookings", "hotel_users",
            "hotel_web_sessions", "electricity_prices", "hotel_weekly_vacancy", "user_session_embedding"} <= names
    assert set(generators()) == {"fruit", "surf", "hotel", "apple_images"}


def test_the_hotel_has_a_sensitive_feature():
    assert get_group("hotel_users").sensitive_features == ("accessibility_needs",)


def test_age_band_is_computed_at_the_rows_event_time():
    users = pa.table({"birth_date": pa.array([date(2000, 3, 1), date(2000, 3, 2)], pa.date32()),
                      "updated_at": pa.array([_utc(2025, 3, 1, 12), _utc(2025, 3, 1, 12)], EVENT_TIME_TYPE)})
    computed = HOTEL_USERS.compute(users)
    assert computed.column("age_band").to_pylist() == ["25-34", "18-24"]  # 25 that day; 24 for one more day
    assert computed.column(REASON_COLUMN).to_pylist() == [None, None]


def test_a_birth_date_after_the_event_time_rejects_the_row_not_the_run():
    users = pa.table({"birth_date": pa.array([date(2030, 1, 1), None], pa.date32()),
                      "updated_at": pa.array([_utc(2026, 1, 1), _utc(2026, 1, 1)], EVENT_TIME_TYPE)})
    computed = HOTEL_USERS.compute(users)
    assert computed.column("age_band").to_pylist() == [None, None]
    assert "after the row's event time" in computed.column(REASON_COLUMN)[0].as_py()
    assert computed.column(REASON_COLUMN)[1].as_py() is None  # a missing date is reported by the non-null check


def test_days_until_check_in_counts_calendar_days_in_utc():
    at = pa.array([_utc(2026, 1, 8, 23, 59), _utc(2026, 1, 9, 0, 1), _utc(2026, 1, 12)], EVENT_TIME_TYPE)
    check_in = pa.array([date(2026, 1, 10)] * 3, pa.date32())
    assert days_until_check_in(check_in, at).to_pylist() == [2, 1, -2]


def test_surf_is_highest_when_the_swell_faces_the_beach():
    heights = surf_height(np.array([2.0, 2.0, 2.0]), np.array([10.0, 10.0, 10.0]), np.array([270.0, 315.0, 90.0]),
                          np.array([270.0, 270.0, 270.0]), np.array(["point"] * 3))
    assert heights[0] == pytest.approx(2.0) and heights[0] > heights[1] > heights[2] == pytest.approx(0.6)


def test_a_group_needs_sources_or_an_aggregation_but_not_both():
    features = (Feature("k", pa.string(), "key"), Feature("t", EVENT_TIME_TYPE, "time"))
    with pytest.raises(DefinitionError, match="either sources or an aggregation"):
        FeatureGroup(name="g", version=1, description="d", primary_key=("k",), event_time="t", features=features)
    upstream = FeatureGroup(name="u", version=1, description="d", primary_key=("k",), event_time="t",
                            features=features, sources=(FileSource("s", "csv", "x", "*.csv"),))
    with pytest.raises(DefinitionError, match="either sources or an aggregation"):
        FeatureGroup(name="g", version=1, description="d", primary_key=("k",), event_time="t", features=features,
                     sources=upstream.sources, aggregation=Aggregation(upstream, len, len, len))


def test_computed_features_need_a_compute_function():
    features = (Feature("k", pa.string(), "key"), Feature("t", EVENT_TIME_TYPE, "time"),
                Feature("c", pa.string(), "derived", computed=True))
    with pytest.raises(DefinitionError, match="no compute function"):
        FeatureGroup(name="g", version=1, description="d", primary_key=("k",), event_time="t", features=features,
                     sources=(FileSource("s", "csv", "x", "*.csv"),))


def test_each_hotel_run_writes_a_later_day_in_four_formats(tmp_path):
    storage = Storage(str(tmp_path))
    first, second = write_hotel(storage, rows=50, seed=1), write_hotel(storage, rows=50, seed=1)
    assert [f.rsplit(".", 1)[1] for f in first.files] == ["csv", "jsonl", "parquet"]
    assert all("day-0001" in f for f in first.files) and all("day-0002" in f for f in second.files)
    assert (tmp_path / "landing" / "hotel.sqlite").is_file()


def test_generated_bad_records_are_counted_per_feed(tmp_path):
    storage = Storage(str(tmp_path))
    surf = write_surf(storage, rows=100, seed=1, bad_fraction=0.1)
    assert surf.bad_records == 1 + round(72 * 0.1) + 10  # a beach row, buoy lines, observations
    hotel = write_hotel(storage, rows=100, seed=1, bad_fraction=0.1)
    assert hotel.bad_records > 10 + 2 and len(hotel.corrupt_files) == 1
