"""Distributed tf-keras training on training datasets: it learns, it reports every epoch, it survives a crash."""

from __future__ import annotations

import math
import os
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from features.catalog import get_view
from features.datasets import RandomSplit, TrainingDataset, create_training_dataset
from features.pipeline import run_feature_pipeline
from features.surf import FEATURE_GROUPS as SURF_GROUPS
from features.synthetic import write_fruit
from features.synthetic_surf import write_surf
from orchard.dnn import DNN_SPECS, train_dnn
from orchard.storage import Storage

pytestmark = pytest.mark.ray

# Few rows and a quick learner keep each run to a few seconds of training on two cores.
FRUIT_SPEC = replace(DNN_SPECS["fruit_dnn_classifier"], learning_rate=0.01, batch_size=32)
SURF_SPEC = replace(DNN_SPECS["surf_dnn_regressor"], learning_rate=0.01, batch_size=32)


@pytest.fixture(scope="module")
def fruit_storage(ray_cluster, tmp_path_factory):
    storage = Storage(str(tmp_path_factory.mktemp("dnn-fruit")))
    write_fruit(storage, rows=600, seed=3)
    run_feature_pipeline(storage, get_view("fruit_classification").label.group)
    create_training_dataset(storage, get_view("fruit_classification"), RandomSplit(seed=0))
    return storage


@pytest.fixture(scope="module")
def surf_storage(ray_cluster, tmp_path_factory):
    storage = Storage(str(tmp_path_factory.mktemp("dnn-surf")))
    write_surf(storage, rows=300, seed=4)
    for group in SURF_GROUPS:
        run_feature_pipeline(storage, group)
    create_training_dataset(storage, get_view("surf_height"), RandomSplit(seed=0))
    return storage


def _crash_once_after_epoch_two(marker: str):
    """A hook that kills its own worker process right after epoch 2's checkpoint is committed, the first time only."""

    def after_epoch(epoch: int) -> None:
        import ray.train

        if epoch == 2 and not os.path.exists(marker):
            # Wait until the controller has registered the checkpoint, so the crash cannot race the report.
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)

    return after_epoch


@pytest.fixture(scope="module")
def crash_marker(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dnn-crash") / "crashed"


@pytest.fixture(scope="module")
def fruit_run(fruit_storage, crash_marker):
    """One fruit run whose first worker dies after epoch 2 (one run serves every fruit test: each costs ~20 s)."""
    return train_dnn(fruit_storage, FRUIT_SPEC, epochs=3, max_failures=1, run_name="fruit",
                     after_epoch=_crash_once_after_epoch_two(str(crash_marker)))


def test_the_fruit_network_beats_the_majority_class_on_validation(fruit_storage, fruit_run):
    validation = TrainingDataset.open(fruit_storage, get_view("fruit_classification")).read("validation")
    counts = Counter(row["label"] for row in validation.select_columns(["label"]).take_all())
    baseline = max(counts.values()) / sum(counts.values())
    assert fruit_run["metrics"]["val_accuracy"] > baseline + 0.1, (fruit_run["metrics"], baseline)


def test_every_epoch_is_reported_with_its_metrics(fruit_run):
    assert fruit_run["epochs"] == 3
    assert [m["epoch"] for m in fruit_run["history"]] == [1, 2, 3]
    for metrics in fruit_run["history"]:
        assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(metrics)
    assert fruit_run["metrics"] == fruit_run["history"][-1]


def test_a_crashed_worker_is_replaced_and_training_resumes_after_the_last_checkpoint(fruit_run, crash_marker):
    assert crash_marker.exists()  # the first attempt did die, after epoch 2
    assert [(m["epoch"], m["resumed_from"]) for m in fruit_run["history"]] == [(1, 0), (2, 0), (3, 2)]


def test_the_run_and_its_checkpoints_live_under_the_storage_root(fruit_storage, fruit_run):
    assert fruit_run["run_path"] == fruit_storage.uri("train_runs/fruit")
    checkpoint = Path(fruit_run["checkpoint"])
    assert checkpoint.parent == Path(fruit_run["run_path"]) and checkpoint.name == "epoch_0003"
    assert {"model.keras", "state.json", "dnn.json"} <= {p.name for p in checkpoint.iterdir()}


def test_every_checkpoint_holds_the_model_in_keras_native_format(fruit_run):
    for epoch in (1, 2, 3):  # tf-keras once fell back to HDF5 for saves after the first in a worker thread
        with zipfile.ZipFile(Path(fruit_run["run_path"]) / f"epoch_{epoch:04d}" / "model.keras") as archive:
            assert {"config.json", "model.weights.h5"} <= set(archive.namelist())


def test_all_fruit_rows_are_used_with_the_label_encoders_classes(fruit_storage, fruit_run):
    metadata = TrainingDataset.open(fruit_storage, get_view("fruit_classification")).metadata
    assert fruit_run["rows"] == {"train": metadata["rows"]["train"], "validation": metadata["rows"]["validation"]}
    assert fruit_run["dropped_rows"] == {"train": 0, "validation": 0}
    assert fruit_run["classes"] == ["apple", "orange"]
    assert fruit_run["feature_columns"] == ["red", "green", "blue", "weight_g", "diameter_mm", "smoothness"]


def test_the_surf_network_reports_mean_absolute_error(surf_storage):
    result = train_dnn(surf_storage, SURF_SPEC, epochs=3, run_name="surf")
    assert [m["epoch"] for m in result["history"]] == [1, 2, 3]
    assert math.isfinite(result["metrics"]["mae"]) and math.isfinite(result["metrics"]["val_mae"])
    assert result["metrics"]["val_mae"] < result["history"][0]["val_mae"]  # it learns something
    assert "buoy_id" not in result["feature_columns"]
    assert "bottom=__other__" in result["feature_columns"]
