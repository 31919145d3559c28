"""Synthetic surf: hourly buoy readings (JSON Lines), beaches (SQL), lifeguards' surf heights (CSV).

The surf at a beach follows the swell at its buoy: higher with longer periods,
lower the further the swell direction is from the way the beach faces, and
steeper on a reef than on sand, with some noise from the observer.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Mapping

import numpy as np
import pandas as pd

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
from orchard.storage import Storage
from surf import groups as surf

BUOYS = ("buoy-46026", "buoy-46012", "buoy-46042")
BEACHES_TABLE = {"row_id": "id", "beach_id": "text", "name": "text", "buoy_id": "text", "facing_deg": "real",
                 "bottom": "text", "updated_at": "timestamp"}
_BEACHES = (  # beach id, name, buoy, facing, bottom
    ("ocean-beach", "Ocean Beach", 0, 265.0, "sand"),
    ("mavericks", "Mavericks", 1, 280.0, "reef"),
    ("steamer-lane", "Steamer Lane", 2, 215.0, "point"),
    ("pleasure-point", "Pleasure Point", 2, 190.0, "reef"),
    ("linda-mar", "Linda Mar", 1, 250.0, "sand"),
    ("rockaway", "Rockaway", 0, 290.0, "point"),
)
_BOTTOM_FACTOR = {"sand": 0.8, "point": 1.0, "reef": 1.2}

_READING_DAMAGE = (
    lambda line: line[: len(line) // 2],                      # cut mid-record
    lambda line: line.replace('"hs":', '"hs":"big","_hs":', 1),  # height as a word
    lambda line: line.replace('"time":"', '"time":"at dawn ', 1),  # unreadable time
)
_OBSERVATION_DAMAGE = (
    lambda f: f[:2] + ["overhead"],                           # height as a word
    lambda f: f[:2] + ["42.0"],                               # beyond any surf
    lambda f: [""] + f[1:],                                   # no beach
)


def surf_height(swell_height: np.ndarray, period: np.ndarray, direction: np.ndarray, facing: np.ndarray,
                bottom: np.ndarray) -> np.ndarray:
    """Breaking-wave height a beach sees from a swell, before the observer's noise."""
    alignment = np.clip(np.cos(np.radians(direction - facing)), 0.0, 1.0)
    bottom_factor = np.array([_BOTTOM_FACTOR[b] for b in bottom])
    return swell_height * np.sqrt(period / 10.0) * (0.3 + 0.7 * alignment) * bottom_factor


def write_surf(storage: Storage, rows: int = 240, seed: int = 0, location: str = surf.LANDING,
               bad_fraction: float = 0.0, databases: Mapping[str, str] | None = None) -> GeneratedSlice:
    """One day: 24 readings per buoy, `rows` observations spread over the beaches, beach rows as they change."""
    day = begin_day(storage, f"{location}/buoys", rows, seed, bad_fraction)
    rng, day_start, folder = day.rng, day.start, day.folder
    files, bad, corrupt = [], 0, ()

    database = resolve_database(surf.DATABASE, databases or {}, storage)
    with writing_table(database, "beaches", BEACHES_TABLE) as connection:
        if count_rows(connection, "beaches") == 0:
            beach_rows = [{"beach_id": b, "name": n, "buoy_id": BUOYS[i], "facing_deg": f, "bottom": bottom,
                           "updated_at": day_start} for b, n, i, f, bottom in _BEACHES]
            if bad_fraction > 0:  # a registry row typed in wrong: a bottom that does not exist
                beach_rows.append({"beach_id": "nowhere", "name": "Nowhere", "buoy_id": BUOYS[0], "facing_deg": 270.0,
                                   "bottom": "lava", "updated_at": day_start})
                bad += 1
            insert_rows(connection, database, "beaches", BEACHES_TABLE, beach_rows)
        else:  # sand moves: one beach's facing is re-surveyed every day
            row_id = int(rng.integers(1, len(_BEACHES) + 1))
            facing = _BEACHES[row_id - 1][3] + float(rng.normal(0, 2))
            update_rows(connection, database, "beaches", BEACHES_TABLE, "row_id",
                        [{"row_id": row_id, "facing_deg": round(facing, 1),
                          "updated_at": day_start + timedelta(hours=6)}])

    # Hourly swell per buoy: a slow random walk around a swell that builds and fades over days.
    hours = pd.date_range(day_start, periods=24, freq="h")
    base = 1.5 + np.sin(day.number / 3.0 + np.arange(len(BUOYS)))
    height = np.clip(base[:, None] + np.cumsum(rng.normal(0, 0.08, (len(BUOYS), 24)), axis=1), 0.2, 8.0)
    period = np.clip(11 + np.cumsum(rng.normal(0, 0.3, (len(BUOYS), 24)), axis=1), 5, 20)
    direction = np.mod(270 + 25 * np.sin(day.number / 5.0) + np.cumsum(rng.normal(0, 2, (len(BUOYS), 24)), axis=1), 360)
    lines = [json.dumps({"station": BUOYS[b], "time": hours[h].strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "hs": round(float(height[b, h]), 2), "tp": round(float(period[b, h]), 1),
                         "dir": round(float(direction[b, h]), 1)}, separators=(",", ":"))
             for b in range(len(BUOYS)) for h in range(24)]
    lines, damaged = damage_lines(lines, bad_fraction, rng, _READING_DAMAGE)
    bad += damaged
    path = f"{location}/buoys/{folder}/readings.jsonl"
    storage.write_bytes(path, ("\n".join(lines) + "\n").encode())
    files.append(path)

    # Observations: the surf at a beach at some minute of an hour, from that hour's swell at its buoy.
    beach = rng.integers(0, len(_BEACHES), rows)
    minute = np.sort(rng.integers(0, 24 * 60, rows))
    hour = minute // 60
    buoy = np.array([_BEACHES[b][2] for b in beach])
    heights = surf_height(height[buoy, hour], period[buoy, hour], direction[buoy, hour],
                          np.array([_BEACHES[b][3] for b in beach]), np.array([_BEACHES[b][4] for b in beach]))
    heights = np.clip(heights * rng.normal(1.0, 0.1, rows), 0.0, 15.0)
    observed_at = pd.to_datetime(day_start) + pd.to_timedelta(minute, unit="min") + pd.to_timedelta(
        np.arange(rows) % 60, unit="s")  # one beach can be reported twice in a minute: seconds keep rows apart
    frame = pd.DataFrame({"beach_id": [_BEACHES[b][0] for b in beach],
                          "observed_at": observed_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          "surf_height_m": np.round(heights, 2)})
    header, *records = frame.to_csv(index=False).rstrip("\n").split("\n")
    fields, damaged = damage_lines([r.split(",") for r in records], bad_fraction, rng, _OBSERVATION_DAMAGE)
    bad += damaged
    path = f"{location}/observations/{folder}/surf.csv"
    storage.write_bytes(path, ("\n".join([header, *map(",".join, fields)]) + "\n").encode())
    files.append(path)
    if bad_fraction > 0:
        corrupt = (f"{location}/observations/{folder}/surf_scan.csv",)
        storage.write_bytes(corrupt[0], "beach_id,observed_at,surf_height_m\n".encode("utf-16"))  # wrong encoding
    return GeneratedSlice("surf", location, tuple(files) + corrupt, rows, bad, corrupt)


GENERATOR = DataGenerator("surf", write_surf, "A day of buoy readings, beach rows (SQL) and surf observations.",
                          default_rows=240)
