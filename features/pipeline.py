"""The feature pipeline: new raw data -> validated, deduplicated rows -> one offline-store commit.

A run
1. lists the group's source files and keeps those the table's checkpoint does
   not hold, for each SQL source the rows past its watermark (up to the
   largest watermark at the start of the run), and for each Kafka topic the
   messages past the offsets it holds (up to each partition's end at the start
   of the run: `features.kafka`);
2. parses them on Ray Data, one task per file or SQL read, keeping every record
   as a row that is either valid or carries the reason it was rejected;
3. drops rows whose primary key + event time the table (or an earlier row of
   this run) already holds;
4. commits rejected rows to the quarantine table, then valid rows and the new
   checkpoint (files, watermarks, Kafka offsets) to the feature table in one
   Delta commit.
A run that dies before step 4's last commit leaves the table as it was; the next
run removes the dead run's quarantine rows, reads the same input again, and so
adds nothing twice and loses nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import kafka
from features.definitions import FeatureGroup, FileSource, SqlSource
from features.delta_sink import DeltaCommitSink
from features.images import ImageSource
from features.ingest import (
    LINE_COLUMN,
    ORDER_COLUMN,
    RAW_COLUMN,
    REASON_COLUMN,
    SOURCE_COLUMN,
    SourceFile,
    bookkeeping_schema,
    parse_file,
    parse_image_files,
    parse_sql_rows,
)
from features.runs import RunReport, new_run_id, record_run
from features.sql import (
    Database,
    SqlSourceError,
    check_text_watermarks,
    database_failure,
    decode_watermark,
    describe_failure,
    encode_watermark,
    incremental_query,
    newest_null_row_id,
    newest_watermark,
    null_watermark_query,
    resolve_database,
)
from features.store import QUARANTINE_SCHEMA, QUARANTINE_VERSION_KEY, RUN_ID_KEY, Checkpoint, OfflineStore
from orchard.storage import Storage

log = logging.getLogger(__name__)

def pending_files(storage: Storage, group: FeatureGroup, already: dict[str, str]) -> list[SourceFile]:
    """Source files not yet in the table, in a stable order (source, then path)."""
    files = []
    for source in group.sources:
        if not isinstance(source, (FileSource, ImageSource)):
            continue
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


def _parse_images(batch: dict, storage_uri: str, group: FeatureGroup) -> pa.Table:
    """A block of image files (of one or more image sources) -> one row per file."""
    storage = Storage(storage_uri)
    sources = {s.name: s for s in group.sources}
    by_source: dict[str, list] = {}
    for source, path, size, mtime_ns, ordinal in zip(
        batch["source"], batch["path"], batch["size"], batch["mtime_ns"], batch["ordinal"]
    ):
        file = SourceFile(str(source), str(path), int(size), int(mtime_ns), int(ordinal))
        by_source.setdefault(file.source, []).append((file, storage.read_bytes(file.path)))
    return pa.concat_tables([parse_image_files(files, sources[name], group) for name, files in by_source.items()])


def _read_files(files: list[SourceFile], storage: Storage, group: FeatureGroup) -> list:
    """Ray Data pipelines parsing the files: a task per data file, a task per `files_per_task` image files."""
    import ray.data

    kinds = {s.name: s for s in group.sources}
    data_files = [asdict(f) for f in files if not isinstance(kinds[f.source], ImageSource)]
    image_files = [asdict(f) for f in files if isinstance(kinds[f.source], ImageSource)]
    inputs = []
    if data_files:
        inputs.append(ray.data.from_items(data_files, override_num_blocks=len(data_files)).map_batches(
            _parse_batch, fn_kwargs={"storage_uri": storage.root_uri, "group": group}, batch_size=1,
            batch_format="numpy"))
    if image_files:
        per_task = min(kinds[f["source"]].files_per_task for f in image_files)
        blocks = -(-len(image_files) // per_task)
        inputs.append(ray.data.from_items(image_files, override_num_blocks=blocks).map_batches(
            _parse_images, fn_kwargs={"storage_uri": storage.root_uri, "group": group}, batch_size=None,
            batch_format="numpy"))
    return inputs


def _split_rows(table: pa.Table, key_columns: list[str], buckets: int) -> list[pa.Table]:
    """Split rows by a hash of their key + event time, so equal keys meet in the same bucket."""
    if table.num_rows == 0:
        return [table] * buckets
    hashes = pd.util.hash_pandas_object(table.select(key_columns).to_pandas(), index=False).to_numpy()
    bucket = pa.array(hashes % buckets)
    return [table.filter(pc.equal(bucket, b)) for b in range(buckets)]


def _keep_first_new_rows(key_columns: list[str], schema: pa.Schema, new_count: int, *parts: pa.Table) -> pa.Table:
    """One bucket: the first row (in ingestion order) per key + event time, unless the table holds it already."""
    new = pa.concat_tables([p.cast(schema) for p in parts[:new_count]]) if new_count else schema.empty_table()
    existing = [p for p in parts[new_count:] if p.num_rows]
    if new.num_rows == 0:
        return new
    new = new.sort_by([(c, "ascending") for c in [*key_columns, ORDER_COLUMN]])
    first = pa.array(~new.select(key_columns).to_pandas().duplicated(keep="first").to_numpy())
    new = new.filter(first)
    if existing:
        new = new.join(pa.concat_tables(existing).select(key_columns), keys=key_columns, join_type="left anti")
    return new.select(schema.names)


def _deduplicate(valid, store: OfflineStore, group: FeatureGroup, buckets: int | None = None):
    """Rows of `valid` whose key + event time neither an earlier row of this run nor the table holds.

    A hash exchange on Ray tasks: every block splits into one part per bucket,
    every bucket is deduplicated by one task. Only key columns of the table move.
    """
    import ray
    import ray.data

    key_columns = [*group.primary_key, group.event_time]
    schema = bookkeeping_schema(group)
    buckets = buckets or max(1, int(ray.cluster_resources().get("CPU", 1)))
    split = ray.remote(_split_rows).options(num_returns=buckets)

    def parts_of(refs) -> list[list]:
        if buckets == 1:  # one bucket: every block as it is
            return [list(refs)]
        outputs = [split.remote(ref, key_columns, buckets) for ref in refs]
        return [[out[b] for out in outputs] for b in range(buckets)]

    new_refs = valid.to_arrow_refs()
    new_parts = parts_of(new_refs)
    existing_parts = parts_of(_existing_keys(store, group, new_refs).to_arrow_refs()) if store.exists(group) \
        else [[] for _ in range(buckets)]
    keep = ray.remote(_keep_first_new_rows)
    unique = [keep.remote(key_columns, schema, len(new_parts[b]), *new_parts[b], *existing_parts[b])
              for b in range(buckets)]
    return ray.data.from_arrow_refs(unique)


def _event_dates(table: pa.Table, event_time: str) -> pa.Array:
    return pc.unique(pc.cast(table.column(event_time), pa.date32()))


def _existing_keys(store: OfflineStore, group: FeatureGroup, new_refs: list):
    """Key + event time of the table's rows; of a partitioned table, only on the event dates this run has."""
    import ray
    import ray.data

    key_columns = [*group.primary_key, group.event_time]
    if not group.partition_by_event_date:
        return store.read(group, columns=key_columns)
    from deltalake import DeltaTable

    dates_of = ray.remote(_event_dates)
    per_block = ray.get([dates_of.remote(ref, group.event_time) for ref in new_refs])
    dates = sorted(set().union(*(block_dates.to_pylist() for block_dates in per_block)))
    (partition,) = group.partition_columns
    files = DeltaTable(store.table_uri(group)).file_uris(
        partition_filters=[(partition, "in", [d.isoformat() for d in dates])]) if dates else []
    if not files:
        return ray.data.from_arrow(group.schema.empty_table().select(key_columns))
    return ray.data.read_parquet(files, columns=key_columns)


def with_partition_columns(table: pa.Table, group: FeatureGroup) -> pa.Table:
    """The group's rows as stored: with the UTC event date when the table is partitioned by it."""
    table = table.select(group.schema.names)
    if group.partition_by_event_date:
        (partition,) = group.partition_columns
        table = table.append_column(partition, pc.cast(table.column(group.event_time), pa.date32()))
    return table


def _quarantine_rows(rejected: pa.Table, run_id: str, now: datetime) -> pa.Table:
    return pa.table({
        "source": rejected.column(SOURCE_COLUMN),
        "line": rejected.column(LINE_COLUMN),
        "reason": rejected.column(REASON_COLUMN),
        "raw": rejected.column(RAW_COLUMN),
        "run_id": pa.array([run_id] * rejected.num_rows, pa.string()),
        "quarantined_at": pa.array([now] * rejected.num_rows, QUARANTINE_SCHEMA.field("quarantined_at").type),
    }, schema=QUARANTINE_SCHEMA)


@dataclass(frozen=True)
class _SqlRead:
    source: SqlSource
    database: Database
    since: Any
    upper: Any
    ordinal: int
    null_watermarks: bool = False
    """Rows whose watermark is null, by row id: read once, each quarantined with the reason."""

    @property
    def checkpoint_key(self) -> str:
        return f"{self.source.name}:null_watermark_row_id" if self.null_watermarks else self.source.name


def pending_sql_reads(storage: Storage, group: FeatureGroup, checkpoint: Checkpoint,
                      databases: Mapping[str, str], first_ordinal: int) -> list[_SqlRead]:
    """SQL sources with rows past their watermark, each with the bound this run reads up to."""
    reads = []
    for source in group.sources:
        if not isinstance(source, SqlSource):
            continue
        database = resolve_database(source.database, databases, storage)
        for null_watermarks in (False, True):
            key = _SqlRead(source, database, None, None, 0, null_watermarks).checkpoint_key
            upper = newest_null_row_id(database, source) if null_watermarks else newest_watermark(database, source)
            since = decode_watermark(checkpoint.watermarks[key]) if key in checkpoint.watermarks else None
            if not null_watermarks and upper is not None:
                check_text_watermarks(database, source, upper)
            if upper is not None and (since is None or upper > since):
                reads.append(_SqlRead(source, database, since, upper, first_ordinal + len(reads), null_watermarks))
    return reads


def _read_sql(read: _SqlRead, group: FeatureGroup):
    import ray.data

    columns = [read.source.source_column(f.name) for f in group.read_features]
    make_query = null_watermark_query if read.null_watermarks else incremental_query
    query, params = make_query(read.database, read.source, columns, read.since)
    reject = (f"watermark column '{read.source.watermark}' is null, so the row cannot be read incrementally"
              if read.null_watermarks else None)
    # One read task per source (Ray would otherwise split its output into ~200 tiny blocks); big reads are
    # still cut into blocks of Ray Data's target size.
    return ray.data.read_sql(query, read.database.connection_factory(), sql_params=(*params, read.upper),
                             override_num_blocks=1).map_batches(
        parse_sql_rows, fn_kwargs={"source": read.source, "group": group, "ordinal": read.ordinal, "reject": reject},
        batch_format="pyarrow", batch_size=None,
    )


def run_feature_pipeline(storage: Storage, group: FeatureGroup, databases: Mapping[str, str] | None = None,
                         online_store: str | None = None) -> RunReport:
    """One incremental run of a group's pipeline: its new source data, or for an aggregation, its upstream's.

    An online group's new rows then go to the online store (`online_store`: its URL, None for the embedded
    default); that step also catches up after a run that died between its commit and its materialization.
    """
    report = _run_offline(storage, group, databases)
    if not group.online:
        return report
    from features.materialize import materialize

    return replace(report, materialized=materialize(storage, group, online_store).to_dict())


def _run_offline(storage: Storage, group: FeatureGroup, databases: Mapping[str, str] | None) -> RunReport:
    OfflineStore(storage).check_schema(group)
    if group.aggregation is not None:
        from features.aggregation_pipeline import run_aggregation

        return run_aggregation(storage, group)

    started = time.perf_counter()
    run_id = new_run_id()
    store = OfflineStore(storage)
    discarded = store.discard_orphan_quarantine(group)
    if discarded:
        log.warning("%s: removed quarantine rows of interrupted run(s) %s; their input is read again",
                    group.ref, ", ".join(discarded))
    checkpoint = store.checkpoint(group)
    files = pending_files(storage, group, checkpoint.files)
    sql_reads = pending_sql_reads(storage, group, checkpoint, databases or {}, first_ordinal=len(files))
    kafka_reads = kafka.pending_reads(group, checkpoint.watermarks, first_ordinal=len(files) + len(sql_reads))

    def report(**counts) -> RunReport:
        defaults = dict(files_read=0, files_quarantined=0, rows_read=0, rows_written=0, rows_quarantined=0,
                        rows_duplicate=0)
        result = RunReport(group=group.ref, run_id=run_id, table_version=store.table_version(group),
                           seconds=round(time.perf_counter() - started, 3), **{**defaults, **counts})
        assert result.rows_read == result.rows_written + result.rows_quarantined + result.rows_duplicate, result
        return result

    if not files and not sql_reads and not kafka_reads:
        log.info("%s: no new source data", group.ref)
        return record_run(storage, store, group, report())

    inputs = [*_read_files(files, storage, group), *(_read_sql(read, group) for read in sql_reads),
              *(kafka.read(read, group) for read in kafka_reads)]
    try:
        parsed = (inputs[0].union(*inputs[1:]) if len(inputs) > 1 else inputs[0]).materialize()
    except Exception as error:
        failure = database_failure(error) if sql_reads else None
        if failure is None:
            raise
        sources = ", ".join(sorted({f"{r.source.name} (database {r.database.name!r})" for r in sql_reads}))
        raise SqlSourceError(f"{group.ref}: reading SQL source {sources} failed ({describe_failure(failure)}); "
                             "nothing was committed: run again once the database answers") from None
    valid = parsed.map_batches(lambda t: t.filter(pc.is_null(t[REASON_COLUMN])), batch_format="pyarrow").materialize()
    rejected = parsed.map_batches(lambda t: t.filter(pc.is_valid(t[REASON_COLUMN])), batch_format="pyarrow")
    unique = _deduplicate(valid, store, group).materialize()
    rows_valid, rows_written = valid.count(), unique.count()
    rows_rejected = parsed.count() - rows_valid
    files_unreadable = rejected.map_batches(lambda t: t.filter(pc.is_null(t[LINE_COLUMN])), batch_format="pyarrow").count()

    # Quarantine first, feature rows and checkpoint last: see discard_orphan_quarantine.
    if rows_rejected:
        now = datetime.now(timezone.utc)
        rejected.map_batches(lambda t: _quarantine_rows(t, run_id, now), batch_format="pyarrow").write_datasink(
            DeltaCommitSink(store.quarantine_uri(group), QUARANTINE_SCHEMA, {RUN_ID_KEY: run_id},
                            name=f"{group.name}_quarantine")
        )

    for f in files:
        checkpoint.files[f.identity] = f.path
    for read in sql_reads:
        checkpoint.watermarks[read.checkpoint_key] = encode_watermark(read.upper)
    reached = kafka.offsets_reached(parsed, kafka_reads) if kafka_reads else {}
    for read in kafka_reads:
        checkpoint.watermarks.update(kafka.committed_offsets(read, reached.get(read.source.name, {})))
    metadata = {**store.stage_checkpoint(group, checkpoint, run_id),
                QUARANTINE_VERSION_KEY: str(store.quarantine_version(group))}
    unique.map_batches(with_partition_columns, fn_kwargs={"group": group}, batch_format="pyarrow").write_datasink(
        DeltaCommitSink(store.table_uri(group), group.table_schema, metadata, name=group.name,
                        crash_name="before_feature_commit", partition_by=group.partition_columns)
    )
    return record_run(storage, store, group, report(
        files_read=len(files), sql_sources_read=len(sql_reads),
        kafka_messages_read=sum(kafka.messages_read(read, reached.get(read.source.name, {})) for read in kafka_reads),
        files_quarantined=files_unreadable,
        rows_read=rows_valid + rows_rejected - files_unreadable, rows_written=rows_written,
        rows_quarantined=rows_rejected - files_unreadable, rows_duplicate=rows_valid - rows_written,
    ))
