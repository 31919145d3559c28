"""Incremental runs of aggregated feature groups (computed per key from another group).

A run reads only the upstream table's data files added since the version its
checkpoint names, reduces every block to per-key partial totals where it lies
(map side), merges those small partials with the table's latest totals for the
keys they touch, and commits one new row per touched key. Each row's event time
(`as_of`) is at least the newest upstream event time it includes, so a
point-in-time join never sees a total that counts a later event.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.compute as pc

from features.definitions import Aggregation, FeatureGroup
from features.delta_sink import DeltaCommitSink
from features.runs import RunReport, new_run_id, record_run
from features.store import OfflineStore
from features.validation import check_expectations
from orchard.storage import Storage

log = logging.getLogger(__name__)


_ROWS, _NEWEST = "_rows", "_newest"


def _partial_with_newest(batch: pa.Table, partial, event_time: str) -> pa.Table:
    """A block's partial totals with two side columns: its row count (on the first row) and its newest event time.

    A block with nothing to total (say, only cancelled bookings) still reports
    its row count, on one row of nulls that the combine step drops.
    """
    totals = partial(batch)
    newest = pc.max(batch.column(event_time)).as_py() if totals.num_rows else None
    if totals.num_rows == 0:
        totals = pa.table({field.name: pa.nulls(1, field.type) for field in totals.schema})
    counts = pa.array([batch.num_rows] + [0] * (totals.num_rows - 1), pa.int64())
    return totals.append_column(_ROWS, counts).append_column(
        _NEWEST, pa.array([newest] * totals.num_rows, batch.schema.field(event_time).type))


def _upstream_key(group: FeatureGroup) -> str:
    return f"upstream:{group.aggregation.upstream.ref}"


def _latest_per_key(table: pa.Table, key: list[str], event_time: str) -> pa.Table:
    """Each key's newest row."""
    if table.num_rows == 0:
        return table
    ordered = table.sort_by([(event_time, "descending")])
    position = pa.array(range(ordered.num_rows), pa.int64())
    first = ordered.append_column("_position", position).group_by(key, use_threads=False).aggregate(
        [("_position", "min")])
    return ordered.take(first.column("_position_min"))


def _latest_of_touched(block: pa.Table, touched: pa.Table, key: list[str], event_time: str) -> pa.Table:
    return _latest_per_key(block.join(touched, keys=key, join_type="inner"), key, event_time)


def _combine_new(combine, *partials: pa.Table) -> tuple[pa.Table, int, object]:
    """(per-key totals of a run's new rows, upstream rows read, newest upstream event time or None)."""
    collected = pa.concat_tables(partials)
    rows_read = pc.sum(collected.column(_ROWS)).as_py() or 0
    collected = collected.filter(pc.is_valid(collected.column(_NEWEST)))
    if collected.num_rows == 0:
        return collected.drop_columns([_ROWS, _NEWEST]), rows_read, None
    return combine(collected.drop_columns([_ROWS, _NEWEST])), rows_read, pc.max(collected.column(_NEWEST)).as_py()


def _finish(group: FeatureGroup, new_totals: pa.Table, newest_event, reducer_json: str | None,
            *previous_blocks: pa.Table) -> tuple[pa.Table, str | None]:
    """The rows to commit: new totals merged with each touched key's previous totals, finished, with as_of.

    A key's as_of is 1 µs after the newest upstream event of the run (so a label
    at that event's time does not see a total that counts it), and always later
    than its previous row's (by 1 µs at least, for late data), so one key never
    has two rows at one instant.
    """
    aggregation: Aggregation = group.aggregation
    key = list(group.primary_key)
    previous = _latest_per_key(pa.concat_tables(previous_blocks), key, group.event_time) if previous_blocks else None
    combined = new_totals if previous is None or previous.num_rows == 0 else aggregation.combine(
        pa.concat_tables([new_totals, previous.select(new_totals.column_names).cast(new_totals.schema)]))
    fitted = None
    if aggregation.reducer is not None:
        if reducer_json is None:  # first run: fit on the history so far
            reducer = aggregation.reducer().fit(combined)
            fitted = reducer.to_json()
        else:
            reducer = aggregation.reducer_from_json(reducer_json)
        finished = aggregation.finish(combined, reducer)
    else:
        finished = aggregation.finish(combined)
    event_type = group.schema.field(group.event_time).type
    # 1 µs after the newest event counted: a label at that event's own time must not see a total including it.
    newest = pc.add(pa.array([newest_event] * finished.num_rows, event_type).cast(pa.int64()), 1)
    if previous is not None and previous.num_rows:
        earlier = previous.select([*key, group.event_time]).rename_columns([*key, "_previous_as_of"])
        finished = finished.join(earlier, keys=key, join_type="left outer")
        after_previous = pc.add(finished.column("_previous_as_of").cast(pa.int64()), 1)
        newest = pc.max_element_wise(newest, after_previous, skip_nulls=True)
        finished = finished.drop_columns(["_previous_as_of"])
    if group.event_time in finished.column_names:
        finished = finished.drop_columns([group.event_time])
    finished = finished.append_column(group.event_time, newest.cast(event_type))
    finished = finished.select(group.schema.names).cast(group.schema)
    problems = check_expectations(finished, group)
    if pc.any(pc.is_valid(problems)).as_py():
        first = pc.drop_null(problems)[0].as_py()
        raise RuntimeError(f"aggregation for {group.ref} produced invalid rows (a bug, not bad data): {first}")
    return finished, fitted


def run_aggregation(storage: Storage, group: FeatureGroup) -> RunReport:
    """One incremental run; the driver handles only object references and a few numbers."""
    import ray
    import ray.data

    started = time.perf_counter()
    run_id = new_run_id()
    aggregation: Aggregation = group.aggregation
    upstream = aggregation.upstream
    store = OfflineStore(storage)
    checkpoint = store.checkpoint(group)
    upstream_version = store.table_version(upstream)
    if upstream_version is None:
        raise FileNotFoundError(
            f"feature group {group.ref} aggregates {upstream.ref}, which has no table yet; "
            f"run `orchard features run {upstream.ref}` first")
    done = checkpoint.watermarks.get(_upstream_key(group))
    done = int(done) if done is not None else None

    def report(rows_read: int = 0, rows_written: int = 0) -> RunReport:
        return RunReport(group=group.ref, run_id=run_id, files_read=0, files_quarantined=0, rows_read=rows_read,
                         rows_written=rows_written, rows_quarantined=0, rows_duplicate=0,
                         table_version=store.table_version(group), seconds=round(time.perf_counter() - started, 3),
                         kind="aggregation")

    if done == upstream_version:
        log.info("%s: no new rows in %s", group.ref, upstream.ref)
        return record_run(storage, store, group, report())
    new_files = store.files_added(upstream, since=done, until=upstream_version)

    rows_read, finished_ref, fitted = 0, None, None
    if new_files:
        # One block per data file: each block shrinks to its own keys' partials, so fewer, larger blocks move less.
        partials = ray.data.read_parquet(new_files, override_num_blocks=len(new_files)).map_batches(
            _partial_with_newest, fn_kwargs={"partial": aggregation.partial, "event_time": upstream.event_time},
            batch_format="pyarrow").materialize()
        totals_ref, rows_ref, newest_ref = ray.remote(_combine_new).options(num_returns=3).remote(
            aggregation.combine, *partials.to_arrow_refs())
        rows_read, newest_event = ray.get([rows_ref, newest_ref])
        if newest_event is not None:
            previous_refs = []
            if store.exists(group):  # only the stored rows of keys this run touches, each block's latest
                touched_ref = ray.remote(lambda totals, key: totals.select(key)).remote(totals_ref, list(group.primary_key))
                latest = ray.remote(_latest_of_touched)
                previous_refs = [latest.remote(block, touched_ref, list(group.primary_key), group.event_time)
                                 for block in store.read(group).to_arrow_refs()]
            reducer_json = None
            if aggregation.reducer is not None and store.exists(group):
                location = store.reducer_location(group)
                if not storage.exists(location):
                    raise RuntimeError(f"feature group {group.ref} has a table but no fitted reducer at {location}")
                reducer_json = storage.read_bytes(location).decode()
            finished_ref, fitted_ref = ray.remote(_finish).options(num_returns=2).remote(
                group, totals_ref, newest_event, reducer_json, *previous_refs)
            fitted = ray.get(fitted_ref)
    if fitted is not None:  # fitted on this first run's totals; a run that dies before its commit refits
        storage.write_bytes(store.reducer_location(group), fitted.encode())

    # Commit even when nothing totals (only cancelled bookings, say), so the checkpoint moves on.
    checkpoint.watermarks[_upstream_key(group)] = str(upstream_version)
    metadata = store.stage_checkpoint(group, checkpoint, run_id)
    rows = ray.data.from_arrow_refs([finished_ref]) if finished_ref is not None \
        else ray.data.from_arrow(group.schema.empty_table())
    sink = DeltaCommitSink(store.table_uri(group), group.schema, metadata, name=group.name,
                           crash_name="before_feature_commit")
    rows.write_datasink(sink)
    return record_run(storage, store, group, report(rows_read=rows_read, rows_written=rows.count()))
