"""The DNN's pure parts: resource requests, spec validation, and how dataset rows become network inputs."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from features.transforms import LabelEncoder, OneHotEncoder, StandardScaler, TransformSet
from orchard.errors import NotFoundError
from training.catalog import get_spec
from training.flavors.keras import (
    LEARNING_RATE_SCHEDULES,
    DnnError,
    KerasFlavor,
    _check_room_for_ingest,
    _chosen_checkpoint,
    scaling_config,
)
from training.model_data import ModelDataError, model_inputs, to_model_arrays
from training.spec import ModelSpecError


def test_gpu_scaling_asks_for_one_gpu_and_one_cpu_per_worker():
    config = scaling_config(2, gpu=True)
    assert config.use_gpu is True
    assert config.num_workers == 2
    assert config.num_gpus_per_worker == 1
    assert config.num_cpus_per_worker == 1


def test_cpu_scaling_asks_for_no_gpu():
    config = scaling_config(1, gpu=False)
    assert config.use_gpu is False
    assert config.num_workers == 1
    assert config.num_gpus_per_worker == 0
    assert config.resources_per_worker == {"CPU": 1}


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_scaling_refuses_a_worker_count_that_is_not_a_positive_integer(workers):
    with pytest.raises(DnnError, match="workers must be a positive integer"):
        scaling_config(workers, gpu=False)


def test_the_example_networks_are_declared():
    fruit = get_spec("fruit_dnn_classifier")
    assert (fruit.task, fruit.view, fruit.flavor.name) == ("classification", "fruit_classification", "keras")
    surf = get_spec("surf_dnn_regressor")
    assert (surf.task, surf.view, surf.target) == ("regression", "surf_height", "surf_height_m")


def test_an_unknown_model_name_lists_the_known_ones():
    with pytest.raises(NotFoundError, match="fruit_dnn_classifier.*surf_dnn_regressor"):
        get_spec("nope")


@pytest.mark.parametrize(("changes", "message"), [
    ({"params": {"hidden_units": ()}}, "hidden_units must be a non-empty list of positive integers"),
    ({"params": {"hidden_units": (16, 0)}}, "hidden_units must be a non-empty list of positive integers"),
    ({"params": {"hidden_unit": (16,)}}, "params ['hidden_unit'] do not fit build function"),
    ({"epochs": 0}, "epochs must be a positive integer, got 0"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
    ({"learning_rate": 0.0}, "learning_rate must be a positive number, got 0.0"),
    ({"learning_rate": float("nan")}, "learning_rate must be a positive number"),
    ({"build": lambda inputs: None}, "build must be a module-level function"),
    ({"learning_rate_schedule": "step"}, "learning_rate_schedule must be one of ['constant', 'cosine'], got 'step'"),
    ({"keep": "first"}, "keep must be 'last' or 'best' (lowest validation loss), got 'first'"),
])
def test_an_invalid_network_is_refused_with_the_field_named(changes, message):
    with pytest.raises(DnnError, match=re.escape(message)):
        replace(get_spec("fruit_dnn_classifier").flavor, **changes)


@pytest.mark.parametrize(("changes", "message"), [
    ({"task": "ranking"}, "task must be one of classification, regression, got 'ranking'"),
    ({"name": "Fruit DNN"}, "model name 'Fruit DNN' must be lower case"),
    ({"view": ""}, "view must name a feature view"),
    ({"flavor": "keras"}, "flavor must be a training.flavors.Flavor"),
])
def test_an_invalid_model_spec_is_refused_with_the_field_named(changes, message):
    with pytest.raises(ModelSpecError, match=re.escape(message)):
        replace(get_spec("fruit_dnn_classifier"), **changes)


def test_hidden_units_given_as_a_list_are_kept_as_a_tuple():
    assert KerasFlavor(params={"hidden_units": [8, 4]}).params["hidden_units"] == (8, 4)


def _fitted(transforms: list, table: pa.Table) -> TransformSet:
    return TransformSet(transforms).fit_table(table)


FRUIT_ROWS = pa.table({"weight_g": [150.0, 200.0, 250.0], "red": [0.8, 0.9, 0.5],
                       "label": ["orange", "apple", "apple"]})
FRUIT_METADATA = {"view": "fruit_classification:1", "feature_columns": ["red", "weight_g"],
                  "label": {"target": "label"}}


def test_classification_inputs_take_the_label_encoders_classes_in_order():
    transforms = _fitted([StandardScaler("weight_g"), LabelEncoder("label")], FRUIT_ROWS)
    inputs = model_inputs(get_spec("fruit_dnn_classifier"), FRUIT_METADATA, transforms)
    assert inputs.feature_columns == ["red", "weight_g"]
    assert inputs.target == "label"
    assert inputs.classes == ["apple", "orange"]


def test_one_hot_features_expand_to_their_output_columns_and_excluded_ones_are_left_out():
    rows = pa.table({"buoy_id": ["b1", "b2"], "bottom": ["reef", "sand"], "swell_height_m": [1.0, 2.0],
                     "surf_height_m": [0.5, 1.5]})
    transforms = _fitted([OneHotEncoder("bottom", unknown="other"), StandardScaler("swell_height_m")], rows)
    metadata = {"view": "surf_height:1", "feature_columns": ["buoy_id", "bottom", "swell_height_m"],
                "label": {"target": "surf_height_m"}}
    inputs = model_inputs(get_spec("surf_dnn_regressor"), metadata, transforms)
    assert inputs.raw_features == ["bottom", "swell_height_m"]
    assert inputs.feature_columns == ["bottom=reef", "bottom=sand", "bottom=__other__", "swell_height_m"]
    assert (inputs.target, inputs.classes) == ("surf_height_m", None)


def test_excluding_a_feature_the_view_does_not_have_is_an_error():
    spec = replace(get_spec("fruit_dnn_classifier"), excluded_features=("colour",))
    transforms = _fitted([LabelEncoder("label")], FRUIT_ROWS)
    with pytest.raises(ModelDataError, match=r"excluded feature\(s\) \['colour'\] are not features"):
        model_inputs(spec, FRUIT_METADATA, transforms)


def test_classification_without_a_label_encoder_on_the_target_is_an_error():
    transforms = _fitted([StandardScaler("weight_g")], FRUIT_ROWS)
    with pytest.raises(ModelDataError, match="needs a LabelEncoder on 'label'"):
        model_inputs(get_spec("fruit_dnn_classifier"), FRUIT_METADATA, transforms)


def test_rows_become_a_float32_matrix_and_a_class_index_vector():
    batch = pa.table({"fruit_id": ["a", "b"], "red": [0.5, 0.25], "weight_g": [1, 2], "label": [1, 0]})
    arrays = to_model_arrays(batch, ["red", "weight_g"], "label", "classification")
    assert arrays["features"].dtype == np.float32
    np.testing.assert_array_equal(arrays["features"], [[0.5, 1.0], [0.25, 2.0]])
    assert arrays["target"].dtype == np.int64
    np.testing.assert_array_equal(arrays["target"], [1, 0])


def test_rows_with_a_null_feature_or_target_are_dropped():
    batch = pa.table({"x": [1.0, None, 3.0, 4.0], "y": [1.0, 2.0, 3.0, 4.0], "t": [0.1, 0.2, None, 0.4]})
    arrays = to_model_arrays(batch, ["x", "y"], "t", "regression")
    np.testing.assert_array_equal(arrays["features"], [[1.0, 1.0], [4.0, 4.0]])
    np.testing.assert_allclose(arrays["target"], [0.1, 0.4])
    assert arrays["target"].dtype == np.float32


def test_a_batch_without_complete_rows_gives_empty_arrays_of_the_right_width():
    batch = pa.table({"x": pa.array([None], pa.float64()), "t": [1.0]})
    arrays = to_model_arrays(batch, ["x"], "t", "regression")
    assert arrays["features"].shape == (0, 1)
    assert arrays["target"].shape == (0,)


def test_a_text_feature_is_refused_by_name():
    batch = pa.table({"buoy_id": ["b1"], "t": [1.0]})
    with pytest.raises(ModelDataError, match="column 'buoy_id' must hold numbers for the model, got string"):
        to_model_arrays(batch, ["buoy_id"], "t", "regression")


def test_a_worker_group_that_leaves_no_cpu_for_the_data_is_refused_on_a_local_ray(monkeypatch, caplog):
    import ray

    import orchard.runtime

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(orchard.runtime, "owns_local_ray", lambda: True)
    _check_room_for_ingest(1)  # one CPU left for Ray Data
    with pytest.raises(DnnError, match="2 training worker.* take all 2 CPUs .* at most 1 worker.* --num-cpus"):
        _check_room_for_ingest(2)
    monkeypatch.setattr(orchard.runtime, "owns_local_ray", lambda: False)  # a cluster may still grow: a warning
    with caplog.at_level("WARNING"):
        _check_room_for_ingest(2)
    assert "waits until the cluster has another CPU" in caplog.text


def test_images_become_their_pixels_in_0_to_1_beside_the_other_inputs():
    from features.images import ImageSpec

    spec = ImageSpec(2, 2, channels=1)
    batch = pa.table({"image": pa.array([bytes([0, 255, 51, 102]), None], pa.binary()),
                      "size": pa.array([1.5, 2.0]), "label": pa.array([1, 0])})
    arrays = to_model_arrays(batch, ["image", "size"], "label", "classification", images={"image": spec})
    assert np.allclose(arrays["features"], [[0.0, 1.0, 0.2, 0.4, 1.5]])  # the row with no image: dropped
    assert arrays["target"].tolist() == [1]
    with pytest.raises(ModelDataError, match="column 'image' must hold numbers"):
        to_model_arrays(batch, ["image", "size"], "label", "classification")


def test_the_cosine_schedule_starts_at_the_base_rate_and_falls_towards_zero():
    rates = [LEARNING_RATE_SCHEDULES["cosine"](0.01, epoch, 10) for epoch in range(1, 11)]
    assert rates[0] == 0.01 and all(a > b > 0 for a, b in zip(rates, rates[1:]))
    assert rates[5] == pytest.approx(0.005)  # half way through: half the rate
    assert LEARNING_RATE_SCHEDULES["constant"](0.01, 7, 10) == 0.01


def _run(keep: str, losses: list[float]) -> tuple:
    spec = get_spec("fruit_dnn_classifier")
    spec = replace(spec, flavor=replace(spec.flavor, keep=keep))
    checkpoints = [(f"epoch_{epoch}", {"epoch": epoch, "val_loss": loss}) for epoch, loss in enumerate(losses, 1)]
    return _chosen_checkpoint(spec, checkpoints)[0]


def test_keep_best_registers_the_epoch_of_lowest_validation_loss_and_skips_nan():
    assert _run("best", [0.9, 0.4, float("nan"), 0.5]) == "epoch_2"
    assert _run("best", [0.9, 0.4, 0.4, 0.5]) == "epoch_2"  # the earliest of equals
    assert _run("last", [0.9, 0.4, 0.5]) == "epoch_3"


def test_keep_best_without_a_finite_validation_loss_keeps_the_last_epoch_and_says_so(caplog):
    assert _run("best", [float("nan"), float("inf")]) == "epoch_2"
    assert "no epoch has a finite validation loss" in caplog.text


class _CountingShard:
    """A worker's dataset shard whose rows are counted each time TensorFlow reads them."""

    def __init__(self, rows: int, n_features: int = 3):
        self.rows, self.n_features, self.reads = rows, n_features, 0

    def to_tf(self, feature_columns, label_columns, batch_size, feature_type_spec, label_type_spec):
        import tensorflow as tf

        def batches():
            self.reads += 1
            for start in range(0, self.rows, batch_size):
                ids = np.arange(start, min(start + batch_size, self.rows))
                yield np.repeat(ids[:, None], self.n_features, axis=1).astype(np.float32), ids

        return tf.data.Dataset.from_generator(batches, output_signature=(feature_type_spec, label_type_spec))


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_cached_shard_is_read_from_ray_data_once_and_still_shuffled_every_epoch(shuffle):
    from training.flavors.keras import _tf_dataset

    config = {"task": "classification", "batch_size": 16, "n_features": 3, "shuffle_buffer": 2048}
    epochs = {}
    for cache in (False, True):
        shard = _CountingShard(300)
        batches = _tf_dataset(shard, config, shuffle=shuffle, cache=cache)
        epochs[cache] = [np.concatenate([target.numpy() for _, target in batches]) for _ in range(3)]
        assert shard.reads == (1 if cache else 3)
    for order in epochs[True]:
        assert sorted(order) == list(range(300))  # every row once per epoch
    assert (len({tuple(order) for order in epochs[True]}) == 3) is shuffle  # a new order each epoch
