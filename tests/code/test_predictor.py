import math

import numpy as np
import pytest
import skops.io as sio
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from orchard.registry import ModelRegistry
from orchard.storage import Storage
from training.flavors import FlavorError
from training.flavors.sklearn import UntrustedModelError, load_skops
from training.predictor import InputError, Predictor

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

    with pytest.raises(UntrustedModelError, match="not trusted"):
        load_skops(sio.dumps({"payload": Sneaky()}))


@pytest.fixture()
def transformed_classifier(tmp_path):
    """A tree trained on transformed columns and class indices, registered with its fitted transforms."""
    import pyarrow as pa

    from features.transforms import LabelEncoder, OneHotEncoder, StandardScaler, TransformSet

    rows = pa.table({"x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "kind": ["s", "t", "s", "t", "s", "t"],
                     "label": ["a", "a", "a", "c", "c", "b"]})
    transforms = TransformSet([StandardScaler("x"), OneHotEncoder("kind", unknown="other"), LabelEncoder("label")])
    transforms.fit_table(rows)
    train = transforms.transform(rows)
    columns = transforms.output_columns(["x", "kind"])
    matrix = np.column_stack([train[c].to_numpy() for c in columns])
    keep = np.array(train["label"].to_numpy()) != 1  # class "b" (index 1) never reaches the tree
    estimator = DecisionTreeClassifier(random_state=0).fit(matrix[keep], train["label"].to_numpy()[keep])
    signature = {"task": "classification", "classes": ["a", "b", "c"], "model_inputs": columns,
                 "inputs": [{"name": "x", "datatype": "FP64"}, {"name": "kind", "datatype": "BYTES"}]}
    registry = ModelRegistry(Storage(str(tmp_path)))
    registry.register("tc", {"model.skops": sio.dumps(estimator), "transforms.json": transforms.to_json().encode()},
                      {"flavor": "sklearn", "signature": signature, "transforms": "transforms.json"})
    return Predictor.load(registry, "tc"), estimator, transforms, columns


def test_raw_values_are_transformed_with_the_stored_transforms_before_predicting(transformed_classifier):
    predictor, estimator, transforms, columns = transformed_classifier
    raw = [{"x": 1.5, "kind": "s"}, {"x": 5.5, "kind": "t"}, {"x": 4.0, "kind": "never seen"}]
    transformed = transforms.transform_rows(raw)
    expected = estimator.predict_proba(np.array([[row[c] for c in columns] for row in transformed]))
    predictions = predictor.predict(raw)
    for prediction, row in zip(predictions, expected):
        # The tree's columns are class indices 0 and 2; the unseen class "b" gets probability 0.
        assert prediction["probabilities"] == {"a": row[0], "b": 0.0, "c": row[1]}
        assert prediction["label"] == ("a" if row[0] >= row[1] else "c")


@pytest.mark.parametrize("instance, message", [
    ({"x": 1.0, "kind": 3}, "instances[0].kind must be a string, got 3"),
    ({"x": None, "kind": "s"}, "instances[0].x must not be null"),
    ({"x": "1.0", "kind": "s"}, "instances[0].x must be a number"),
])
def test_each_input_is_checked_against_its_signature_type(transformed_classifier, instance, message):
    predictor, *_ = transformed_classifier
    with pytest.raises(InputError) as error:
        predictor.predict([instance])
    assert message in str(error.value)


def test_an_unknown_flavor_is_refused_by_name(tmp_path):
    registry = ModelRegistry(Storage(str(tmp_path)))
    registry.register("odd", {"model.bin": b"x"}, {"flavor": "pytorch", "signature": SIGNATURE})
    with pytest.raises(FlavorError, match="no model flavor named 'pytorch'"):
        Predictor.load(registry, "odd")


def test_integer_inputs_keep_integers_and_refuse_fractions(tmp_path):
    estimator = DecisionTreeRegressor(max_depth=2).fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0])
    registry = ModelRegistry(Storage(str(tmp_path)))
    signature = {"task": "regression", "inputs": [{"name": "n", "datatype": "INT64"}]}
    registry.register("count", {"model.skops": sio.dumps(estimator)}, {"flavor": "sklearn", "signature": signature})
    predictor = Predictor.load(registry, "count")
    assert predictor.validate([{"n": 2}, {"n": 1.0}]) == [{"n": 2}, {"n": 1}]
    with pytest.raises(InputError, match=r"instances\[0\].n must be an integer, got 1.5"):
        predictor.predict([{"n": 1.5}])


def test_classes_without_a_signature_list_keep_the_estimators_own_order(tmp_path):
    estimator = DecisionTreeClassifier(random_state=0).fit([[0.0], [1.0]], [1, 3])
    registry = ModelRegistry(Storage(str(tmp_path)))
    signature = {"task": "classification", "inputs": [{"name": "d", "datatype": "FP64"}]}
    registry.register("ints", {"model.skops": sio.dumps(estimator)}, {"flavor": "sklearn", "signature": signature})
    assert [p["label"] for p in Predictor.load(registry, "ints").predict([{"d": 0.0}, {"d": 1.0}])] == ["1", "3"]


def test_a_table_of_rows_gets_the_predictions_its_rows_get_one_by_one(transformed_classifier):
    import pyarrow as pa

    predictor = transformed_classifier[0]
    raw = [{"x": 1.5, "kind": "s"}, {"x": 5.5, "kind": "t"}, {"x": 4.0, "kind": "never seen"}, {"x": 3, "kind": "t"}]
    assert predictor.predict_table(pa.Table.from_pylist(raw)) == predictor.predict(raw)
    with pytest.raises(InputError, match="input 'x' holds 1 null"):
        predictor.predict_table(pa.table({"x": [1.0, None], "kind": ["s", "t"]}))
    with pytest.raises(InputError, match="input 'x' holds NaN"):
        predictor.predict_table(pa.table({"x": [float("nan")], "kind": ["s"]}))
    with pytest.raises(InputError, match="input 'x' cannot be read as FP64"):
        predictor.predict_table(pa.table({"x": ["one"], "kind": ["s"]}))
    with pytest.raises(InputError, match="lack the input 'kind'"):
        predictor.predict_table(pa.table({"x": [1.0]}))
