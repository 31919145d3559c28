import pyarrow as pa

from features.conform import to_utc_timestamps


def test_naive_timestamps_are_utc_and_offsets_are_honoured():
    values = pa.array(["2026-01-01T10:00:00", "2026-01-01 10:00:00", "2026-01-01T12:00:00+02:00",
                       "2026-01-01T10:00:00Z", "2026-01-01 10:00:00.000000000Z"])
    converted = to_utc_timestamps(values).to_pylist()
    assert len(set(converted)) == 1
    assert str(converted[0]) == "2026-01-01 10:00:00+00:00"


def test_parsed_naive_timestamps_are_taken_as_utc():
    values = pa.array([0], type=pa.timestamp("s"))
    assert to_utc_timestamps(values).type == pa.timestamp("us", tz="UTC")
