"""Training datasets: a feature view joined point-in-time, split, and versioned with its fitted transforms.

`create_training_dataset` reads the label group and every selected group at
their current table versions (recorded), joins them point-in-time on Ray Data,
assigns each label row to train / validation / test (by a seeded hash of the
row's key and time, or by time), fits the view's model-dependent
transformations on the training split only, and publishes everything as one
new integer version under `datasets/<view>/v<view version>/<n>/`:

    train/ validation/ test/   Parquet, the raw (untransformed) joined rows
    transforms.json            the fitted transformations (plain JSON)
    metadata.json              view, table versions read, split rule, row counts, justifications

Rows are stored raw and transformed when read, by the same code that serving
uses, so training and serving cannot drift apart.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.pit_join import AsOfSource, point_in_time_join
from features.store import OfflineStore
from features.transforms import TransformSet
from features.views import FeatureView
from orchard.errors import UsageError
from orchard.storage import STAGING_PREFIX, STALE_STAGING_S, Storage, StorageError

if TYPE_CHECKING:
    import ray.data

SPLITS = ("train", "validation", "test")
SPLIT_COLUMN = "_split"


class DatasetError(UsageError):
    """A training dataset cannot be built or found as asked."""


@dataclass(frozen=True)
class RandomSplit:
    """Seeded random fractions; a row's split depends only on its label key, time and the seed."""

    train: float = 0.7
    validation: float = 0.15
    test: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        parts = (self.train, self.validation, self.test)
        if any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-9:
            raise DatasetError(f"split fractions must be non-negative and add up to 1, got {parts}")

    def describe(self) -> dict:
        return {"kind": "random", "train": self.train, "validation": self.validation, "test": self.test,
                "seed": self.seed}


@dataclass(frozen=True)
class TimeSplit:
    """Train before `validation_from`, validation until `test_from`, test from then on (label time, UTC)."""

    validation_from: datetime
    test_from: datetime

    def __post_init__(self) -> None:
        for name in ("validation_from", "test_from"):  # naive means UTC, as everywhere in Orchard
            value = getattr(self, name)
            if value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=timezone.utc))
        if self.test_from < self.validation_from:
            raise DatasetError("the test split must start at or after the validation split")

    def describe(self) -> dict:
        return {"kind": "time", "validation_from": self.validation_from.isoformat(),
                "test_from": self.test_from.isoformat()}


def parse_split(text: str | None, seed: int = 0) -> RandomSplit | TimeSplit:
    """`random:0.7,0.15,0.15` or `time:2026-01-10T00:00Z,2026-01-20T00:00Z`; None is the default random split."""
    if not text:
        return RandomSplit(seed=seed)
    kind, _, rest = text.partition(":")
    parts = [p.strip() for p in rest.split(",")]
    try:
        if kind == "random" and len(parts) == 3:
            return RandomSplit(*(float(p) for p in parts), seed=seed)
        if kind == "time" and len(parts) == 2:
            bounds = [datetime.fromisoformat(p.replace("Z", "+00:00")) for p in parts]
            return TimeSplit(*bounds)
    except ValueError as error:
        raise DatasetError(f"cannot read split {text!r}: {error}") from None
    raise DatasetError(f"split {text!r} must be 'random:TRAIN,VALIDATION,TEST' or 'time:VALIDATION_FROM,TEST_FROM'")


def _split_hash_text(batch: pa.Table, key_columns: list[str], time_column: str) -> pa.Array:
    """Each row's label key and time as canonical text: the same row gives the same text in any batch."""
    from features.conform import to_utc_timestamps

    parts = [pc.fill_null(pc.cast(batch.column(c), pa.string()), "\u0000") for c in key_columns]
    micros = pc.cast(pc.cast(to_utc_timestamps(batch.column(time_column)), pa.timestamp("us", tz="UTC")), pa.int64())
    parts.append(pc.fill_null(pc.cast(micros, pa.string()), "\u0000"))
    return pc.binary_join_element_wise(*parts, "\u001f")


def _assign_split(batch: pa.Table, rule: dict, key_columns: list[str], time_column: str) -> pa.Table:
    if rule["kind"] == "time":
        from features.conform import to_utc_timestamps

        times = to_utc_timestamps(batch.column(time_column))
        validation_from = pa.scalar(datetime.fromisoformat(rule["validation_from"]), times.type)
        test_from = pa.scalar(datetime.fromisoformat(rule["test_from"]), times.type)
        split = pc.if_else(pc.less(times, validation_from), "train",
                           pc.if_else(pc.less(times, test_from), "validation", "test"))
        return batch.append_column(SPLIT_COLUMN, split)
    text = _split_hash_text(batch, key_columns, time_column).to_numpy(zero_copy_only=False)
    hashes = pd.util.hash_array(text, hash_key=f"{rule['seed']:016d}"[-16:], categorize=False)
    position = hashes / float(2**64)
    bounds = np.array([rule["train"], rule["train"] + rule["validation"]])
    split = np.array(SPLITS)[np.searchsorted(bounds, position, side="right")]
    return batch.append_column(SPLIT_COLUMN, pa.array(split, pa.string()))


def dataset_location(view: FeatureView, version: int | None = None) -> str:
    base = f"datasets/{view.name}/v{view.version}"
    return base if version is None else f"{base}/{version}"


DATASET_MARKER = "metadata.json"
"""Written last: a dataset version is there once its metadata is."""


def dataset_versions(storage: Storage, view: FeatureView) -> list[int]:
    return sorted(int(n) for n in storage.published(dataset_location(view), DATASET_MARKER) if n.isdigit())


def _keep_where(batch: pa.Table, where: dict[str, list]) -> pa.Table:
    """The label rows whose columns hold one of the allowed values."""
    keep = None
    for column, values in where.items():
        mask = pc.is_in(batch.column(column), value_set=pa.array(values, type=batch.column(column).type))
        keep = mask if keep is None else pc.and_(keep, mask)
    return batch.filter(keep)


def join_features(store: OfflineStore, view: FeatureView, labels: "ray.data.Dataset",
                  versions: dict[str, int]) -> tuple["ray.data.Dataset", dict[str, int]]:
    """The view's features joined point-in-time to label rows (the label group's columns and event time, derived
    columns included): one join per group, in the view's order, since a later group may join on a column an
    earlier one brought. Reads each group at `versions[ref]` (filled in with the current version where absent).
    Returns the joined rows and, per group, the label rows it had no row for."""
    label_time = view.label.group.event_time
    joined, unmatched = labels, {}
    for selection in view.selections:
        version = versions.setdefault(selection.group.ref, _version(store, selection.group))
        renames = {f: selection.output_name(f) for f in selection.features}
        order = selection.group.order_column
        columns = list(dict.fromkeys([*selection.join_keys, selection.group.event_time, *selection.features,
                                      *([order] if order else [])]))
        rows = store.read(selection.group, version=version, columns=columns)
        if any(old != new for old, new in renames.items()):
            rows = rows.rename_columns({old: new for old, new in renames.items() if old != new})
        keys = tuple(selection.join_keys)
        joined, stats = point_in_time_join(joined, label_time, [AsOfSource(
            name=selection.group.ref, dataset=rows, keys=keys, label_keys=tuple(selection.join_keys[k] for k in keys),
            event_time=selection.group.event_time, features=tuple(renames.values()), ttl=selection.ttl, order=order)])
        unmatched.update(stats.unmatched)
    return joined, unmatched


def create_training_dataset(storage: Storage, view: FeatureView, split: RandomSplit | TimeSplit) -> dict:
    """Build, split, fit and publish a new version of the view's training dataset; returns its metadata."""
    view.check_sensitive()
    store = OfflineStore(storage)
    label = view.label
    versions = {label.group.ref: _version(store, label.group)}
    label_time = label.group.event_time
    label_columns = list(dict.fromkeys([*label.columns, label_time]))
    stored = {f.name for f in label.group.features}
    labels = store.read(label.group, version=versions[label.group.ref],
                        columns=[c for c in dict.fromkeys([*label_columns, label.target, *label.reads, *label.where])
                                 if c in stored])
    if label.where:
        labels = labels.map_batches(_keep_where, fn_kwargs={"where": {k: list(v) for k, v in label.where.items()}},
                                    batch_format="pyarrow")
    if label.derive is not None:
        labels = labels.map_batches(label.derive, batch_format="pyarrow")

    joined, unmatched = join_features(store, view, labels, versions)

    rule = split.describe()
    output_columns = [*label_columns, *([label.target] if label.target not in label_columns else []),
                      *view.feature_columns()]
    assigned = joined.map_batches(
        _assign_split, fn_kwargs={"rule": rule, "key_columns": list(label.columns), "time_column": label_time},
        batch_format="pyarrow").materialize()

    # Fresh, unfitted copies: the view's own transform objects are definitions and are never fitted.
    transforms = TransformSet.from_json(TransformSet(list(view.transforms)).to_json())
    train = assigned.map_batches(_only_split, fn_kwargs={"split": "train"}, batch_format="pyarrow")
    rows_per_split = {name: assigned.map_batches(_only_split, fn_kwargs={"split": name}, batch_format="pyarrow").count()
                      for name in SPLITS}
    _require_matches(store, view, assigned, unmatched, sum(rows_per_split.values()), versions)
    if view.transforms:
        if rows_per_split["train"] == 0:
            raise DatasetError(f"{view.ref}: the training split is empty; nothing to fit the transformations on")
        transforms.fit_dataset(train.select_columns(output_columns))

    staging = f"{dataset_location(view)}/{STAGING_PREFIX}{uuid.uuid4().hex}"
    for name in SPLITS:
        part = assigned.map_batches(_only_split, fn_kwargs={"split": name, "columns": output_columns},
                                    batch_format="pyarrow")
        part.write_parquet(storage.uri(f"{staging}/{name}"), min_rows_per_file=1)
    storage.write_bytes(f"{staging}/transforms.json", transforms.to_json().encode())
    metadata: dict[str, Any] = {
        "view": view.ref,
        "description": view.description,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "label": {"group": label.group.ref, "target": label.target, "time": label_time, "columns": list(label.columns),
                  **({"where": {k: list(v) for k, v in label.where.items()}} if label.where else {})},
        "table_versions": versions,
        "split": rule,
        "rows": rows_per_split,
        "unmatched": unmatched,
        "feature_columns": view.feature_columns(),
        "columns": output_columns,
        "sensitive_features": {f: view.sensitive_allowed[f] for f in view.sensitive_features()},
        "transforms": "transforms.json",
    }
    version = 0
    for attempt in range(100):  # a number claimed by a writer that died before publishing stays a gap
        version = max(max(dataset_versions(storage, view), default=0), version) + 1
        metadata["version"] = version
        storage.write_json(f"{staging}/{DATASET_MARKER}", metadata)
        if storage.publish_dir(staging, dataset_location(view, version), DATASET_MARKER):
            with contextlib.suppress(StorageError, OSError):  # the version is published; the next one tidies up
                storage.remove_stale_folders(dataset_location(view), STAGING_PREFIX, STALE_STAGING_S)
            return metadata
    raise DatasetError(f"{view.ref}: could not claim a dataset version after 100 attempts")


def _require_matches(store: OfflineStore, view: FeatureView, joined, unmatched: dict[str, int], label_rows: int,
                     versions: dict[str, int]) -> None:
    """A selection that matched no label row at all is an error that says which, and why."""
    label_time = view.label.group.event_time
    for selection in view.selections:
        group = selection.group
        if not label_rows or unmatched.get(group.ref, 0) < label_rows:
            continue
        first = _extreme(store.read(group, version=versions[group.ref], columns=[group.event_time]),
                         group.event_time, "min")
        last_label = _extreme(joined, label_time, "max")
        if first is None:
            why = "its table has no rows"
        elif first > last_label:
            why = (f"it has no rows at or before the label times: its first row is at {first.isoformat()}, the "
                   f"last label at {last_label.isoformat()}")
        elif selection.ttl is not None:
            why = (f"every row at or before a label's time with a matching key is older than the selection's TTL "
                   f"({selection.ttl}), or no key matches {dict(selection.join_keys)}")
        else:
            why = f"no row's key matches the label rows' {sorted(set(selection.join_keys.values()))}"
        raise DatasetError(f"{view.ref}: the selection of {group.ref} ({', '.join(selection.features)}) matched none "
                           f"of the {label_rows} label rows: {why}")


def _extreme(dataset, column: str, which: str):
    """The column's smallest or largest value (None for no rows), from one value per block.

    Ray Data's own `min`/`max` run a hash-shuffle aggregation with actors of their own: 13-20 s on a small
    table on the 2-core development machine, against well under a second for this."""

    def per_block(batch: pa.Table) -> pa.Table:
        value = pc.min_max(batch.column(column))[which]
        return pa.table({"value": pa.array([value.as_py()], batch.schema.field(column).type)})

    blocks = dataset.map_batches(per_block, batch_format="pyarrow", batch_size=None).take_all()
    return pc.min_max(pa.array([row["value"] for row in blocks]))[which].as_py() if blocks else None


def _only_split(batch: pa.Table, split: str, columns: list[str] | None = None) -> pa.Table:
    selected = batch.filter(pc.equal(batch.column(SPLIT_COLUMN), split))
    return selected.select(columns) if columns else selected


def _version(store: OfflineStore, group) -> int:
    version = store.table_version(group)
    if version is None:
        raise DatasetError(f"feature group {group.ref} has no table yet; run `orchard features run {group.ref}` first")
    return version


@dataclass(frozen=True)
class TrainingDataset:
    """One published version of a view's training dataset."""

    storage: Storage
    location: str
    metadata: dict

    @classmethod
    def open(cls, storage: Storage, view: FeatureView, version: int | None = None) -> "TrainingDataset":
        versions = dataset_versions(storage, view)
        if not versions:
            raise DatasetError(f"feature view {view.ref} has no training dataset; run `orchard datasets create {view.ref}`")
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise DatasetError(f"feature view {view.ref} has no training dataset version {chosen}; known: {versions}")
        location = dataset_location(view, chosen)
        return cls(storage, location, storage.read_json(f"{location}/metadata.json"))

    def transforms(self) -> TransformSet:
        return TransformSet.from_json(self.storage.read_bytes(f"{self.location}/transforms.json").decode())

    def read(self, split: str) -> "ray.data.Dataset":
        """The split's raw joined rows."""
        import ray.data

        if split not in SPLITS:
            raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if self.metadata["rows"][split] == 0:
            return ray.data.from_arrow(pa.table({c: pa.array([], pa.null()) for c in self.metadata["columns"]}))
        return ray.data.read_parquet(self.storage.uri(f"{self.location}/{split}"))

    def read_transformed(self, split: str) -> "ray.data.Dataset":
        """The split as the model sees it: the fitted transformations applied by the serving code path."""
        transforms = self.transforms()
        return self.read(split).map_batches(transforms.transform, batch_format="pyarrow")
