"""A day of plants (CSV) and a climate setting per bed (SQL): yield grows with leaf area and warmth."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from features import DataGenerator, GeneratedSlice, begin_day, insert_rows, resolve_database, writing_table
from greenhouse.groups import LANDING, VARIETIES
from orchard.storage import Storage

BEDS = 6
CLIMATE_TABLE = {"row_id": "id", "bed_id": "text", "temperature_c": "real", "humidity_pct": "real",
                 "updated_at": "timestamp"}
_VARIETY_GRAMS = {"cherry": -300.0, "roma": 0.0, "beefsteak": 450.0}


def write_greenhouse(storage: Storage, rows: int = 400, seed: int = 0, location: str = LANDING,
                     bad_fraction: float = 0.0, databases=None) -> GeneratedSlice:
    day = begin_day(storage, f"{location}/plants", rows, seed, bad_fraction)
    rng = day.rng
    temperatures = np.round(rng.uniform(16, 28, BEDS), 1)
    database = resolve_database("greenhouse", databases or {}, storage)
    with writing_table(database, "climate", CLIMATE_TABLE) as connection:
        insert_rows(connection, database, "climate", CLIMATE_TABLE, [
            {"bed_id": f"bed-{b}", "temperature_c": float(temperatures[b]),
             "humidity_pct": float(np.round(rng.uniform(55, 85), 1)), "updated_at": day.start + timedelta(minutes=b)}
            for b in range(BEDS)])
    bed = rng.integers(0, BEDS, rows)
    variety = rng.choice(VARIETIES, rows)
    leaf_area = np.round(rng.lognormal(7.0, 0.5, rows), 1)
    height = np.round(40 + leaf_area / 40 + rng.normal(0, 8, rows), 1).clip(1, 399)
    grams = (300 * np.log1p(leaf_area) - 1200 + 60 * (temperatures[bed] - 22)
             + np.array([_VARIETY_GRAMS[v] for v in variety]) + rng.normal(0, 60, rows))
    seconds = np.sort(rng.uniform(3600, 86_000, rows))
    frame = pd.DataFrame({
        "plant_id": [f"p-{day.number:03d}-{i:05d}" for i in range(rows)],
        "bed_id": [f"bed-{b}" for b in bed],
        "measured_at": [(day.start + timedelta(seconds=float(s))).isoformat() for s in seconds],
        "leaf_area_cm2": leaf_area, "height_cm": height, "variety": variety,
        "yield_g": np.round(grams.clip(0, 19_999), 1),
    })
    path = f"{location}/plants/{day.folder}/bench.csv"
    storage.write_bytes(path, frame.to_csv(index=False).encode())
    return GeneratedSlice("greenhouse", f"{location}/plants/{day.folder}", (path,), rows)


GENERATOR = DataGenerator("greenhouse", write_greenhouse, "A day of plants and bed climate.", default_rows=400)
