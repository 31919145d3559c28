"""The flavor plug-in interface: a flavor of a project's own is registered, found by a stored version, and served."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from orchard.registry import ModelRegistry
from orchard.storage import Storage
from training import Flavor, ModelSpec, register_flavor
from training.flavors import FlavorError, flavor_class
from training.predictor import Predictor


@register_flavor
@dataclass(frozen=True)
class LinearJsonFlavor(Flavor):
    """A linear model stored as plain JSON: enough to show that nothing else in the engine knows the flavors."""

    name = "linear_json"
    artifact = "linear.json"
    v2_platform = "orchard_linear_json"

    @classmethod
    def load(cls, artifact: bytes, config: dict) -> Any:
        return json.loads(artifact)

    @classmethod
    def predict(cls, model: Any, features: np.ndarray, signature: dict) -> np.ndarray:
        return features @ np.asarray(model["coef"]) + model["intercept"]


SIGNATURE = {"task": "regression", "inputs": [{"name": "x", "datatype": "FP64"}, {"name": "y", "datatype": "FP64"}],
             "model_inputs": ["x", "y"], "target": "z"}


def test_a_registered_flavor_is_found_by_the_name_a_version_stores(tmp_path):
    registry = ModelRegistry(Storage(str(tmp_path)))
    registry.register("plane", {"linear.json": json.dumps({"coef": [2.0, -1.0], "intercept": 0.5}).encode()},
                      {"flavor": "linear_json", "artifact": "linear.json", "signature": SIGNATURE})
    predictor = Predictor.load(registry, "plane")
    assert predictor.flavor is LinearJsonFlavor
    assert predictor.predict([{"x": 1.0, "y": 3.0}, {"x": 0.0, "y": 0.0}]) == [-0.5, 0.5]


def test_a_flavor_refuses_run_options_it_does_not_take():
    spec = ModelSpec(name="plane", view="fruit_classification", task="regression", flavor=LinearJsonFlavor())
    with pytest.raises(FlavorError, match="is a linear_json model: --gpu and --epochs apply to networks only"):
        spec.flavor.check_options(spec, type("Options", (), {"gpu": True, "epochs": None})())


def test_two_flavors_with_one_name_are_refused_naming_both():
    class Other(Flavor):
        name, artifact, v2_platform = "linear_json", "other.bin", "other"

    with pytest.raises(FlavorError, match=r"two flavors named 'linear_json': .*LinearJsonFlavor and .*Other"):
        register_flavor(Other)
    assert flavor_class("linear_json") is LinearJsonFlavor


def test_a_flavor_must_name_its_file_and_platform():
    class Nameless(Flavor):
        name = "nameless"

    with pytest.raises(TypeError, match="must set the class attribute 'artifact'"):
        register_flavor(Nameless)
