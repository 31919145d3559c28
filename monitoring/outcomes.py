"""Outcomes: what really happened, reported after the prediction (tomorrow's surf height, the fruit's true kind).

An outcome names the prediction it resolves in one of two ways:

- by **request id** (the `x-request-id` the endpoint answered with) and the instance's `index` within that
  request (0 for a one-row request): `{"request_id": "…", "index": 0, "outcome": "apple"}`;
- by **entity key** and time, for predictions made from entity keys: `{"entity": {"beach_id": 3},
  "time": "2026-12-02T06:00:00Z", "outcome": 1.7}`; it resolves the latest prediction for that entity made at or
  before `time` (the time the outcome was observed; now if not given) and within the monitor's horizon.

Outcomes are checked against the model's signature (a class the model knows, or a finite number) before they are
stored; a bad one is refused with its position and the reason, and nothing of that batch is stored. Each accepted
batch is one new JSON Lines file under `<storage>/outcomes/<model>/<YYYY-MM-DD>/`, written atomically: a batch is
either wholly there or not at all. A later outcome for the same request and index replaces an earlier one (a
correction).
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from orchard.errors import UsageError
from orchard.storage import Storage

OUTCOMES = "outcomes"
MAX_OUTCOMES = 100_000
"""Outcomes accepted in one batch (one file)."""


class OutcomeError(UsageError):
    http_status = 422


def parse_time(value: Any, where: str) -> datetime:
    """An ISO 8601 time; one without a zone is taken as UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise OutcomeError(f"{where}: time {value!r} is not an ISO 8601 time") from None
    else:
        raise OutcomeError(f"{where}: time must be an ISO 8601 string, got {type(value).__name__}")
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def check_outcomes(signature: Mapping[str, Any], records: Iterable[Any], *, now: datetime | None = None) -> list[dict]:
    """The records as stored outcomes, or OutcomeError naming the first bad one and what is wrong with it."""
    received = (now or datetime.now(timezone.utc)).isoformat()
    checked = []
    for position, record in enumerate(records):
        where = f"outcome {position}"
        if position >= MAX_OUTCOMES:
            raise OutcomeError(f"more than {MAX_OUTCOMES} outcomes in one batch; send them in parts")
        if not isinstance(record, Mapping):
            raise OutcomeError(f"{where} must be a JSON object, got {type(record).__name__}")
        unknown = sorted(set(record) - {"request_id", "index", "entity", "time", "outcome"})
        if unknown:
            raise OutcomeError(f"{where} has unknown field(s) {unknown}; an outcome has request_id and index, or "
                               "entity and time, and outcome")
        if "outcome" not in record:
            raise OutcomeError(f"{where} has no outcome")
        stored = {"outcome": _checked_value(signature, record["outcome"], where), "received": received}
        has_request, has_entity = record.get("request_id") is not None, record.get("entity") is not None
        if has_request == has_entity:
            raise OutcomeError(f"{where} must name its prediction by request_id (and index) or by entity, "
                               "and not by both")
        if has_request:
            request_id, index = record["request_id"], record.get("index", 0)
            if not isinstance(request_id, str) or not request_id.strip():
                raise OutcomeError(f"{where}: request_id must be a non-empty string")
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise OutcomeError(f"{where}: index must be a non-negative integer (the instance's position in "
                                   f"its request), got {index!r}")
            stored.update(request_id=request_id, index=index)
        else:
            entity = record["entity"]
            if not isinstance(entity, Mapping) or not entity or not all(isinstance(k, str) for k in entity):
                raise OutcomeError(f"{where}: entity must be an object of the view's entity columns")
            if any(isinstance(v, (dict, list)) for v in entity.values()):
                raise OutcomeError(f"{where}: entity values must be plain values (strings, numbers)")
            stored["entity"] = dict(entity)
        stored["time"] = parse_time(record["time"], where).isoformat() if record.get("time") is not None \
            else received
        checked.append(stored)
    if not checked:
        raise OutcomeError("there are no outcomes to store")
    return checked


def _checked_value(signature: Mapping[str, Any], value: Any, where: str) -> Any:
    if signature["task"] == "classification":
        classes = signature["classes"]
        if isinstance(value, float) and value.is_integer():  # a CSV's "3" for class "3"
            value = int(value)
        if isinstance(value, bool):  # JSON true for class "True"
            value = str(value)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) not in classes:
            raise OutcomeError(f"{where}: outcome {value!r} is not one of the model's classes {classes}")
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OutcomeError(f"{where}: outcome must be a finite number for a regressor, got {value!r}")
    return float(value)


def entity_key(entity: Mapping[str, Any]) -> str:
    """One text per entity, whatever order its columns came in; values compare as text (a CSV's "3" is 3)."""
    return json.dumps({k: str(v) for k, v in entity.items()}, sort_keys=True, separators=(",", ":"))


def store_outcomes(storage: Storage, model: str, outcomes: list[dict]) -> str:
    """Write checked outcomes as one new file; returns its path under the storage root."""
    now = datetime.now(timezone.utc)
    path = f"{OUTCOMES}/{model}/{now:%Y-%m-%d}/{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.jsonl"
    storage.write_bytes(path, "".join(json.dumps(o, allow_nan=False) + "\n" for o in outcomes).encode())
    return path


def read_outcome_file(data: bytes, name: str) -> list[dict]:
    """Outcomes from a JSON Lines file, a JSON list, or a CSV file (columns request_id, index, time, outcome;
    any other column is an entity column)."""
    text = data.decode("utf-8-sig")
    if name.endswith(".csv"):
        records = []
        for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            record: dict[str, Any] = {}
            if row.get("request_id"):
                record["request_id"] = row["request_id"]
                if row.get("index"):
                    try:
                        record["index"] = int(row["index"])
                    except ValueError:
                        raise OutcomeError(f"{name} line {line}: index {row['index']!r} is not an integer") from None
            else:
                entity = {k: v for k, v in row.items() if k not in ("request_id", "index", "time", "outcome")
                          and k is not None and v not in (None, "")}
                record["entity"] = entity
            if row.get("time"):
                record["time"] = row["time"]
            record["outcome"] = _csv_value(row.get("outcome"))
            records.append(record)
        return records
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as error:
            raise OutcomeError(f"{name} is not valid JSON: {error}") from None
    records = []
    for line, content in enumerate(text.splitlines(), start=1):
        if content.strip():
            try:
                records.append(json.loads(content))
            except json.JSONDecodeError as error:
                raise OutcomeError(f"{name} line {line} is not valid JSON: {error}") from None
    return records


def _csv_value(value: str | None) -> Any:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return number
