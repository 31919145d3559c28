"""The offline store: one Delta Lake table per feature group version under the storage root.

Next to each feature table sits the group's quarantine table, where every
rejected record goes with its reason. The ingestion checkpoint (which source
files a table already holds) is committed together with the data it produced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from features.definitions import FeatureGroup
from orchard.errors import UsageError
from orchard.storage import Storage

if TYPE_CHECKING:
    import ray.data

CHECKPOINT_KEY = "orchard.checkpoint"
RUN_ID_KEY = "orchard.run_id"
DISCARDED_KEY = "orchard.discarded_runs"
QUARANTINE_VERSION_KEY = "orchard.quarantine_version"

QUARANTINE_SCHEMA = pa.schema([
    pa.field("source", pa.string()),
    pa.field("line", pa.int64()),
    pa.field("reason", pa.string()),
    pa.field("raw", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("quarantined_at", pa.timestamp("us", tz="UTC")),
])


def first_per_group(table: pa.Table, group_by: list[str], order_by: list[tuple[str, str]]) -> pa.Table:
    """The first row of each `group_by` group once `table` is sorted by `order_by` (say, each key's newest row)."""
    if table.num_rows == 0:
        return table
    ordered = table.sort_by(order_by)
    position = pa.array(range(ordered.num_rows), pa.int64())
    first = ordered.append_column("_position", position).group_by(group_by, use_threads=False).aggregate(
        [("_position", "min")])
    return ordered.take(first.column("_position_min"))


class SchemaChangedError(UsageError):
    """A feature group's definition changed the columns of a version that already has a table."""


def _delta_type(text: str) -> str:
    """`PrimitiveType("long")` -> `long`."""
    return text.split('"')[1] if text.count('"') == 2 else text


@dataclass
class Checkpoint:
    """What a feature table already holds: source file identities and SQL watermarks."""

    files: dict[str, str] = field(default_factory=dict)
    watermarks: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"files": self.files, "watermarks": self.watermarks}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Checkpoint":
        data = json.loads(text)
        return cls(dict(data.get("files", {})), dict(data.get("watermarks", {})))


class OfflineStore:
    def __init__(self, storage: Storage):
        self.storage = storage

    # -- locations ---------------------------------------------------------------
    def table_location(self, group: FeatureGroup) -> str:
        return f"offline/{group.name}/v{group.version}"

    def quarantine_location(self, group: FeatureGroup) -> str:
        return f"quarantine/{group.name}/v{group.version}"

    def table_uri(self, group: FeatureGroup) -> str:
        return self.storage.uri(self.table_location(group))

    def quarantine_uri(self, group: FeatureGroup) -> str:
        return self.storage.uri(self.quarantine_location(group))

    def exists(self, group: FeatureGroup) -> bool:
        return self.storage.exists(f"{self.table_location(group)}/_delta_log")

    def quarantine_exists(self, group: FeatureGroup) -> bool:
        return self.storage.exists(f"{self.quarantine_location(group)}/_delta_log")

    # -- checkpoint ------------------------------------------------------------------
    def checkpoint(self, group: FeatureGroup) -> Checkpoint:
        """The checkpoint named by the newest commit that carries one."""
        if not self.exists(group):
            return Checkpoint()
        name = self._latest_commit_value(self.table_uri(group), CHECKPOINT_KEY)
        if name is None:
            return Checkpoint()
        return Checkpoint.from_json(self.storage.read_bytes(f"{self.table_location(group)}/_orchard/{name}").decode())

    def stage_checkpoint(self, group: FeatureGroup, checkpoint: Checkpoint, run_id: str) -> dict[str, str]:
        """Write the checkpoint file; it counts only once a commit names it (the returned metadata)."""
        name = f"checkpoint-{run_id}.json"
        self.storage.write_bytes(f"{self.table_location(group)}/_orchard/{name}", checkpoint.to_json().encode())
        return {CHECKPOINT_KEY: name, RUN_ID_KEY: run_id}

    def discard_orphan_quarantine(self, group: FeatureGroup) -> list[str]:
        """Delete quarantine rows of a run that died between its quarantine commit and its feature commit.

        Every feature commit records the quarantine table's version it follows
        (QUARANTINE_VERSION_KEY). With one writer per group, only quarantine
        commits after that version can belong to a run that never finished; the
        next run reads that run's input again, so without this its rejected
        records would be quarantined twice. Returns the run ids removed.
        """
        if not self.quarantine_exists(group):
            return []
        from deltalake import DeltaTable
        from deltalake.transaction import CommitProperties

        settled = -1  # no feature commit at all: every quarantine commit is a dead run's
        if self.exists(group):
            recorded = self._latest_commit_value(self.table_uri(group), QUARANTINE_VERSION_KEY)
            if recorded is None:
                return []  # written before versions were recorded: nothing can be told apart safely
            settled = int(recorded)
        quarantine = DeltaTable(self.quarantine_uri(group))
        newer = quarantine.version() - settled
        if newer <= 0:
            return []
        orphans = sorted({c[RUN_ID_KEY] for c in quarantine.history(limit=newer)
                          if c.get("version", settled + 1) > settled and RUN_ID_KEY in c})
        if orphans:
            listed = ", ".join(f"'{run}'" for run in orphans)  # run ids are generated: digits, letters, '-'
            quarantine.delete(f"run_id IN ({listed})",
                              commit_properties=CommitProperties(custom_metadata={DISCARDED_KEY: json.dumps(orphans)}))
        return orphans

    def quarantine_version(self, group: FeatureGroup) -> int:
        """The quarantine table's current version (-1 before its first commit), for the next feature commit."""
        if not self.quarantine_exists(group):
            return -1
        from deltalake import DeltaTable

        return DeltaTable(self.quarantine_uri(group)).version()

    @staticmethod
    def _latest_commit_value(table_uri: str, key: str) -> str | None:
        from deltalake import DeltaTable

        for commit in DeltaTable(table_uri).history():
            if key in commit:
                return commit[key]
        return None

    # -- aggregations -----------------------------------------------------------------
    def files_added(self, group: FeatureGroup, since: int | None, until: int) -> list[str]:
        """URIs of the data files that table versions (since, until] added.

        Feature tables are append-only, so these files hold exactly the new rows;
        a table rewritten in between (files removed) is refused rather than misread.
        """
        from deltalake import DeltaTable

        current = set(DeltaTable(self.table_uri(group), version=until).file_uris())
        if since is None:
            return sorted(current)
        previous = set(DeltaTable(self.table_uri(group), version=since).file_uris())
        if not previous <= current:
            raise RuntimeError(
                f"feature table {group.ref} was rewritten between versions {since} and {until}; "
                "aggregations over it must be rebuilt as a new group version")
        return sorted(current - previous)

    def reducer_location(self, group: FeatureGroup) -> str:
        return f"{self.table_location(group)}/_orchard/reducer.json"

    # -- reads -------------------------------------------------------------------------
    def table_version(self, group: FeatureGroup) -> int | None:
        if not self.exists(group):
            return None
        from deltalake import DeltaTable

        return DeltaTable(self.table_uri(group)).version()

    def row_count(self, group: FeatureGroup, version: int | None = None, *, quarantine: bool = False) -> int:
        """Rows of the table (or its quarantine), from the Delta log's file statistics: no data file is read."""
        if not (self.quarantine_exists(group) if quarantine else self.exists(group)):
            return 0
        from deltalake import DeltaTable

        uri = self.quarantine_uri(group) if quarantine else self.table_uri(group)
        actions = pa.table(DeltaTable(uri, version=version).get_add_actions(flatten=True))
        return int(pc.sum(actions.column("num_records")).as_py() or 0) if actions.num_rows else 0

    def newest_event(self, group: FeatureGroup) -> Any:
        """The latest event time in the table (from the Delta log's file statistics), or None."""
        if not self.exists(group):
            return None
        from deltalake import DeltaTable

        actions = pa.table(DeltaTable(self.table_uri(group)).get_add_actions(flatten=True))
        column = f"max.{group.event_time}"
        return pc.max(actions.column(column)).as_py() if column in actions.column_names and actions.num_rows \
            else None

    def read(self, group: FeatureGroup, version: int | None = None, columns: list[str] | None = None) -> "ray.data.Dataset":
        """The table as a Ray Dataset (optionally as of an older table version)."""
        import ray.data

        self._require(group)
        return ray.data.read_delta(self.table_uri(group), version=version, columns=columns)

    def read_table(self, group: FeatureGroup, version: int | None = None) -> pa.Table:
        """The table as one Arrow table, for small tables read inside a single task."""
        from deltalake import DeltaTable

        self._require(group)
        return DeltaTable(self.table_uri(group), version=version).to_pyarrow_table()

    def read_quarantine(self, group: FeatureGroup) -> pa.Table:
        from deltalake import DeltaTable

        if not self.quarantine_exists(group):
            return QUARANTINE_SCHEMA.empty_table()
        return DeltaTable(self.quarantine_uri(group)).to_pyarrow_table()

    def schema_changes(self, group: FeatureGroup) -> list[str]:
        """How the group's definition differs from its stored table's columns (names and types); [] if the
        table is new or the same. Nullability is not compared: Delta keeps most columns nullable."""
        if not self.exists(group):
            return []
        from deltalake import DeltaTable, Schema

        stored = {f.name: str(f.type) for f in DeltaTable(self.table_uri(group)).schema().fields}
        defined = {f.name: str(f.type) for f in Schema.from_arrow(group.table_schema).fields}
        changes = [f"added column {name!r}" for name in defined if name not in stored]
        changes += [f"removed column {name!r}" for name in stored if name not in defined]
        changes += [f"column {name!r} changed type from {_delta_type(stored[name])} to {_delta_type(defined[name])}"
                    for name in defined if name in stored and stored[name] != defined[name]]
        return changes

    def check_schema(self, group: FeatureGroup) -> None:
        """Refuse a definition whose columns differ from the table its version already wrote."""
        changes = self.schema_changes(group)
        if changes:
            raise SchemaChangedError(
                f"feature group {group.ref} no longer matches its offline table {self.table_uri(group)}: "
                f"{'; '.join(changes)}. A version's schema never changes: define the changed group as a new "
                f"version (version={group.version + 1}), which gets a table of its own")

    def _require(self, group: FeatureGroup) -> None:
        if not self.exists(group):
            raise FileNotFoundError(
                f"feature group {group.ref} has no offline table at {self.table_uri(group)}; "
                f"run `orchard features run {group.ref}` first"
            )
