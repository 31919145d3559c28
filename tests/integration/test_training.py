import pytest

from orchard.predictor import Predictor
from orchard.registry import ModelRegistry

pytestmark = pytest.mark.ray


def test_both_demo_models_are_registered_as_version_one(trained_fruit):
    _, versions = trained_fruit
    assert versions == {"fruit_classifier": 1, "apple_weight_regressor": 1}


def test_models_beat_their_trivial_baselines(trained_fruit):
    storage, _ = trained_fruit
    registry = ModelRegistry(storage)
    classifier = registry.get("fruit_classifier", 1).card["metrics"]
    regressor = registry.get("apple_weight_regressor", 1).card["metrics"]
    assert classifier["accuracy"] > classifier["baseline_accuracy"] + 0.2
    assert regressor["mae"] < regressor["baseline_mae"] / 2
    assert regressor["r2"] > 0.7


def test_card_records_signature_and_lineage(trained_fruit):
    storage, _ = trained_fruit
    card = ModelRegistry(storage).get("fruit_classifier", 1).card
    assert [i["name"] for i in card["signature"]["inputs"]] == ["red", "green", "blue", "weight_g", "diameter_mm"]
    assert card["signature"]["classes"] == ["apple", "orange"]
    lineage = card["lineage"]
    assert lineage["feature_group"] == "fruit_measurements:1"
    assert lineage["offline_table_version"] == 0
    assert lineage["rows"] == {"train": 1200, "test": 300}  # 1,500 fruit, 20% held out
    assert lineage["hyperparameters"] == {"max_depth": 5, "random_state": 0}


def test_the_registered_classifier_tells_red_apples_from_oranges(trained_fruit):
    storage, _ = trained_fruit
    predictor = Predictor.load(ModelRegistry(storage), "fruit_classifier")
    red_apple = {"red": 0.82, "green": 0.26, "blue": 0.22, "weight_g": 190.0, "diameter_mm": 77.0}
    orange = {"red": 0.95, "green": 0.58, "blue": 0.12, "weight_g": 240.0, "diameter_mm": 80.0}
    green_apple = {"red": 0.50, "green": 0.78, "blue": 0.28, "weight_g": 170.0, "diameter_mm": 74.0}
    assert [p["label"] for p in predictor.predict([red_apple, orange, green_apple])] == ["apple", "orange", "apple"]
