"""Fuzzed source files through the real feature pipeline (Ray Data, Delta): every record of every file ends up
exactly once in the table, in quarantine with its reason, or counted as a duplicate, and the counts reconcile.

Files of the fruit group (CSV in grams and millimetres, JSON Lines in kilograms and centimetres) are written from
a seeded random mix of good records and damaged ones: wrong types, NaN and infinities, values out of range, an
unknown class, a missing key, event times far in the past or future, very long lines, wrong field counts, lines
that are not JSON objects, duplicate keys; and whole files truncated at a random byte, in Latin-1 or UTF-16,
binary junk, empty, or with a CSV header that lacks a column. The test keeps a ledger of what it wrote and checks
the stores against it line by line.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.compute as pc
import pytest
from fruit.groups import FRUIT_MEASUREMENTS as FRUIT

from features.pipeline import run_feature_pipeline
from features.store import OfflineStore
from orchard.storage import Storage

pytestmark = pytest.mark.ray

SEED = 20261202
FILES = 60
LANDING = "landing/fruit/fuzz"
CSV_COLUMNS = ("fruit_id", "measured_at", "red", "green", "blue", "weight_g", "diameter_mm", "smoothness", "label")
JSON_KEYS = ("id", "ts", "r", "g", "b", "weight_kg", "diameter_cm", "smooth", "class")

# Damage to one record: (name, how it changes the record's values). Each leaves the record one that must be refused.
ROW_DAMAGE = {
    "wrong type": lambda v: {**v, "weight_g": "heavy"},
    "nan": lambda v: {**v, "red": "nan"},
    "infinity": lambda v: {**v, "diameter_mm": "inf"},
    "out of range": lambda v: {**v, "smoothness": 7.5},
    "unknown class": lambda v: {**v, "label": "pear"},
    "missing key": lambda v: {**v, "fruit_id": None},
    "far past": lambda v: {**v, "measured_at": "1900-01-01T00:00:00Z"},
    "far future": lambda v: {**v, "measured_at": "2090-06-01T00:00:00Z"},
    "bad time": lambda v: {**v, "measured_at": "yesterday"},
    "very long value": lambda v: {**v, "label": "apple" * 40_000},
}


@dataclass
class Ledger:
    """What the test wrote: per file, each record line's fruit id and whether it must be refused."""

    lines: dict[str, dict[int, tuple[str | None, str]]] = field(default_factory=dict)
    """file -> line -> (fruit id, "good" | "bad" | "duplicate" | "either")."""
    whole_file: dict[str, str] = field(default_factory=dict)
    """file -> why the whole file must be refused (or "either" when a damaged file may still be read in part)."""
    rows_tried: int = 0

    def expect(self, file: str, line: int, fruit_id: str | None, verdict: str) -> None:
        self.lines.setdefault(file, {})[line] = (fruit_id, verdict)
        self.rows_tried += 1


def _good_values(rng: random.Random, number: int) -> dict:
    apple = rng.random() < 0.6
    return {"fruit_id": f"fz{number:06d}", "measured_at": f"2026-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T0"
            f"{rng.randint(0, 9)}:{rng.randint(10, 59)}:00Z", "red": round(rng.uniform(0.1, 0.9), 3),
            "green": round(rng.uniform(0.1, 0.9), 3), "blue": round(rng.uniform(0.05, 0.3), 3),
            "weight_g": round(rng.uniform(90, 260), 1), "diameter_mm": round(rng.uniform(55, 95), 1),
            "smoothness": round(rng.uniform(0.2, 0.95), 3), "label": "apple" if apple else "orange"}


def _csv_line(values: dict) -> str:
    return ",".join("" if values[c] is None else str(values[c]) for c in CSV_COLUMNS)


def _json_line(values: dict) -> str:
    record = dict(zip(JSON_KEYS, (values[c] for c in CSV_COLUMNS)))
    for key, scale in (("weight_kg", 1000.0), ("diameter_cm", 10.0)):
        if isinstance(record[key], (int, float)):
            record[key] = record[key] / scale
        elif record[key] in ("nan", "inf"):
            record[key] = float(record[key])  # JSON's NaN and Infinity, which Python's json writes
    return json.dumps(record)


def _write_files(storage: Storage, rng: random.Random) -> Ledger:
    ledger = Ledger()
    number = 0
    written_good: list[dict] = []
    for index in range(FILES):
        kind = "csv" if index % 2 == 0 else "jsonl"
        path = f"{LANDING}/f{index:03d}.{kind}"
        lines: list[str] = []
        verdicts: list[tuple[str | None, str]] = []
        file_good: list[dict] = []
        for _ in range(rng.randint(5, 60)):
            number += 1
            values = _good_values(rng, number)
            roll = rng.random()
            if roll < 0.70:
                verdicts.append((values["fruit_id"], "good"))
                file_good.append(values)
            elif roll < 0.78 and written_good:
                values = rng.choice(written_good)  # the same key and event time again
                verdicts.append((values["fruit_id"], "duplicate"))
            elif roll < 0.82:
                line = _csv_line(values) + ",surplus" if kind == "csv" else json.dumps([1, 2, 3])
                lines.append(line)
                verdicts.append((values["fruit_id"], "bad"))
                continue
            elif roll < 0.84 and kind == "jsonl":
                lines.append('{"id": "' + values["fruit_id"] + '", "ts": ')  # a cut JSON object
                verdicts.append((values["fruit_id"], "bad"))
                continue
            else:
                damage = rng.choice(sorted(ROW_DAMAGE))
                values = ROW_DAMAGE[damage](values)
                verdicts.append((values["fruit_id"], "bad"))
            lines.append(_csv_line(values) if kind == "csv" else _json_line(values))
        header = [",".join(CSV_COLUMNS)] if kind == "csv" else []
        data = ("\n".join(header + lines) + "\n").encode()
        first_line = 2 if kind == "csv" else 1
        whole = rng.random()
        if whole < 0.06:  # a file cut at a random byte: lines before the cut stand, the cut one may not
            cut = rng.randint(len(data) // 3, len(data) - 1)
            data = data[:cut]
            complete = data.count(b"\n")
            for offset, (fruit_id, verdict) in enumerate(verdicts):
                line = first_line + offset
                if line <= complete:
                    ledger.expect(path, line, fruit_id, verdict)
                elif line == complete + 1 and not data.endswith(b"\n"):
                    ledger.expect(path, line, fruit_id, "either")
            ledger.whole_file[path] = "either"  # a cut inside a header leaves nothing readable
        elif whole < 0.09:
            data = ("\n".join(header + lines) + "\n").encode("utf-16")
            ledger.whole_file[path] = "not valid UTF-8"
        elif whole < 0.11:
            data = ("\n".join(header + [line.replace("fz", "fé") for line in lines]) + "\n").encode("latin-1")
            ledger.whole_file[path] = "not valid UTF-8"
        elif whole < 0.13:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4000)))
            ledger.whole_file[path] = "either"  # junk may happen to decode; then its lines are refused one by one
        elif whole < 0.15:
            data = b""
            ledger.whole_file[path] = "empty"
        elif whole < 0.17 and kind == "csv":
            data = ("\n".join([",".join(CSV_COLUMNS[:-1])] + lines) + "\n").encode()
            ledger.whole_file[path] = "header lacks column(s) label"
        else:
            for offset, (fruit_id, verdict) in enumerate(verdicts):
                ledger.expect(path, first_line + offset, fruit_id, verdict)
            written_good += file_good  # later files repeat only records that are certainly in the table
        if path in ledger.whole_file and ledger.whole_file[path] != "either":
            ledger.rows_tried += len(verdicts)
        storage.write_bytes(path, data)
    return ledger


@pytest.fixture(scope="module")
def fuzzed(ray_cluster, tmp_path_factory):
    storage = Storage(str(tmp_path_factory.mktemp("fuzz")))
    ledger = _write_files(storage, random.Random(SEED))
    report = run_feature_pipeline(storage, FRUIT)
    store = OfflineStore(storage)
    return storage, ledger, report, store.read_table(FRUIT), store.read_quarantine(FRUIT)


def test_every_run_completes_and_its_counts_reconcile(fuzzed):
    _, ledger, report, table, quarantine = fuzzed
    print(f"\nfuzzed: {FILES} files, {ledger.rows_tried} records tried; written {report.rows_written}, quarantined "
          f"{report.rows_quarantined} ({report.files_quarantined} whole files), duplicates {report.rows_duplicate}")
    assert report.rows_read == report.rows_written + report.rows_quarantined + report.rows_duplicate
    assert table.num_rows == report.rows_written
    # Quarantine holds a row per refused record and one per file refused as a whole.
    assert quarantine.num_rows == report.rows_quarantined + report.files_quarantined
    assert report.files_read == FILES


def test_every_record_is_in_the_table_or_in_quarantine_exactly_once(fuzzed):
    storage, ledger, report, table, quarantine = fuzzed
    in_table = Counter(table.column("fruit_id").to_pylist())
    assert max(in_table.values()) == 1  # no key twice
    refused: dict[str, dict[int | None, str]] = {}
    for row in quarantine.to_pylist():
        assert row["reason"], row
        file = row["source"]
        assert row["line"] not in refused.get(file, {}), row  # no line refused twice
        refused.setdefault(file, {})[row["line"]] = row["reason"]
    good_ids = set()
    duplicates = 0
    for file, lines in ledger.lines.items():
        whole = refused.get(file, {}).get(None)
        if whole is not None:  # a cut file refused as a whole (its header was cut): nothing of it is in the table
            assert ledger.whole_file.get(file) == "either", (file, whole)
            assert not any(in_table[fruit_id] for fruit_id, verdict in lines.values() if verdict == "good")
            continue
        for line, (fruit_id, verdict) in lines.items():
            reason = refused.get(file, {}).get(line)
            if verdict == "good":
                assert reason is None and in_table[fruit_id] == 1, (file, line, fruit_id, reason)
                good_ids.add(fruit_id)
            elif verdict == "bad":
                assert reason is not None, (file, line, fruit_id)
            elif verdict == "duplicate":
                assert reason is None and in_table[fruit_id] == 1, (file, line, reason)
                duplicates += 1
            elif reason is None:  # "either": a cut last line that still reads as a whole record
                assert in_table[fruit_id] == 1, (file, line, fruit_id)
    assert report.rows_duplicate == duplicates
    # Whole files that had to be refused were, each once, naming why.
    for file, why in ledger.whole_file.items():
        if why in ("either",):
            continue
        if why == "empty":
            assert file not in refused
            continue
        assert list(refused.get(file, {})) == [None] and why in refused[file][None], (file, refused.get(file))
    # And the table holds nothing the ledger did not write as good (or as a cut line that still read well).
    either = {fruit_id for lines in ledger.lines.values() for fruit_id, verdict in lines.values()
              if verdict == "either"}
    assert set(in_table) - good_ids <= either


def test_a_refused_record_keeps_what_it_said_and_why(fuzzed):
    _, _, _, _, quarantine = fuzzed
    reasons = " ".join(quarantine.column("reason").to_pylist())
    for expected in ("must be a number, got 'heavy'", "must be at most 1, got 7.5",
                     "must be one of apple, orange; got 'pear'", "feature 'fruit_id' is missing",
                     "is before 1970-01-02", "ahead of the time it was checked", "must be a timestamp",
                     "line could not be parsed", "not a JSON object", "not valid JSON", "not valid UTF-8"):
        assert expected in reasons, expected
    long_lines = [raw for raw in quarantine.column("raw").to_pylist() if raw and len(raw) > 100_000]
    assert long_lines, "a very long line is kept whole in quarantine"


def test_a_second_run_reads_nothing_and_changes_nothing(fuzzed):
    storage, _, _, table, quarantine = fuzzed
    again = run_feature_pipeline(storage, FRUIT)
    assert (again.files_read, again.rows_read, again.rows_written, again.rows_quarantined) == (0, 0, 0, 0)
    store = OfflineStore(storage)
    assert store.read_table(FRUIT).num_rows == table.num_rows
    assert store.read_quarantine(FRUIT).num_rows == quarantine.num_rows
    assert math.isfinite(pc.max(store.read_table(FRUIT).column("weight_g")).as_py())
