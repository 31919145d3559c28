"""Training models on a feature view's training dataset, evaluating them, and registering them.

Four models come with Orchard, two per flavor:

- scikit-learn (`SklearnSpec`): a decision-tree classifier for fruit and a
  decision-tree regressor for surf height. A small grid of hyper-parameters is
  searched with one Ray task per candidate (each fits on the train split and is
  scored on the validation split); the best candidate is evaluated on the test
  split, and a learning curve (score against training-set size) is drawn.
- tf-keras (`orchard.dnn.DnnSpec`): a softmax classifier for fruit and a
  regressor for surf height, trained with Ray Train (see `orchard.dnn`) and
  evaluated on the test split with Ray Data, one block at a time.

Every model is compared with its trivial baseline on the test split
(`orchard.evaluation`); one that does not beat it is not registered unless
forced. A registered version holds the model, the dataset's fitted
transformations, the request signature, the metrics, plots and lineage.

The split arrays of a scikit-learn run live in Ray's object store: the driver
holds references only, and the candidate tasks read them from there.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import logging
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from orchard import evaluation, plots
from orchard.dnn import DNN_SPECS, DnnSpec
from orchard.model_data import FEATURES_COLUMN, TARGET_COLUMN, PreparedData, prepare_splits, raw_signature
from orchard.registry import ModelRegistry
from orchard.storage import Storage

log = logging.getLogger(__name__)

Task = Literal["classification", "regression"]
CURVE_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
TRANSFORMS_FILE = "transforms.json"
LEARNING_CURVE_FILE = "learning_curve.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"


class TrainingError(ValueError):
    """A model cannot be trained as asked."""


class BelowBaselineError(TrainingError):
    """The trained model does not beat its trivial baseline, so it was not registered."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class SklearnSpec:
    """A scikit-learn estimator on one feature view, with a grid of hyper-parameters to search."""

    name: str
    view: str
    task: Task
    estimator: str
    """Dotted path of a scikit-learn estimator class."""
    params: dict[str, Any] = field(default_factory=dict)
    """Fixed hyper-parameters of every candidate."""
    grid: dict[str, tuple] = field(default_factory=dict)
    """Hyper-parameters to search: every combination is one candidate, tried in this order."""
    target: str | None = None
    excluded_features: tuple[str, ...] = ()
    description: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.estimator.startswith("sklearn."):
            raise TrainingError(f"model {self.name}: estimator must be a scikit-learn class, got {self.estimator!r}")
        overlap = sorted(set(self.params) & set(self.grid))
        if overlap:
            raise TrainingError(f"model {self.name}: {overlap} are both fixed and searched")
        empty = [name for name, values in self.grid.items() if not values]
        if empty:
            raise TrainingError(f"model {self.name}: grid values for {empty} are empty")

    def candidates(self) -> list[dict[str, Any]]:
        names = list(self.grid)
        return [{**self.params, **dict(zip(names, values))}
                for values in itertools.product(*(self.grid[n] for n in names))]

    def build(self, params: dict[str, Any]):
        module_name, _, class_name = self.estimator.rpartition(".")
        module = __import__(module_name, fromlist=[class_name])
        return getattr(module, class_name)(**params)


SKLEARN_SPECS: dict[str, SklearnSpec] = {
    spec.name: spec
    for spec in (
        SklearnSpec(
            name="fruit_classifier",
            view="fruit_classification",
            task="classification",
            estimator="sklearn.tree.DecisionTreeClassifier",
            params={"random_state": 0},
            grid={"max_depth": (2, 4, 6, 10), "min_samples_leaf": (1, 10)},
            description="Apple or orange from colour, size, weight and skin: a decision tree "
                        "(red apples make the boundary non-linear).",
        ),
        SklearnSpec(
            name="surf_regressor",
            view="surf_height",
            task="regression",
            estimator="sklearn.tree.DecisionTreeRegressor",
            params={"random_state": 0},
            grid={"max_depth": (3, 6, 10), "min_samples_leaf": (1, 10, 30)},
            excluded_features=("buoy_id",),  # a join key the view brings along, not a measurement
            description="Surf height in metres from the beach's shape and the latest swell at its buoy: "
                        "a decision tree.",
        ),
    )
}

ModelSpec = SklearnSpec | DnnSpec


def model_specs() -> dict[str, ModelSpec]:
    return {**SKLEARN_SPECS, **DNN_SPECS}


def get_spec(name: str) -> ModelSpec:
    specs = model_specs()
    if name not in specs:
        raise KeyError(f"no model named {name!r}; known models: {', '.join(sorted(specs))}")
    return specs[name]


def parse_dataset(spec: ModelSpec, reference: str | None) -> int | None:
    """`--dataset VIEW[:VERSION]` -> the training-dataset version (None: the newest); VIEW must be the model's."""
    if reference is None:
        return None
    view_name, _, version = reference.partition(":")
    expected = spec.view.partition(":")[0]
    if view_name != expected:
        raise TrainingError(f"model {spec.name} trains on feature view {expected!r}, not {view_name!r}")
    if not version:
        return None
    if not version.isdigit() or int(version) < 1:
        raise TrainingError(f"dataset version must be a positive integer, got {version!r} in {reference!r}")
    return int(version)


def check_request(spec: ModelSpec, *, dataset: str | None, gpu: bool, epochs: int | None) -> int | None:
    """Refuse options that do not apply to `spec` before anything runs; returns the dataset version asked for."""
    if isinstance(spec, SklearnSpec) and (gpu or epochs is not None):
        raise TrainingError(f"model {spec.name} is a scikit-learn model: --gpu and --epochs apply to networks only")
    return parse_dataset(spec, dataset)


def check_storage(storage: Storage) -> None:
    if not storage.is_local:
        raise TrainingError(f"the model registry needs a POSIX file system (a local folder, or one every node mounts "
                            f"such as NFS) for its atomic version claims and alias lock, not {storage.root_uri}")


# -- scikit-learn: arrays in the object store, one task per candidate


def _stack(*blocks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    blocks = [b for b in blocks if len(b[TARGET_COLUMN])]
    return {FEATURES_COLUMN: np.concatenate([b[FEATURES_COLUMN] for b in blocks]),
            TARGET_COLUMN: np.concatenate([b[TARGET_COLUMN] for b in blocks])}


def _score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy for a classifier, RMSE for a regressor."""
    if task == "classification":
        return float(np.mean(y_true == y_pred))
    return float(np.sqrt(np.mean(np.square(y_pred.astype(np.float64) - y_true))))


def _fit_candidate(spec: SklearnSpec, params: dict, train: dict, validation: dict) -> dict:
    import skops.io as sio

    started, wall_start = time.perf_counter(), time.time()
    estimator = spec.build(params).fit(train[FEATURES_COLUMN], train[TARGET_COLUMN])
    score = _score(spec.task, validation[TARGET_COLUMN], estimator.predict(validation[FEATURES_COLUMN]))
    return {"params": params, "validation": {evaluation.COMPARED_ON[spec.task]: score},
            "seconds": round(time.perf_counter() - started, 3), "ran": [wall_start, time.time()],
            "model": sio.dumps(estimator)}


def _evaluate_sklearn(spec: SklearnSpec, params: dict, model: bytes, train: dict, validation: dict, test: dict,
                      n_classes: int, train_mean: float | None) -> dict:
    """Test-split sums of the chosen model, and its learning curve (refits on growing shares of train)."""
    from orchard.predictor import load_skops

    estimator = load_skops(model)
    sums = evaluation.partials(spec.task, test[TARGET_COLUMN], estimator.predict(test[FEATURES_COLUMN]),
                               n_classes=n_classes, train_mean=train_mean)
    order = np.random.default_rng(spec.seed).permutation(len(train[TARGET_COLUMN]))
    curve = []
    for fraction in CURVE_FRACTIONS:
        rows = order[:max(2, math.ceil(fraction * len(order)))]
        x, y = train[FEATURES_COLUMN][rows], train[TARGET_COLUMN][rows]
        fitted = spec.build(params).fit(x, y)
        curve.append({"rows": int(len(rows)), "train": _score(spec.task, y, fitted.predict(x)),
                      "validation": _score(spec.task, validation[TARGET_COLUMN],
                                           fitted.predict(validation[FEATURES_COLUMN]))})
    return {"sums": sums, "curve": curve}


def train_sklearn(spec: SklearnSpec, data: PreparedData, *, workers: int | None = None) -> dict:
    """Search the spec's grid (one Ray task per candidate, at most `workers` at once), evaluate the best."""
    import ray

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise TrainingError(f"workers must be a positive integer, got {workers!r}")
    # One CPU: the stacking task holds a whole split, so it must run on a node that works, not a 0-CPU head.
    stack = ray.remote(num_cpus=1)(_stack)
    arrays = {split: stack.remote(*data.splits[split].to_numpy_refs()) for split in data.splits}
    fit = ray.remote(num_cpus=1, max_retries=1)(_fit_candidate)
    candidates = spec.candidates()
    limit = workers or len(candidates)
    index_of, results, most_in_flight = {}, {}, 0
    try:
        for index, params in enumerate(candidates):
            most_in_flight = max(most_in_flight, len(index_of) - len(results))
            if len(index_of) - len(results) >= limit:
                running = [ref for ref in index_of if index_of[ref] not in results]
                (done,), _ = ray.wait(running, num_returns=1)
                results[index_of[done]] = ray.get(done)
            index_of[fit.remote(spec, params, arrays["train"], arrays["validation"])] = index
        most_in_flight = max(most_in_flight, len(index_of) - len(results))
        for ref, index in index_of.items():
            if index not in results:
                results[index] = ray.get(ref)
    finally:  # a failed candidate stops the search; the others need not run on
        for ref, index in index_of.items():
            if index not in results:
                ray.cancel(ref)
    searched = [results[i] for i in range(len(candidates))]
    metric = evaluation.COMPARED_ON[spec.task]
    higher = evaluation.HIGHER_IS_BETTER[metric]
    best = max(range(len(searched)), key=lambda i: (searched[i]["validation"][metric] * (1 if higher else -1), -i))
    chosen = searched[best]
    n_classes = len(data.inputs.classes or ())
    evaluated = ray.get(ray.remote(num_cpus=1)(_evaluate_sklearn).remote(
        spec, chosen["params"], chosen["model"], arrays["train"], arrays["validation"], arrays["test"], n_classes,
        data.summaries["train"]["target_mean"]))
    curve_png = plots.learning_curve_png(
        {split: [(point["rows"], point[split]) for point in evaluated["curve"]] for split in ("train", "validation")},
        title=f"{spec.name}: learning curve", x_label="training rows", y_label=metric)
    return {
        "artifact": ("model.skops", chosen["model"]),
        "sums": evaluated["sums"],
        "hyperparameters": chosen["params"],
        "search": [{key: c[key] for key in ("params", "validation", "seconds", "ran")} for c in searched],
        "search_tasks": {"candidates": len(candidates), "limit": limit, "most_in_flight": most_in_flight},
        "learning_curve": {"x": "training rows", "metric": metric, "points": evaluated["curve"]},
        "learning_curve_png": curve_png,
    }


# -- tf-keras: Ray Train, then Ray Data over the test split


class _KerasBlockEvaluator:
    """Loads the network once per actor and turns each block of test rows into evaluation sums."""

    def __init__(self, model: bytes, task: str, n_classes: int, train_mean: float | None):
        from orchard.predictor import load_keras  # sets the legacy-Keras switch before importing TensorFlow

        self.model = load_keras(model)
        self.task, self.n_classes, self.train_mean = task, n_classes, train_mean

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.model(batch[FEATURES_COLUMN], training=False).numpy()
        predicted = outputs.argmax(axis=1) if self.task == "classification" else outputs.reshape(-1)
        sums = evaluation.partials(self.task, batch[TARGET_COLUMN], predicted, n_classes=self.n_classes,
                                   train_mean=self.train_mean)
        return {"sums": np.array([json.dumps(sums)])}


def train_keras(storage: Storage, spec: DnnSpec, data: PreparedData, *, workers: int = 1, gpu: bool = False,
                epochs: int | None = None) -> dict:
    import ray.data

    from orchard.dnn import train_dnn

    trained = train_dnn(storage, spec, workers=workers, gpu=gpu, epochs=epochs, data=data)
    sums = None
    parts = data.splits["test"].map_batches(
        _KerasBlockEvaluator, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1),
        num_gpus=1 if gpu else 0,
        fn_constructor_kwargs={"model": trained["model_bytes"], "task": spec.task,
                               "n_classes": len(data.inputs.classes or ()),
                               "train_mean": data.summaries["train"]["target_mean"]})
    for row in parts.iter_rows():
        sums = evaluation.merge(sums, json.loads(row["sums"]))
    history = trained["history"]
    curves = {label: [(m["epoch"], m[key]) for m in history if math.isfinite(m[key])]
              for label, key in (("train loss", "loss"), ("validation loss", "val_loss"))}
    curves = {label: points for label, points in curves.items() if points}  # a diverged run has no finite loss
    curve_png = plots.learning_curve_png(
        curves, title=f"{spec.name}: learning curve", x_label="epoch",
        y_label="cross-entropy" if spec.task == "classification" else "mean squared error") if curves else None
    hyperparameters = {key: value for key, value in asdict(spec).items()
                       if key in ("hidden_units", "batch_size", "learning_rate", "seed")}
    # Each worker takes batch_size rows per step, so one optimizer step sees batch_size x workers rows.
    hyperparameters.update(epochs=trained["epochs"], workers=workers, gpu=gpu,
                           global_batch_size=spec.batch_size * workers)
    return {
        "artifact": ("model.keras", trained["model_bytes"]),
        "sums": sums,
        "hyperparameters": hyperparameters,
        "learning_curve": {"x": "epoch", "metric": "loss", "points": history},
        "learning_curve_png": curve_png,
        "train_run": trained["run_path"],
        "worker_environment": trained["worker_environment"],
    }


# -- the whole job: train, evaluate, register


def train_model(
    storage: Storage,
    name: str,
    *,
    dataset: str | None = None,
    workers: int | None = None,
    gpu: bool = False,
    epochs: int | None = None,
    force: bool = False,
    alias: str | None = None,
) -> dict:
    """Train the model `name`, evaluate it on the test split and register it; returns a summary.

    Raises BelowBaselineError (nothing registered) when the model does not beat
    its baseline and `force` is false.
    """
    import ray

    spec = get_spec(name)
    dataset_version = check_request(spec, dataset=dataset, gpu=gpu, epochs=epochs)
    check_storage(storage)
    started = time.perf_counter()
    data = prepare_splits(storage, spec, dataset_version)
    if isinstance(spec, SklearnSpec):
        trained = train_sklearn(spec, data, workers=workers)
        flavor = "sklearn"
    else:
        trained = train_keras(storage, spec, data, workers=workers or 1, gpu=gpu, epochs=epochs)
        flavor = "keras"
    majority = int(np.argmax(data.summaries["train"]["class_counts"])) if spec.task == "classification" else None
    metrics = evaluation.finish(spec.task, trained["sums"], majority_class=majority)
    result = {
        "model": spec.name,
        "flavor": flavor,
        "dataset": {"view": data.dataset.metadata["view"], "version": data.dataset.metadata["version"]},
        "metrics": metrics,
        "hyperparameters": trained["hyperparameters"],
        "summary": evaluation.summary(spec.task, metrics),
    }
    if not metrics["beats_baseline"] and not force:
        metric = metrics["compared_on"]
        raise BelowBaselineError(
            f"model {spec.name} was not registered: its test {metric} {metrics['test'][metric]:.4f} does not beat "
            f"the baseline's {metrics['baseline'][metric]:.4f} "
            f"({'majority class' if spec.task == 'classification' else 'training mean'}); "
            "pass --force to register it anyway", result)

    files = {
        trained["artifact"][0]: trained["artifact"][1],
        TRANSFORMS_FILE: data.dataset.storage.read_bytes(f"{data.dataset.location}/transforms.json"),
    }
    if trained["learning_curve_png"] is not None:
        files[LEARNING_CURVE_FILE] = trained["learning_curve_png"]
    signature = raw_signature(spec, data.inputs)
    if spec.task == "classification":
        files[CONFUSION_MATRIX_FILE] = plots.confusion_matrix_png(
            metrics["test"]["confusion_matrix"], signature["classes"],
            title=f"{spec.name}: test split")
    lineage = {
        **data.lineage(),
        "model_spec": _jsonable(asdict(spec)),
        "code_version": code_version(),
        "versions": library_versions(flavor),
        "forced_below_baseline": bool(force and not metrics["beats_baseline"]),
    }
    if "train_run" in trained:
        lineage["train_run"] = trained["train_run"]
        lineage["worker_environment"] = trained["worker_environment"]
    card = {
        "flavor": flavor,
        "task": spec.task,
        "description": spec.description,
        "artifact": trained["artifact"][0],
        "transforms": TRANSFORMS_FILE,
        "plots": [f for f in (LEARNING_CURVE_FILE, CONFUSION_MATRIX_FILE) if f in files],
        "signature": signature,
        "metrics": metrics,
        "hyperparameters": trained["hyperparameters"],
        "learning_curve": trained["learning_curve"],
        "lineage": lineage,
    }
    if "search" in trained:
        card["search"], card["search_tasks"] = trained["search"], trained["search_tasks"]
    registry = ModelRegistry(storage)
    version = registry.register(spec.name, files, card)
    if alias:
        registry.promote(spec.name, version.version, alias)
    log.info("registered %s version %d (%s)", spec.name, version.version, result["summary"])
    return {**result, "version": version.version, "alias": alias, "registered": True,
            "files": sorted([*files, "model.json", "manifest.json"]), "ray_version": ray.__version__,
            "seconds": round(time.perf_counter() - started, 3)}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def library_versions(flavor: str) -> dict[str, str | None]:
    """Versions of what trained the model (TensorFlow only for networks), read without importing it."""
    names = ["ray", "scikit-learn", "numpy", "pyarrow"]
    if flavor == "keras":
        names += ["tensorflow", "tensorflow-cpu", "tf-keras"]
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in names:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def code_version() -> str | None:
    """The git commit of the training code (`+dirty` if it has uncommitted changes or files git does not track).

    `ORCHARD_CODE_VERSION` wins: a Ray job's uploaded working directory has no
    `.git`, so its submitter passes the commit in the runtime env.
    """
    if os.environ.get("ORCHARD_CODE_VERSION"):
        return os.environ["ORCHARD_CODE_VERSION"]
    here = Path(__file__).parent

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("+dirty" if git("status", "--porcelain") else "")

