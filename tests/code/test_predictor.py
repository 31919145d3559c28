import math

import numpy as np
import pytest
import skops.io as sio
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from orchard.predictor import InputError, Predictor, load_skops
from orchard.registry import ModelRegistry, RegistryError
from orchard.storage import Storage

SIGNATURE = {"task": "classification", "inputs": [{"name": "a", "datatype": "FP64"}, {"name": "b", "datatype": "FP64"}],
             "classes": ["x", "y"]}


@pytest.fixture()
def classifier(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 2))
    labels = np.where(features[:, 0] * features[:, 1] > 0, "x", "y")
    estimator = DecisionTreeClassifier(max_depth=4, random_state=0).fit(features, labels)
    registry = ModelRegistry(Storage(str(tmp_path)))
    registry.register("clf", {"model.skops": sio.dumps(estimator)}, {"flavor": "sklearn", "signature": SIGNATURE})
    return Predictor.load(registry, "clf"), estimator


def test_predictions_match_the_estimator_and_carry_probabilities(classifier):
    predictor, estimator = classifier
    rows = [{"a": 0.5, "b": 1.0}, {"a": -0.5, "b": 1.0}]
    predictions = predictor.predict(rows)
    assert [p["label"] for p in predictions] == list(estimator.predict(np.array([[0.5, 1.0], [-0.5, 1.0]])))
    for prediction in predictions:
        assert set(prediction["probabilities"]) == {"x", "y"}
        assert math.isclose(sum(prediction["probabilities"].values()), 1.0)


def test_feature_order_in_the_request_does_not_matter(classifier):
    predictor, _ = classifier
    assert predictor.predict([{"b": 1.0, "a": 0.5}]) == predictor.predict([{"a": 0.5, "b": 1.0}])


@pytest.mark.parametrize(
    "instance, message",
    [
        ({"a": 1.0}, "missing feature(s) b"),
        ({"a": 1.0, "b": 2.0, "c": 3.0}, "unknown feature(s) c"),
        ({"a": "heavy", "b": 2.0}, "a must be a number, got 'heavy'"),
        ({"a": True, "b": 2.0}, "a must be a number"),
        ({"a": float("nan"), "b": 2.0}, "a must be finite"),
        ({"a": 1.0, "b": float("inf")}, "b must be finite"),
    ],
)
def test_bad_instances_are_refused_naming_the_field(classifier, instance, message):
    predictor, _ = classifier
    with pytest.raises(InputError) as error:
        predictor.predict([{"a": 0.0, "b": 0.0}, instance])
    assert message in str(error.value)
    assert "instances[1]" in str(error.value)


def test_regressor_returns_plain_numbers(tmp_path):
    estimator = DecisionTreeRegressor(max_depth=2).fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0])
    registry = ModelRegistry(Storage(str(tmp_path)))
    signature = {"task": "regression", "inputs": [{"name": "d", "datatype": "FP64"}]}
    registry.register("reg", {"model.skops": sio.dumps(estimator)}, {"flavor": "sklearn", "signature": signature})
    assert Predictor.load(registry, "reg").predict([{"d": 2.0}]) == [2.0]


def test_skops_loading_refuses_untrusted_types():
    class Sneaky:  # any non-sklearn, non-numpy type must be refused before it is built
        pass

    with pytest.raises(RegistryError, match="not trusted"):
        load_skops(sio.dumps({"payload": Sneaky()}))
