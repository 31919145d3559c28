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
    """Each entity's label columns (as given and derived) and the view's feature columns (None where missing),
    and per entity and group what was used."""

    entity_rows: list[dict[str, Any]]
    sources: list[dict[str, dict[str, Any]]]
    """Per entity, per group ref: {"event_time": ISO text or None, "status": "ok" | "missing" | "expired" | "future"}."""

    def rows(self) -> list[dict[str, Any]]:
        return self.entity_rows

    def document(self, view: FeatureView, index: int = 0) -> dict[str, Any]:
        """One entity's vector as the service and `orchard features get` answer it."""
        row = self.entity_rows[index]
        return {"view": view.ref, "entity_columns": entity_columns(view),
                "features": {c: row[c] for c in view.feature_columns()}, "groups": self.sources[index]}

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


def _check_entities(view: FeatureView, entities: Sequence[Mapping[str, Any]]) -> None:
    if not entities:
        raise EntityError("no entities given")
    required = entity_columns(view)
    for position, entity in enumerate(entities):
        if not isinstance(entity, Mapping):
            raise EntityError(f"entities[{position}] must be an object of key values")
        missing = [c for c in required if entity.get(c) is None]
        if missing:
            raise EntityError(f"entities[{position}] lacks {', '.join(missing)}; an entity of view {view.ref} "
                              f"gives {', '.join(required)}")


def _derived_rows(view: FeatureView, entities: Sequence[Mapping[str, Any]], at: datetime) -> list[dict[str, Any]]:
    """The entities as label rows after the view's `derive` (an Arrow function): columns in the label group's
    types, the label time `at`."""
    label = view.label
    stored = {f.name: f for f in label.group.features}
    columns: dict[str, pa.Array] = {}
    for name in [c for c in dict.fromkeys(k for e in entities for k in e) if c in stored]:
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
    try:
        table = label.derive(pa.table(columns))
    except (KeyError, pa.ArrowException, ValueError, TypeError) as error:
        raise EntityError(f"view {view.ref} cannot derive its join columns from the entities given: {error}") \
            from None
    rows = table.to_pylist()
    for row, entity in zip(rows, entities):  # request-time values the label group does not hold
        for name, value in entity.items():
            row.setdefault(name, value)
    return rows


def online_vectors(view: FeatureView, entities: Sequence[Mapping[str, Any]], store: OnlineStore,
                   at: datetime | None = None) -> Vectors:
    """Each entity's feature vector as of `at` (default: now); a key the caller gave that a group never had is
    a 404 (`EntityError`)."""
    at = (at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    _check_entities(view, entities)
    rows = _derived_rows(view, entities, at) if view.label.derive is not None else [dict(e) for e in entities]
    at_us = (at - _EPOCH) // timedelta(microseconds=1)
    given = set(entity_columns(view))
    sources: list[dict[str, dict[str, Any]]] = [{} for _ in rows]
    for selection in view.selections:
        group = selection.group
        label_keys = [selection.join_keys[k] for k in group.primary_key]
        keys = [tuple(row.get(c) for c in label_keys) for row in rows]
        found = store.read_rows(group, keys)
        oldest = None if selection.ttl is None else at_us - selection.ttl // timedelta(microseconds=1)
        names = [(feature, selection.output_name(feature)) for feature in selection.features]
        for index, (key, row, hit) in enumerate(zip(keys, rows, found)):
            if hit is None:
                # A key the caller gave that the group never had is unknown (404); a key derived from the entity
                # or brought by another group may simply have no row yet (a week nobody booked): missing.
                if all(part is not None for part in key) and set(label_keys) <= given:
                    raise EntityError(f"no {group.ref} row for key {dict(zip(group.primary_key, key))}",
                                      unknown=True)
                status, event = "missing", None
            else:
                event, values = hit
                status = "future" if event > at_us else "expired" if oldest is not None and event < oldest else "ok"
            for feature, name in names:
                row[name] = values[feature] if status == "ok" else None
            sources[index][group.ref] = {
                "event_time": None if event is None else (_EPOCH + event * timedelta(microseconds=1)).isoformat(),
                "status": status}
    return Vectors(entity_rows=rows, sources=sources)
