"""Distributed tf-keras training on training datasets: it learns, it reports every epoch, it survives a crash."""

from __future__ import annotations

import io
import math
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fruit.generate import write_fruit

from features.catalog import get_view
from features.datasets import RandomSplit, TrainingDataset, create_training_dataset
from features.pipeline import run_feature_pipeline
from features.transforms import TransformSet
from orchard.registry import ModelRegistry
from orchard.storage import Storage
from tests.helpers import crash_once_after_epoch_two
from training.catalog import get_spec
from training.flavors.keras import train_network
from training.predictor import Predictor

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(960)]  # the demo may run first

FRUIT_SPEC = get_spec("fruit_dnn_classifier")


@pytest.fixture(scope="module")
def fruit_storage(ray_cluster, tmp_path_factory):
    storage = Storage(str(tmp_path_factory.mktemp("dnn-fruit")))
    write_fruit(storage, rows=600, seed=3)
    run_feature_pipeline(storage, get_view("fruit_classification").label.group)
    create_training_dataset(storage, get_view("fruit_classification"), RandomSplit(seed=0))
    return storage


@pytest.fixture(scope="module")
def crash_marker(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dnn-crash") / "crashed"


@pytest.fixture(scope="module")
def fruit_run(fruit_storage, crash_marker):
    """One fruit run whose first worker dies after epoch 2 (one run serves every fruit test: each costs ~20 s)."""
    return train_network(fruit_storage, FRUIT_SPEC, epochs=3, max_failures=1, run_name="fruit",
                     after_epoch=crash_once_after_epoch_two(str(crash_marker)))


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


def test_a_small_test_split_is_evaluated_in_the_driver_with_the_sums_ray_data_tasks_give(fruit_storage, fruit_run,
                                                                                        monkeypatch):
    """The fruit network's test split (in the object store, a few KB) is evaluated in this process, and gives the
    confusion matrix that Ray Data's tasks give when the split is over the size limit (they load the network
    themselves: this process loads it no more)."""
    import training.flavors.keras as keras_flavor
    from training.model_data import prepare_splits

    loads = []
    original = keras_flavor.load_keras
    monkeypatch.setattr(keras_flavor, "load_keras", lambda *args: loads.append(1) or original(*args))
    data = prepare_splits(fruit_storage, FRUIT_SPEC)
    in_driver = keras_flavor._evaluate(FRUIT_SPEC, data, fruit_run, gpu=False)
    assert len(loads) == 1
    monkeypatch.setattr(keras_flavor, "DRIVER_EVALUATION_BYTES", 0)
    in_tasks = keras_flavor._evaluate(FRUIT_SPEC, data, fruit_run, gpu=False)
    assert len(loads) == 1
    assert in_tasks == in_driver
    assert sum(map(sum, in_driver["confusion_matrix"])) == data.summaries["test"]["count"] > 0


def test_all_fruit_rows_are_used_with_the_label_encoders_classes(fruit_storage, fruit_run):
    metadata = TrainingDataset.open(fruit_storage, get_view("fruit_classification")).metadata
    assert fruit_run["rows"] == metadata["rows"]
    assert fruit_run["dropped_rows"] == {"train": 0, "validation": 0, "test": 0}
    assert fruit_run["classes"] == ["apple", "orange"]
    assert fruit_run["feature_columns"] == ["red", "green", "blue", "weight_g", "diameter_mm", "smoothness"]


@pytest.fixture(scope="module")
def demo_storage(demo_run, ray_cluster) -> Storage:
    """Both networks as the session's `orchard demo` run trained, evaluated and registered them (`train_model`, as
    `orchard train` runs it, each with its spec's epochs)."""
    return Storage(str(demo_run.registered().storage))


NETWORKS = ("fruit_dnn_classifier", "surf_dnn_regressor")


def test_both_networks_beat_their_baselines_and_are_registered(demo_storage):
    registry = ModelRegistry(demo_storage)
    cards = {name: registry.get(name, "production").card for name in NETWORKS}
    for name, card in cards.items():
        assert (card["name"], card["flavor"], card["version"]) == (name, "keras", 1)
        assert card["metrics"]["beats_baseline"], card["metrics"]
        assert card["hyperparameters"]["epochs"] == get_spec(name).flavor.epochs
    assert cards["fruit_dnn_classifier"]["metrics"]["test"]["accuracy"] > 0.9
    assert cards["surf_dnn_regressor"]["metrics"]["test"]["r2"] > 0.5


def test_a_registered_network_holds_its_model_transforms_plots_and_history(demo_storage):
    registry = ModelRegistry(demo_storage)
    card = registry.get("fruit_dnn_classifier", "production").card
    assert card["artifact"] == "model.keras" and card["plots"] == ["learning_curve.png", "confusion_matrix.png"]
    with zipfile.ZipFile(io.BytesIO(registry.read_file("fruit_dnn_classifier", 1, "model.keras"))) as archive:
        assert {"config.json", "model.weights.h5"} <= set(archive.namelist())
    epochs = card["hyperparameters"]["epochs"]
    assert [p["epoch"] for p in card["learning_curve"]["points"]] == list(range(1, epochs + 1))
    assert card["lineage"]["versions"].get("tf-keras", "").startswith("2.21")
    assert card["lineage"]["train_run"].startswith(demo_storage.uri("train_runs"))
    assert card["signature"]["classes"] == ["apple", "orange"]
    assert card["signature"]["outputs"][1] == {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]}


def test_the_predictor_answers_what_the_stored_network_computes(demo_storage):
    import tf_keras

    registry = ModelRegistry(demo_storage)
    predictor = Predictor.load(registry, "fruit_dnn_classifier")
    rows = TrainingDataset.open(demo_storage, get_view("fruit_classification")).read("test").take(10)
    instances = [{name: row[name] for name in predictor.feature_names} for row in rows]
    folder = demo_storage.path("models/fruit_dnn_classifier/1")
    network = tf_keras.models.load_model(f"{folder}/model.keras", compile=False)
    transforms = TransformSet.from_json(Path(f"{folder}/transforms.json").read_text())
    columns = predictor.signature["model_inputs"]
    matrix = np.array([[row[c] for c in columns] for row in transforms.transform_rows(instances)], np.float32)
    expected = network(matrix, training=False).numpy()
    predictions = predictor.predict(instances)
    served = np.array([[p["probabilities"][c] for c in ("apple", "orange")] for p in predictions])
    np.testing.assert_allclose(served, expected, rtol=1e-6)
    accuracy = np.mean([p["label"] == row["label"] for p, row in zip(predictions, rows)])
    assert accuracy >= 0.8


def test_the_surf_network_learns_and_leaves_the_buoy_id_out(demo_storage):
    card = ModelRegistry(demo_storage).get("surf_dnn_regressor", 1).card
    history = card["learning_curve"]["points"]
    assert [m["epoch"] for m in history] == list(range(1, card["hyperparameters"]["epochs"] + 1))
    assert all(math.isfinite(m["mae"]) and math.isfinite(m["val_mae"]) for m in history)
    assert history[-1]["val_mae"] < history[0]["val_mae"]  # it learns something
    assert "buoy_id" not in card["signature"]["model_inputs"]
    assert "bottom=__other__" in card["signature"]["model_inputs"]
    assert "buoy_id" not in [i["name"] for i in card["signature"]["inputs"]]
