"""A Ray Data sink that writes Parquet files and commits them to a Delta table with metadata.

Workers write one Parquet file per block; the driver then commits all of them
in one Delta transaction whose commit info carries Orchard's metadata (for the
offline store, a pointer to the ingestion checkpoint). Data and checkpoint
become visible together or not at all.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

CRASH_ENV = "ORCHARD_CRASH_AT"


def crash_point(name: str) -> None:
    """Die here, as a killed process would, when a test asks for it by name."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(86)


class DeltaCommitSink(Datasink):
    """Appends a dataset to a Delta table in one commit; `partition_by` names date or string columns
    whose values become hive-style folders (`event_date=2026-01-01/`), as Delta expects."""

    def __init__(self, table_uri: str, schema: pa.Schema, commit_metadata: dict[str, str] | None = None,
                 name: str | None = None, crash_name: str | None = None, partition_by: tuple[str, ...] = ()):
        self.table_uri = table_uri
        self.schema = schema
        self.commit_metadata = dict(commit_metadata or {})
        self.name = name
        self.crash_name = crash_name
        self.partition_by = tuple(partition_by)
        self.files_committed = 0

    def write(self, blocks: Iterable[Block], ctx) -> list[dict]:
        fs, root = pafs.FileSystem.from_uri(self.table_uri)
        fs.create_dir(root, recursive=True)
        written = []
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows == 0:
                continue
            table = table.select(self.schema.names).cast(self.schema)
            for values, part in _split_by(table, self.partition_by):
                folder = "/".join(f"{column}={value}" for column, value in values.items())
                file_name = posixpath.join(folder, f"part-{uuid.uuid4().hex}.parquet") if folder \
                    else f"part-{uuid.uuid4().hex}.parquet"
                path = posixpath.join(root, file_name)
                fs.create_dir(posixpath.dirname(path), recursive=True)
                pq.write_table(part, path, filesystem=fs)
                info = fs.get_file_info(path)
                written.append({
                    "path": file_name,
                    "size": info.size,
                    "modification_time": int((info.mtime_ns or 0) // 1_000_000),
                    "num_records": part.num_rows,
                    "partition_values": values,
                })
        return written

    def on_write_complete(self, write_result) -> None:
        from deltalake import DeltaTable, Schema
        from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

        files = [item for result in write_result.write_returns if result for item in result]
        actions = [
            AddAction(f["path"], f["size"], f["partition_values"], f["modification_time"], True,
                      json.dumps({"numRecords": f["num_records"]}))
            for f in files
        ]
        if self.crash_name:
            crash_point(self.crash_name)
        properties = CommitProperties(custom_metadata=self.commit_metadata)
        if DeltaTable.is_deltatable(self.table_uri):
            DeltaTable(self.table_uri).create_write_transaction(
                actions, mode="append", schema=self.schema, commit_properties=properties
            )
        else:
            create_table_with_add_actions(
                self.table_uri, Schema.from_arrow(self.schema), actions, mode="error",
                partition_by=list(self.partition_by) or None, name=self.name, commit_properties=properties,
            )
        self.files_committed = len(actions)


def _split_by(table: pa.Table, columns: tuple[str, ...]):
    """(partition values as text, rows without the partition columns) per distinct value combination.

    Delta keeps partition values in the log, not in the data files.
    """
    if not columns:
        yield {}, table
        return
    import pyarrow.compute as pc

    if any(table.column(c).null_count for c in columns):
        raise ValueError(f"partition column(s) {', '.join(columns)} must not be null")
    keys = table.select(list(columns)).group_by(list(columns)).aggregate([])
    for row in keys.to_pylist():
        mask = None
        for column, value in row.items():
            match = pc.equal(table.column(column), pa.scalar(value, table.schema.field(column).type))
            mask = match if mask is None else pc.and_(mask, match)
        yield {c: str(v) for c, v in row.items()}, table.filter(mask).drop_columns(list(columns))
