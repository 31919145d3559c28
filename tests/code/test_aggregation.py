"""Weekly vacancy: room-nights split across ISO weeks, partials that merge in any grouping, vacancy from capacity."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hotel.vacancy import PARTIAL_SCHEMA, VACANCY_SCHEMA, combine_partials, weekly_partials, with_vacancy
from hypothesis import given, settings
from hypothesis import strategies as st

BOOKING_SCHEMA = pa.schema([
    pa.field("booking_id", pa.string()),
    pa.field("hotel_id", pa.string()),
    pa.field("user_id", pa.string()),
    pa.field("booked_at", pa.timestamp("us", tz="UTC")),
    pa.field("check_in", pa.date32()),
    pa.field("nights", pa.int64()),
    pa.field("rooms", pa.int64()),
    pa.field("hotel_rooms", pa.int64()),
    pa.field("status", pa.string()),
    pa.field("price_eur", pa.float64()),
])
SUNDAY = date(2024, 1, 7)
MONDAY_BEFORE, MONDAY_AFTER = date(2024, 1, 1), date(2024, 1, 8)


def booking(check_in: date, nights: int = 1, rooms: int = 1, hotel_id: str = "h1", hotel_rooms: int = 10,
            status: str = "confirmed") -> dict:
    return dict(hotel_id=hotel_id, check_in=check_in, nights=nights, rooms=rooms, hotel_rooms=hotel_rooms,
                status=status)


def bookings_table(rows: list[dict]) -> pa.Table:
    """Rows as a fully typed bookings table; the columns the aggregation does not read get filler values."""
    filled = [
        dict(booking_id=f"b{number}", user_id="u1", booked_at=datetime(2023, 12, 1, tzinfo=timezone.utc),
             price_eur=100.0, **row)
        for number, row in enumerate(rows)
    ]
    return pa.Table.from_pylist(filled, schema=BOOKING_SCHEMA)


def rows_by_key(table: pa.Table) -> dict[tuple[str, date], dict]:
    return {(row["hotel_id"], row["week_start"]): row for row in table.to_pylist()}


def per_night_reference(bookings: pa.Table) -> pd.DataFrame:
    """Partials the slow, obvious way: one row per booked night, each placed in the week of its date."""
    frame = bookings.to_pandas()
    frame = frame[frame["status"] == "confirmed"].reset_index(drop=True)
    nights = frame.loc[frame.index.repeat(frame["nights"])]
    night = pd.to_datetime(nights["check_in"]) + pd.to_timedelta(nights.groupby(level=0).cumcount(), unit="D")
    nights = nights.assign(booking=nights.index, week_start=(night - pd.to_timedelta(night.dt.weekday, unit="D")).dt.date)
    per_booking = nights.groupby(["booking", "hotel_id", "week_start"], as_index=False).agg(
        room_nights=("rooms", "sum"), hotel_rooms=("hotel_rooms", "max"))
    weekly = per_booking.groupby(["hotel_id", "week_start"], as_index=False).agg(
        booked_room_nights=("room_nights", "sum"), bookings=("booking", "size"), hotel_rooms=("hotel_rooms", "max"))
    return weekly.astype({"booked_room_nights": "int64", "bookings": "int64", "hotel_rooms": "int64"})


def as_sorted_frame(partials: pa.Table) -> pd.DataFrame:
    frame = combine_partials(partials).to_pandas()
    return frame.sort_values(["hotel_id", "week_start"]).reset_index(drop=True)[list(PARTIAL_SCHEMA.names)]


def assert_matches_reference(bookings: pa.Table) -> None:
    expected = per_night_reference(bookings).sort_values(["hotel_id", "week_start"]).reset_index(drop=True)
    actual = as_sorted_frame(weekly_partials(bookings))
    pd.testing.assert_frame_equal(actual, expected[list(PARTIAL_SCHEMA.names)], check_dtype=False)


def random_bookings(count: int, seed: int, hotels: int, first: date, days: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    capacity = rng.integers(5, 801, hotels)
    hotel = rng.integers(0, hotels, count)
    check_in = (np.datetime64(first) + rng.integers(0, days, count).astype("timedelta64[D]")).astype(np.int64)
    return pa.table({
        "hotel_id": pa.array([f"h{h}" for h in range(hotels)]).take(pa.array(hotel)),
        "check_in": pa.array(check_in.astype(np.int32)).cast(pa.date32()),
        "nights": rng.integers(1, 15, count),
        "rooms": rng.integers(1, 10, count),
        "hotel_rooms": capacity[hotel],
        "status": np.where(rng.random(count) < 0.1, "cancelled", "confirmed"),
    })


# ---------------------------------------------------------------- weekly_partials


def test_sunday_check_in_of_three_nights_splits_one_night_and_two_across_weeks():
    rows = rows_by_key(weekly_partials(bookings_table([booking(SUNDAY, nights=3)])))
    assert rows[("h1", MONDAY_BEFORE)]["booked_room_nights"] == 1
    assert rows[("h1", MONDAY_AFTER)]["booked_room_nights"] == 2


def test_rooms_multiply_the_nights_in_each_week():
    rows = rows_by_key(weekly_partials(bookings_table([booking(SUNDAY, nights=3, rooms=4)])))
    assert rows[("h1", MONDAY_BEFORE)]["booked_room_nights"] == 4
    assert rows[("h1", MONDAY_AFTER)]["booked_room_nights"] == 8


def test_fourteen_nights_from_a_sunday_touch_three_weeks():
    rows = rows_by_key(weekly_partials(bookings_table([booking(SUNDAY, nights=14)])))
    assert [rows[("h1", MONDAY_BEFORE + timedelta(weeks=w))]["booked_room_nights"] for w in range(3)] == [1, 7, 6]


def test_a_stay_ending_on_sunday_night_stays_in_its_week():
    rows = rows_by_key(weekly_partials(bookings_table([booking(MONDAY_BEFORE, nights=7)])))
    assert list(rows) == [("h1", MONDAY_BEFORE)]
    assert rows[("h1", MONDAY_BEFORE)]["booked_room_nights"] == 7


def test_week_start_is_the_iso_monday_even_across_new_year():
    rows = rows_by_key(weekly_partials(bookings_table([booking(date(2025, 1, 1))])))
    assert list(rows) == [("h1", date(2024, 12, 30))]


def test_cancelled_bookings_count_nothing():
    bookings = bookings_table([booking(SUNDAY, nights=3), booking(SUNDAY, nights=5, rooms=3, status="cancelled")])
    rows = rows_by_key(weekly_partials(bookings))
    assert [(row["booked_room_nights"], row["bookings"]) for row in rows.values()] == [(1, 1), (2, 1)]


def test_a_hotel_with_only_cancelled_bookings_has_no_rows():
    bookings = bookings_table([booking(SUNDAY), booking(SUNDAY, hotel_id="h2", status="cancelled")])
    assert {hotel for hotel, _ in rows_by_key(weekly_partials(bookings))} == {"h1"}


def test_bookings_counts_each_booking_once_in_every_week_it_touches():
    bookings = bookings_table([booking(SUNDAY, nights=3), booking(MONDAY_AFTER, nights=2)])
    rows = rows_by_key(weekly_partials(bookings))
    assert (rows[("h1", MONDAY_BEFORE)]["bookings"], rows[("h1", MONDAY_AFTER)]["bookings"]) == (1, 2)


def test_hotel_rooms_is_the_largest_capacity_seen_in_the_week():
    bookings = bookings_table([booking(SUNDAY, hotel_rooms=10), booking(SUNDAY, hotel_rooms=12),
                               booking(MONDAY_AFTER, hotel_rooms=11)])
    rows = rows_by_key(weekly_partials(bookings))
    assert (rows[("h1", MONDAY_BEFORE)]["hotel_rooms"], rows[("h1", MONDAY_AFTER)]["hotel_rooms"]) == (12, 11)


def test_partials_have_the_partial_schema_and_ignore_extra_columns():
    partials = weekly_partials(bookings_table([booking(SUNDAY)]).append_column("note", pa.array(["x"])))
    assert partials.schema == PARTIAL_SCHEMA


def test_dictionary_encoded_chunked_hotel_ids_give_the_same_partials():
    bookings = bookings_table([booking(SUNDAY, hotel_id=h, nights=n) for h, n in [("a", 2), ("b", 3), ("a", 4)]])
    chunked = pa.concat_tables([bookings.slice(0, 1), bookings.slice(1)])
    encoded = chunked.set_column(1, "hotel_id", chunked["hotel_id"].dictionary_encode())
    assert combine_partials(weekly_partials(encoded)).equals(combine_partials(weekly_partials(bookings)))


def test_no_bookings_give_no_partials():
    assert weekly_partials(bookings_table([])) == PARTIAL_SCHEMA.empty_table()


@pytest.mark.parametrize("missing", [["status"], ["check_in", "hotel_rooms"]])
def test_missing_columns_are_named_in_the_error(missing):
    bookings = bookings_table([booking(SUNDAY)]).drop_columns(missing)
    with pytest.raises(ValueError, match="missing column") as error:
        weekly_partials(bookings)
    assert all(repr(name) in str(error.value) for name in missing)


def test_combine_names_its_missing_columns():
    with pytest.raises(ValueError, match="'bookings'"):
        combine_partials(weekly_partials(bookings_table([booking(SUNDAY)])).drop_columns(["bookings"]))


def test_blocks_longer_than_one_slice_match_the_per_night_reference():
    assert_matches_reference(random_bookings(150_000, seed=1, hotels=40, first=date(2024, 1, 1), days=730))


def test_hotels_spread_over_centuries_match_the_per_night_reference():
    # Too many hotel x week combinations for one slot each: only the ones in use get a slot.
    assert_matches_reference(random_bookings(500, seed=2, hotels=60, first=date(1900, 1, 1), days=365 * 200))


booking_rows = st.lists(
    st.builds(
        booking,
        check_in=st.dates(min_value=date(2023, 12, 1), max_value=date(2024, 2, 29)),
        nights=st.integers(1, 14),
        rooms=st.integers(1, 9),
        hotel_id=st.sampled_from(["a", "b", "c"]),
        hotel_rooms=st.integers(5, 800),
        status=st.sampled_from(["confirmed", "confirmed", "cancelled"]),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(booking_rows)
def test_partials_match_a_per_night_reference(rows):
    assert_matches_reference(bookings_table(rows))


# ---------------------------------------------------------------- combine_partials


def test_combine_sums_room_nights_and_bookings_and_keeps_the_largest_capacity():
    partials = pa.Table.from_pylist([
        dict(hotel_id="h1", week_start=MONDAY_BEFORE, booked_room_nights=3, bookings=1, hotel_rooms=10),
        dict(hotel_id="h1", week_start=MONDAY_BEFORE, booked_room_nights=4, bookings=2, hotel_rooms=12),
        dict(hotel_id="h1", week_start=MONDAY_AFTER, booked_room_nights=5, bookings=1, hotel_rooms=10),
    ], schema=PARTIAL_SCHEMA)
    assert combine_partials(partials).to_pylist() == [
        dict(hotel_id="h1", week_start=MONDAY_BEFORE, booked_room_nights=7, bookings=3, hotel_rooms=12),
        dict(hotel_id="h1", week_start=MONDAY_AFTER, booked_room_nights=5, bookings=1, hotel_rooms=10),
    ]


def test_combine_drops_a_previous_vacancy_column():
    totals = with_vacancy(combine_partials(weekly_partials(bookings_table([booking(SUNDAY)]))))
    assert combine_partials(totals).schema == PARTIAL_SCHEMA


@settings(max_examples=100, deadline=None)
@given(booking_rows, st.data())
def test_combining_partials_of_parts_equals_partials_of_the_whole(rows, data):
    bookings = bookings_table(rows)
    first_cut = data.draw(st.integers(0, len(rows)), label="first_cut")
    second_cut = data.draw(st.integers(first_cut, len(rows)), label="second_cut")
    parts = [bookings.slice(0, first_cut), bookings.slice(first_cut, second_cut - first_cut), bookings.slice(second_cut)]
    whole = combine_partials(weekly_partials(bookings))
    flat = combine_partials(pa.concat_tables([weekly_partials(part) for part in parts]))
    nested = combine_partials(pa.concat_tables([
        combine_partials(pa.concat_tables([weekly_partials(parts[0]), weekly_partials(parts[1])])),
        weekly_partials(parts[2]),
    ]))
    assert flat.equals(whole)
    assert nested.equals(whole)


# ---------------------------------------------------------------- with_vacancy


def totals(booked_room_nights: int, hotel_rooms: int) -> pa.Table:
    return pa.Table.from_pylist([dict(hotel_id="h1", week_start=MONDAY_BEFORE, booked_room_nights=booked_room_nights,
                                      bookings=1, hotel_rooms=hotel_rooms)], schema=PARTIAL_SCHEMA)


def test_vacancy_is_the_share_of_the_weeks_room_nights_left_free():
    table = with_vacancy(totals(booked_room_nights=14, hotel_rooms=10))
    assert table.schema == VACANCY_SCHEMA
    assert table["vacancy"].to_pylist() == [pytest.approx(1 - 14 / 70)]


def test_vacancy_of_an_overbooked_week_is_zero():
    assert with_vacancy(totals(booked_room_nights=80, hotel_rooms=10))["vacancy"].to_pylist() == [0.0]


def test_with_vacancy_replaces_a_stale_vacancy_column():
    stale = with_vacancy(totals(booked_room_nights=7, hotel_rooms=10))
    stale = stale.set_column(stale.schema.get_field_index("booked_room_nights"), "booked_room_nights",
                             pa.array([35], pa.int64()))
    refreshed = with_vacancy(stale)
    assert refreshed.schema == VACANCY_SCHEMA
    assert refreshed["vacancy"].to_pylist() == [pytest.approx(0.5)]


def test_with_vacancy_names_its_missing_columns():
    with pytest.raises(ValueError, match="'hotel_rooms'"):
        with_vacancy(totals(7, 10).drop_columns(["hotel_rooms"]))
