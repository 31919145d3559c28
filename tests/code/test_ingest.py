"""Parsing raw files: every record comes out, valid or with the reason it was rejected."""

import pyarrow as pa
import pytest
from fruit.groups import FRUIT_MEASUREMENTS as FRUIT

from features.ingest import SourceFile, parse_file

SCALE, SORTING_LINE = FRUIT.sources
HEADER = b"fruit_id,measured_at,red,green,blue,weight_g,diameter_mm,smoothness,label\n"
GOOD = b"f1,2026-01-01T00:00:00,0.5,0.7,0.2,150,75,0.8,apple\n"


def _parse(data: bytes, source=SCALE, path="day/x.csv"):
    rows = parse_file(data, SourceFile(source.name, path, len(data), 1, 3), source, FRUIT).to_pylist()
    return {row["_line"]: row for row in rows}


def test_a_good_csv_row_is_typed_and_carries_its_file_and_line():
    row = _parse(HEADER + GOOD)[2]
    assert row["_reason"] is None
    assert (row["fruit_id"], row["weight_g"], row["_source"]) == ("f1", 150.0, "day/x.csv")
    assert str(row["measured_at"]) == "2026-01-01 00:00:00+00:00"


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"f2,2026-01-01T00:00:00,0.5,0.7,0.2,heavy,75,0.8,apple", "feature 'weight_g' must be a number, got 'heavy'"),
        (b"f2,2026-01-01T00:00:00,1.5,0.7,0.2,150,75,0.8,apple", "feature 'red' must be at most 1, got 1.5"),
        (b"f2,2026-01-01T00:00:00,0.5,0.7,0.2,150,75,0.8,pear", "feature 'label' must be one of apple, orange; got 'pear'"),
        (b"f2,2026-13-01T00:00:00,0.5,0.7,0.2,150,75,0.8,apple", "feature 'measured_at' must be a timestamp, got '2026-13-01T00:00:00'"),
        (b",2026-01-01T00:00:00,0.5,0.7,0.2,150,75,0.8,apple", "feature 'fruit_id' is missing"),
        (b"f2,2026-01-01T00:00:00,0.5,0.7,0.2,nan,75,0.8,apple", "feature 'weight_g' must be a number, got 'nan'"),
        (b"f2,2026-01-01", "line could not be parsed: expected 9 fields, got 2"),
        (b"f2,1970-01-01T00:00:00,0.5,0.7,0.2,150,75,0.8,apple",
         "event time 'measured_at' is before 1970-01-02, the group's earliest: 1970-01-01T00:00:00Z"),
        (b"f2,2100-12-31T23:59:59,0.5,0.7,0.2,150,75,0.8,apple",
         "event time 'measured_at' is more than 2 days ahead of the time it was checked: 2100-12-31T23:59:59Z"),
    ],
)
def test_a_bad_csv_row_is_kept_with_its_reason_and_line(line, reason):
    rows = _parse(HEADER + GOOD + line + b"\n" + GOOD.replace(b"f1", b"f3"))
    assert rows[3]["_reason"] == reason
    assert rows[3]["_raw"] is not None
    assert rows[2]["_reason"] is None and rows[4]["_reason"] is None
    assert len(rows) == 3


def test_a_truncated_last_line_is_rejected_not_lost():
    rows = _parse(HEADER + GOOD + GOOD[:20])
    assert rows[3]["_reason"].startswith("line could not be parsed")


def test_json_lines_are_converted_to_the_groups_units():
    line = (b'{"id":"a","ts":"2026-01-01T00:00:00Z","r":0.5,"g":0.5,"b":0.1,"weight_kg":0.15,'
            b'"diameter_cm":7.5,"smooth":0.5,"class":"apple"}\n')
    row = _parse(line, SORTING_LINE, "d/y.jsonl")[1]
    assert row["_reason"] is None
    assert row["weight_g"] == pytest.approx(150.0) and row["diameter_mm"] == pytest.approx(75.0)


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"id":"b","ts":"2026-01-01T00:00:00Z","r":true}', "feature 'red' must be a number, got 'true'"),
        (b'{broken', "not valid JSON"),
        (b'[1, 2]', "line is not a JSON object"),
    ],
)
def test_a_bad_json_line_is_kept_with_its_reason(line, reason):
    assert reason in _parse(line + b"\n", SORTING_LINE, "d/y.jsonl")[1]["_reason"]


@pytest.mark.parametrize(
    "data, source, reason",
    [
        (b"\xff\xfe\x00\x01", SCALE, "not valid UTF-8"),
        (b"fruit_id,measured_at\nx,y\n", SCALE, "header lacks column(s) red"),
        (b"PAR1 not really parquet", FRUIT.sources[0].__class__(name="p", format="parquet", location="x", pattern="*"), "could not be read as parquet"),
    ],
)
def test_an_unreadable_file_becomes_one_file_level_rejection(data, source, reason):
    rows = parse_file(data, SourceFile(source.name, "d/f", len(data), 1, 0), source, FRUIT).to_pylist()
    assert len(rows) == 1
    assert rows[0]["_line"] is None and reason in rows[0]["_reason"]


def test_parquet_files_are_read_through_the_same_checks():
    table = pa.table({"fruit_id": ["p1", "p2"], "measured_at": pa.array([1767225600000] * 2, pa.timestamp("ms")),
                      "red": [0.5, 7.0], "green": [0.5, 0.5], "blue": [0.1, 0.1], "weight_g": [150.0, 150.0],
                      "diameter_mm": [70.0, 70.0], "smoothness": [0.5, 0.5], "label": ["apple", "apple"]})
    import io

    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    source = SCALE.__class__(name="p", format="parquet", location="x", pattern="*.parquet")
    rows = parse_file(buffer.getvalue(), SourceFile("p", "d/z.parquet", 1, 1, 0), source, FRUIT).to_pylist()
    assert rows[0]["_reason"] is None and str(rows[0]["measured_at"]) == "2026-01-01 00:00:00+00:00"
    assert rows[1]["_reason"] == "feature 'red' must be at most 1, got 7"


@pytest.mark.parametrize("data, source", [(b"", SCALE), (b"\n \n", SCALE), (b"", SORTING_LINE), (b"\n\n", SORTING_LINE)])
def test_an_empty_file_holds_no_records_and_is_not_refused(data, source):
    assert parse_file(data, SourceFile(source.name, "d/f", len(data), 1, 0), source, FRUIT).num_rows == 0
