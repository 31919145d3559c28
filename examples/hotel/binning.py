"""Age bands from date of birth, as of the time of an event.

Age is counted in whole years on the event's UTC calendar date: a birthday
counts on the day itself. Someone born on 29 February has their birthday on
1 March in years without a 29 February (so on 28 February 2027 a person born
on 29 February 2000 is still 26, and turns 27 on 1 March). That is what a plain
comparison of (month, day) gives, and it is the rule of, among others, UK law.

A date of birth after the event's date is an error in the data, not an unknown
age: it raises instead of coming out as null, so no row is dropped silently.
Both functions are pure and vectorized.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

AGE_BANDS = ("under 18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+")
# Lowest age of every band after the first, in AGE_BANDS order.
_BAND_STARTS = np.array([18, 25, 35, 45, 55, 65], dtype=np.int64)
_MICROSECONDS_PER_DAY = 86_400 * 1_000_000


def age_in_years(birth_date: pa.Array | pa.ChunkedArray, as_of: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Whole years between each date of birth and its as_of instant's UTC date (int64; null if either is null)."""
    birth_date, as_of = _whole(birth_date), _whole(as_of)
    if len(birth_date) != len(as_of):
        raise ValueError(f"birth_date has {len(birth_date)} value(s) but as_of has {len(as_of)}; they must pair up")
    birth_days = _days_from_dates(birth_date)
    event_days = _utc_days_from_timestamps(as_of)
    missing = np.asarray(pc.or_(pc.is_null(birth_date), pc.is_null(as_of)), dtype=bool)

    birth_year, birth_month, birth_day = _civil_dates(birth_days)
    event_year, event_month, event_day = _civil_dates(event_days)
    before_birthday = (event_month * 100 + event_day) < (birth_month * 100 + birth_day)
    ages = event_year - birth_year - before_birthday.astype(np.int64)

    born_later = (birth_days > event_days) & ~missing
    if born_later.any():
        row = int(np.flatnonzero(born_later)[0])
        raise ValueError(
            f"date of birth after event time: {int(born_later.sum())} row(s), "
            f"e.g. row {row}: born {birth_date[row].as_py()}, event at {as_of[row].as_py().isoformat()}"
        )
    return pa.array(ages, type=pa.int64(), mask=missing)


def age_band(birth_date: pa.Array | pa.ChunkedArray, as_of: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The AGE_BANDS label of each person's age at as_of (string; null if either input is null)."""
    ages = age_in_years(birth_date, as_of)
    missing = np.asarray(pc.is_null(ages), dtype=bool)
    positions = np.searchsorted(_BAND_STARTS, ages.fill_null(0).to_numpy(), side="right")
    return pa.array(AGE_BANDS, type=pa.string()).take(pa.array(positions, type=pa.int64(), mask=missing))


def _whole(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _days_from_dates(values: pa.Array) -> np.ndarray:
    """Days since 1970-01-01 of a date32/date64 array; null positions hold 0."""
    if not pa.types.is_date(values.type):
        raise TypeError(f"birth_date must be date32, got {values.type}")
    days = pc.cast(values, pa.date32()).cast(pa.int32())
    return days.fill_null(0).to_numpy().astype(np.int64)


def _utc_days_from_timestamps(values: pa.Array) -> np.ndarray:
    """Days since 1970-01-01 of each instant's UTC date; null positions hold 0."""
    if not pa.types.is_timestamp(values.type) or values.type.tz is None:
        raise TypeError(f"as_of must be timezone-aware timestamps (timestamp[us, UTC]), got {values.type}")
    # Stored values of a zoned timestamp are UTC instants, whatever the zone's name.
    micros = pc.cast(values, pa.timestamp("us", tz=values.type.tz)).cast(pa.int64())
    return np.floor_divide(micros.fill_null(0).to_numpy(), _MICROSECONDS_PER_DAY)


def _civil_dates(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(year, month 1-12, day 1-31) of days since 1970-01-01, proleptic Gregorian."""
    dates = days.astype("datetime64[D]")
    years = dates.astype("datetime64[Y]")
    months = dates.astype("datetime64[M]")
    year = years.astype(np.int64) + 1970
    month = (months - years.astype("datetime64[M]")).astype(np.int64) + 1
    day = (dates - months.astype("datetime64[D]")).astype(np.int64) + 1
    return year, month, day
