"""The feature pipeline: new raw files -> validated, deduplicated rows -> one offline-store commit.

A run
1. lists the group's source files and keeps those the table's checkpoint does not hold;
2. parses them on Ray Data, one task per file, keeping every record as a row
   that is either valid or carries the reason it was rejected;
3. drops rows whose primary key + event time the table (or an earlier row of
   this run) already holds;
4. commits rejected rows to the quarantine table, then valid rows and the new
   checkpoint to the feature table in one Delta commit.
A run that dies before step 4's last commit leaves the table as it was; the next
run sees the same files as new and, since quarantine rows are keyed by source
file, adds nothing twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.definitions import FeatureGroup
from features.delta_sink import DeltaCommitSink
from features.ingest import (LINE_COLUMN, ORDER_COLUMN, RAW_COLUMN, REASON_COLUMN, SOURCE_COLUMN, SourceFile,
                             bookkeeping_schema, parse_file)
from features.store import QUARANTINE_SCHEMA, OfflineStore
from orchard.storage import Storage

log = logging.getLogger(__name__)

_EXISTING = "_existing"


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

    def to_dict(self) -> dict:
        return asdict(self)


def pending_files(storage: Storage, group: FeatureGroup, already: dict[str, str]) -> list[SourceFile]:
    """Source files not yet in the table, in a stable order (source, then path)."""
    files = []
    for source in group.sources:
        for entry in storage.find_files(source.location, source.pattern):
            candidate = SourceFile(source.name, entry.path, entry.size, entry.mtime_ns, len(files))
            if candidate.identity not in already:
                files.append(candidate)
    return files


def _parse_batch(batch: dict, storage_uri: str, group: FeatureGroup) -> pa.Table:
    storage = Storage(storage_uri)
    sources = {s.name: s for s in group.sources}
    tables = []
    for source, path, size, mtime_ns, ordinal in zip(
        batch["source"], batch["path"], batch["size"], batch["mtime_ns"], batch["ordinal"]
    ):
        file = SourceFile(str(source), str(path), int(size), int(mtime_ns), int(ordinal))
        tables.append(parse_file(storage.read_bytes(file.path), file, sources[file.source], group))
    return pa.concat_tables(tables)


def _keep_first_new_rows(block: pd.DataFrame, key_columns: list[str]) -> pd.DataFrame:
    """Within one hash partition: the first row per key + event time, if the table does not hold it yet."""
    block = block.sort_values([*key_columns, ORDER_COLUMN], kind="stable")
    first = ~block.duplicated(subset=key_columns, keep="first")
    keep = first & ~block[_EXISTING].astype(bool)
    return block[keep].drop(columns=[_EXISTING])


def _deduplicate(valid, store: OfflineStore, group: FeatureGroup):
    import ray

    key_columns = [*group.primary_key, group.event_time]
    schema = bookkeeping_schema(group)
    new_rows = valid.map_batches(
        lambda t: t.append_column(_EXISTING, pa.array([False] * t.num_rows)), batch_format="pyarrow"
    )
    combined = new_rows
    if store.exists(group):
        def as_marker(t: pa.Table) -> pa.Table:
            columns = {name: (t.column(name) if name in key_columns else pa.nulls(t.num_rows, schema.field(name).type))
                       for name in schema.names}
            columns[ORDER_COLUMN] = pa.array([-1] * t.num_rows, pa.int64())
            return pa.table(columns, schema=schema).append_column(_EXISTING, pa.array([True] * t.num_rows))

        existing = store.read(group, columns=key_columns).map_batches(as_marker, batch_format="pyarrow")
        combined = combined.union(existing)
    partitions = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return combined.repartition(partitions, keys=key_columns).map_batches(
        _keep_first_new_rows, fn_kwargs={"key_columns": key_columns}, batch_format="pandas", batch_size=None
    )


def _quarantine_rows(rejected: pa.Table, run_id: str, now: datetime) -> pa.Table:
    return pa.table({
        "source": rejected.column(SOURCE_COLUMN),
        "line": rejected.column(LINE_COLUMN),
        "reason": rejected.column(REASON_COLUMN),
        "raw": rejected.column(RAW_COLUMN),
        "run_id": pa.array([run_id] * rejected.num_rows, pa.string()),
        "quarantined_at": pa.array([now] * rejected.num_rows, QUARANTINE_SCHEMA.field("quarantined_at").type),
    }, schema=QUARANTINE_SCHEMA)


def run_feature_pipeline(storage: Storage, group: FeatureGroup) -> RunReport:
    import ray.data

    started = time.perf_counter()
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    store = OfflineStore(storage)
    checkpoint = store.checkpoint(group)
    files = pending_files(storage, group, checkpoint.files)

    def report(**counts) -> RunReport:
        defaults = dict(files_read=0, files_quarantined=0, rows_read=0, rows_written=0, rows_quarantined=0,
                        rows_duplicate=0)
        result = RunReport(group=group.ref, run_id=run_id, table_version=store.table_version(group),
                           seconds=round(time.perf_counter() - started, 3), **{**defaults, **counts})
        assert result.rows_read == result.rows_written + result.rows_quarantined + result.rows_duplicate, result
        return result

    if not files:
        log.info("%s: no new source files", group.ref)
        return _record(storage, store, group, report())

    parsed = ray.data.from_items([asdict(f) for f in files], override_num_blocks=len(files)).map_batches(
        _parse_batch, fn_kwargs={"storage_uri": storage.root_uri, "group": group}, batch_size=1,
        batch_format="numpy",
    ).materialize()
    valid = parsed.map_batches(lambda t: t.filter(pc.is_null(t[REASON_COLUMN])), batch_format="pyarrow").materialize()
    rejected = parsed.map_batches(lambda t: t.filter(pc.is_valid(t[REASON_COLUMN])), batch_format="pyarrow")
    unique = _deduplicate(valid, store, group).materialize()
    rows_valid, rows_written = valid.count(), unique.count()
    rows_rejected = parsed.count() - rows_valid
    files_unreadable = rejected.map_batches(lambda t: t.filter(pc.is_null(t[LINE_COLUMN])), batch_format="pyarrow").count()

    # Quarantine first; rows of files that an interrupted earlier run already quarantined are not added again.
    if rows_rejected:
        already = pa.array(sorted(set(store.read_quarantine(group).column("source").to_pylist())), pa.string())
        now = datetime.now(timezone.utc)
        rejected.map_batches(
            lambda t: _quarantine_rows(t.filter(pc.invert(pc.is_in(t[SOURCE_COLUMN], value_set=already))), run_id, now),
            batch_format="pyarrow",
        ).write_datasink(
            DeltaCommitSink(store.quarantine_uri(group), QUARANTINE_SCHEMA, {"orchard.run_id": run_id},
                            name=f"{group.name}_quarantine")
        )

    for f in files:
        checkpoint.files[f.identity] = f.path
    metadata = store.stage_checkpoint(group, checkpoint, run_id)
    unique.write_datasink(
        DeltaCommitSink(store.table_uri(group), group.schema, metadata, name=group.name,
                        crash_name="before_feature_commit")
    )
    return _record(storage, store, group, report(
        files_read=len(files), files_quarantined=files_unreadable,
        rows_read=rows_valid + rows_rejected - files_unreadable, rows_written=rows_written,
        rows_quarantined=rows_rejected - files_unreadable, rows_duplicate=rows_valid - rows_written,
    ))


def _record(storage: Storage, store: OfflineStore, group: FeatureGroup, report: RunReport) -> RunReport:
    """Keep every run's report next to the table; `last.json` is the newest."""
    base = f"runs/{group.name}/v{group.version}"
    storage.write_json(f"{base}/{report.run_id}.json", report.to_dict())
    storage.write_json(f"{base}/last.json", report.to_dict())
    return report
