"""`orchard monitor MODEL`: the prediction log joined with outcomes, performance and drift per time window.

Everything runs on Ray Data. The log's JSON Lines files are read as text and
parsed in blocks into one row per predicted instance; each block turns into
small mergeable summaries per (version, window) — counts on the reference grid
of every feature, per category, of the predictions (`monitoring.stats`) — which
the driver merges. Outcomes are joined by a group-by on the join key over the
union of predictions and outcomes, so neither side is ever gathered in one
process; the pairs become evaluation sums per (version, window), merged the same
way.

The reference of each version is its own training split, found through the
version's lineage (view and dataset version): the same summaries computed on
that split, kept under `<storage>/monitoring/<model>/reference/` after the first
run.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from monitoring import stats
from monitoring.outcomes import OUTCOMES, entity_key, parse_time
from orchard.errors import NotFoundError, UsageError
from orchard.registry import HIGHER_IS_BETTER, ModelRegistry
from orchard.storage import Storage
from training import evaluation

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
MONITORING = "monitoring"
REFERENCE_FORMAT = 1
ROWS_PER_PARTITION = 200_000
class MonitorError(UsageError):
    pass


@dataclass(frozen=True)
class MonitorSettings:
    window: timedelta = timedelta(days=1)
    horizon: timedelta = timedelta(days=7)
    """How long after a prediction an outcome reported by entity key may still resolve it."""
    since: datetime | None = None
    until: datetime | None = None
    thresholds: stats.DriftThresholds = stats.DriftThresholds()


# -- the version's reference: its training split


def _input_kinds(signature: dict) -> dict[str, str]:
    """numeric or categorical per input the monitor follows (images are logged as hashes: not followed)."""
    kinds = {}
    for item in signature["inputs"]:
        if item.get("image"):
            continue
        kinds[item["name"]] = "numeric" if item["datatype"] in ("FP64", "FP32", "INT64", "INT32") else "categorical"
    return kinds


def _reference_block(table: pa.Table, kinds: dict[str, str], target: str, task: str) -> pa.Table:
    """Pass 1 over the training split: count, nulls, range and moments per numeric column, counts per category."""
    summary: dict[str, Any] = {}
    columns = {**kinds, target: "numeric" if task == "regression" else "categorical"}
    for name, kind in columns.items():
        values = table.column(name).to_pylist() if name in table.column_names else []
        if kind == "numeric":
            array = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            finite = array[np.isfinite(array)]
            summary[name] = {"n": int(len(finite)), "nulls": int(len(array) - len(finite)),
                             "min": float(finite.min()) if len(finite) else None,
                             "max": float(finite.max()) if len(finite) else None,
                             "mean": float(finite.mean()) if len(finite) else 0.0,
                             "m2": float(np.square(finite - finite.mean()).sum()) if len(finite) else 0.0}
        else:
            summary[name] = stats.categorical_counts(values)
    return pa.table({"summary": [json.dumps(summary)]})


def _merge_moments(a: dict, b: dict) -> dict:
    n = a["n"] + b["n"]
    if n == 0:
        return {**a, "nulls": a["nulls"] + b["nulls"]}
    delta = b["mean"] - a["mean"]
    bounds = [x for x in (a["min"], b["min"]) if x is not None], [x for x in (a["max"], b["max"]) if x is not None]
    return {"n": n, "nulls": a["nulls"] + b["nulls"], "min": min(bounds[0]), "max": max(bounds[1]),
            "mean": a["mean"] + delta * b["n"] / n, "m2": a["m2"] + b["m2"] + delta ** 2 * a["n"] * b["n"] / n}


def _grid_block(table: pa.Table, grids: dict[str, list[float]]) -> pa.Table:
    """Pass 2 over the training split: every numeric column's values counted on its grid."""
    counts = {}
    for name, (lo, hi, bins) in grids.items():
        edges = stats.grid_edges({"lo": lo, "hi": hi, "counts": [0] * int(bins)})
        values = np.array([np.nan if v is None else float(v) for v in table.column(name).to_pylist()])
        counts[name] = stats.numeric_counts(values, edges)["counts"]
    return pa.table({"counts": [json.dumps(counts)]})


def build_reference(storage: Storage, card: dict) -> dict:
    """The summaries of a model version's training split (two passes of Ray Data over it)."""
    from features.catalog import get_view
    from features.datasets import TrainingDataset

    lineage, signature = card["lineage"], card["signature"]
    task, target = signature["task"], signature["target"]
    dataset = TrainingDataset.open(storage, get_view(lineage["view"]), lineage["dataset_version"])
    kinds = _input_kinds(signature)
    train = dataset.read("train").select_columns([c for c in dict.fromkeys([*kinds, target])])
    merged: dict[str, Any] = {}
    for row in train.map_batches(_reference_block, batch_format="pyarrow", batch_size=None,
                                 fn_kwargs={"kinds": kinds, "target": target, "task": task}).iter_rows():
        for name, part in json.loads(row["summary"]).items():
            if name not in merged:
                merged[name] = part
            elif "counts" in part:
                merged[name] = stats.merge(merged[name], part)
            else:
                merged[name] = _merge_moments(merged[name], part)
    numeric = {name: part for name, part in merged.items() if "counts" not in part}
    grids = {name: (part["min"] if part["n"] else 0.0, part["max"] if part["n"] else 0.0, stats.GRID_BINS)
             for name, part in numeric.items()}
    grid_counts = {name: np.zeros(stats.GRID_BINS, dtype=np.int64) for name in grids}
    if grids:
        for row in train.map_batches(_grid_block, batch_format="pyarrow", batch_size=None,
                                     fn_kwargs={"grids": grids}).iter_rows():
            for name, counts in json.loads(row["counts"]).items():
                grid_counts[name] += np.asarray(counts, dtype=np.int64)
    features = {}
    for name, part in merged.items():
        if name in numeric:
            lo, hi, _ = grids[name]
            std = math.sqrt(part["m2"] / part["n"]) if part["n"] else 0.0
            features[name] = stats.numeric_reference(name, lo, hi, grid_counts[name], n=part["n"],
                                                     nulls=part["nulls"], mean=part["mean"], std=std)
        else:
            features[name] = {"name": name, **part}
    prediction = features.pop(target) if target not in kinds else dict(features[target])
    return {"format": REFERENCE_FORMAT, "task": task, "target": target,
            "dataset": {"view": lineage["view"], "version": lineage["dataset_version"],
                        "location": lineage.get("dataset_location")},
            "rows": dataset.metadata["rows"]["train"], "features": features, "prediction": prediction,
            "classes": signature.get("classes")}


def reference_for(storage: Storage, model: str, version: int, card: dict) -> dict:
    location = f"{MONITORING}/{model}/reference/v{version}.json"
    if storage.exists(location):
        cached = storage.read_json(location)
        if cached.get("format") == REFERENCE_FORMAT:
            return cached
    reference = build_reference(storage, card)
    storage.write_json(location, reference)
    return reference


# -- the prediction log, parsed


_PREDICTION_SCHEMA = pa.schema([
    ("key", pa.string()), ("uid", pa.string()), ("rid", pa.string()), ("entity", pa.string()), ("ts", pa.float64()),
    ("version", pa.int64()), ("window", pa.float64()), ("label", pa.string()), ("value", pa.float64()),
    ("inputs", pa.string()), ("shadow", pa.bool_()), ("error", pa.string()),
])


def _window_start(seconds: float, window_s: float) -> float:
    return math.floor(seconds / window_s) * window_s


def _parse_log_block(batch: pa.Table, window_s: float, since: float | None, until: float | None) -> pa.Table:
    """One row per predicted instance: `rid` is its request id and its position in the request (as the answer
    lists it), `uid` the version and `rid` (a shadow answers the same request as production, and says so in
    `shadow`). A line that is not a log record becomes one row with its `error`, counted and reported, never
    dropped silently."""
    rows: dict[str, list] = {name: [] for name in _PREDICTION_SCHEMA.names}

    def add(**values):
        for name in _PREDICTION_SCHEMA.names:
            rows[name].append(values.get(name))

    for line in batch.column("text").to_pylist():
        if not line or not line.strip():
            continue
        try:
            record = json.loads(line)
            moment = parse_time(record["time"], "log record").timestamp()
            version, request_id = int(record["version"]), str(record["request_id"])
            inputs, outputs = record["inputs"], record["outputs"]
            entities, positions = record.get("entities"), record.get("positions")
            if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
                raise ValueError("inputs and outputs must be lists of one length")
            if positions is not None and (not isinstance(positions, list) or len(positions) != len(inputs)):
                raise ValueError("positions must list one position per input")
        except (ValueError, KeyError, TypeError) as error:
            add(error=f"{type(error).__name__}: {error}"[:200])
            continue
        if (since is not None and moment < since) or (until is not None and moment >= until):
            continue
        for index, (instance, output) in enumerate(zip(inputs, outputs)):
            label = output.get("label") if isinstance(output, dict) else None
            value = float(output) if isinstance(output, (int, float)) and not isinstance(output, bool) else None
            entity = entities[index] if isinstance(entities, list) and index < len(entities) else None
            position = positions[index] if positions is not None else index
            add(key=None, uid=f"{version}:{request_id}:{position}", rid=f"{request_id}:{position}",
                entity=entity_key(entity) if entity else None, ts=moment,
                version=version, window=_window_start(moment, window_s), label=None if label is None else str(label),
                value=value, inputs=json.dumps(instance, default=str), shadow=bool(record.get("shadow")))
    return pa.table(rows, schema=_PREDICTION_SCHEMA)


def _drift_block(batch: pa.Table, references: dict[str, dict]) -> pa.Table:
    """Current summaries of one block per (version, window): every followed input and the predictions."""
    groups: dict[tuple[int, float], dict] = {}
    versions = batch.column("version").to_pylist()
    windows = batch.column("window").to_pylist()
    inputs = batch.column("inputs").to_pylist()
    labels, values = batch.column("label").to_pylist(), batch.column("value").to_pylist()
    errors = batch.column("error").to_pylist()
    shadows = batch.column("shadow").to_pylist()
    members: dict[tuple[int, float], list[int]] = {}
    malformed = 0
    for i, (version, window) in enumerate(zip(versions, windows)):
        if errors[i] is not None:
            malformed += 1
            continue
        members.setdefault((version, window), []).append(i)
    for (version, window), indices in members.items():
        reference = references[str(version)]
        parsed = [json.loads(inputs[i]) for i in indices]
        summary = {"predictions": len(indices), "shadow": sum(1 for i in indices if shadows[i]), "features": {}}
        for name, ref in reference["features"].items():
            column = [row.get(name) if isinstance(row, dict) else None for row in parsed]
            summary["features"][name] = _summarize(ref, column)
        predicted = [labels[i] for i in indices] if reference["task"] == "classification" \
            else [values[i] for i in indices]
        summary["prediction"] = _summarize(reference["prediction"], predicted)
        groups[(version, window)] = summary
    out = {"version": [], "window": [], "summary": []}
    for (version, window), summary in groups.items():
        out["version"].append(version)
        out["window"].append(window)
        out["summary"].append(json.dumps(summary))
    if malformed:
        out["version"].append(-1)
        out["window"].append(0.0)
        out["summary"].append(json.dumps({"malformed": malformed}))
    return pa.table(out, schema=pa.schema([("version", pa.int64()), ("window", pa.float64()),
                                           ("summary", pa.string())]))


def _summarize(reference: dict, values: list) -> dict:
    if reference["kind"] == "numeric":
        numbers = np.array([np.nan if v is None or isinstance(v, (str, bool, dict, list)) else float(v)
                            for v in values], dtype=np.float64)
        return stats.numeric_counts(numbers, stats.grid_edges(reference))
    return stats.categorical_counts(values)


# -- outcomes joined to predictions


_JOIN_SCHEMA = pa.schema([
    ("key", pa.string()), ("side", pa.string()), ("uid", pa.string()), ("rid", pa.string()), ("ts", pa.float64()),
    ("version", pa.int64()), ("window", pa.float64()), ("label", pa.string()), ("value", pa.float64()),
    ("shadow", pa.bool_()), ("outcome_label", pa.string()), ("outcome_value", pa.float64()), ("via", pa.string()),
    ("received", pa.string()),
])


def _prediction_keys(batch: pa.Table) -> pa.Table:
    """Each prediction under its request key, and under its entity key when it was made for an entity."""
    ok = [e is None for e in batch.column("error").to_pylist()]
    table = batch.filter(pa.array(ok))
    rids, entities = table.column("rid").to_pylist(), table.column("entity").to_pylist()
    repeat = [i for i, entity in enumerate(entities) if entity is not None]
    keys = [f"r:{r}" for r in rids] + [f"e:{entities[i]}" for i in repeat]
    take = pa.array(list(range(len(rids))) + repeat, pa.int64())
    picked = table.take(take)
    n = len(keys)
    return pa.table({"key": keys, "side": ["p"] * n, "uid": picked.column("uid"), "rid": picked.column("rid"),
                     "ts": picked.column("ts"), "version": picked.column("version"),
                     "window": picked.column("window"), "label": picked.column("label"),
                     "value": picked.column("value"), "shadow": picked.column("shadow"),
                     "outcome_label": pa.nulls(n, pa.string()), "outcome_value": pa.nulls(n, pa.float64()),
                     "via": pa.nulls(n, pa.string()), "received": pa.nulls(n, pa.string())}, schema=_JOIN_SCHEMA)


def _outcome_rows(batch: pa.Table, task: str) -> pa.Table:
    rows: dict[str, list] = {name: [] for name in _JOIN_SCHEMA.names}
    for number, line in enumerate(batch.column("text").to_pylist()):
        if not line or not line.strip():
            continue
        record = json.loads(line)  # written by store_outcomes after checking: well-formed
        key = f"r:{record['request_id']}:{record.get('index', 0)}" if "request_id" in record \
            else f"e:{entity_key(record['entity'])}"
        outcome = record["outcome"]
        values = {"key": key, "side": "o", "ts": parse_time(record["time"], "outcome").timestamp(),
                  "outcome_label": str(outcome) if task == "classification" else None,
                  "outcome_value": float(outcome) if task == "regression" else None,
                  # When it was received, then its place in its batch (a file): the later of two outcomes for one
                  # request wins, even within one batch.
                  "received": f"{record.get('received', '')}|{number:09d}"}
        for name in _JOIN_SCHEMA.names:
            rows[name].append(values.get(name))
    return pa.table(rows, schema=_JOIN_SCHEMA)


def _pair(group: pa.Table, horizon_s: float) -> pa.Table:
    """The predictions and outcomes of one join key, paired (side "m"); outcomes that resolve nothing come out with
    side "u".

    By request key: the last outcome received (a correction replaces what came before) resolves the request's
    instance for every version that answered it (production, and a challenger in shadow on the same request).
    By entity key: each outcome resolves the latest prediction returned for that entity (any version, shadow
    answers aside) made at or before its time and within the horizon, and the shadow answers of that same request;
    a prediction takes one outcome (the first)."""
    rows = group.to_pylist()
    outcomes = [r for r in rows if r["side"] == "o"]
    if not outcomes:
        return pa.Table.from_pylist([], schema=_JOIN_SCHEMA)
    predictions = sorted((r for r in rows if r["side"] == "p"), key=lambda r: r["ts"])
    out = []
    if rows[0]["key"].startswith("r:"):
        latest = max(outcomes, key=lambda r: (r["received"] or "", r["ts"]))
        latest_per_version = {p["version"]: p for p in predictions}  # sorted by time: the last one stays
        out += [{**p, "side": "m", "via": "request", "outcome_label": latest["outcome_label"],
                 "outcome_value": latest["outcome_value"]} for p in latest_per_version.values()]
        if not latest_per_version:
            out.append({**latest, "side": "u"})
        return pa.Table.from_pylist(out, schema=_JOIN_SCHEMA)
    served = [p for p in predictions if not p["shadow"]]
    times = [p["ts"] for p in served]
    taken: set[int] = set()
    for outcome in sorted(outcomes, key=lambda r: r["ts"]):
        position = int(np.searchsorted(times, outcome["ts"], side="right")) - 1
        if position < 0 or position in taken or outcome["ts"] - times[position] > horizon_s:
            out.append({**outcome, "side": "u"})
            continue
        taken.add(position)
        answer = served[position]
        shadows = [p for p in predictions if p["shadow"] and p["rid"] == answer["rid"]]
        out += [{**p, "side": "m", "via": "entity", "outcome_label": outcome["outcome_label"],
                 "outcome_value": outcome["outcome_value"]} for p in [answer, *shadows]]
    return pa.Table.from_pylist(out, schema=_JOIN_SCHEMA)


def _first_per_prediction(group: pa.Table) -> pa.Table:
    """A prediction resolved both by request id and by entity keeps its request-id outcome."""
    rows = sorted(group.to_pylist(), key=lambda r: r["via"] != "request")
    return pa.Table.from_pylist(rows[:1], schema=_JOIN_SCHEMA)


def _performance_block(batch: pa.Table, references: dict[str, dict]) -> pa.Table:
    """Evaluation sums per (version, window) of paired rows; one row of version -1 counts the outcomes that matched
    nothing and the pairs made by request id and by entity."""
    out = {"version": [], "window": [], "summary": []}
    sides, via = batch.column("side").to_pylist(), batch.column("via").to_pylist()
    counts = {"unmatched": sum(1 for s in sides if s == "u"), "via_request": via.count("request"),
              "via_entity": via.count("entity")}
    groups: dict[tuple[int, float], list[int]] = {}
    for i, side in enumerate(sides):
        if side == "m":
            groups.setdefault((batch.column("version")[i].as_py(), batch.column("window")[i].as_py()), []).append(i)
    for (version, window), indices in groups.items():
        reference = references[str(version)]
        take = batch.take(pa.array(indices, pa.int64()))
        if reference["task"] == "classification":
            classes = reference["classes"]
            position = {c: i for i, c in enumerate(classes)}
            truth = [position.get(v) for v in take.column("outcome_label").to_pylist()]
            predicted = [position.get(v) for v in take.column("label").to_pylist()]
            known = [i for i, (t, p) in enumerate(zip(truth, predicted)) if t is not None and p is not None]
            sums = evaluation.partials("classification", np.array([truth[i] for i in known], dtype=np.int64),
                                       np.array([predicted[i] for i in known], dtype=np.int64),
                                       n_classes=len(classes))
            skipped = len(indices) - len(known)
        else:
            truth = np.array(take.column("outcome_value").to_pylist(), dtype=np.float64)
            predicted = np.array([np.nan if v is None else v for v in take.column("value").to_pylist()])
            keep = np.isfinite(truth) & np.isfinite(predicted)
            sums = evaluation.partials("regression", truth[keep], predicted[keep],
                                       train_mean=reference["prediction"]["mean"])
            skipped = int((~keep).sum())
        out["version"].append(version)
        out["window"].append(window)
        out["summary"].append(json.dumps({"with_outcome": len(indices), "skipped": skipped, "sums": sums}))
    out["version"].append(-1)
    out["window"].append(0.0)
    out["summary"].append(json.dumps(counts))
    return pa.table(out, schema=pa.schema([("version", pa.int64()), ("window", pa.float64()),
                                           ("summary", pa.string())]))


def _versions_block(batch: pa.Table) -> pa.Table:
    versions = sorted({v for v in batch.column("version").to_pylist() if v is not None})
    return pa.table({"version": pa.array(versions, pa.int64())})


def _performance_sums(paired, references: dict[str, dict]) -> tuple[dict, dict]:
    """Evaluation sums per (version, window), merged, and the counts of `_performance_block`."""
    performance: dict[tuple[int, float], dict] = {}
    counts = {"unmatched": 0, "via_request": 0, "via_entity": 0}
    for row in paired.map_batches(_performance_block, batch_format="pyarrow", batch_size=None,
                                  fn_kwargs={"references": references}).iter_rows():
        summary = json.loads(row["summary"])
        if row["version"] == -1:
            counts = {key: counts[key] + summary[key] for key in counts}
            continue
        key = (row["version"], row["window"])
        previous = performance.get(key)
        performance[key] = summary if previous is None else {
            "with_outcome": previous["with_outcome"] + summary["with_outcome"],
            "skipped": previous["skipped"] + summary["skipped"],
            "sums": evaluation.merge(previous["sums"], summary["sums"])}
    return performance, counts


# -- the job


def _files(storage: Storage, folder: str) -> list[str]:
    return sorted(storage.uri(entry.path) for entry in storage.find_files(folder, "*.jsonl"))


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def monitor(storage: Storage, model: str, settings: MonitorSettings = MonitorSettings()) -> dict:
    """The monitoring report of `model` (as a dict; `monitoring.report.write_report` stores it)."""
    import ray.data

    registry = ModelRegistry(storage)
    if model not in registry.models():
        raise NotFoundError(f"model {model!r} is not registered; known: {', '.join(registry.models()) or 'none'}")
    log_files = _files(storage, f"{PREDICTIONS}/{model}")
    if not log_files:
        raise MonitorError(f"no predictions of {model} are logged under {storage.uri(f'{PREDICTIONS}/{model}')}: "
                           "serve the model and send it requests first")
    window_s = settings.window.total_seconds()
    bounds = {"since": settings.since.timestamp() if settings.since else None,
              "until": settings.until.timestamp() if settings.until else None}
    parsed = ray.data.read_text(log_files).map_batches(
        _parse_log_block, batch_format="pyarrow", batch_size=None, fn_kwargs={"window_s": window_s, **bounds}
    ).materialize()
    # A line that did not parse has no version. (A map and a set on the driver: cheaper than a group-by.)
    versions = sorted({int(row["version"]) for row in parsed.map_batches(_versions_block, batch_format="pyarrow",
                                                                         batch_size=None).iter_rows()})
    cards, references = {}, {}
    for version in versions:
        try:
            cards[version] = registry.get(model, version).card
        except NotFoundError:
            raise MonitorError(f"the log of {model} holds predictions of version {version}, which the registry "
                               "no longer has") from None
    for version, card in cards.items():
        references[str(version)] = {**reference_for(storage, model, version, card),
                                    "test_metrics": (card.get("metrics") or {}).get("test")}

    current: dict[tuple[int, float], dict] = {}
    malformed = 0
    if references:
        for row in parsed.map_batches(_drift_block, batch_format="pyarrow", batch_size=None,
                                      fn_kwargs={"references": references}).iter_rows():
            summary = json.loads(row["summary"])
            if row["version"] == -1:
                malformed += summary["malformed"]
                continue
            current[(row["version"], row["window"])] = _merge_current(current.get((row["version"], row["window"])),
                                                                       summary)
    else:
        malformed = parsed.count()

    performance: dict[tuple[int, float], dict] = {}
    outcome_files = _files(storage, f"{OUTCOMES}/{model}")
    counts = {"unmatched": 0}
    received = 0
    task = next(iter(references.values()))["task"] if references else None
    if outcome_files and task:
        outcomes = ray.data.read_text(outcome_files).map_batches(
            _outcome_rows, batch_format="pyarrow", batch_size=None, fn_kwargs={"task": task}).materialize()
        received = outcomes.count()
        keyed = parsed.map_batches(_prediction_keys, batch_format="pyarrow", batch_size=None)
        # Hash partitions for the join: Ray Data's default (200) costs seconds of tasks on a small log.
        partitions = max(1, min(64, (parsed.count() + received) // ROWS_PER_PARTITION + 1))
        paired = keyed.union(outcomes).groupby("key", num_partitions=partitions).map_groups(
            _pair, batch_format="pyarrow", fn_kwargs={"horizon_s": settings.horizon.total_seconds()}).materialize()
        performance, counts = _performance_sums(paired, references)
        if counts["via_entity"] and counts["via_request"]:
            # An entity's prediction may have been resolved both by its request id and by its entity key: it keeps
            # the request id's outcome, and the sums are taken again.
            matched = paired.filter(expr="side == 'm'").groupby("uid", num_partitions=partitions).map_groups(
                _first_per_prediction, batch_format="pyarrow")
            performance, _ = _performance_sums(matched.union(paired.filter(expr="side == 'u'")), references)
    return _report(model, settings, references, current, performance,
                   {"log_files": len(log_files), "malformed_log_lines": malformed, "outcomes_received": received,
                    "outcomes_unmatched": counts["unmatched"]})


def _merge_current(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {"predictions": a["predictions"] + b["predictions"], "shadow": a.get("shadow", 0) + b.get("shadow", 0),
            "features": {name: stats.merge(a["features"].get(name), part) for name, part in b["features"].items()},
            "prediction": stats.merge(a["prediction"], b["prediction"])}


def _performance(reference: dict, summary: dict | None, thresholds: stats.DriftThresholds) -> dict | None:
    if summary is None:
        return None
    sums = summary["sums"]
    task = reference["task"]
    if task == "classification":
        if sum(map(sum, sums["confusion_matrix"])) == 0:
            return None
        counts = reference["prediction"]["counts"]
        majority = reference["classes"].index(max(counts, key=counts.get)) if counts else 0
        result = evaluation.finish(task, sums, majority_class=majority)
    else:
        if sums["n"] == 0:
            return None
        result = evaluation.finish(task, sums)
    metric = result["compared_on"]
    live, tested = result["test"][metric], (reference.get("test_metrics") or {}).get(metric)
    drop = None
    if tested:  # the share by which the live metric is worse than the version's test metric
        drop = (tested - live) / abs(tested) if HIGHER_IS_BETTER[metric] else (live - tested) / abs(tested)
    return {"metrics": result["test"], "baseline": result["baseline"], "beats_baseline": result["beats_baseline"],
            "compared_on": metric, "test_metric": tested, "drop": drop,
            "degraded": drop is not None and drop > thresholds.performance_drop}


def _section(reference: dict, summary: dict | None, outcome: dict | None, thresholds: stats.DriftThresholds) -> dict:
    predictions = summary["predictions"] if summary else 0
    shadow = summary.get("shadow", 0) if summary else 0
    with_outcome = outcome["with_outcome"] if outcome else 0
    family = max(len(reference["features"]), 1)  # Bonferroni over the model's inputs
    features = {name: stats.drift(ref, (summary or {}).get("features", {}).get(name), thresholds, family)
                for name, ref in reference["features"].items()}
    return {"predictions": predictions, "shadow_predictions": shadow, "with_outcome": with_outcome,
            "outcome_share": with_outcome / predictions if predictions else None,
            "performance": _performance(reference, outcome, thresholds),
            "drift": features,
            "drifted_features": sorted(name for name, result in features.items() if result["drifted"]),
            "prediction_drift": stats.drift(reference["prediction"], (summary or {}).get("prediction"), thresholds)}


def _report(model: str, settings: MonitorSettings, references: dict, current: dict, performance: dict,
            counts: dict) -> dict:
    versions = {}
    for key, reference in references.items():
        version = int(key)
        windows = sorted({w for v, w in [*current, *performance] if v == version})
        overall_current = None
        overall_outcome = None
        sections = []
        for window in windows:
            summary, outcome = current.get((version, window)), performance.get((version, window))
            overall_current = _merge_current(overall_current, summary) if summary else overall_current
            if outcome:
                overall_outcome = outcome if overall_outcome is None else {
                    "with_outcome": overall_outcome["with_outcome"] + outcome["with_outcome"],
                    "skipped": overall_outcome["skipped"] + outcome["skipped"],
                    "sums": evaluation.merge(overall_outcome["sums"], outcome["sums"])}
            sections.append({"start": _iso(window), "end": _iso(window + settings.window.total_seconds()),
                             **_section(reference, summary, outcome, settings.thresholds)})
        versions[key] = {"reference": {"dataset": reference["dataset"], "rows": reference["rows"]},
                         "task": reference["task"], "classes": reference.get("classes"),
                         "overall": _section(reference, overall_current, overall_outcome, settings.thresholds),
                         "windows": sections}
    return {"model": model, "generated_at": datetime.now(timezone.utc).isoformat(),
            "window": settings.window.total_seconds(), "horizon": settings.horizon.total_seconds(),
            "since": settings.since.isoformat() if settings.since else None,
            "until": settings.until.isoformat() if settings.until else None,
            "thresholds": settings.thresholds.to_dict(), **counts, "versions": versions,
            "alerts": _alerts(versions)}


def _alerts(versions: dict) -> list[str]:
    alerts = []
    for version, section in versions.items():
        overall = section["overall"]
        for name in overall["drifted_features"]:
            alerts.append(f"version {version}: feature {name} drifted ({'; '.join(overall['drift'][name]['reasons'])})")
        if overall["prediction_drift"]["drifted"]:
            alerts.append(f"version {version}: predictions drifted "
                          f"({'; '.join(overall['prediction_drift']['reasons'])})")
        for name, result in overall["drift"].items():
            alerts += [f"version {version}: feature {name}: {alert}" for alert in result["alerts"]]
        performance = overall["performance"]
        if performance and performance["degraded"]:
            metric = performance["compared_on"]
            alerts.append(f"version {version}: live {metric} {performance['metrics'][metric]:.3f} is "
                          f"{performance['drop']:.0%} worse than its test {metric} {performance['test_metric']:.3f}")
        if performance and not performance["beats_baseline"]:
            metric = performance["compared_on"]
            alerts.append(f"version {version}: live {metric} {performance['metrics'][metric]:.3f} does not beat the "
                          f"baseline's {performance['baseline'][metric]:.3f}")
    return alerts
