"""Synthetic hotel platform: bookings (CSV), users (SQL), web clicks (JSON Lines), spot prices (Parquet).

Each call writes one more day. Users fall into three browsing habits (planners
read reviews and maps, deal hunters search and check out, dreamers look at
photos), so the session embedding has structure to find.
"""

from __future__ import annotations

import io
import json
from datetime import date, datetime, timedelta
from typing import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features import (
    DataGenerator,
    GeneratedSlice,
    begin_day,
    count_rows,
    damage_lines,
    insert_rows,
    resolve_database,
    update_rows,
    writing_table,
)
from hotel import groups as hotel
from hotel.embedding import PAGES
from orchard.storage import Storage

HOTELS = 40
USERS_TABLE = {"row_id": "id", "user_ref": "text", "birth_date": "date", "country": "text",
               "accessibility_needs": "bool", "updated_at": "timestamp"}
_HABITS = (  # click shares over PAGES: search, hotel_page, photos, reviews, map, checkout, account, help
    (0.25, 0.15, 0.05, 0.25, 0.20, 0.05, 0.03, 0.02),
    (0.40, 0.25, 0.05, 0.05, 0.02, 0.18, 0.03, 0.02),
    (0.10, 0.30, 0.45, 0.05, 0.03, 0.02, 0.02, 0.03),
)
DEAL_HUNTERS = 1
"""Index of the browsing habit (search and checkout heavy) whose users cancel most."""
FAR_AWAY = ("US", "CA", "JP", "CN", "BR", "IN", "AU")
_COUNTRY_SHARES = np.array([3, 3, 4, 2, 20, 2, 1, 2, 12, 10, 2, 1, 8, 6, 1, 3, 2, 3, 8, 2, 1, 1, 1, 1, 1], float)

_BOOKING_DAMAGE = (
    lambda f: f[:5] + ["three"] + f[6:],        # nights not an integer
    lambda f: f[:6] + ["0"] + f[7:],            # no room booked
    lambda f: [""] + f[1:],                     # missing booking id
    lambda f: f[:4],                            # truncated record
    lambda f: f[:8] + ["pending"] + f[9:],      # status not allowed
    lambda f: f[:4] + ["2026-02-30"] + f[5:],   # a date that does not exist
)
_CLICK_DAMAGE = (
    lambda line: line[: len(line) // 2],                          # cut mid-record
    lambda line: line.replace('"page":"', '"page":"lobby_', 1),   # page kind not allowed
    lambda line: line.replace('"dwell_seconds":', '"dwell_seconds":-', 1),  # negative dwell time
)


def _hotel_capacity() -> np.ndarray:
    return np.random.default_rng(1234).integers(20, 300, HOTELS)


def _user_rows(rng: np.random.Generator, first: int, count: int, day_start: datetime) -> list[dict]:
    born = rng.integers((date(1940, 1, 1) - date(1970, 1, 1)).days, (date(2007, 12, 31) - date(1970, 1, 1)).days, count)
    countries = rng.choice(hotel.COUNTRIES, size=count, p=_COUNTRY_SHARES / _COUNTRY_SHARES.sum())
    seconds = np.sort(rng.uniform(0, 86_400, count))
    return [{"user_ref": f"u-{first + i:06d}", "birth_date": date(1970, 1, 1) + timedelta(days=int(born[i])),
             "country": str(countries[i]), "accessibility_needs": bool(rng.random() < 0.05),
             "updated_at": day_start + timedelta(seconds=float(seconds[i]))} for i in range(count)]


def _profiles(connection) -> dict[str, tuple[str, date]]:
    """Each user's current home country and date of birth, as the accounts table holds them now."""
    cursor = connection.cursor()
    cursor.execute("SELECT user_ref, country, birth_date FROM users")
    return {ref: (country, date.fromisoformat(str(born)[:10])) for ref, country, born in cursor.fetchall()
            if ref is not None and born is not None}


def _cancel_probability(users: np.ndarray, profiles: dict[str, tuple[str, date]], today: datetime) -> np.ndarray:
    """Who cancels: deal hunters (a browsing habit the session embedding captures) most, then guests from far away
    and the young (the age band); the rest rarely. About a third of bookings end up cancelled."""
    habit = np.array([int(user[2:]) % len(_HABITS) for user in users])
    country = [profiles.get(user, ("", today.date()))[0] for user in users]
    born = [profiles.get(user, ("", date(1970, 1, 1)))[1] for user in users]
    far = np.array([c in FAR_AWAY for c in country])
    young = np.array([(today.date() - b).days < 25 * 365.25 for b in born])
    logit = -2.3 + 3.0 * (habit == DEAL_HUNTERS) + 1.3 * far + 1.0 * young
    return 1.0 / (1.0 + np.exp(-logit))


def _damage_users(rows: list[dict], fraction: float, rng: np.random.Generator) -> int:
    count = int(round(len(rows) * fraction))
    for position, index in enumerate(rng.choice(len(rows), size=count, replace=False) if count else []):
        row = rows[index]
        kind = position % 3
        if kind == 0:
            row["country"] = "ZZ"                                              # not a country
        elif kind == 1:
            row["birth_date"] = row["updated_at"].date() + timedelta(days=400)  # born after the row was written
        else:
            row["user_ref"] = None                                             # no user id
    return count


def write_hotel(storage: Storage, rows: int = 2000, seed: int = 0, location: str = hotel.LANDING,
                bad_fraction: float = 0.0, databases: Mapping[str, str] | None = None) -> GeneratedSlice:
    """One day of the hotel platform: `rows` bookings, about twice as many clicks, new and changed users, prices."""
    day = begin_day(storage, f"{location}/bookings", rows, seed, bad_fraction)
    rng, day_start, folder = day.rng, day.start, day.folder
    files, bad, corrupt = [], 0, ()

    # Users: a first cohort on day one, then sign-ups and a few changed countries every day.
    database = resolve_database(hotel.DATABASE, databases or {}, storage)
    with writing_table(database, "users", USERS_TABLE) as connection:
        existing = count_rows(connection, "users")
        # The first cohort signed up the day before; later sign-ups book from the next day on.
        new_users = _user_rows(rng, existing + 1, max(rows // 4, 20) if existing == 0 else max(rows // 40, 5),
                               day_start - timedelta(days=1) if existing == 0 else day_start)
        bad += _damage_users(new_users, bad_fraction, rng)
        insert_rows(connection, database, "users", USERS_TABLE, new_users)
        if existing:
            movers = rng.choice(existing, size=min(3, existing), replace=False) + 1
            update_rows(connection, database, "users", USERS_TABLE, "row_id", [
                {"row_id": int(r), "country": str(rng.choice(hotel.COUNTRIES)),
                 "updated_at": day_start + timedelta(hours=12, seconds=int(r))} for r in movers])
        profiles = _profiles(connection)
    user_count = existing + len(new_users)
    bookers = np.array([f"u-{i:06d}" for i in range(1, (existing or user_count) + 1)])  # users who existed at dawn

    # Bookings.
    capacity = _hotel_capacity()
    hotel_index = rng.integers(0, HOTELS, rows)
    booked_at = pd.to_datetime(day_start) + pd.to_timedelta(np.sort(rng.uniform(0, 86_400, rows)), unit="s")
    lead_days = rng.integers(0, 120, rows)
    check_in = (booked_at.normalize() + pd.to_timedelta(lead_days, unit="D")).strftime("%Y-%m-%d")
    nights = np.minimum(rng.geometric(0.35, rows), 14)
    rooms = np.minimum(rng.geometric(0.7, rows), 9)
    users = rng.choice(bookers, rows)
    bookings = pd.DataFrame({
        "booking_id": [f"b-{day.number:04d}-{i:06d}" for i in range(rows)],
        "hotel_id": [f"h-{i + 1:03d}" for i in hotel_index],
        "user_id": users,
        "booked_at": booked_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "check_in": check_in,
        "nights": nights,
        "rooms": rooms,
        "hotel_rooms": capacity[hotel_index],
        "status": np.where(rng.random(rows) < _cancel_probability(users, profiles, day_start), "cancelled", "confirmed"),
        "price_eur": np.round(nights * rooms * rng.uniform(60, 250, rows), 2),
    })
    header, *records = bookings.to_csv(index=False).rstrip("\n").split("\n")
    fields, damaged = damage_lines([r.split(",") for r in records], bad_fraction, rng, _BOOKING_DAMAGE)
    bad += damaged
    path = f"{location}/bookings/{folder}/bookings.csv"
    storage.write_bytes(path, ("\n".join([header, *map(",".join, fields)]) + "\n").encode())
    files.append(path)

    # Web clicks: sessions of a few clicks, page kinds drawn from the user's habit.
    clicks = []
    user_numbers = rng.integers(1, user_count + 1, max(rows // 5, 1))
    for session, number in enumerate(user_numbers):
        habit = _HABITS[number % len(_HABITS)]
        start = rng.uniform(0, 86_000)
        for click in range(int(rng.integers(5, 16))):
            clicks.append({
                "id": f"c-{day.number:04d}-{session:05d}-{click:02d}",
                "ts": (day_start + timedelta(seconds=start + 20 * click)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "user": f"u-{number:06d}", "session": f"s-{day.number:04d}-{session:05d}",
                "page": PAGES[int(rng.choice(len(PAGES), p=habit))],
                "dwell_seconds": round(float(rng.exponential(30)) + 0.5, 1),
            })
    lines = [json.dumps(c, separators=(",", ":")) for c in clicks]
    lines, damaged = damage_lines(lines, bad_fraction, rng, _CLICK_DAMAGE)
    bad += damaged
    path = f"{location}/sessions/{folder}/clicks.jsonl"
    storage.write_bytes(path, ("\n".join(lines) + "\n").encode())
    files.append(path)

    # Hourly spot prices in EUR/kWh: a morning and an evening peak, now and then negative at noon.
    hours = pd.date_range(day_start, periods=24, freq="h")
    shape = 0.08 + 0.05 * np.exp(-((hours.hour - 8) ** 2) / 6) + 0.07 * np.exp(-((hours.hour - 19) ** 2) / 6)
    prices = pa.table({
        "bidding_zone": np.repeat(hotel.ZONES, 24),
        "delivery_start": pa.array(np.tile(hours.to_numpy(), len(hotel.ZONES)), pa.timestamp("us", tz="UTC")),
        "price_eur_kwh": np.round(np.tile(shape, len(hotel.ZONES)) * rng.uniform(0.8, 1.25, 24 * len(hotel.ZONES))
                                  - 0.1 * (rng.random(24 * len(hotel.ZONES)) < 0.03), 5),
    })
    buffer = io.BytesIO()
    pq.write_table(prices, buffer)
    path = f"{location}/electricity/{folder}/spot_prices.parquet"
    storage.write_bytes(path, buffer.getvalue())
    files.append(path)
    if bad_fraction > 0:
        corrupt = (f"{location}/electricity/{folder}/spot_prices_partial.parquet",)
        storage.write_bytes(corrupt[0], buffer.getvalue()[: len(buffer.getvalue()) // 2])  # an upload cut short
    return GeneratedSlice("hotel", location, tuple(files) + corrupt, rows, bad, corrupt)


GENERATOR = DataGenerator("hotel", write_hotel, "A day of bookings, user rows (SQL), web clicks and spot prices.",
                          default_rows=2000)
