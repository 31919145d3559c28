"""Weekly vacancy per hotel: the share of each ISO week's room capacity that confirmed bookings leave free.

The aggregation is split so that it distributes:
- `weekly_partials` reduces one block of bookings to room-night sums per
  (hotel, week), so blocks shrink before anything moves;
- `combine_partials` merges any number of partial tables; it is associative,
  so partials of partials, and a table's previous totals plus new data, merge
  the same way;
- `with_vacancy` turns totals into the vacancy ratio.
`weekly_vacancy` runs the three on a Ray Data dataset.

A booking occupies `rooms` rooms on each of its `nights` nights, the first being
the night of `check_in`; each night counts towards the week (Monday to Sunday)
it falls in, so a booking spanning a weekend splits across two weeks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import ray.data

CONFIRMED = "confirmed"
BOOKING_COLUMNS = ("hotel_id", "check_in", "nights", "rooms", "hotel_rooms", "status")
KEY_COLUMNS = ["hotel_id", "week_start"]

PARTIAL_SCHEMA = pa.schema([
    pa.field("hotel_id", pa.string()),
    pa.field("week_start", pa.date32()),
    pa.field("booked_room_nights", pa.int64()),
    pa.field("bookings", pa.int64()),
    pa.field("hotel_rooms", pa.int64()),
])
VACANCY_SCHEMA = PARTIAL_SCHEMA.append(pa.field("vacancy", pa.float64()))

_DAYS_PER_WEEK = 7
# date32 counts days from 1970-01-01, a Thursday; with Monday = 0 its weekday is 3.
_EPOCH_WEEKDAY = 3
# Rows per slice of the week arithmetic: whole 500k-row blocks spent half their time faulting in fresh pages.
_SLICE_ROWS = 1 << 16


def _require_columns(table: pa.Table, required, what: str) -> None:
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise ValueError(
            f"{what} table is missing column(s) {', '.join(repr(m) for m in missing)}; "
            f"expected {', '.join(required)}, got {', '.join(table.column_names) or 'no columns'}"
        )


def _plain_strings(column: pa.ChunkedArray) -> pa.Array:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.combine_chunks().cast(pa.string())


def weekly_partials(bookings: pa.Table) -> pa.Table:
    """Room-nights, bookings and capacity per (hotel, week) of one block of bookings; columns of `PARTIAL_SCHEMA`.

    Rather than filtering and exploding bookings into one row per week, each
    booking adds its room-nights in the 1st, 2nd, 3rd... week of its stay to
    (hotel, week) bins; cancelled bookings add nothing and empty bins are dropped.
    """
    _require_columns(bookings, BOOKING_COLUMNS, "bookings")
    if bookings.num_rows == 0:
        return PARTIAL_SCHEMA.empty_table()
    hotels = pc.dictionary_encode(_plain_strings(bookings["hotel_id"]))
    hotel = hotels.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    day = bookings["check_in"].cast(pa.date32()).cast(pa.int32()).to_numpy()
    confirmed = pc.fill_null(pc.equal(bookings["status"], CONFIRMED), False).to_numpy()
    nights = np.where(confirmed, bookings["nights"].to_numpy(), 0)
    rooms = bookings["rooms"].to_numpy()
    capacity = bookings["hotel_rooms"].to_numpy()

    first_week = (int(day.min()) + _EPOCH_WEEKDAY) // _DAYS_PER_WEEK
    last_week = (int(day.max()) + _EPOCH_WEEKDAY) // _DAYS_PER_WEEK
    # A stay starting on a Sunday reaches furthest: its last night falls in week (nights - 1 + 6) // 7 of the stay.
    weeks_per_stay = (max(int(nights.max()), 1) + 5) // _DAYS_PER_WEEK + 1
    # Bin = hotel * weeks_per_hotel + week; the spare weeks at the end hold stays that run past last_week.
    weeks_per_hotel = last_week - first_week + weeks_per_stay
    bins = _WeekBins(len(hotels.dictionary) * weeks_per_hotel)

    def stays(rows: slice):
        """(bin, nights in that bin) for each week of the stays of bookings[rows]."""
        week, first_night = np.divmod(day[rows] + _EPOCH_WEEKDAY, _DAYS_PER_WEEK)
        end = first_night + nights[rows]
        check_in_bin = hotel[rows] * weeks_per_hotel + (week - first_week)
        for offset in range(weeks_per_stay):
            week_begin = offset * _DAYS_PER_WEEK
            nights_in_week = np.minimum(end, week_begin + _DAYS_PER_WEEK) - np.maximum(first_night, week_begin)
            yield check_in_bin + offset, nights_in_week

    # Many hotels over many years (more slots than twice the possible (booking, week) pairs): slot only used bins.
    if bins.count > 2 * weeks_per_stay * bookings.num_rows + 2**16:
        bins.keep_only(np.concatenate([b[n > 0] for b, n in stays(slice(None))]))
    for start in range(0, bookings.num_rows, _SLICE_ROWS):
        rows = slice(start, start + _SLICE_ROWS)
        for bin_of_booking, nights_in_week in stays(rows):
            bins.add(bin_of_booking, nights_in_week, rooms[rows], capacity[rows])

    used, keys = bins.used()
    hotel_of_bin, week_of_bin = np.divmod(keys, weeks_per_hotel)
    week_start = (first_week + week_of_bin) * _DAYS_PER_WEEK - _EPOCH_WEEKDAY
    return pa.table({
        "hotel_id": hotels.dictionary.take(pa.array(hotel_of_bin)),
        "week_start": pa.array(week_start.astype(np.int32)).cast(pa.date32()),
        "booked_room_nights": bins.room_nights[used].astype(np.int64),
        "bookings": bins.bookings[used],
        "hotel_rooms": bins.max_capacity[used],
    }, schema=PARTIAL_SCHEMA)


class _WeekBins:
    """Running sums per (hotel, week) bin: one slot per possible bin, or, when those are
    too many for the rows at hand, one per bin actually used (`keep_only`)."""

    def __init__(self, count: int):
        self.count = count
        self.keys: np.ndarray | None = None
        self._allocate()

    def _allocate(self) -> None:
        # Room-nights are summed as float64: exact below 2**53, and what np.bincount sums fastest.
        self.room_nights = np.zeros(self.count)
        self.bookings = np.zeros(self.count, np.int64)
        self.max_capacity = np.full(self.count, np.iinfo(np.int64).min)

    def keep_only(self, keys: np.ndarray) -> None:
        self.keys = np.unique(keys)
        self.count = len(self.keys)
        self._allocate()

    def add(self, bins: np.ndarray, nights: np.ndarray, rooms: np.ndarray, capacity: np.ndarray) -> None:
        staying = nights > 0
        bins, nights, rooms, capacity = bins[staying], nights[staying], rooms[staying], capacity[staying]
        if self.keys is not None:
            bins = np.searchsorted(self.keys, bins)
        self.room_nights += np.bincount(bins, weights=rooms * nights, minlength=self.count)
        self.bookings += np.bincount(bins, minlength=self.count)
        np.maximum.at(self.max_capacity, bins, capacity)

    def used(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the bins holding at least one booking, and their keys."""
        used = np.flatnonzero(self.bookings)
        return used, (used if self.keys is None else self.keys[used])


def week_start(days: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The Monday of each date's week (nulls stay null)."""
    numbers = pc.cast(days, pa.int32()).to_numpy(zero_copy_only=False).astype("float64")
    mondays = numbers - np.mod(numbers + _EPOCH_WEEKDAY, _DAYS_PER_WEEK)
    return pa.array(mondays, mask=np.isnan(mondays)).cast(pa.int32()).cast(pa.date32())


def combine_partials(partials: pa.Table) -> pa.Table:
    """One row per (hotel, week) of any mix of partial or total rows, sorted by key; extra columns are dropped."""
    _require_columns(partials, PARTIAL_SCHEMA.names, "partials")
    combined = partials.select(PARTIAL_SCHEMA.names).group_by(KEY_COLUMNS).aggregate([
        ("booked_room_nights", "sum"), ("bookings", "sum"), ("hotel_rooms", "max"),
    ])
    combined = pa.table({
        "hotel_id": combined["hotel_id"],
        "week_start": combined["week_start"],
        "booked_room_nights": combined["booked_room_nights_sum"],
        "bookings": combined["bookings_sum"],
        "hotel_rooms": combined["hotel_rooms_max"],
    }).cast(PARTIAL_SCHEMA)
    return combined.sort_by([(name, "ascending") for name in KEY_COLUMNS])


def with_vacancy(totals: pa.Table) -> pa.Table:
    """`totals` with a `vacancy` column: 1 - booked room-nights / (capacity * 7), never below 0."""
    _require_columns(totals, ("booked_room_nights", "hotel_rooms"), "totals")
    room_nights_available = pc.multiply(totals["hotel_rooms"].cast(pa.float64()), float(_DAYS_PER_WEEK))
    occupancy = pc.divide(totals["booked_room_nights"].cast(pa.float64()), room_nights_available)
    vacancy = pc.max_element_wise(pc.subtract(1.0, occupancy), 0.0)
    if "vacancy" in totals.column_names:
        return totals.set_column(totals.column_names.index("vacancy"), "vacancy", vacancy)
    return totals.append_column("vacancy", vacancy)


def _totals_with_vacancy(partials: pa.Table) -> pa.Table:
    return with_vacancy(combine_partials(partials))


def weekly_vacancy(dataset: "ray.data.Dataset") -> "ray.data.Dataset":
    """Weekly vacancy of a dataset of bookings: one row per (hotel, week), columns of `VACANCY_SCHEMA`.

    Each block is reduced to its partials where it lies; only those (a few rows
    per hotel and week) are brought together, in one task, for the final merge;
    nothing passes through the driver. Blocks should be large (read one block
    per file: `override_num_blocks=len(files)`): a block reduces only to its own
    hotels x weeks, so many small blocks leave almost as many partial rows as bookings.
    """
    partials = dataset.map_batches(weekly_partials, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
    return partials.repartition(1).map_batches(_totals_with_vacancy, batch_format="pyarrow", batch_size=None)
