"""What a model sees of a training dataset: its input columns, target, rows as arrays, and raw signature.

Both built-in flavors (`training.flavors.sklearn`, `training.flavors.keras`)
turn a view's transformed training dataset into the same thing: a float32
feature matrix and a target vector per block, with rows that hold a null in a
feature or in the target dropped (a null means the point-in-time join found no
fresh enough row; a made-up value would teach the model something that never
happened). `prepare_splits` does that for the three splits and measures each
one on the cluster; only statistics reach the driver. Splits small enough
(`MATERIALIZE_SHARE` of the object store) are kept there as float arrays, so
a network's epochs do not read and convert the Parquet files again; larger
ones stream from the files every epoch.

A model's *signature* names the raw feature values a request must carry (the
view's features before the fitted transformations), with their types; the
serving code applies the stored transformations itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.datasets import SPLITS, TrainingDataset
from features.images import ImageSpec, pixels_to_model
from features.transforms import LabelEncoder, TransformSet
from orchard.errors import UsageError
from orchard.storage import Storage

if TYPE_CHECKING:
    import ray.data

FEATURES_COLUMN = "features"
TARGET_COLUMN = "target"


class ModelDataError(UsageError):
    """A training dataset cannot be turned into a model's inputs as asked."""


class ModelDescription(Protocol):
    """The fields of a model definition that its data depends on (`training.spec.ModelSpec` has them)."""

    name: str
    view: str
    task: str
    target: str | None
    excluded_features: tuple[str, ...]


@dataclass(frozen=True)
class ModelInputs:
    """The raw features a model takes, the transformed columns they become, and the target."""

    raw_features: list[str]
    """View features the model takes, before the transformations (what a request carries)."""
    feature_columns: list[str]
    """The transformed columns, in the order of the model's input vector."""
    target: str
    classes: list | None
    """The label encoder's classes (the model's class indices, in order); None for regression."""
    images: dict[str, ImageSpec] = field(default_factory=dict)
    """Feature columns that hold images: each takes `spec.size` places of the model's input vector (its pixels
    in [0, 1], row-major), where any other column takes one."""

    def width(self, column: str) -> int:
        return self.images[column].size if column in self.images else 1

    @property
    def n_features(self) -> int:
        """The length of the model's input vector."""
        return sum(self.width(column) for column in self.feature_columns)


def image_specs(view) -> dict[str, ImageSpec]:
    """The view's image features by output name, with their specs."""
    return {s.output_name(name): s.group.feature(name).image for s in view.selections for name in s.features
            if s.group.feature(name).image is not None}


def model_inputs(spec: ModelDescription, metadata: dict, transforms: TransformSet) -> ModelInputs:
    """The transformed feature columns (minus the spec's exclusions) and the target of a training dataset."""
    view_features = list(metadata["feature_columns"])
    unknown = [name for name in spec.excluded_features if name not in view_features]
    if unknown:
        raise ModelDataError(f"model {spec.name}: excluded feature(s) {unknown} are not features of "
                             f"{metadata['view']}; its features are {view_features}")
    kept = [name for name in view_features if name not in spec.excluded_features]
    feature_columns = transforms.output_columns(kept)
    target = spec.target or metadata["label"]["target"]
    if target in feature_columns:
        raise ModelDataError(f"model {spec.name}: target {target!r} is also a feature of {metadata['view']}")
    encoders = [t for t in transforms.transforms if isinstance(t, LabelEncoder) and t.column == target]
    if spec.task == "classification":
        if not encoders:
            raise ModelDataError(f"model {spec.name}: a classification target needs a LabelEncoder on {target!r} "
                                 f"in the view's transforms; {metadata['view']} has {transforms.transforms!r}")
        classes = list(encoders[0].classes_)
        if len(classes) < 2:
            raise ModelDataError(f"model {spec.name}: the training split has only the class(es) {classes}")
        return ModelInputs(kept, feature_columns, target, classes)
    if encoders:
        raise ModelDataError(f"model {spec.name}: regression target {target!r} is label-encoded; "
                             "use task classification")
    return ModelInputs(kept, feature_columns, target, None)


def to_model_arrays(batch: pa.Table, feature_columns: list[str], target: str, task: str,
                    images: dict[str, ImageSpec] | None = None) -> dict[str, np.ndarray]:
    """One batch as a float32 feature matrix and a target vector; rows with a null in either are dropped.

    An image column (`images`) becomes its pixels in [0, 1] (`features.images.pixels_to_model`), any other
    column one float."""
    images = images or {}
    for name in [*feature_columns, target]:
        if name not in batch.column_names:
            raise ModelDataError(f"the transformed dataset lacks column {name!r}; it has {batch.column_names}")
        kind = batch.column(name).type
        if name in images and (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            continue
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
            raise ModelDataError(f"column {name!r} must hold numbers for the model, got {kind}; "
                                 "transform it in the feature view or exclude it in the model's spec")
    complete = functools.reduce(pc.and_, [pc.is_valid(batch.column(n)) for n in [*feature_columns, target]])
    batch = batch.filter(complete)
    columns = [pixels_to_model(batch.column(name).to_pylist(), images[name]) if name in images
               else batch.column(name).to_numpy(zero_copy_only=False).astype(np.float32)[:, None]
               for name in feature_columns]
    width = sum(images[name].size if name in images else 1 for name in feature_columns)
    features = np.concatenate(columns, axis=1) if batch.num_rows else np.zeros((0, width), np.float32)
    labels = batch.column(target).to_numpy(zero_copy_only=False)
    labels = labels.astype(np.int64) if task == "classification" else labels.astype(np.float32)
    return {FEATURES_COLUMN: features, TARGET_COLUMN: labels}


# -- statistics of a prepared split, merged from per-block partials


def _block_summary(batch: dict[str, np.ndarray], n_classes: int) -> dict[str, np.ndarray]:
    features = batch[FEATURES_COLUMN].astype(np.float64)
    target = batch[TARGET_COLUMN]
    mean = features.mean(axis=0) if len(features) else np.zeros(features.shape[1])
    m2 = np.square(features - mean).sum(axis=0)
    if n_classes and len(target) and (target.min() < 0 or target.max() >= n_classes):
        raise ModelDataError(f"a class index outside 0..{n_classes - 1} is in the data: "
                             f"{sorted(set(target[(target < 0) | (target >= n_classes)].tolist()))[:5]}")
    counts = np.bincount(target.astype(np.int64), minlength=n_classes) if n_classes else np.zeros(0, np.int64)
    return {"count": np.array([len(features)]), "mean": mean[None, :], "m2": m2[None, :],
            "target_sum": np.array([float(target.astype(np.float64).sum())]),
            "target_sumsq": np.array([float(np.square(target.astype(np.float64)).sum())]),
            "class_counts": counts[None, :]}


def split_summary(prepared: "ray.data.Dataset", n_classes: int = 0) -> dict[str, Any]:
    """Row count, per-feature mean and population variance, target mean and class counts of a prepared split.

    Each block is reduced to (count, mean, M2, ...) on the cluster and the
    driver merges them with Chan et al.'s parallel update: only statistics move.
    """
    count, mean, m2, target_sum, target_sumsq = 0, None, None, 0.0, 0.0
    class_counts = np.zeros(n_classes, np.int64)
    parts = prepared.map_batches(_block_summary, batch_format="numpy", batch_size=None,
                                 fn_kwargs={"n_classes": n_classes})
    for part in parts.iter_rows():
        n = int(part["count"])
        if n == 0:
            continue
        class_counts += np.asarray(part["class_counts"], np.int64)
        target_sum += float(part["target_sum"])
        target_sumsq += float(part["target_sumsq"])
        if count == 0:
            count, mean, m2 = n, np.asarray(part["mean"], np.float64), np.asarray(part["m2"], np.float64)
            continue
        delta = part["mean"] - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + part["m2"] + np.square(delta) * (count * n / total)
        count = total
    if count == 0:
        return {"count": 0, "mean": None, "variance": None, "target_mean": None, "target_std": None,
                "class_counts": class_counts.tolist()}
    target_mean = target_sum / count
    return {"count": count, "mean": mean.tolist(), "variance": (m2 / count).tolist(),
            "target_mean": target_mean, "target_std": max(target_sumsq / count - target_mean**2, 0.0) ** 0.5,
            "class_counts": class_counts.tolist()}


# -- a whole training dataset, prepared for one model


@dataclass
class PreparedData:
    dataset: TrainingDataset
    inputs: ModelInputs
    splits: dict[str, "ray.data.Dataset"]
    """Each split as batches of {FEATURES_COLUMN: float32 matrix, TARGET_COLUMN: vector}, nulls dropped."""
    summaries: dict[str, dict]
    dropped_rows: dict[str, int]

    @property
    def rows(self) -> dict[str, int]:
        return {split: summary["count"] for split, summary in self.summaries.items()}

    def lineage(self) -> dict:
        """Where the data came from: view, dataset version and location, table versions, split, rows used."""
        metadata = self.dataset.metadata
        return {"view": metadata["view"], "dataset_version": metadata["version"],
                "dataset_location": self.dataset.storage.uri(self.dataset.location),
                "table_versions": metadata["table_versions"], "split": metadata["split"],
                "rows": self.rows, "dropped_rows": self.dropped_rows}


MATERIALIZE_SHARE = 0.2
"""Prepared splits that take at most this share of the object store are held there (`prepare_splits`)."""


def _fits_in_object_store(estimated_bytes: int) -> bool:
    import ray

    return estimated_bytes <= MATERIALIZE_SHARE * ray.cluster_resources().get("object_store_memory", 0)


def prepare_splits(storage: Storage, spec: ModelDescription, dataset_version: int | None = None) -> PreparedData:
    """Open the spec's view's training dataset (the newest unless `dataset_version`) and prepare its splits."""
    from features.catalog import get_view

    view = get_view(spec.view)
    dataset = TrainingDataset.open(storage, view, dataset_version)
    inputs = model_inputs(spec, dataset.metadata, dataset.transforms())
    inputs = replace(inputs, images={c: s for c, s in image_specs(view).items() if c in inputs.feature_columns})
    n_classes = len(inputs.classes or ())
    splits, summaries, dropped = {}, {}, {}
    keep_in_memory = _fits_in_object_store(sum(dataset.metadata["rows"].values()) * (inputs.n_features * 4 + 8))
    for split in SPLITS:
        splits[split] = dataset.read_transformed(split).map_batches(
            to_model_arrays, batch_format="pyarrow",
            fn_kwargs={"feature_columns": inputs.feature_columns, "target": inputs.target, "task": spec.task,
                       "images": inputs.images})
        if keep_in_memory:  # read and converted once, not once per epoch and summary
            splits[split] = splits[split].materialize()
        summaries[split] = split_summary(splits[split], n_classes)
        dropped[split] = dataset.metadata["rows"][split] - summaries[split]["count"]
        if summaries[split]["count"] == 0:
            raise ModelDataError(f"model {spec.name}: the {split} split of {view.ref} training dataset "
                                 f"v{dataset.metadata['version']} has no complete rows "
                                 f"({dropped[split]} dropped for nulls)")
    return PreparedData(dataset, inputs, splits, summaries, dropped)


def raw_signature(spec: ModelDescription, inputs: ModelInputs) -> dict:
    """The request-side signature: raw feature names and types, outputs, and the classes of a classifier."""
    from features.catalog import get_view

    view = get_view(spec.view)
    types = {s.output_name(f): s.group.feature(f).dtype for s in view.selections for f in s.features}
    fields = []
    images = image_specs(view)
    for name in inputs.raw_features:
        kind = types[name]
        if name in images:  # the bytes of an image file (or a UINT8 tensor of the image's shape)
            fields.append({"name": name, "datatype": "BYTES", "shape": [-1], "image": images[name].to_dict()})
            continue
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            datatype = "BYTES"
        elif pa.types.is_boolean(kind):
            datatype = "BOOL"
        elif pa.types.is_integer(kind):
            datatype = "INT64"
        elif pa.types.is_floating(kind):
            datatype = "FP64"
        else:
            raise ModelDataError(f"model {spec.name}: feature {name!r} has type {kind}, which requests cannot carry")
        fields.append({"name": name, "datatype": datatype, "shape": [-1]})
    signature: dict[str, Any] = {"task": spec.task, "inputs": fields, "model_inputs": inputs.feature_columns,
                                 "target": inputs.target}
    if spec.task == "classification":
        signature["classes"] = [str(c) for c in inputs.classes]
        signature["outputs"] = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                                {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(inputs.classes)]}]
    else:
        signature["outputs"] = [{"name": inputs.target, "datatype": "FP64", "shape": [-1]}]
    return signature
