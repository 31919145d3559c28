"""Training scikit-learn models on an offline feature table and registering them.

Each model is described by a `ModelSpec`; fitting runs as a Ray task next to the
data, so the driver only ever holds the serialized model and its metrics.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from features.catalog import get_group
from features.store import OfflineStore
from orchard.registry import ModelRegistry, ModelVersion
from orchard.storage import Storage

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: Task
    feature_group: str
    features: tuple[str, ...]
    label: str
    estimator: str
    """Dotted path of a scikit-learn estimator class."""
    params: dict[str, Any] = field(default_factory=dict)
    row_filter: tuple[str, str] | None = None
    """Keep only rows where column == value (for example, apples only)."""
    description: str = ""

    def build_estimator(self):
        module_name, _, class_name = self.estimator.rpartition(".")
        module = __import__(module_name, fromlist=[class_name])
        return getattr(module, class_name)(**self.params)


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="fruit_classifier",
            task="classification",
            feature_group="fruit_measurements:1",
            features=("red", "green", "blue", "weight_g", "diameter_mm"),
            label="label",
            estimator="sklearn.tree.DecisionTreeClassifier",
            params={"max_depth": 5, "random_state": 0},
            description="Apple or orange from skin colour, weight and size.",
        ),
        ModelSpec(
            name="apple_weight_regressor",
            task="regression",
            feature_group="fruit_measurements:1",
            features=("diameter_mm", "red", "green", "blue"),
            label="weight_g",
            estimator="sklearn.tree.DecisionTreeRegressor",
            params={"max_depth": 6, "min_samples_leaf": 5, "random_state": 0},
            row_filter=("label", "apple"),
            description="An apple's weight in grams from its diameter and colour.",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise KeyError(f"no model named {name!r}; known models: {', '.join(sorted(MODEL_SPECS))}")
    return MODEL_SPECS[name]


def evaluate(task: Task, y_true: np.ndarray, y_pred: np.ndarray, y_train: np.ndarray) -> dict[str, float]:
    """Test-split metrics, each beside the trivial baseline's (majority class or mean)."""
    from sklearn import metrics

    if task == "classification":
        values, counts = np.unique(y_train, return_counts=True)
        majority = np.full(len(y_true), values[np.argmax(counts)])
        return {
            "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
            "macro_f1": float(metrics.f1_score(y_true, y_pred, average="macro")),
            "baseline_accuracy": float(metrics.accuracy_score(y_true, majority)),
        }
    mean = np.full(len(y_true), float(np.mean(y_train)))
    return {
        "mae": float(metrics.mean_absolute_error(y_true, y_pred)),
        "rmse": float(np.sqrt(metrics.mean_squared_error(y_true, y_pred))),
        "r2": float(metrics.r2_score(y_true, y_pred)),
        "baseline_mae": float(metrics.mean_absolute_error(y_true, mean)),
    }


def fit_sklearn(storage_uri: str, spec: ModelSpec, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Read the spec's feature table, fit, evaluate on a held-out split, serialize with skops."""
    import pyarrow.compute as pc
    import skops.io as sio
    from sklearn.model_selection import train_test_split

    group = get_group(spec.feature_group)
    store = OfflineStore(Storage(storage_uri))
    table_version = store.table_version(group)
    table = store.read_table(group, version=table_version)
    if spec.row_filter:
        column, value = spec.row_filter
        table = table.filter(pc.equal(table[column], value))
    table = table.sort_by([(group.primary_key[0], "ascending")])  # file order must not change the split
    if table.num_rows < 10:
        raise ValueError(f"model {spec.name}: only {table.num_rows} training rows in {group.ref}")
    features = np.column_stack([table[name].to_numpy(zero_copy_only=False) for name in spec.features]).astype(
        np.float64
    )
    labels = table[spec.label].to_numpy(zero_copy_only=False)
    stratify = labels if spec.task == "classification" else None
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    estimator = spec.build_estimator().fit(x_train, y_train)
    metrics = evaluate(spec.task, y_test, estimator.predict(x_test), y_train)
    signature = {
        "task": spec.task,
        "inputs": [{"name": name, "datatype": "FP64"} for name in spec.features],
        "output": {"name": spec.label, "datatype": "BYTES" if spec.task == "classification" else "FP64"},
    }
    if spec.task == "classification":
        signature["classes"] = [str(c) for c in estimator.classes_]
    return {
        "artifact": sio.dumps(estimator),
        "metrics": metrics,
        "signature": signature,
        "rows": {"train": int(len(y_train)), "test": int(len(y_test))},
        "table_version": table_version,
    }


def code_version() -> str | None:
    """The git commit of the code that trained a model, when it runs from a checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def train_and_register(
    storage: Storage, spec: ModelSpec, *, fit: Callable[..., dict] | None = None
) -> tuple[ModelVersion, dict]:
    """Fit `spec` in a Ray task and register the result as the model's next version."""
    import ray
    import sklearn

    started = time.perf_counter()
    fit_remote = ray.remote(num_cpus=1)(fit or fit_sklearn)
    result = ray.get(fit_remote.remote(storage.root_uri, spec))
    card = {
        "flavor": "sklearn",
        "description": spec.description,
        "signature": result["signature"],
        "metrics": result["metrics"],
        "lineage": {
            "feature_group": spec.feature_group,
            "offline_table_version": result["table_version"],
            "rows": result["rows"],
            "estimator": spec.estimator,
            "hyperparameters": spec.params,
            "code_version": code_version(),
            "ray_version": ray.__version__,
            "sklearn_version": sklearn.__version__,
        },
    }
    version = ModelRegistry(storage).register(spec.name, {"model.skops": result["artifact"]}, card)
    return version, {"seconds": round(time.perf_counter() - started, 3), **result["metrics"]}
