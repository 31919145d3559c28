"""Incremental runs of aggregated feature groups (computed per key from another group).

A run reads only the upstream table's data files added since the version its
checkpoint names. Each block is cut by upstream event time into the group's
granularity intervals and reduced to per-key partial totals per interval where
it lies (map side), so blocks shrink before anything moves. One task then
merges the partials of each interval and walks the intervals in time order,
keeping each touched key's running totals: the key's stored totals from before
the run's earliest interval, plus the run's new partials so far. For every
interval in which a key got new events, and for every later interval the key
already has a row for (late data), it writes the key's totals as of the
interval's end, with that end as the row's event time and the run's upstream
table version as its ingestion order. A total therefore counts exactly the
upstream events before its event time, whatever the run cadence: a label at
that time never sees a later event, nor its own.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.definitions import INGESTED_COLUMN, Aggregation, FeatureGroup
from features.delta_sink import DeltaCommitSink
from features.online import encode_keys
from features.runs import RunReport, new_run_id, record_run
from features.store import OfflineStore, first_per_group
from features.validation import check_expectations
from orchard.storage import Storage

log = logging.getLogger(__name__)

_ROWS, _BUCKET, _KEY = "_rows", "_bucket", "_key"
_DAY_US = 86_400_000_000
_US = timedelta(microseconds=1)


def _micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy(zero_copy_only=False)


def _interval_partials(batch: pa.Table, partial, event_time: str, granularity_us: int) -> pa.Table:
    """A block's partial totals per key and interval end (`_bucket`, µs), and its row count on the first row.

    A block with nothing to total (say, only cancelled bookings) still reports its row count, on one row whose
    `_bucket` is null."""
    pieces = []
    if batch.num_rows:
        ends = (_micros(batch.column(event_time)) // granularity_us + 1) * granularity_us
        order = np.argsort(ends, kind="stable")
        ordered = batch.take(pa.array(order))
        values, starts = np.unique(ends[order], return_index=True)
        bounds = [*starts.tolist(), len(order)]
        for end, start, stop in zip(values.tolist(), bounds, bounds[1:]):
            totals = partial(ordered.slice(start, stop - start))
            if totals.num_rows:
                pieces.append(totals.append_column(_BUCKET, pa.array([end] * totals.num_rows, pa.int64())))
    table = pa.concat_tables(pieces) if pieces else pa.table({_BUCKET: pa.nulls(1, pa.int64())})
    counts = pa.array([batch.num_rows] + [0] * (table.num_rows - 1), pa.int64())
    return table.append_column(_ROWS, counts)


def _with_key(table: pa.Table, group: FeatureGroup) -> pa.Table:
    keys = encode_keys(group, [table.column(name) for name in group.primary_key])
    return table.append_column(_KEY, keys)


def _new_totals(group: FeatureGroup, *partials: pa.Table) -> tuple[pa.Table | None, int, int | None]:
    """(the run's totals per key and interval, keyed; upstream rows read; earliest interval end or None)."""
    collected = pa.concat_tables(partials, promote_options="default")
    rows_read = pc.sum(collected.column(_ROWS)).as_py() or 0
    collected = collected.filter(pc.is_valid(collected.column(_BUCKET))).drop_columns([_ROWS])
    if collected.num_rows == 0:
        return None, rows_read, None
    combine = group.aggregation.combine
    pieces = []
    for end in sorted(set(collected.column(_BUCKET).to_pylist())):
        merged = combine(collected.filter(pc.equal(collected.column(_BUCKET), end)).drop_columns([_BUCKET]))
        pieces.append(merged.append_column(_BUCKET, pa.array([end] * merged.num_rows, pa.int64())))
    totals = _with_key(pa.concat_tables(pieces), group)
    return totals, rows_read, pc.min(totals.column(_BUCKET)).as_py()


def _latest(table: pa.Table, group: FeatureGroup) -> pa.Table:
    """Each key's row with the latest event time (then the latest ingestion)."""
    return first_per_group(table, [_KEY], [(group.event_time, "descending"), (INGESTED_COLUMN, "descending")])


def _previous_rows(block: pa.Table, touched: pa.Array, group: FeatureGroup, earliest: int) -> pa.Table:
    """The stored rows of touched keys a run needs: each key's latest before `earliest`, and all from then on."""
    block = _with_key(block, group)
    block = block.filter(pc.is_in(block.column(_KEY), value_set=touched))
    at = pa.scalar(datetime.fromtimestamp(earliest / 1_000_000, timezone.utc), block.schema.field(group.event_time).type)
    before = pc.less(block.column(group.event_time), at)
    return pa.concat_tables([_latest(block.filter(before), group), block.filter(pc.invert(before))])


def _keep(table: pa.Table, keys: pa.Array, *, inside: bool) -> pa.Table:
    mask = pc.is_in(table.column(_KEY), value_set=keys)
    return table.filter(mask if inside else pc.invert(mask))


def _fold(group: FeatureGroup, totals: pa.Table, reducer_json: str | None, ingested: int,
          *previous_blocks: pa.Table) -> tuple[pa.Table, str | None]:
    """The rows to commit, finished, and the reducer fitted on this run (first run only) as JSON."""
    aggregation: Aggregation = group.aggregation
    granularity = aggregation.granularity // _US
    columns = [c for c in totals.column_names if c not in (_BUCKET, _KEY)]
    schema = totals.select(columns).schema
    earliest = pc.min(totals.column(_BUCKET)).as_py()
    old = pa.concat_tables(previous_blocks) if previous_blocks else None
    if old is not None and old.num_rows:
        old = _latest_per_instant(old, group)
        times = _micros(old.column(group.event_time))
        stored_after = old.filter(pa.array(times >= earliest))
        state_old = _latest(old.filter(pa.array(times < earliest)), group)
    else:
        stored_after = state_old = None
    stored_times = _micros(stored_after.column(group.event_time)) if stored_after is not None else np.array([], int)

    def totals_of(table: pa.Table | None) -> pa.Table:
        if table is None or table.num_rows == 0:
            return schema.append(pa.field(_KEY, pa.string())).empty_table()
        return table.select([*columns, _KEY]).cast(schema.append(pa.field(_KEY, pa.string())))

    state_old, state_new = totals_of(state_old), totals_of(None)
    cutoff = (earliest - granularity) // _DAY_US * _DAY_US + aggregation.reducer_fit_after // _US
    fit_on, outputs = None, []
    instants = sorted(set(totals.column(_BUCKET).to_pylist()) | set(stored_times.tolist()))
    for instant in instants:
        if fit_on is None and instant > cutoff and outputs:
            fit_on = _merged(aggregation, state_old, state_new, columns)
        new = totals.filter(pc.equal(totals.column(_BUCKET), instant))
        if new.num_rows:
            merged = _with_key(aggregation.combine(pa.concat_tables([
                _keep(state_new, new.column(_KEY), inside=True).select(columns), new.select(columns).cast(schema)])),
                group)
            state_new = pa.concat_tables([_keep(state_new, new.column(_KEY), inside=False),
                                          totals_of(merged)])
        stored = totals_of(stored_after.filter(pa.array(stored_times == instant))) if len(stored_times) else None
        if stored is not None and stored.num_rows:
            state_old = pa.concat_tables([_keep(state_old, stored.column(_KEY), inside=False), stored])
            rewritten = _keep(stored, state_new.column(_KEY), inside=True).column(_KEY)
        else:
            rewritten = pa.array([], pa.string())
        keys = pa.concat_arrays([new.column(_KEY).combine_chunks(), rewritten.combine_chunks()
                                 if isinstance(rewritten, pa.ChunkedArray) else rewritten])
        if len(keys):
            outputs.append((instant, _merged(aggregation, _keep(state_old, keys, inside=True),
                                             _keep(state_new, keys, inside=True), columns)))
    fitted = None
    if aggregation.reducer is not None:
        if reducer_json is None:  # the first run: fit on the totals as of the cutoff
            if fit_on is None:
                fit_on = _merged(aggregation, state_old, state_new, columns)
            reducer = aggregation.reducer().fit(fit_on)
            fitted = reducer_json = reducer.to_json()
        reducer = aggregation.reducer_from_json(reducer_json)
    event_type = group.schema.field(group.event_time).type
    stored_schema = group.table_schema
    finished_parts = []
    for instant, table in outputs:
        finished = aggregation.finish(table, reducer) if aggregation.reducer is not None else aggregation.finish(table)
        if group.event_time in finished.column_names:
            finished = finished.drop_columns([group.event_time])
        stamp = pa.array([instant] * finished.num_rows, pa.int64()).cast(pa.timestamp("us", tz="UTC")).cast(event_type)
        finished = finished.append_column(group.event_time, stamp).append_column(
            INGESTED_COLUMN, pa.array([ingested] * finished.num_rows, pa.int64()))
        finished_parts.append(finished.select(stored_schema.names).cast(stored_schema))
    rows = pa.concat_tables(finished_parts) if finished_parts else stored_schema.empty_table()
    problems = check_expectations(rows.select(group.schema.names), group)
    if pc.any(pc.is_valid(problems)).as_py():
        first = pc.drop_null(problems)[0].as_py()
        raise RuntimeError(f"aggregation for {group.ref} produced invalid rows (a bug, not bad data): {first}")
    return rows, fitted


def _merged(aggregation: Aggregation, old: pa.Table, new: pa.Table, columns: list[str]) -> pa.Table:
    """Stored totals and new totals of the same keys, combined per key."""
    parts = [table.select(columns) for table in (old, new) if table.num_rows]
    if not parts:
        return old.select(columns)
    return aggregation.combine(pa.concat_tables(parts))


def _latest_per_instant(table: pa.Table, group: FeatureGroup) -> pa.Table:
    """Of rows of one key at one event time, the latest ingested (a rewrite after late data)."""
    return first_per_group(table, [_KEY, group.event_time], [(INGESTED_COLUMN, "descending")])


def _upstream_key(group: FeatureGroup) -> str:
    return f"upstream:{group.aggregation.upstream.ref}"


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

    rows_read, rows_ref, fitted = 0, None, None
    if new_files:
        # One block per data file: each block shrinks to its own keys' partials, so fewer, larger blocks move less.
        partials = ray.data.read_parquet(new_files, override_num_blocks=len(new_files)).map_batches(
            _interval_partials, fn_kwargs={"partial": aggregation.partial, "event_time": upstream.event_time,
                                           "granularity_us": aggregation.granularity // _US},
            batch_format="pyarrow", batch_size=None).materialize()
        totals_ref, count_ref, earliest_ref = ray.remote(_new_totals).options(num_returns=3).remote(
            group, *partials.to_arrow_refs())
        rows_read, earliest = ray.get([count_ref, earliest_ref])
        if earliest is not None:
            previous_refs = []
            if store.exists(group):  # only the stored rows of the touched keys that the run needs
                touched_ref = ray.remote(lambda totals: pc.unique(totals.column(_KEY))).remote(totals_ref)
                previous = ray.remote(_previous_rows)
                previous_refs = [previous.remote(block, touched_ref, group, earliest)
                                 for block in store.read(group).to_arrow_refs()]
            reducer_json = None
            if aggregation.reducer is not None and store.exists(group):
                location = store.reducer_location(group)
                if not storage.exists(location):
                    raise RuntimeError(f"feature group {group.ref} has a table but no fitted reducer at {location}")
                reducer_json = storage.read_bytes(location).decode()
            rows_ref, fitted_ref = ray.remote(_fold).options(num_returns=2).remote(
                group, totals_ref, reducer_json, upstream_version, *previous_refs)
            fitted = ray.get(fitted_ref)
    if fitted is not None:  # fitted on this first run's totals; a run that dies before its commit refits
        storage.write_bytes(store.reducer_location(group), fitted.encode())

    # Commit even when nothing totals (only cancelled bookings, say), so the checkpoint moves on.
    checkpoint.watermarks[_upstream_key(group)] = str(upstream_version)
    metadata = store.stage_checkpoint(group, checkpoint, run_id)
    rows = ray.data.from_arrow_refs([rows_ref]) if rows_ref is not None \
        else ray.data.from_arrow(group.table_schema.empty_table())
    sink = DeltaCommitSink(store.table_uri(group), group.table_schema, metadata, name=group.name,
                           crash_name="before_feature_commit")
    rows.write_datasink(sink)
    return record_run(storage, store, group, report(rows_read=rows_read, rows_written=rows.count()))
