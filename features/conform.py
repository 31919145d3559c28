"""Maps a batch read from a source onto its feature group's schema."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from features.definitions import FeatureGroup, FileSource

_ZONE_SUFFIX = r"(Z|z|[+-]\d\d:?\d\d)$"


def to_utc_timestamps(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Timestamps as timestamp[us, UTC]; a value with no zone is taken to be UTC."""
    target = pa.timestamp("us", tz="UTC")
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        has_zone = pc.match_substring_regex(values, _ZONE_SUFFIX)
        values = pc.if_else(has_zone, values, pc.binary_join_element_wise(values, "+00:00", ""))
        return pc.cast(pc.replace_substring(values, " ", "T", max_replacements=1), target)
    if pa.types.is_timestamp(values.type):
        if values.type.tz is None:
            values = pc.assume_timezone(values, "UTC")
        return pc.cast(values, target)
    raise TypeError(f"cannot read {values.type} as a timestamp")


def conform(batch: pa.Table, source: FileSource, group: FeatureGroup) -> pa.Table:
    """Rename, convert units and cast `batch` to exactly `group.schema`."""
    columns = []
    for field in group.schema:
        column_name = source.source_column(field.name)
        if column_name not in batch.column_names:
            raise KeyError(
                f"source {source.name!r} has no column {column_name!r} for feature {field.name!r}; "
                f"it has {batch.column_names}"
            )
        values = batch.column(column_name)
        if field.type == pa.timestamp("us", tz="UTC"):
            values = to_utc_timestamps(values)
        else:
            values = pc.cast(values, field.type)
        if field.name in source.scale:
            values = pc.multiply(values, pa.scalar(source.scale[field.name], field.type))
        columns.append(values)
    return pa.Table.from_arrays(columns, schema=group.schema)
