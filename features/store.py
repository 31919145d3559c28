"""The offline store: one Delta Lake table per feature group version under the storage root.

Next to each feature table sits the group's quarantine table, where every
rejected record goes with its reason. The ingestion checkpoint (which source
files a table already holds) is committed together with the data it produced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from features.definitions import FeatureGroup
from orchard.storage import Storage

if TYPE_CHECKING:
    import ray.data

CHECKPOINT_KEY = "orchard.checkpoint"

QUARANTINE_SCHEMA = pa.schema([
    pa.field("source", pa.string()),
    pa.field("line", pa.int64()),
    pa.field("reason", pa.string()),
    pa.field("raw", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("quarantined_at", pa.timestamp("us", tz="UTC")),
])


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
        from deltalake import DeltaTable

        for commit in DeltaTable(self.table_uri(group)).history():
            if CHECKPOINT_KEY in commit:
                location = f"{self.table_location(group)}/_orchard/{commit[CHECKPOINT_KEY]}"
                return Checkpoint.from_json(self.storage.read_bytes(location).decode())
        return Checkpoint()

    def stage_checkpoint(self, group: FeatureGroup, checkpoint: Checkpoint, run_id: str) -> dict[str, str]:
        """Write the checkpoint file; it counts only once a commit names it (the returned metadata)."""
        name = f"checkpoint-{run_id}.json"
        self.storage.write_bytes(f"{self.table_location(group)}/_orchard/{name}", checkpoint.to_json().encode())
        return {CHECKPOINT_KEY: name, "orchard.run_id": run_id}

    # -- reads -------------------------------------------------------------------------
    def table_version(self, group: FeatureGroup) -> int | None:
        if not self.exists(group):
            return None
        from deltalake import DeltaTable

        return DeltaTable(self.table_uri(group)).version()

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

    def _require(self, group: FeatureGroup) -> None:
        if not self.exists(group):
            raise FileNotFoundError(
                f"feature group {group.ref} has no offline table at {self.table_uri(group)}; "
                f"run `orchard features run {group.ref}` first"
            )
