import pyarrow as pa
import pytest

from features.conform import conform, to_utc_timestamps
from features.fruit import FRUIT_MEASUREMENTS


def _sorting_line_batch(**overrides):
    row = {"id": "f1", "ts": "2026-01-01T10:00:00.000", "r": 0.5, "g": 0.7, "b": 0.2, "weight_kg": 0.15,
           "diameter_cm": 7.5, "smooth": 0.8, "class": "apple"}
    row.update(overrides)
    return pa.Table.from_pylist([row])


def test_naive_timestamps_are_utc_and_offsets_are_honoured():
    values = pa.array(["2026-01-01T10:00:00", "2026-01-01 10:00:00", "2026-01-01T12:00:00+02:00", "2026-01-01T10:00:00Z"])
    converted = to_utc_timestamps(values).to_pylist()
    assert len(set(converted)) == 1
    assert str(converted[0]) == "2026-01-01 10:00:00+00:00"


def test_parsed_naive_timestamps_are_taken_as_utc():
    values = pa.array([0], type=pa.timestamp("s"))
    assert to_utc_timestamps(values).type == pa.timestamp("us", tz="UTC")


def test_sorting_line_rows_are_renamed_and_converted_to_grams_and_millimetres():
    source = FRUIT_MEASUREMENTS.sources[1]
    table = conform(_sorting_line_batch(), source, FRUIT_MEASUREMENTS)
    assert table.schema == FRUIT_MEASUREMENTS.schema
    row = table.to_pylist()[0]
    assert row["weight_g"] == pytest.approx(150.0)
    assert row["diameter_mm"] == pytest.approx(75.0)
    assert row["fruit_id"] == "f1" and row["label"] == "apple"


def test_a_missing_source_column_is_named_with_its_feature():
    source = FRUIT_MEASUREMENTS.sources[1]
    batch = _sorting_line_batch().drop_columns(["weight_kg"])
    with pytest.raises(KeyError, match="'weight_kg' for feature 'weight_g'"):
        conform(batch, source, FRUIT_MEASUREMENTS)
