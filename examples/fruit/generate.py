"""Synthetic fruit: half the day's fruit as the scale's CSV, half as the sorting line's JSON Lines."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from features import FIRST_DAY, DataGenerator, GeneratedSlice, damage_lines, next_slice
from fruit.groups import LANDING
from orchard.storage import Storage

# (share, red, green, blue, diameter mm, density factor, smoothness): mean and spread.
# Red apples sit beside oranges in red and beside green apples in size, so no
# single straight line separates apples from oranges.
_VARIETIES = {
    "green_apple": dict(share=0.35, label="apple", rgb=((0.50, 0.08), (0.78, 0.07), (0.28, 0.06)),
                        diameter=(74.0, 6.0), density=0.42, smoothness=(0.78, 0.08)),
    "red_apple": dict(share=0.30, label="apple", rgb=((0.82, 0.07), (0.26, 0.08), (0.22, 0.06)),
                      diameter=(77.0, 6.0), density=0.44, smoothness=(0.80, 0.08)),
    "orange": dict(share=0.35, label="orange", rgb=((0.95, 0.04), (0.58, 0.07), (0.12, 0.05)),
                   diameter=(80.0, 7.0), density=0.47, smoothness=(0.38, 0.10)),
}


# A new season's variety: golden apples, orange in colour and nearly as smooth as oranges, but lighter for their
# size, a little greener and bluer. A model that never saw them takes them for oranges.
_GOLDEN = dict(label="apple", rgb=((0.93, 0.04), (0.66, 0.06), (0.22, 0.05)), diameter=(79.0, 6.0), density=0.39,
               smoothness=(0.42, 0.08))


def fruit_frame(rows: int, seed: int, start: datetime = FIRST_DAY, golden_share: float = 0.0) -> pd.DataFrame:
    """Fruit measurements in the feature group's own units, one row per fruit; `golden_share` of them golden
    apples (a distribution shift: a variety the first days never had)."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    if not 0.0 <= golden_share <= 1.0:
        raise ValueError(f"golden_share must be between 0 and 1, got {golden_share}")
    rng = np.random.default_rng(seed)
    varieties = {**_VARIETIES, "golden_apple": dict(_GOLDEN, share=0.0)} if golden_share else _VARIETIES
    names = list(varieties)
    shares = [varieties[n]["share"] * (1 - golden_share) if n != "golden_apple" else golden_share for n in names]
    variety = rng.choice(names, size=rows, p=shares)
    frame = {key: np.empty(rows) for key in ("red", "green", "blue", "diameter_mm", "weight_g", "smoothness")}
    for name in names:
        spec, mask = varieties[name], variety == name
        count = int(mask.sum())
        for channel, (mean, spread) in zip(("red", "green", "blue"), spec["rgb"]):
            frame[channel][mask] = np.clip(rng.normal(mean, spread, count), 0.0, 1.0)
        diameter = rng.normal(*spec["diameter"], count).clip(45, 120)
        frame["diameter_mm"][mask] = diameter
        # Weight grows with volume (diameter cubed), with fruit-to-fruit variation.
        frame["weight_g"][mask] = spec["density"] * (diameter / 10) ** 3 * rng.normal(1.0, 0.06, count)
        frame["smoothness"][mask] = np.clip(rng.normal(*spec["smoothness"], count), 0.0, 1.0)
    seconds = np.sort(rng.uniform(0, 86_400, rows))
    measured_at = pd.to_datetime(start) + pd.to_timedelta(seconds, unit="s")
    return pd.DataFrame({
        "fruit_id": [f"f-{seed}-{start:%Y%m%d}-{i:06d}" for i in range(rows)],
        "measured_at": measured_at.floor("ms"),
        **{k: np.round(v, 4) for k, v in frame.items()},
        "label": [varieties[v]["label"] for v in variety],
        "variety": variety,
    })


_CSV_DAMAGE = (
    lambda f: f[:5] + ["heavy"] + f[6:],        # a measurement that is not a number
    lambda f: f[:2] + ["1.7"] + f[3:],          # red channel out of range
    lambda f: [""] + f[1:],                     # missing fruit id
    lambda f: f[:4],                            # truncated record
    lambda f: f[:8] + ["banana"],               # label not allowed
)
_JSON_DAMAGE = (
    lambda line: line[: len(line) // 2],                               # cut mid-record
    lambda line: line.replace('"r":', '"r":"crimson","_r":', 1),       # colour as text
    lambda line: line.replace('"ts":"', '"ts":"yesterday ', 1),        # unreadable time
)


def write_fruit(storage: Storage, rows: int = 2000, seed: int = 0, location: str = LANDING,
                bad_fraction: float = 0.0, databases=None, golden_share: float = 0.0) -> GeneratedSlice:
    """Write one day of fruit: half as the scale's CSV, half as the sorting line's JSON Lines.

    With `bad_fraction` > 0 that share of records is damaged in the ways real
    feeds break, and one more file is written that is not valid UTF-8 at all.
    """
    if not 0.0 <= bad_fraction <= 1.0:
        raise ValueError(f"bad_fraction must be between 0 and 1, got {bad_fraction}")
    rng = np.random.default_rng(seed + 7919)
    day = next_slice(storage, location)
    frame = fruit_frame(rows, seed=seed + day, start=FIRST_DAY + timedelta(days=day - 1), golden_share=golden_share)
    frame = frame.drop(columns=["variety"])
    folder = f"{location}/day-{day:04d}"
    half = rows // 2
    scale = frame.iloc[:half]
    sorting_line = frame.iloc[half:].rename(columns={
        "fruit_id": "id", "measured_at": "ts", "red": "r", "green": "g", "blue": "b",
        "weight_g": "weight_kg", "diameter_mm": "diameter_cm", "smoothness": "smooth", "label": "class",
    })
    sorting_line = sorting_line.assign(
        weight_kg=sorting_line["weight_kg"] / 1000.0, diameter_cm=sorting_line["diameter_cm"] / 10.0
    )
    files, bad = [], 0
    if len(scale):
        text = scale.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S.%f")
        header, *records = text.rstrip("\n").split("\n")
        fields, damaged = damage_lines([r.split(",") for r in records], bad_fraction, rng, _CSV_DAMAGE)
        bad += damaged
        storage.write_bytes(f"{folder}/scale.csv", ("\n".join([header, *map(",".join, fields)]) + "\n").encode())
        files.append(f"{folder}/scale.csv")
    if len(sorting_line):
        text = sorting_line.to_json(orient="records", lines=True, date_format="iso", date_unit="ms")
        lines, damaged = damage_lines(text.rstrip("\n").split("\n"), bad_fraction, rng, _JSON_DAMAGE)
        bad += damaged
        storage.write_bytes(f"{folder}/sorting_line.jsonl", ("\n".join(lines) + "\n").encode())
        files.append(f"{folder}/sorting_line.jsonl")
    corrupt = ()
    if bad_fraction > 0:
        corrupt = (f"{folder}/sorting_line_retry.jsonl",)
        storage.write_bytes(corrupt[0], b"\xff\xfe" + rng.bytes(256))
    return GeneratedSlice("fruit", folder, tuple(files) + corrupt, rows, bad, corrupt)



GENERATOR = DataGenerator("fruit", write_fruit, "A day of fruit measurements (apples and oranges).", default_rows=2000)
