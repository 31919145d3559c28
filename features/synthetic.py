"""Development data generators: what a project's generator returns, and helpers for writing new days.

A project may define `DataGenerator`s; `orchard generate NAME` runs one. Each
call writes a new, later slice ("day") next to the ones already there, so
running a generator again looks like new data arriving.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import numpy as np

from orchard.storage import Storage

FIRST_DAY = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class DataGenerator:
    """A project's development data: `write(storage, rows=, seed=, bad_fraction=, databases=, [location=])`
    writes one more day of raw data into the landing area its groups read, and returns a `GeneratedSlice`."""

    name: str
    write: Callable[..., "GeneratedSlice"]
    description: str = ""
    default_rows: int = 2000


@dataclass(frozen=True)
class GeneratedSlice:
    domain: str
    location: str
    files: tuple[str, ...]
    rows: int
    bad_records: int = 0
    """Records deliberately made malformed (each must end up in quarantine)."""
    corrupt_files: tuple[str, ...] = ()


def next_slice(storage: Storage, location: str) -> int:
    """The number of the next day folder ("day-0001", ...) under `location`."""
    days = [int(m.group(1)) for n in storage.list_dir(location) if (m := re.fullmatch(r"day-(\d{4})", n))]
    return max(days, default=0) + 1


@dataclass(frozen=True)
class Day:
    """The day a generator call writes: its number, start time, folder name and random stream."""

    number: int
    start: datetime
    rng: np.random.Generator

    @property
    def folder(self) -> str:
        return f"day-{self.number:04d}"


def begin_day(storage: Storage, days_location: str, rows: int, seed: int, bad_fraction: float) -> Day:
    """Check a generator's arguments and find the next day after the folders under `days_location`."""
    if not 0.0 <= bad_fraction <= 1.0:
        raise ValueError(f"bad_fraction must be between 0 and 1, got {bad_fraction}")
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    number = next_slice(storage, days_location)
    return Day(number, FIRST_DAY + timedelta(days=number - 1), np.random.default_rng([seed, number]))


def damage_lines(lines: list[str], fraction: float, rng: np.random.Generator, damages) -> tuple[list[str], int]:
    count = int(round(len(lines) * fraction))
    chosen = rng.choice(len(lines), size=count, replace=False) if count else []
    for position, index in enumerate(chosen):
        lines[index] = damages[position % len(damages)](lines[index])
    return lines, count
