"""Expectations a feature group declares on its values, checked on whole Arrow columns."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from features.definitions import Feature, FeatureGroup


def _mark(reason: pa.Array, failed: pa.Array, message: pa.Array | str) -> pa.Array:
    return pc.if_else(pc.and_(pc.is_null(reason), pc.fill_null(failed, False)), message, reason)


def check_expectations(table: pa.Table, group: FeatureGroup, reason: pa.Array | None = None,
                       features: Iterable[Feature] | None = None) -> pa.Array:
    """Each row's first failed expectation as text (null where all hold).

    Non-null, ranges and allowed values are checked here, per row; uniqueness of
    primary key + event time needs all rows and is checked when the run deduplicates.
    """
    if reason is None:
        reason = pa.nulls(table.num_rows, pa.string())
    for feature in (group.features if features is None else features):
        values = table.column(feature.name).combine_chunks()
        if feature.name == group.event_time and group.aggregation is None:
            reason = _check_event_time(reason, values, group)
        required = not feature.nullable or feature.name in (*group.primary_key, group.event_time)
        if required:
            reason = _mark(reason, pc.is_null(values), f"feature '{feature.name}' is missing")
        as_text = pc.cast(values, pa.string()) if pa.types.is_floating(values.type) or pa.types.is_integer(values.type) else None
        if feature.min_value is not None:
            reason = _mark(reason, pc.less(values, feature.min_value),
                           pc.binary_join_element_wise(f"feature '{feature.name}' must be at least {feature.min_value:g}, got ",
                                                       pc.fill_null(as_text, ""), ""))
        if feature.max_value is not None:
            reason = _mark(reason, pc.greater(values, feature.max_value),
                           pc.binary_join_element_wise(f"feature '{feature.name}' must be at most {feature.max_value:g}, got ",
                                                       pc.fill_null(as_text, ""), ""))
        if feature.allowed_values is not None:
            allowed = pc.is_in(values, value_set=pa.array(feature.allowed_values, values.type))
            reason = _mark(reason, pc.and_(pc.is_valid(values), pc.invert(allowed)),
                           pc.binary_join_element_wise(f"feature '{feature.name}' must be one of "
                                                       f"{', '.join(feature.allowed_values)}; got '", pc.fill_null(values, ""), "'", ""))
        if pa.types.is_floating(values.type):
            reason = _mark(reason, pc.invert(pc.fill_null(pc.is_finite(values), True)),
                           f"feature '{feature.name}' must be finite")
    return reason


def _check_event_time(reason: pa.Array, values: pa.Array, group: FeatureGroup) -> pa.Array:
    """Event times before the group's earliest, or further ahead of now than it allows, are not plausible."""
    earliest = pa.scalar(group.earliest_event_time, values.type)
    latest = datetime.now(timezone.utc) + group.max_event_time_ahead
    seconds = pc.cast(pc.floor_temporal(values, unit="second"), pa.timestamp("s", tz="UTC"))
    as_text = pc.fill_null(pc.strftime(seconds, format="%Y-%m-%dT%H:%M:%SZ"), "")
    reason = _mark(reason, pc.less(values, earliest), pc.binary_join_element_wise(
        f"event time '{group.event_time}' is before {group.earliest_event_time:%Y-%m-%d}, the group's earliest: ",
        as_text, ""))
    return _mark(reason, pc.greater(values, pa.scalar(latest, values.type)), pc.binary_join_element_wise(
        f"event time '{group.event_time}' is more than {_duration(group.max_event_time_ahead)} ahead of the time it "
        "was checked: ", as_text, ""))


def _duration(span) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"
