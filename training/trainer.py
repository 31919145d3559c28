"""Training a model on its feature view's training dataset, evaluating it, and registering it.

`train_model` is the same for every model: it prepares the view's training
dataset for the model (`training.model_data`), hands it to the model's flavor
(`training.flavors`) to train and to reduce the test split to evaluation sums,
compares the test metrics with the trivial baseline's (`training.evaluation`),
and registers a model that beats it: the flavor's model file, the dataset's
fitted transformations, the request signature, metrics, plots and lineage.
One that does not beat its baseline is not registered unless forced.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from orchard.errors import OrchardError, UsageError
from orchard.projects import shipped_folder
from orchard.registry import ModelRegistry
from orchard.storage import Storage
from training import evaluation, plots
from training.catalog import get_spec
from training.flavors import TrainOptions
from training.model_data import prepare_splits, raw_signature
from training.spec import ModelSpec

log = logging.getLogger(__name__)

TRANSFORMS_FILE = "transforms.json"
LEARNING_CURVE_FILE = "learning_curve.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"


class TrainingError(UsageError):
    """A model cannot be trained as asked."""


class BelowBaselineError(OrchardError):
    """The trained model does not beat its trivial baseline, so it was not registered."""

    exit_code = 1

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


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


def check_request(spec: ModelSpec, *, dataset: str | None, gpu: bool, epochs: int | None,
                  workers: int | None = None) -> int | None:
    """Refuse options that do not apply to `spec` before anything runs; returns the dataset version asked for."""
    spec.flavor.check_options(spec, TrainOptions(workers=workers, gpu=gpu, epochs=epochs))
    return parse_dataset(spec, dataset)


def check_storage(storage: Storage) -> None:
    if not (storage.is_local or storage.is_s3):
        raise TrainingError(f"the model registry needs a local folder (one every node mounts, such as NFS, on a "
                            f"cluster) or an s3:// root for its atomic version claims and alias changes, not "
                            f"{storage.root_uri}")


# -- the whole job: train, evaluate, register


def train_model(
    storage: Storage,
    name: str | ModelSpec,
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

    spec = get_spec(name) if isinstance(name, str) else name
    dataset_version = check_request(spec, dataset=dataset, gpu=gpu, epochs=epochs, workers=workers)
    check_storage(storage)
    started = time.perf_counter()
    data = prepare_splits(storage, spec, dataset_version)
    flavor = spec.flavor
    trained = flavor.train(storage, spec, data, TrainOptions(workers=workers, gpu=gpu, epochs=epochs))
    majority = int(np.argmax(data.summaries["train"]["class_counts"])) if spec.task == "classification" else None
    metrics = evaluation.finish(spec.task, trained.sums, majority_class=majority)
    result = {
        "model": spec.name,
        "flavor": flavor.name,
        "dataset": {"view": data.dataset.metadata["view"], "version": data.dataset.metadata["version"]},
        "metrics": metrics,
        "hyperparameters": trained.hyperparameters,
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
        flavor.artifact: trained.artifact,
        TRANSFORMS_FILE: data.dataset.storage.read_bytes(f"{data.dataset.location}/transforms.json"),
    }
    if trained.learning_curve_png is not None:
        files[LEARNING_CURVE_FILE] = trained.learning_curve_png
    signature = raw_signature(spec, data.inputs)
    if spec.task == "classification":
        files[CONFUSION_MATRIX_FILE] = plots.confusion_matrix_png(
            metrics["test"]["confusion_matrix"], signature["classes"],
            title=f"{spec.name}: test split")
    lineage = {
        **data.lineage(),
        "model_spec": _jsonable(spec.describe()),
        "code_version": code_version(),
        "projects": project_versions(),
        "versions": library_versions(flavor.library_packages),
        "forced_below_baseline": bool(force and not metrics["beats_baseline"]),
        **trained.lineage,
    }
    card = {
        "flavor": flavor.name,
        "flavor_config": flavor.load_config(),
        "platform": flavor.v2_platform,
        "task": spec.task,
        "description": spec.description,
        "artifact": flavor.artifact,
        "transforms": TRANSFORMS_FILE,
        "plots": [f for f in (LEARNING_CURVE_FILE, CONFUSION_MATRIX_FILE) if f in files],
        "signature": signature,
        "metrics": metrics,
        "hyperparameters": trained.hyperparameters,
        "learning_curve": trained.learning_curve,
        "lineage": lineage,
        **trained.card,
    }
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


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Versions of what trained the model (and the flavor's own libraries), read without importing them."""
    names = ["ray", "scikit-learn", "numpy", "pyarrow", *extra]
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
    return git_commit(Path(__file__).parent)


def project_versions() -> list[dict]:
    """The loaded projects, each with where it was loaded from and the git commit of its folder (if any)."""
    from orchard.projects import active

    projects = []
    for ref in active():
        folder = ref.folder or shipped_folder(ref)
        projects.append({"module": ref.module, "folder": folder, "commit": git_commit(Path(folder)) if folder else None})
    return projects


def git_commit(folder: Path) -> str | None:
    """The commit checked out in the git work tree holding `folder`, `+dirty` if it has changes; None outside git."""

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("+dirty" if git("status", "--porcelain") else "")

