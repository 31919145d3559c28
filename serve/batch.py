"""Batch inference: one model version over a table of entities and times, or of raw rows, on Ray Data.

The input is either entity keys with a time per row (a feature group, or a
Parquet or CSV path), whose features come from the point-in-time join at each
row's time exactly as training got them (`features.datasets.join_features`, not
the online store), or raw rows that already carry the model's inputs. The model
then runs on an actor pool: each actor loads the version once and predicts one
block at a time, with the same transformations and predictor as the online
service. Rows whose features are missing (no row at or before their time, or
older than a TTL) get no prediction and say which group, as training drops
such rows.

Predictions are appended, in one Delta commit, to `predictions/batch/<model>`
under the storage root, with the model's name and version, the input's key
columns and time. A run is identified by the model version, the input (a
group's table version; a path's files, sizes and modification times) and the
arguments: the same run again adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchard.errors import UsageError
from orchard.registry import ModelRegistry
from orchard.storage import Storage

RUN_KEY = "orchard.batch_run"
PREDICTION = "prediction"
PROBABILITIES = "probabilities"
MISSING = "missing"
_TIME = pa.timestamp("us", tz="UTC")


class BatchInputError(UsageError):
    """The batch input cannot be read or lacks what the model needs."""


@dataclass(frozen=True)
class BatchReport:
    model: str
    version: int
    input: str
    mode: str
    """"entities" (features joined point-in-time), "raw" (rows carry the model's inputs) or "images" (a folder of
    image files, for a model whose one input is an image)."""
    rows: int
    predicted: int
    missing: int
    """Rows without a prediction: a feature had no value at the row's time."""
    table: str
    table_version: int | None
    run_key: str
    already_done: bool
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def parse_model_ref(text: str) -> tuple[str, int | str | None]:
    """`name`, `name:3` or `name@alias` -> (name, version or alias or None)."""
    if "@" in text:
        name, _, alias = text.partition("@")
        return name, alias
    name, _, version = text.partition(":")
    if version:
        if not version.isdigit():
            raise UsageError(f"model {text!r}: a version is a number (name:3); an alias is written name@alias")
        return name, int(version)
    return name, None


def table_location(model: str) -> str:
    return f"predictions/batch/{model}"


# ------------------------------------------------------------------ input


def _read_input(storage: Storage, source: str) -> tuple["ray.data.Dataset", str, str | None]:  # noqa: F821
    """(rows, identity for the run key, the feature group's event time column if the input is a group)."""
    import ray
    import ray.data

    from features.catalog import all_groups
    from features.store import OfflineStore

    groups = {g.ref: g for g in all_groups()}
    by_name = {g.name: g for g in sorted(groups.values(), key=lambda g: g.version)}
    group = groups.get(source) or by_name.get(source)
    if group is not None:
        store = OfflineStore(storage)
        version = store.table_version(group)
        if version is None:
            raise BatchInputError(f"feature group {group.ref} has no table yet; run `orchard features run "
                                  f"{group.ref}` first")
        return store.read(group, version=version), f"group:{group.ref}@{version}", group.event_time
    path = source if source.startswith(("/", "s3://", "gs://")) else storage.uri(source)
    local = Storage(path) if "://" not in path else None
    if local is not None and not local.exists(""):
        raise BatchInputError(f"input {source!r} is neither a feature group ({', '.join(sorted(by_name))}) nor an "
                              f"existing path")
    info = local.fs.get_file_info(local.root) if local is not None else None
    files = [info] if info is not None and info.is_file else \
        [entry for entry in local.fs.get_file_info(_selector(local.root)) if entry.is_file] if local else []
    identity = json.dumps(sorted((f.path, f.size, f.mtime_ns) for f in files)) if files else path
    kinds = {f.path.rsplit(".", 1)[-1].lower() for f in files} or {path.rsplit(".", 1)[-1].lower()}
    # A few large blocks per CPU: Ray Data's default (200 blocks) made every later step a few hundred small tasks.
    blocks = max(len(files), 4 * max(1, int(ray.cluster_resources().get("CPU", 1))))
    if kinds <= {"parquet"}:
        return ray.data.read_parquet(path, override_num_blocks=blocks), f"path:{identity}", None
    if kinds <= {"csv"}:
        return ray.data.read_csv(path, override_num_blocks=blocks), f"path:{identity}", None
    raise BatchInputError(f"input {source!r} holds {', '.join(sorted(kinds))} files; batch inference reads "
                          "Parquet or CSV (one format per input)")


def _selector(root: str):
    import pyarrow.fs as pafs

    return pafs.FileSelector(root, recursive=True)


def _columns(dataset) -> list[str]:
    schema = dataset.schema()
    return list(schema.names) if schema is not None else []


# ------------------------------------------------------------------ prediction


class _PredictBlocks:
    """An actor of the pool: loads the model version once, then predicts block after block."""

    def __init__(self, storage_uri: str, name: str, version: int, keep: list[str], run_key: str,
                 predicted_at: datetime):
        from training.predictor import Predictor

        self.predictor = Predictor.load(ModelRegistry(Storage(storage_uri)), name, version)
        self.name, self.version, self.keep, self.run_key, self.predicted_at = name, version, keep, run_key, predicted_at

    def __call__(self, block: pa.Table, missing_by: dict[str, list[str]]) -> pa.Table:
        inputs, n = self.predictor.feature_names, block.num_rows
        nulls = [pc.is_null(block.column(name)).to_numpy(zero_copy_only=False) for name in inputs]
        incomplete = np.logical_or.reduce(nulls) if nulls else np.zeros(n, bool)
        complete = np.flatnonzero(~incomplete)
        outputs = self.predictor.predict_arrays(block.select(inputs).take(pa.array(complete))) \
            if len(complete) else None
        reasons: list[str | None] = [None] * n
        for i in np.flatnonzero(incomplete).tolist():  # rows without features: usually few
            absent = [name for name, null in zip(inputs, nulls) if null[i]]
            groups = sorted({ref for name in absent for ref in missing_by.get(name, ["input"])})
            reasons[i] = f"no value for {', '.join(absent)} ({', '.join(groups)})"
        return self._with_predictions(block.select(self.keep), outputs, incomplete, complete, reasons)

    def _with_predictions(self, output: pa.Table, outputs, incomplete: np.ndarray, complete: np.ndarray,
                          reasons: list[str | None]) -> pa.Table:
        n = output.num_rows
        if self.predictor.signature["task"] == "classification":
            classes = self.predictor.classes
            probabilities = np.zeros((n, len(classes)))
            if outputs is not None:
                probabilities[complete] = outputs.reshape(len(complete), len(classes))
            labels = pa.array(np.array(classes, dtype=object)[probabilities.argmax(axis=1)], pa.string(),
                              mask=incomplete)
            per_class = pa.StructArray.from_arrays([pa.array(probabilities[:, i]) for i in range(len(classes))],
                                                   names=classes, mask=pa.array(incomplete))
            output = output.append_column(PREDICTION, labels).append_column(PROBABILITIES, per_class)
        else:
            values = np.zeros(n)
            if outputs is not None:
                values[complete] = outputs.reshape(-1)
            output = output.append_column(PREDICTION, pa.array(values, pa.float64(), mask=incomplete))
        return (output.append_column(MISSING, pa.array(reasons, pa.string()))
                .append_column("model", pa.repeat(pa.scalar(self.name), n))
                .append_column("model_version", pa.repeat(pa.scalar(self.version, pa.int64()), n))
                .append_column("run_key", pa.repeat(pa.scalar(self.run_key), n))
                .append_column("predicted_at", pa.repeat(pa.scalar(self.predicted_at, _TIME), n)))


class _PredictImages(_PredictBlocks):
    """An actor of the pool for a folder of image files: decodes each file as the service and the feature pipeline
    do (`features.images.decode_image`); a file that is not an image the model takes gets no prediction and the
    reason."""

    def __call__(self, block: pa.Table) -> pa.Table:
        from features.images import ImageError, decode_image, pixels_to_model
        from training.predictor import image_inputs

        (spec,) = image_inputs(self.predictor.signature).values()
        pixels, reasons = [], []
        for data in block.column("bytes").to_pylist():
            try:
                pixels.append(decode_image(data, spec))
                reasons.append(None)
            except ImageError as error:
                pixels.append(None)
                reasons.append(f"image could not be read: {error}")
        incomplete = np.array([reason is not None for reason in reasons], dtype=bool)
        complete = np.flatnonzero(~incomplete)
        outputs = np.asarray(self.predictor.flavor.predict(
            self.predictor.estimator, pixels_to_model([pixels[i] for i in complete], spec),
            self.predictor.signature)) if len(complete) else None
        return self._with_predictions(block.select(["path"]), outputs, incomplete, complete, reasons)


def _image_input(storage: Storage, source: str, card: dict):
    """(rows of {bytes, path} for every file of an image folder, identity) when the model's only input is an image
    and `source` is a folder; None otherwise."""
    import ray
    import ray.data

    from training.predictor import image_inputs

    images = image_inputs(card["signature"])
    if not images or len(card["signature"]["inputs"]) != 1:
        return None
    path = source if source.startswith(("/", "s3://", "gs://")) else storage.uri(source)
    local = Storage(path) if "://" not in path else None
    if local is None or not local.exists(""):
        raise BatchInputError(f"input {source!r} is not a folder of image files; model {card.get('name', '')} "
                              "takes one image per prediction")
    files = sorted((e for e in local.fs.get_file_info(_selector(local.root)) if e.is_file
                    and not any(part.startswith((".", "_")) for part in e.path[len(local.root):].split("/"))),
                   key=lambda e: e.path)
    if not files:
        raise BatchInputError(f"the folder {source!r} holds no files")
    identity = json.dumps([(f.path, f.size, f.mtime_ns) for f in files])
    blocks = min(len(files), 4 * max(1, int(ray.cluster_resources().get("CPU", 1))))
    dataset = ray.data.read_binary_files([f.path for f in files], include_paths=True, override_num_blocks=blocks)
    return dataset, f"images:{identity}"


def _count_missing(*blocks: pa.Table) -> tuple[int, int]:
    rows = sum(block.num_rows for block in blocks)
    return rows, sum(block.num_rows - block.column(MISSING).null_count for block in blocks)


def _deprecation_warning() -> type[Warning]:
    try:
        from ray.util.annotations import RayDeprecationWarning
    except ImportError:  # moved in a later Ray: nothing to silence there
        return DeprecationWarning
    return RayDeprecationWarning


def _done_runs(table_uri: str) -> set[str]:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        history = DeltaTable(table_uri).history()
    except TableNotFoundError:
        return set()
    return {commit[RUN_KEY] for commit in history if RUN_KEY in commit}


def _as_label_rows(dataset, view, time_column: str | None, at: datetime | None):
    """The input as the view's label rows: its entity columns in the label group's types, its time as the label
    group's event time (from `time_column`, or `at` for every row), `derive` applied."""
    from features.vectors import entity_columns

    label = view.label
    label_time = label.group.event_time
    needed = entity_columns(view)
    columns = _columns(dataset)
    absent = [c for c in needed if c not in columns]
    if absent:
        raise BatchInputError(f"the input lacks the entity column(s) {', '.join(absent)} of view {view.ref} "
                              f"(its columns: {', '.join(columns)})")
    if at is None and (time_column or label_time) not in columns:
        raise BatchInputError(f"the input has no time column {time_column or label_time!r}; name one with "
                              "--time-column, or give --at for every row")
    stored = {f.name: f.dtype for f in label.group.features}
    given = [c for c in columns if c in stored and c != label_time]

    def conform(batch: pa.Table) -> pa.Table:
        from features.conform import to_utc_timestamps

        table = pa.table({c: batch.column(c).cast(stored[c]) for c in given})
        if at is not None:
            times = pa.array([at] * batch.num_rows, _TIME)
        else:
            times = to_utc_timestamps(batch.column(time_column or label_time).cast(pa.string())
                                      if not pa.types.is_timestamp(batch.schema.field(time_column or label_time).type)
                                      else batch.column(time_column or label_time))
        table = table.append_column(label_time, times)
        return label.derive(table) if label.derive is not None else table

    return dataset.map_batches(conform, batch_format="pyarrow"), [*given, label_time]


def run_batch_inference(storage: Storage, model: str, source: str, *, time_column: str | None = None,
                        at: datetime | None = None, workers: int = 1) -> BatchReport:
    """Predict every row of `source` with `model` (name, name:version or name@alias); see the module docstring."""
    import ray
    import ray.data

    from features.catalog import get_view
    from features.datasets import join_features
    from features.delta_sink import DeltaCommitSink
    from features.store import OfflineStore

    started = time.perf_counter()
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    name, reference = parse_model_ref(model)
    registry = ModelRegistry(storage)
    version = registry.get(name, reference)
    card = version.card
    inputs = [item["name"] for item in card["signature"]["inputs"]]
    image_folder = _image_input(storage, source, card)
    dataset, identity, group_time = image_folder + (None,) if image_folder else _read_input(storage, source)
    columns = _columns(dataset)
    at = at.astimezone(timezone.utc) if at is not None else None
    missing_by: dict[str, list[str]] = {}
    if image_folder:
        mode, keep, rows = "images", ["path"], dataset
    elif all(name_ in columns for name_ in inputs):
        mode, keep = "raw", [c for c in columns if c not in inputs]
        rows = dataset
    else:
        mode = "entities"
        view = get_view(card["lineage"]["view"])
        labels, keep = _as_label_rows(dataset, view, time_column or group_time, at)
        rows, _ = join_features(OfflineStore(storage), view, labels, {})
        missing_by = {s.output_name(f): [s.group.ref] for s in view.selections for f in s.features}
        request_time = [n for n in inputs if n not in missing_by and n not in columns]
        if request_time:
            raise BatchInputError(f"the input lacks {', '.join(request_time)}, which model {name} takes from the "
                                  "request rather than from a feature group")
    run_key = hashlib.sha256(json.dumps([name, version.version, identity, time_column, at and at.isoformat(), mode],
                                        default=str).encode()).hexdigest()[:24]
    table_uri = storage.uri(table_location(name))
    report = dict(model=name, version=version.version, input=source, mode=mode, table=table_uri, run_key=run_key)
    if run_key in _done_runs(table_uri):
        from deltalake import DeltaTable

        done = DeltaTable(table_uri)
        return BatchReport(**report, rows=0, predicted=0, missing=0, table_version=done.version(), already_done=True,
                           seconds=round(time.perf_counter() - started, 3))
    with warnings.catch_warnings():
        # Ray Data passes an actor pool's function to each actor through the object store, and with its default
        # of endless actor restarts Ray's core worker then logs an error line for every actor (ray#53727), in a
        # healthy run. No restarts instead: a run whose actor dies fails as a whole, and runs again (it is
        # idempotent). Ray 2.60 has no named parameter for this yet and flags the keyword as deprecated.
        warnings.simplefilter("ignore", category=_deprecation_warning())
        predicted = rows.map_batches(
            # Whole blocks: at Ray Data's default of 1,024 rows per call, the per-call cost (casting, transforming,
            # building the output) was most of a run's time (4M rows: 32 s).
            _PredictImages if image_folder else _PredictBlocks,
            fn_kwargs={} if image_folder else {"missing_by": missing_by}, batch_format="pyarrow", batch_size=None,
            fn_constructor_kwargs={"storage_uri": storage.root_uri, "name": name, "version": version.version,
                                   "keep": keep, "run_key": run_key, "predicted_at": datetime.now(timezone.utc)},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers), max_restarts=0).materialize()
    schema = predicted.schema()
    arrow_schema = pa.schema(list(zip(schema.names, schema.types)))
    # One task counts every block (they are local to it): a task per block cost more than the counting.
    total_rows, missing = ray.get(ray.remote(_count_missing).remote(*predicted.to_arrow_refs()))
    predicted.write_datasink(DeltaCommitSink(table_uri, arrow_schema, {RUN_KEY: run_key}, name=f"{name}_batch"))
    from deltalake import DeltaTable

    return BatchReport(**report, rows=total_rows, predicted=total_rows - missing, missing=missing,
                       table_version=DeltaTable(table_uri).version(), already_done=False,
                       seconds=round(time.perf_counter() - started, 3))
