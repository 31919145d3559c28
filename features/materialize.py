"""Materialization: bring an online feature group's newest rows from its offline table into the online store.

Incremental and in bounded memory: the online store records the offline table
version it holds everything of; a run reads only the data files the table
versions after that one added (feature tables are append-only), on Ray Data,
one block at a time. Each block is reduced to its latest row per key where it
lies and written from there; the store keeps a row only if it is newer than the
one it has (`features.online`), so blocks need no order among them and no block
waits for another. The version moves on only after every block is written: a
run that dies is simply run again, and writes the same rows again, harmlessly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import pyarrow as pa

from features.definitions import FeatureGroup
from features.online import OnlineStore, open_online_store, value_columns
from features.store import OfflineStore, first_per_group
from orchard.errors import UsageError
from orchard.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaterializeReport:
    group: str
    store: str
    table_version: int
    from_version: int | None
    """The version the store held before (None: first materialization)."""
    files_read: int
    rows_read: int
    rows_written: int
    """Rows offered to the store (each block's latest per key); the store keeps those newer than its own."""
    keys: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _latest_per_key(table: pa.Table, group: FeatureGroup) -> pa.Table:
    """Each key's row with the latest event time (then the latest ingestion) in one block."""
    return first_per_group(table, list(group.primary_key), [
        (group.event_time, "descending"), *([(group.order_column, "descending")] if group.order_column else [])])


class _BlockWriter:
    """Writes one block's latest rows per key to the store; returns how many rows it read and offered."""

    def __init__(self, group: FeatureGroup, online_url: str | None, storage_uri: str, order: int):
        self.group, self.online_url, self.storage_uri, self.order = group, online_url, storage_uri, order

    def __call__(self, block: pa.Table) -> pa.Table:
        latest = _latest_per_key(block, self.group)
        store = open_online_store(self.online_url, Storage(self.storage_uri))
        try:
            written = store.write(self.group, latest, self.order)
        finally:
            store.close()
        return pa.table({"read": [block.num_rows], "written": [written]})


def materialize(storage: Storage, group: FeatureGroup, online_url: str | None = None, *,
                store: OnlineStore | None = None) -> MaterializeReport:
    """Bring `group`'s online rows up to its offline table's current version."""
    import ray.data

    if not group.online:
        raise UsageError(f"feature group {group.ref} is not online; set online=True in its definition to keep its "
                         "latest rows in the online store")
    started = time.perf_counter()
    offline = OfflineStore(storage)
    version = offline.table_version(group)
    if version is None:
        raise UsageError(f"feature group {group.ref} has no offline table yet; run `orchard features run "
                         f"{group.ref}` first")
    online = store or open_online_store(online_url, storage)
    try:
        done = online.materialized_version(group)
        if done is not None and done > version:
            raise UsageError(f"the online store holds {group.ref} up to table version {done}, but the offline table "
                             f"is at version {version}: it belongs to another storage root")
        files = [] if done == version else offline.files_added(group, since=done, until=version)
        rows_read = rows_written = 0
        if files:
            columns = [*group.primary_key, *value_columns(group), *([group.order_column] if group.order_column else [])]
            # Tasks, not actors: a block opens the store, writes and closes it, so nothing waits for a pool.
            counts = ray.data.read_parquet(files, columns=columns).map_batches(
                _BlockWriter(group, online_url, storage.root_uri, version), batch_format="pyarrow", batch_size=None)
            for block in counts.iter_batches(batch_format="pyarrow", batch_size=None):
                rows_read += sum(block.column("read").to_pylist())
                rows_written += sum(block.column("written").to_pylist())
        if done != version:
            online.set_materialized_version(group, version)
        report = MaterializeReport(group=group.ref, store=online.description, table_version=version, from_version=done,
                                   files_read=len(files), rows_read=rows_read, rows_written=rows_written,
                                   keys=online.count(group), seconds=round(time.perf_counter() - started, 3))
    finally:
        if store is None:
            online.close()
    log.info("%s: materialized %d rows from %d files into %s", group.ref, rows_written, len(files), report.store)
    return report
