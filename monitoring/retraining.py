"""Continuous training: one step of a model's retraining loop (`orchard retrain MODEL`, `--follow` repeats it).

A step does the first of these that applies:

1. **A rollout is in progress** (a challenger in shadow or canary): judge it on live traffic since it began, with
   `orchard monitor`'s join of predictions and outcomes. Enough of its predictions have outcomes: promote it if
   its live metric is at least the production version's over the same period (within the policy's tolerance),
   else roll it back. Too few by the policy's `max_duration`: roll it back. Otherwise wait.
2. **A trigger fires** (`training.policy.RetrainPolicy`: schedule, new labelled rows, drift, performance drop; or
   `--force`): build a new training dataset of the view (the production version's split rule), train and
   register a challenger, and gate it: on the new dataset's test split, the challenger must be at least as good
   as the production version, within the tolerance. It is refused if not; if it passes it starts its rollout
   (or, with `rollout="direct"`, is promoted at once).
3. Nothing to do.

Every step is appended to the model's retraining history (`ModelRegistry.events`) with its reason, and every
alias change to the alias history with the same reason.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from orchard.errors import UsageError
from orchard.registry import HIGHER_IS_BETTER, ModelRegistry
from orchard.storage import Storage
from training import evaluation
from training.policy import RetrainPolicy, configured_policy

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)


class RetrainError(UsageError):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _split_rule(rule: dict, view: str):
    from features.datasets import RandomSplit

    if rule.get("kind") == "time":
        # The same dates again would put every new row into the test split: the challenger would learn nothing new.
        raise RetrainError(f"the production version's dataset of {view} is split by time ({rule['validation_from']}"
                           f", {rule['test_from']}); retraining cannot move those dates for you: create a dataset "
                           "with later ones (`orchard datasets create VIEW --split time:...`), train a version on "
                           "it and offer it with `orchard retrain MODEL --challenger VERSION`")
    return RandomSplit(rule.get("train", 0.7), rule.get("validation", 0.15), rule.get("test", 0.15),
                       seed=rule.get("seed", 0))


def _promoted_at(registry: ModelRegistry, name: str, version: int) -> datetime | None:
    """When `production` last came to point at `version`."""
    for entry in reversed(registry.alias_history(name)):
        if entry["alias"] == "production" and entry["to"] == version:
            return datetime.fromisoformat(entry["time"])
    return None


# -- triggers


def _label_rows(storage: Storage, group_ref: str, version: int | None) -> int:
    from features.catalog import get_group
    from features.store import OfflineStore

    return OfflineStore(storage).row_count(get_group(group_ref), version)


def _last_attempt(registry: ModelRegistry, name: str) -> datetime | None:
    """When the loop last tried a challenger (its "triggered" step), whatever came of it."""
    for event in reversed(registry.events(name)):
        if event["event"] == "triggered":
            return datetime.fromisoformat(event["time"])
    return None


def check_triggers(storage: Storage, spec, policy: RetrainPolicy, *, now: datetime | None = None,
                   monitor_report: dict | None = None) -> list[str]:
    """The reasons, if any, that the policy calls for a new challenger now.

    Each trigger counts from the production version's start (its training, its dataset, its promotion) or from
    the loop's last attempt, whichever is later: a challenger refused or rolled back is not retrained from the
    same evidence at every step."""
    from features.catalog import get_view
    from features.datasets import TrainingDataset

    registry = ModelRegistry(storage)
    production = registry.get(spec.name)
    card, now = production.card, now or _now()
    attempt = _last_attempt(registry, spec.name)
    reasons = []
    if policy.every:
        from orchard.durations import parse_duration

        since = max(filter(None, (datetime.fromisoformat(card["created_at"]), attempt)))
        age = now - since
        if age >= parse_duration(policy.every, "every"):
            what = f"version {production.version}" if since != attempt else "the last retraining"
            reasons.append(f"{what} is {age.days} day(s) {age.seconds // 3600} h old (policy: every {policy.every})")
    if policy.new_rows:
        # Against the view's newest training dataset: a refused challenger's dataset already holds its rows.
        newest = TrainingDataset.open(storage, get_view(card["lineage"]["view"])).metadata
        label_group = newest["label"]["group"]
        before = _label_rows(storage, label_group, newest["table_versions"][label_group])
        added = _label_rows(storage, label_group, None) - before
        if added >= policy.new_rows:
            reasons.append(f"{added} new labelled row(s) in {label_group} since training dataset "
                           f"{newest['version']} (policy: {policy.new_rows})")
    if policy.drift or policy.performance_drop:
        report = monitor_report or _monitor_since(storage, spec.name, production.version, attempt)
        section = (report or {}).get("versions", {}).get(str(production.version)) if report else None
        if section:
            overall = section["overall"]
            drifted = overall["drifted_features"]
            if policy.drift and len(drifted) >= policy.drift:
                reasons.append(f"{len(drifted)} input(s) drifted since version {production.version} was promoted: "
                               f"{', '.join(drifted)} (policy: {policy.drift})")
            performance = overall["performance"]
            if policy.performance_drop and performance and performance["degraded"]:
                metric = performance["compared_on"]
                reasons.append(f"live {metric} {performance['metrics'][metric]:.3f} is {performance['drop']:.0%} "
                               f"worse than the test {metric} {performance['test_metric']:.3f}")
    return reasons


def _dataset_metadata(storage: Storage, lineage: dict) -> dict:
    from features.catalog import get_view
    from features.datasets import TrainingDataset

    return TrainingDataset.open(storage, get_view(lineage["view"]), lineage["dataset_version"]).metadata


def _monitor_since(storage: Storage, name: str, version: int, attempt: datetime | None) -> dict | None:
    """The monitoring report since the version's promotion or the loop's last attempt, whichever is later."""
    from monitoring.monitor import MonitorError, MonitorSettings, monitor

    promoted = _promoted_at(ModelRegistry(storage), name, version)
    since = max(filter(None, (promoted, attempt)), default=None)
    try:
        return monitor(storage, name, MonitorSettings(since=since))
    except MonitorError as error:  # nothing logged yet: no drift to see
        log.info("no monitoring for %s: %s", name, error)
        return None


# -- the gate: both versions on the same test split


_evaluators: dict[str, Any] = {}


def _evaluate_block(batch: pa.Table, root: str, name: str, version: int, target: str) -> pa.Table:
    """Evaluation sums of one block of test rows for one version (its predictor loaded once per process)."""
    from training.predictor import Predictor

    key = f"{root}|{name}|{version}"
    if key not in _evaluators:
        _evaluators.clear()
        _evaluators[key] = Predictor.load(ModelRegistry(Storage(root)), name, version)
    predictor = _evaluators[key]
    signature = predictor.signature
    names = [item["name"] for item in signature["inputs"]]
    rows = batch.select([n for n in names if n in batch.column_names]).to_pylist()
    truth = batch.column(target).to_pylist()
    keep = [i for i, row in enumerate(rows) if truth[i] is not None and all(row.get(n) is not None for n in names)]
    outputs = predictor.predict([rows[i] for i in keep]) if keep else []
    if signature["task"] == "classification":
        classes = signature["classes"]
        index = {c: i for i, c in enumerate(classes)}
        pairs = [(index.get(str(truth[i])), index[o["label"]]) for i, o in zip(keep, outputs)]
        known = [(t, p) for t, p in pairs if t is not None]
        sums = evaluation.partials("classification", np.array([t for t, _ in known], dtype=np.int64),
                                   np.array([p for _, p in known], dtype=np.int64), n_classes=len(classes))
        sums["unknown_class"] = len(pairs) - len(known)  # a class the version never learned: always wrong
    else:
        sums = evaluation.partials("regression", np.array([truth[i] for i in keep], dtype=np.float64),
                                   np.array(outputs, dtype=np.float64), train_mean=0.0)
    return pa.table({"sums": [json.dumps(sums)]})


def evaluate_version(storage: Storage, name: str, version: int, test: "ray.data.Dataset", target: str) -> dict:
    """The version's test metrics on `test` (rows of raw features and the target), computed on Ray Data."""
    sums, unknown = None, 0
    for row in test.map_batches(_evaluate_block, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"root": storage.root_uri, "name": name, "version": version,
                                           "target": target}).iter_rows():
        part = json.loads(row["sums"])
        unknown += part.pop("unknown_class", 0)
        sums = evaluation.merge(sums, part)
    task = "classification" if "confusion_matrix" in (sums or {}) else "regression"
    majority = int(np.argmax(np.asarray(sums["confusion_matrix"]).sum(axis=1))) if task == "classification" else None
    metrics = evaluation.finish(task, sums, majority_class=majority)["test"]
    if unknown:  # rows of classes the version does not know count as errors, so both versions face every row
        metrics = {**metrics, "accuracy": metrics["accuracy"] * metrics["n"] / (metrics["n"] + unknown),
                   "n": metrics["n"] + unknown, "unknown_class_rows": unknown}
    return metrics


def compare(metric: str, challenger: float, champion: float, tolerance: float) -> tuple[bool, str]:
    """Whether the challenger is at least as good as the champion on `metric`, allowing `tolerance` (a share of the
    champion's value), and the comparison in words."""
    higher = HIGHER_IS_BETTER[metric]
    allowed = champion * (1 - tolerance) if higher else champion * (1 + tolerance)
    passes = challenger >= allowed if higher else challenger <= allowed
    words = (f"{metric} {challenger:.4f} against production's {champion:.4f} "
             f"({'at least' if higher else 'at most'} {allowed:.4f} needed, tolerance {tolerance:.0%})")
    return passes, words


def gate(storage: Storage, name: str, challenger: int, champion: int, tolerance: float) -> dict:
    """Both versions on the challenger's training dataset's test split."""
    registry = ModelRegistry(storage)
    card = registry.get(name, challenger).card
    from features.catalog import get_view
    from features.datasets import TrainingDataset

    lineage = card["lineage"]
    dataset = TrainingDataset.open(storage, get_view(lineage["view"]), lineage["dataset_version"])
    test = dataset.read("test").materialize()
    target = card["signature"]["target"]
    metric = evaluation.COMPARED_ON[card["signature"]["task"]]
    results = {version: evaluate_version(storage, name, version, test, target) for version in (challenger, champion)}
    passes, words = compare(metric, results[challenger][metric], results[champion][metric], tolerance)
    return {"passed": passes, "metric": metric, "challenger": {"version": challenger, **_brief(results[challenger])},
            "champion": {"version": champion, **_brief(results[champion])},
            "dataset": {"view": lineage["view"], "version": lineage["dataset_version"]},
            "reason": f"on the test split of {lineage['view']} dataset {lineage['dataset_version']}: {words}"}


def _brief(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k in ("accuracy", "macro_f1", "mae", "rmse", "r2", "n")}


# -- the step


def retrain_step(storage: Storage, name: str, *, force: bool = False, challenger: int | None = None,
                 now: datetime | None = None, spec=None) -> dict:
    """One step of the loop (see the module's description); returns what it did and why."""
    from training.catalog import get_spec

    spec = spec or get_spec(name)
    policy = configured_policy(spec)
    registry = ModelRegistry(storage)
    now = now or _now()
    if "production" not in registry.aliases(name):
        raise RetrainError(f"model {name} has no production version to retrain against; train it with "
                           f"`orchard train {name} --alias production` first")
    rollout = registry.rollout(name)
    if rollout is not None:
        if challenger is not None or force:
            raise RetrainError(f"model {name} has a rollout of version {rollout['challenger']} in progress "
                               f"({rollout['mode']}); it must end before another challenger starts")
        return judge_rollout(storage, name, rollout, now=now)
    champion = registry.aliases(name)["production"]
    if challenger is not None:
        reasons = [f"version {challenger} offered as a challenger"]
    else:
        reasons = ["forced"] if force else check_triggers(storage, spec, policy, now=now)
    if not reasons:
        return {"model": name, "action": "none", "reasons": [], "policy": policy.to_dict(),
                "message": "no trigger of the retraining policy fired"}
    registry.record_event(name, {"event": "triggered", "reasons": reasons, "champion": champion})
    if challenger is None:
        challenger = _train_challenger(storage, spec, registry, champion, reasons)
        if isinstance(challenger, dict):  # it did not beat its baseline: nothing registered
            return challenger
    elif challenger not in registry.versions(name):
        raise RetrainError(f"model {name} has no version {challenger}; known: {registry.versions(name)}")
    elif challenger == champion:
        raise RetrainError(f"version {challenger} of {name} is production already; offer another version")
    verdict = gate(storage, name, challenger, champion, policy.tolerance)
    registry.record_event(name, {"event": "gated", "challenger": challenger, "champion": champion,
                                 "passed": verdict["passed"], "reason": verdict["reason"],
                                 "metrics": {"challenger": verdict["challenger"], "champion": verdict["champion"]}})
    if not verdict["passed"]:
        return {"model": name, "action": "rejected", "challenger": challenger, "champion": champion,
                "reasons": reasons, "gate": verdict, "message": f"version {challenger} refused: {verdict['reason']}"}
    if policy.rollout == "direct":
        reason = f"version {challenger} passed the gate ({verdict['reason']}); rollout: direct"
        registry.promote(name, challenger, "production", reason=reason)
        registry.record_event(name, {"event": "promoted", "version": challenger, "previous": champion,
                                     "reason": reason})
        return {"model": name, "action": "promoted", "challenger": challenger, "champion": champion,
                "reasons": reasons, "gate": verdict, "message": reason}
    from orchard.durations import parse_duration

    state = {"challenger": challenger, "champion": champion, "mode": policy.rollout,
             "share": policy.canary_share if policy.rollout == "canary" else None,
             "started_at": now.isoformat(), "until": (now + parse_duration(policy.max_duration, "max_duration"))
             .isoformat(), "min_outcomes": policy.min_outcomes, "tolerance": policy.tolerance}
    reason = f"version {challenger} passed the gate ({verdict['reason']}); {policy.rollout} rollout begins"
    registry.start_rollout(name, state, reason=reason)
    registry.record_event(name, {"event": "rollout_started", **state, "reason": reason})
    return {"model": name, "action": "rollout_started", "challenger": challenger, "champion": champion,
            "reasons": reasons, "gate": verdict, "rollout": state, "message": reason}


def _train_challenger(storage: Storage, spec, registry: ModelRegistry, champion: int, reasons: list[str]):
    from features.catalog import get_view
    from features.datasets import create_training_dataset
    from training.trainer import BelowBaselineError, train_model

    champion_card = registry.get(spec.name, champion).card
    rule = _dataset_metadata(storage, champion_card["lineage"])["split"]
    dataset = create_training_dataset(storage, get_view(spec.view), _split_rule(rule, spec.view))
    try:
        result = train_model(storage, spec, dataset=f"{spec.view.partition(':')[0]}:{dataset['version']}")
    except BelowBaselineError as error:
        registry.record_event(spec.name, {"event": "rejected", "reason": str(error)})
        return {"model": spec.name, "action": "rejected", "challenger": None, "champion": champion,
                "reasons": reasons, "message": str(error)}
    registry.record_event(spec.name, {"event": "trained", "version": result["version"],
                                      "dataset": {"view": dataset["view"], "version": dataset["version"]},
                                      "test_metrics": _brief(result["metrics"]["test"])})
    return result["version"]


def judge_rollout(storage: Storage, name: str, rollout: dict, *, now: datetime | None = None) -> dict:
    """Promote, roll back, or keep waiting for outcomes (see the module's description)."""
    from monitoring.monitor import MonitorError, MonitorSettings, monitor

    registry = ModelRegistry(storage)
    now = now or _now()
    challenger, champion = rollout["challenger"], rollout["champion"]
    try:
        report = monitor(storage, name, MonitorSettings(since=datetime.fromisoformat(rollout["started_at"])))
    except MonitorError:
        report = {"versions": {}}
    sections = report["versions"]
    mine, theirs = sections.get(str(challenger)), sections.get(str(champion))
    outcomes = mine["overall"]["with_outcome"] if mine else 0
    base = {"model": name, "challenger": challenger, "champion": champion, "rollout": rollout,
            "outcomes": outcomes}
    if outcomes >= rollout["min_outcomes"] and mine["overall"]["performance"]:
        performance = mine["overall"]["performance"]
        metric = performance["compared_on"]
        champion_performance = theirs["overall"]["performance"] if theirs else None
        if champion_performance is None:  # canary: production's requests got no outcomes in the period
            passes = performance["beats_baseline"] and not performance["degraded"]
            words = (f"live {metric} {performance['metrics'][metric]:.4f}; production has no outcomes to compare "
                     f"with, so it must beat the baseline ({performance['baseline'][metric]:.4f}) and stay within "
                     "the drop allowed from its test metric")
        else:
            passes, words = compare(metric, performance["metrics"][metric],
                                    champion_performance["metrics"][metric], rollout["tolerance"])
            words = f"live {words}"
        reason = (f"{rollout['mode']} of version {challenger} over {outcomes} prediction(s) with outcomes: {words}")
        registry.end_rollout(name, challenger, promote=passes, reason=reason)
        event = "promoted" if passes else "rolled_back"
        registry.record_event(name, {"event": event, "version": challenger, "previous": champion, "reason": reason})
        return {**base, "action": event, "message": reason}
    if now >= datetime.fromisoformat(rollout["until"]):
        reason = (f"{rollout['mode']} of version {challenger} got {outcomes} prediction(s) with outcomes by "
                  f"{rollout['until']}, {rollout['min_outcomes']} needed")
        registry.end_rollout(name, challenger, promote=False, reason=reason)
        registry.record_event(name, {"event": "rolled_back", "version": challenger, "previous": champion,
                                     "reason": reason})
        return {**base, "action": "rolled_back", "message": reason}
    return {**base, "action": "waiting",
            "message": f"{rollout['mode']} of version {challenger}: {outcomes} of {rollout['min_outcomes']} "
                       f"predictions with outcomes so far (until {rollout['until']})"}
