"""What the web UI (`/ui`) shows, as plain data: projects, feature groups, views and datasets, models.

Every figure comes from metadata, never from reading data files: row counts and the newest event time from the
Delta log's file statistics, datasets from their metadata.json, models from the registry, monitoring from the
latest report. The page itself (`ui.html`) is static and fetches these documents.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchard.errors import NotFoundError
from orchard.registry import ModelRegistry, check_name
from orchard.storage import Storage

PAGE = Path(__file__).with_name("ui.html")


def page() -> str:
    return PAGE.read_text(encoding="utf-8")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    return str(value)


def overview(storage: Storage) -> dict:
    from features.catalog import all_groups, all_views
    from features.datasets import TrainingDataset, dataset_versions
    from features.store import OfflineStore
    from orchard.projects import active

    store = OfflineStore(storage)
    groups = []
    for group in all_groups():
        last = f"runs/{group.name}/v{group.version}/last.json"
        run = storage.read_json(last) if storage.exists(last) else None
        groups.append({"group": group.ref, "description": group.description, "rows": store.row_count(group),
                       "quarantined_rows": store.row_count(group, quarantine=True),
                       "newest_event": _iso(store.newest_event(group)),
                       "table_version": store.table_version(group),
                       "last_run": {k: run.get(k) for k in ("run_id", "rows_written", "rows_quarantined", "seconds")}
                       if run else None})
    views = []
    for view in all_views():
        datasets = []
        for version in dataset_versions(storage, view):
            metadata = TrainingDataset.open(storage, view, version).metadata
            datasets.append({"version": version, "created_at": metadata["created_at"], "rows": metadata["rows"]})
        views.append({"view": view.ref, "description": view.description, "features": view.feature_columns(),
                      "datasets": datasets})
    registry = ModelRegistry(storage)
    models = []
    for name in registry.models():
        aliases = registry.aliases(name)
        models.append({"name": name, "versions": registry.versions(name), "aliases": aliases,
                       "rollout": registry.rollout(name)})
    return {"storage": storage.root_uri, "projects": [{"module": ref.module, "folder": ref.folder} for ref in active()],
            "groups": groups, "views": views, "models": models}


def model(storage: Storage, name: str) -> dict:
    from monitoring.report import latest_report

    check_name(name)
    registry = ModelRegistry(storage)
    if name not in registry.models():
        raise NotFoundError(f"no model named {name!r} is registered")
    versions = []
    for summary in registry.list_versions(name):
        card = registry.get(name, summary.version).card
        lineage = card.get("lineage", {})
        versions.append({
            "version": summary.version, "created_at": summary.created_at, "aliases": summary.aliases,
            "flavor": card.get("flavor"), "task": card.get("task"), "description": card.get("description"),
            "metrics": (card.get("metrics") or {}).get("test"), "baseline": (card.get("metrics") or {}).get("baseline"),
            "inputs": card["signature"]["inputs"], "classes": card["signature"].get("classes"),
            "plots": card.get("plots", []),
            "lineage": {"view": lineage.get("view"), "dataset_version": lineage.get("dataset_version"),
                        "dataset_location": lineage.get("dataset_location"),
                        "table_versions": lineage.get("table_versions"), "split": lineage.get("split"),
                        "code_version": lineage.get("code_version"), "projects": lineage.get("projects"),
                        "train_run": lineage.get("train_run")},
        })
    found = latest_report(storage, name)
    monitoring = None
    if found:
        folder, report = found
        monitoring = {"generated_at": report["generated_at"], "alerts": report["alerts"],
                      "plots": report.get("plots", []),
                      "versions": {v: {"predictions": s["overall"]["predictions"],
                                       "with_outcome": s["overall"]["with_outcome"],
                                       "performance": s["overall"]["performance"],
                                       "drifted_features": s["overall"]["drifted_features"]}
                                   for v, s in report["versions"].items()}}
    return {"name": name, "aliases": registry.aliases(name), "versions": versions,
            "alias_history": registry.alias_history(name), "events": registry.events(name),
            "rollout": registry.rollout(name), "monitoring": monitoring}


def model_plot(storage: Storage, name: str, version: int, file_name: str) -> bytes:
    """A plot registered with the version (only the files its card lists as plots)."""
    registry = ModelRegistry(storage)
    card = registry.get(name, version).card
    if file_name not in card.get("plots", []):
        raise NotFoundError(f"model {name} version {version} has no plot {file_name!r}; it has {card.get('plots', [])}")
    return registry.read_file(name, version, file_name)


def monitoring_plot(storage: Storage, name: str, file_name: str) -> bytes:
    """A plot of the model's latest monitoring report (only the files the report lists)."""
    from monitoring.report import latest_report

    check_name(name)
    found = latest_report(storage, name)
    if found is None or file_name not in found[1].get("plots", []):
        raise NotFoundError(f"model {name} has no monitoring plot {file_name!r}; run `orchard monitor {name}`")
    return storage.read_bytes(f"{found[0]}/{file_name}")
