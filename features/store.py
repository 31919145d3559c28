"""The offline store: one Delta Lake table per feature group version under the storage root."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from features.definitions import FeatureGroup
from orchard.storage import Storage

if TYPE_CHECKING:
    import ray.data


class OfflineStore:
    def __init__(self, storage: Storage):
        self.storage = storage

    def table_location(self, group: FeatureGroup) -> str:
        return f"offline/{group.name}/v{group.version}"

    def table_uri(self, group: FeatureGroup) -> str:
        return self.storage.uri(self.table_location(group))

    def exists(self, group: FeatureGroup) -> bool:
        return self.storage.exists(f"{self.table_location(group)}/_delta_log")

    def write(self, dataset: "ray.data.Dataset", group: FeatureGroup, *, mode: str = "append") -> None:
        """Write a dataset already conformed to `group.schema` as one Delta commit."""
        dataset.write_delta(
            self.table_uri(group),
            mode=mode,
            schema_mode="error",  # a group version has one fixed schema; drift is a bug
            name=group.name,
            description=group.description,
        )

    def table_version(self, group: FeatureGroup) -> int | None:
        if not self.exists(group):
            return None
        from deltalake import DeltaTable

        return DeltaTable(self.table_uri(group)).version()

    def read(self, group: FeatureGroup, version: int | None = None) -> "ray.data.Dataset":
        """The table as a Ray Dataset (optionally as of an older table version)."""
        import ray.data

        self._require(group)
        return ray.data.read_delta(self.table_uri(group), version=version)

    def read_table(self, group: FeatureGroup, version: int | None = None) -> pa.Table:
        """The table as one Arrow table, for small tables read inside a single task."""
        from deltalake import DeltaTable

        self._require(group)
        table = DeltaTable(self.table_uri(group), version=version)
        return table.to_pyarrow_table()

    def _require(self, group: FeatureGroup) -> None:
        if not self.exists(group):
            raise FileNotFoundError(
                f"feature group {group.ref} has no offline table at {self.table_uri(group)}; "
                f"run `orchard features run {group.ref}` first"
            )
