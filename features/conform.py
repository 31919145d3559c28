"""Timestamp conversion shared by every source: naive values are UTC."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

_ZONE_SUFFIX = r"(Z|z|[+-]\d\d:?\d\d)$"


def to_utc_timestamps(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Timestamps as timestamp[us, UTC]; a value with no zone is taken to be UTC."""
    target = pa.timestamp("us", tz="UTC")
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        has_zone = pc.match_substring_regex(values, _ZONE_SUFFIX)
        values = pc.if_else(has_zone, values, pc.binary_join_element_wise(values, "+00:00", ""))
        values = pc.replace_substring(values, " ", "T", max_replacements=1)
        # Parse at nanosecond precision (files often carry 9 fractional digits), then keep microseconds.
        return pc.cast(pc.cast(values, pa.timestamp("ns", tz="UTC")), target, safe=False)
    if pa.types.is_timestamp(values.type):
        if values.type.tz is None:
            values = pc.assume_timezone(values, "UTC")
        return pc.cast(values, target)
    raise TypeError(f"cannot read {values.type} as a timestamp")
