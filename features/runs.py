"""Feature pipeline runs: the report of one run, its id, and where reports are kept."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from features.definitions import FeatureGroup
from features.store import OfflineStore
from orchard.storage import Storage


@dataclass(frozen=True)
class RunReport:
    group: str
    run_id: str
    files_read: int
    files_quarantined: int
    rows_read: int
    rows_written: int
    rows_quarantined: int
    rows_duplicate: int
    table_version: int | None
    seconds: float
    sql_sources_read: int = 0
    kafka_messages_read: int = 0
    kind: str = "ingest"
    """"ingest" (sources -> rows; rows_read = written + quarantined + duplicate) or "aggregation"
    (rows_read upstream rows folded into rows_written per-key totals)."""
    materialized: dict | None = None
    """For an online group, what the materialization after the run did (`features.materialize`)."""

    def to_dict(self) -> dict:
        return asdict(self)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def record_run(storage: Storage, store: OfflineStore, group: FeatureGroup, report: RunReport) -> RunReport:
    """Keep every run's report next to the table; `last.json` is the newest."""
    base = f"runs/{group.name}/v{group.version}"
    if report.rows_read or report.files_read:  # a --follow loop polls often; empty runs only update last.json
        storage.write_json(f"{base}/{report.run_id}.json", report.to_dict())
    storage.write_json(f"{base}/last.json", report.to_dict())
    return report
