"""The scikit-learn flavor: any scikit-learn compatible estimator or pipeline, with a grid of hyper-parameters.

Training puts the transformed splits into Ray's object store once (the driver
holds references only) and searches the grid with one Ray task per candidate:
each fits on the train split and is scored on the validation split (accuracy
for a classifier, RMSE for a regressor). The best candidate is evaluated on
the test split and refitted on growing shares of the train split for the
learning curve.

The model is stored with skops, never pickle. Loading refuses any type that is
not scikit-learn's, NumPy's, a builtin, the estimator's own class or one the
spec declares in `trusted_types` (a user's own transformer inside a pipeline,
say); the list is stored with the version and checked on every load.
"""

from __future__ import annotations

import importlib
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from orchard.errors import StateError
from training import evaluation, plots
from training.flavors import Flavor, FlavorError, TrainedModel, TrainOptions, register_flavor
from training.model_data import FEATURES_COLUMN, TARGET_COLUMN, PreparedData

if TYPE_CHECKING:
    from orchard.storage import Storage

CURVE_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
# Module prefixes every stored scikit-learn model may hold; skops refuses anything else unless the version says so.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "builtins.", "scipy.sparse.")


class UntrustedModelError(StateError):
    """A stored model holds a type its version does not declare as trusted."""


def _dotted_path(estimator: Any) -> str:
    if isinstance(estimator, str):
        return estimator
    if isinstance(estimator, type):
        module = estimator.__module__
        if module == "__main__":
            raise FlavorError(f"estimator class {estimator.__qualname__} is defined in __main__; define it in a "
                              "project module so that Ray workers and the prediction service can import it")
        return f"{module}.{estimator.__qualname__}"
    raise FlavorError(f"estimator must be a class or its dotted path, got {estimator!r}")


@register_flavor
@dataclass(frozen=True)
class SklearnFlavor(Flavor):
    """A scikit-learn compatible estimator class (or its dotted path), fixed params and a grid to search."""

    estimator: Any
    params: dict[str, Any] = field(default_factory=dict)
    """Fixed hyper-parameters of every candidate."""
    grid: dict[str, tuple] = field(default_factory=dict)
    """Hyper-parameters to search: every combination is one candidate, tried in this order."""
    trusted_types: tuple[str, ...] = ()
    """Further type names (or module prefixes ending in '.') the stored model may contain."""

    name = "sklearn"
    artifact = "model.skops"
    v2_platform = "scikit-learn_skops"

    def __post_init__(self) -> None:
        path = _dotted_path(self.estimator)
        module, _, class_name = path.rpartition(".")
        if not module or not class_name:
            raise FlavorError(f"estimator {path!r} must be a dotted path module.Class")
        overlap = sorted(set(self.params) & set(self.grid))
        if overlap:
            raise FlavorError(f"estimator {path}: {overlap} are both fixed and searched")
        empty = [name for name, values in self.grid.items() if not values]
        if empty:
            raise FlavorError(f"estimator {path}: grid values for {empty} are empty")
        if isinstance(self.trusted_types, str):
            raise FlavorError(f"trusted_types must be a list of type names, got {self.trusted_types!r}")

    @property
    def estimator_path(self) -> str:
        return _dotted_path(self.estimator)

    def estimator_class(self) -> type:
        if isinstance(self.estimator, type):
            return self.estimator
        module_name, _, class_name = self.estimator.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            raise FlavorError(f"estimator {self.estimator!r} cannot be imported: {error}") from None

    def build(self, params: dict[str, Any]):
        estimator = self.estimator_class()(**params)
        for method in ("fit", "predict"):
            if not callable(getattr(estimator, method, None)):
                raise FlavorError(f"estimator {self.estimator_path} has no {method}() method")
        return estimator

    def verify(self) -> None:
        for params in self.candidates():
            try:
                self.build(params)
            except TypeError as error:
                raise FlavorError(f"estimator {self.estimator_path} does not accept {params}: {error}") from None

    def candidates(self) -> list[dict[str, Any]]:
        names = list(self.grid)
        return [{**self.params, **dict(zip(names, values))}
                for values in itertools.product(*(self.grid[n] for n in names))]

    def describe(self) -> dict:
        return {"estimator": self.estimator_path, "params": self.params, "grid": {k: list(v) for k, v in self.grid.items()},
                "trusted_types": list(self.trusted_types)}

    def load_config(self) -> dict:
        own = self.estimator_path
        trusted = list(dict.fromkeys([*TRUSTED_MODULE_PREFIXES, *([] if own.startswith("sklearn.") else [own]),
                                      *self.trusted_types]))
        return {"trusted_types": trusted}

    def train(self, storage: "Storage", spec: Any, data: PreparedData, options: TrainOptions) -> TrainedModel:
        self.check_options(spec, options)
        return _grid_search(self, spec, data, workers=options.workers)

    @classmethod
    def load(cls, artifact: bytes, config: dict) -> Any:
        return load_skops(artifact, config.get("trusted_types", TRUSTED_MODULE_PREFIXES))

    @classmethod
    def predict(cls, model: Any, features: np.ndarray, signature: dict) -> np.ndarray:
        if signature["task"] == "regression":
            return np.asarray(model.predict(features), dtype=np.float64).reshape(-1)
        if not signature.get("classes"):  # a signature without classes keeps the estimator's own
            return model.predict_proba(features)
        return _probabilities(model, features, list(signature["classes"]))


def _probabilities(estimator: Any, features: np.ndarray, classes: list[str]) -> np.ndarray:
    """One column per signature class, in order, also for classes the estimator never saw in training."""
    known = []
    for value in estimator.classes_:
        if isinstance(value, (int, np.integer)) and 0 <= value < len(classes):
            known.append(int(value))  # trained on label-encoded targets: an index into the signature's classes
        elif str(value) in classes:
            known.append(classes.index(str(value)))  # trained on the class names themselves
        else:
            raise StateError(f"the estimator's class {value!r} is neither a class nor a class index of the "
                             f"signature's {classes}")
    probabilities = np.zeros((len(features), len(classes)))
    probabilities[:, known] = estimator.predict_proba(features)
    return probabilities


def load_skops(data: bytes, trusted: tuple[str, ...] | list[str] = TRUSTED_MODULE_PREFIXES) -> Any:
    """A skops file's object, if every type in it is trusted: a name listed, or under a listed prefix ending in '.'."""
    import skops.io as sio

    types = sio.get_untrusted_types(data=data)
    allowed = tuple(trusted)
    refused = [t for t in types if not any(t == name or (name.endswith(".") and t.startswith(name)) for name in allowed)]
    if refused:
        raise UntrustedModelError(f"stored model contains types that are not trusted: {', '.join(refused)}; a model's "
                                  "own types are declared in its SklearnFlavor(trusted_types=...)")
    if any(not t.startswith(TRUSTED_MODULE_PREFIXES) for t in types):
        from orchard.projects import active_modules

        active_modules()  # a project's own classes must be importable before skops rebuilds them
    return sio.loads(data, trusted=types)


# -- the grid search: arrays in the object store, one task per candidate


def _stack(*blocks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    blocks = [b for b in blocks if len(b[TARGET_COLUMN])]
    return {FEATURES_COLUMN: np.concatenate([b[FEATURES_COLUMN] for b in blocks]),
            TARGET_COLUMN: np.concatenate([b[TARGET_COLUMN] for b in blocks])}


def _score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy for a classifier, RMSE for a regressor."""
    if task == "classification":
        return float(np.mean(y_true == y_pred))
    return float(np.sqrt(np.mean(np.square(y_pred.astype(np.float64) - y_true))))


def _fit_candidate(flavor: SklearnFlavor, task: str, params: dict, train: dict, validation: dict) -> dict:
    import skops.io as sio

    started, wall_start = time.perf_counter(), time.time()
    estimator = flavor.build(params).fit(train[FEATURES_COLUMN], train[TARGET_COLUMN])
    score = _score(task, validation[TARGET_COLUMN], estimator.predict(validation[FEATURES_COLUMN]))
    return {"params": params, "validation": {evaluation.COMPARED_ON[task]: score},
            "seconds": round(time.perf_counter() - started, 3), "ran": [wall_start, time.time()],
            "model": sio.dumps(estimator)}


def _evaluate(flavor: SklearnFlavor, task: str, seed: int, params: dict, model: bytes, train: dict, validation: dict,
              test: dict, n_classes: int, train_mean: float | None) -> dict:
    """Test-split sums of the chosen model, and its learning curve (refits on growing shares of train)."""
    estimator = load_skops(model, flavor.load_config()["trusted_types"])
    sums = evaluation.partials(task, test[TARGET_COLUMN], estimator.predict(test[FEATURES_COLUMN]),
                               n_classes=n_classes, train_mean=train_mean)
    order = np.random.default_rng(seed).permutation(len(train[TARGET_COLUMN]))
    curve = []
    for fraction in CURVE_FRACTIONS:
        rows = order[:max(2, math.ceil(fraction * len(order)))]
        x, y = train[FEATURES_COLUMN][rows], train[TARGET_COLUMN][rows]
        fitted = flavor.build(params).fit(x, y)
        curve.append({"rows": int(len(rows)), "train": _score(task, y, fitted.predict(x)),
                      "validation": _score(task, validation[TARGET_COLUMN], fitted.predict(validation[FEATURES_COLUMN]))})
    return {"sums": sums, "curve": curve}


def _grid_search(flavor: SklearnFlavor, spec: Any, data: PreparedData, *, workers: int | None) -> TrainedModel:
    """Search the grid (one Ray task per candidate, at most `workers` at once), evaluate the best."""
    import ray

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise FlavorError(f"workers must be a positive integer, got {workers!r}")
    # One CPU: the stacking task holds a whole split, so it must run on a node that works, not a 0-CPU head.
    stack = ray.remote(num_cpus=1)(_stack)
    arrays = {split: stack.remote(*data.splits[split].to_numpy_refs()) for split in data.splits}
    fit = ray.remote(num_cpus=1, max_retries=1)(_fit_candidate)
    candidates = flavor.candidates()
    limit = workers or len(candidates)
    index_of, results, most_in_flight = {}, {}, 0
    try:
        for index, params in enumerate(candidates):
            most_in_flight = max(most_in_flight, len(index_of) - len(results))
            if len(index_of) - len(results) >= limit:
                running = [ref for ref in index_of if index_of[ref] not in results]
                (done,), _ = ray.wait(running, num_returns=1)
                results[index_of[done]] = ray.get(done)
            index_of[fit.remote(flavor, spec.task, params, arrays["train"], arrays["validation"])] = index
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
    evaluated = ray.get(ray.remote(num_cpus=1)(_evaluate).remote(
        flavor, spec.task, spec.seed, chosen["params"], chosen["model"], arrays["train"], arrays["validation"],
        arrays["test"], n_classes, data.summaries["train"]["target_mean"]))
    curve_png = plots.learning_curve_png(
        {split: [(point["rows"], point[split]) for point in evaluated["curve"]] for split in ("train", "validation")},
        title=f"{spec.name}: learning curve", x_label="training rows", y_label=metric)
    return TrainedModel(
        artifact=chosen["model"],
        sums=evaluated["sums"],
        hyperparameters=chosen["params"],
        learning_curve={"x": "training rows", "metric": metric, "points": evaluated["curve"]},
        learning_curve_png=curve_png,
        card={"search": [{key: c[key] for key in ("params", "validation", "seconds", "ran")} for c in searched],
              "search_tasks": {"candidates": len(candidates), "limit": limit, "most_in_flight": most_in_flight}},
    )
