"""Age in whole years at an event's UTC date, and its band."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from hotel.binning import AGE_BANDS, age_band, age_in_years

UTC = dt.timezone.utc


def _births(*dates) -> pa.Array:
    return pa.array([None if d is None else dt.date(*d) for d in dates], pa.date32())


def _events(*instants, tz=UTC) -> pa.Array:
    return pa.array([None if i is None else dt.datetime(*i, tzinfo=tz) for i in instants], pa.timestamp("us", "UTC"))


def test_birthday_counts_on_the_day_itself():
    ages = age_in_years(_births((1990, 6, 15), (1990, 6, 15)), _events((2026, 6, 14, 23, 59), (2026, 6, 15, 0, 0)))
    assert ages.to_pylist() == [35, 36]


def test_leap_day_birthday_counts_on_first_of_march_in_common_years():
    births = _births((2000, 2, 29), (2000, 2, 29), (2000, 2, 29))
    ages = age_in_years(births, _events((2027, 2, 28, 23, 59), (2027, 3, 1), (2028, 2, 29)))
    assert ages.to_pylist() == [26, 27, 28]


def test_age_is_taken_at_the_utc_date_of_an_instant_given_in_another_zone():
    plus_two = dt.timezone(dt.timedelta(hours=2))
    # 01:00 at +02:00 on 15 June is still 14 June in UTC: the birthday has not come yet.
    as_of = pa.array([dt.datetime(2026, 6, 15, 1, 0, tzinfo=plus_two)], pa.timestamp("us", "Europe/Berlin"))
    assert age_in_years(_births((1990, 6, 15)), as_of).to_pylist() == [35]


def test_instants_before_1970_fall_on_their_own_utc_date():
    assert age_in_years(_births((1950, 3, 2)), _events((1969, 3, 1, 23, 0))).to_pylist() == [18]
    assert age_in_years(_births((1950, 3, 2)), _events((1969, 3, 2, 0, 0))).to_pylist() == [19]


def test_each_band_starts_at_its_lower_age():
    ages = [17, 18, 24, 25, 34, 35, 44, 45, 54, 55, 64, 65, 101]
    births = _births(*[(2026 - age, 1, 1) for age in ages])
    bands = age_band(births, _events(*[(2026, 1, 1)] * len(ages)))
    assert bands.to_pylist() == ["under 18", "18-24", "18-24", "25-34", "25-34", "35-44", "35-44",
                                 "45-54", "45-54", "55-64", "55-64", "65+", "65+"]
    assert set(bands.to_pylist()) == set(AGE_BANDS)


def test_a_null_in_either_input_gives_a_null_band():
    bands = age_band(_births(None, (1990, 1, 1), (1990, 1, 1)), _events((2026, 1, 1), None, (2026, 1, 1)))
    assert bands.to_pylist() == [None, None, "35-44"]
    assert bands.type == pa.string()


def test_born_on_the_event_date_is_age_zero():
    assert age_in_years(_births((2026, 3, 1)), _events((2026, 3, 1, 8, 0))).to_pylist() == [0]


def test_birth_after_the_event_raises_with_count_and_example():
    births = _births((1990, 1, 1), (2030, 5, 5), (2026, 1, 2))
    with pytest.raises(ValueError, match=r"date of birth after event time: 2 row\(s\), e.g. row 1: born 2030-05-05"):
        age_in_years(births, _events((2026, 1, 1), (2026, 1, 1), (2026, 1, 1)))


def test_naive_timestamps_are_refused():
    with pytest.raises(TypeError, match="timezone-aware"):
        age_in_years(_births((1990, 1, 1)), pa.array([dt.datetime(2026, 1, 1)], pa.timestamp("us")))


def test_inputs_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="birth_date has 2 value.*as_of has 1"):
        age_in_years(_births((1990, 1, 1), (1991, 1, 1)), _events((2026, 1, 1)))


def test_chunked_inputs_give_the_same_ages_as_plain_arrays():
    births = _births((1990, 6, 15), (2000, 2, 29), (1960, 12, 31))
    events = _events((2026, 6, 15), (2026, 2, 28), (2026, 12, 30))
    chunked = age_in_years(pa.chunked_array([births.slice(0, 1), births.slice(1)]),
                           pa.chunked_array([events.slice(0, 2), events.slice(2)]))
    assert chunked.to_pylist() == age_in_years(births, events).to_pylist() == [36, 25, 65]


def test_ages_match_a_row_by_row_reference_on_random_dates():
    rng = np.random.default_rng(3)
    birth_days = rng.integers(-20_000, 20_000, size=2_000)
    event_days = birth_days + rng.integers(0, 40_000, size=2_000)
    births = pa.array(birth_days.astype(np.int32), pa.date32())
    events = pa.array(event_days * 86_400_000_000 + rng.integers(0, 86_400_000_000, size=2_000),
                      pa.timestamp("us", "UTC"))

    def reference(born: dt.date, at: dt.datetime) -> int:
        day = at.astimezone(UTC).date()
        return day.year - born.year - ((day.month, day.day) < (born.month, born.day))

    expected = [reference(b, e) for b, e in zip(births.to_pylist(), events.to_pylist())]
    assert age_in_years(births, events).to_pylist() == expected
