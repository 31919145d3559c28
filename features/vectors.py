"""A view's feature vectors for entities, from the online store, with the point-in-time join's rules.

For entities given by their label columns at an instant `at` (now, when
serving), each selection of the view is looked up in its group's online rows
(one query per group), in the view's order, so that a selection may join on a
column an earlier one brought, as in training. A row counts only if its event
time is at or before `at` and, where the selection has a TTL, no older than
`at - ttl`: the bounds of `features.pit_join`. So at any instant after the
latest materialized row, an entity's online vector equals the row the training
dataset's join gives for the same key and time; a value outside those bounds is
missing, as it is in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from features.online import EntityError, OnlineStore
from features.views import FeatureView

_TIME = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Vectors:
    """The view's feature columns for each entity (null where missing), and per entity and group what was used."""

    table: pa.Table
    """Label columns (as given and derived) then the view's feature columns, one row per entity."""
    sources: list[dict[str, dict[str, Any]]]
    """Per entity, per group ref: {"event_time": ISO text or None, "status": "ok" | "missing" | "expired" | "future"}."""

    def rows(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()

    def missing(self, index: int) -> list[str]:
        """The group refs whose value the entity lacks."""
        return [ref for ref, used in self.sources[index].items() if used["status"] != "ok"]


def entity_columns(view: FeatureView) -> list[str]:
    """The label columns an entity must give: the stored ones the joins use, and those `derive` reads."""
    label = view.label
    stored = {f.name for f in label.group.features}
    brought = set()
    needed = []
    for selection in view.selections:
        for column in selection.join_keys.values():
            if column in stored and column not in brought:
                needed.append(column)
        brought.update(selection.output_name(f) for f in selection.features)
    needed.extend(label.reads)
    return [c for c in dict.fromkeys(needed) if c not in (label.target, label.group.event_time)]


def _label_table(view: FeatureView, entities: Sequence[Mapping[str, Any]], at: datetime) -> pa.Table:
    label = view.label
    if not entities:
        raise EntityError("no entities given")
    required = entity_columns(view)
    stored = {f.name: f for f in label.group.features}
    columns: dict[str, pa.Array] = {}
    for position, entity in enumerate(entities):
        if not isinstance(entity, Mapping):
            raise EntityError(f"entities[{position}] must be an object of key values")
        missing = [c for c in required if entity.get(c) is None]
        if missing:
            raise EntityError(f"entities[{position}] lacks {', '.join(missing)}; an entity of view {view.ref} "
                              f"gives {', '.join(required)}")
    given = [c for c in dict.fromkeys(k for e in entities for k in e) if c in stored]
    for name in given:
        kind = stored[name].dtype
        values = [entity.get(name) for entity in entities]
        try:
            if pa.types.is_timestamp(kind):
                from features.conform import to_utc_timestamps

                column = to_utc_timestamps(pa.array([None if v is None else str(v) for v in values], pa.string()))
            elif pa.types.is_date(kind):
                column = pc.cast(pa.array([None if v is None else str(v) for v in values], pa.string()), kind)
            else:
                column = pa.array(values).cast(kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
            raise EntityError(f"entity column {name!r} is {kind}; cannot read {values!r} as that") from None
        columns[name] = column
    columns[label.group.event_time] = pa.array([at] * len(entities), _TIME)
    table = pa.table(columns)
    if label.derive is not None:
        try:
            table = label.derive(table)
        except (KeyError, pa.ArrowException, ValueError, TypeError) as error:
            raise EntityError(f"view {view.ref} cannot derive its join columns from the entities given: {error}") \
                from None
    return table


def online_vectors(view: FeatureView, entities: Sequence[Mapping[str, Any]], store: OnlineStore,
                   at: datetime | None = None) -> Vectors:
    """Each entity's feature vector as of `at` (default: now); an entity with no row at all in a group is a 404."""
    at = (at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    table = _label_table(view, entities, at)
    at_us = (at - _EPOCH) // timedelta(microseconds=1)
    given = set(entity_columns(view))
    sources: list[dict[str, dict[str, Any]]] = [{} for _ in range(table.num_rows)]
    for selection in view.selections:
        group = selection.group
        label_keys = [selection.join_keys[k] for k in group.primary_key]
        key_columns = [table.column(c).to_pylist() for c in label_keys]
        keys = list(zip(*key_columns))
        found = store.read(group, keys)
        events = pc.cast(found.event_times, pa.int64()).to_pylist()
        valid = []
        for index, (key, present, event) in enumerate(zip(keys, found.found, events)):
            if not present:
                # A key the caller gave that the group never had is unknown (404); a key derived from the entity
                # or brought by another group may simply have no row yet (a week nobody booked): missing.
                if all(part is not None for part in key) and set(label_keys) <= given:
                    raise EntityError(f"no {group.ref} row for key {dict(zip(group.primary_key, key))}",
                                      unknown=True)
                status = "missing"
            elif event > at_us:
                status = "future"
            elif selection.ttl is not None and event < at_us - int(selection.ttl.total_seconds() * 1_000_000):
                status = "expired"
            else:
                status = "ok"
            valid.append(status == "ok")
            when = None if event is None else datetime.fromtimestamp(event / 1_000_000, timezone.utc).isoformat()
            sources[index][group.ref] = {"event_time": when, "status": status}
        mask = pa.array(valid, pa.bool_())
        for feature in selection.features:
            column = found.values.column(feature)
            kept = pc.if_else(mask, column, pa.nulls(len(column), column.type))
            name = selection.output_name(feature)
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, kept)
    return Vectors(table=table, sources=sources)
