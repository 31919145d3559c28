"""The feature pipeline: raw source files -> conformed rows -> offline store, on Ray Data."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass

from features.conform import conform
from features.definitions import FeatureGroup, FileSource
from features.store import OfflineStore
from orchard.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunReport:
    group: str
    files_read: int
    rows_read: int
    rows_written: int
    table_version: int | None
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _read_source(storage: Storage, source: FileSource, paths: list[str]):
    import ray.data

    fs_paths = [storage.path(p) for p in paths]
    if source.format == "csv":
        return ray.data.read_csv(fs_paths, filesystem=storage.fs)
    if source.format == "jsonl":
        return ray.data.read_json(fs_paths, filesystem=storage.fs)
    if source.format == "parquet":
        return ray.data.read_parquet(fs_paths, filesystem=storage.fs)
    raise ValueError(f"source {source.name!r} has unknown format {source.format!r}")


def run_feature_pipeline(storage: Storage, group: FeatureGroup) -> RunReport:
    """Read every source file of `group`, conform it and write the offline table.

    This first version recomputes the table from all landing files in one
    overwrite commit, so a re-run never duplicates rows.
    """
    started = time.perf_counter()
    store = OfflineStore(storage)
    parts, files_read = [], 0
    for source in group.sources:
        paths = [entry.path for entry in storage.find_files(source.location, source.pattern)]
        if not paths:
            log.info("source %s: no files under %s", source.name, source.location)
            continue
        files_read += len(paths)
        dataset = _read_source(storage, source, paths).map_batches(
            functools.partial(conform, source=source, group=group), batch_format="pyarrow", batch_size=None
        )
        parts.append(dataset)
    if not parts:
        return RunReport(group.ref, 0, 0, 0, store.table_version(group), time.perf_counter() - started)
    combined = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    combined = combined.materialize()
    rows = combined.count()
    store.write(combined, group, mode="overwrite" if store.exists(group) else "append")
    return RunReport(
        group=group.ref,
        files_read=files_read,
        rows_read=rows,
        rows_written=rows,
        table_version=store.table_version(group),
        seconds=round(time.perf_counter() - started, 3),
    )
