"""Loading a registered model and predicting from raw feature values.

The same code serves HTTP requests and checks models in tests and the demo, so
input validation and output shape are defined once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from orchard.registry import ModelRegistry, ModelVersion, RegistryError

# Only these module prefixes may appear inside a stored scikit-learn model; skops
# refuses anything else instead of running arbitrary code the way pickle would.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "builtins.")


class InputError(ValueError):
    """A prediction request does not match the model's signature."""


@dataclass(frozen=True)
class Predictor:
    model: ModelVersion
    estimator: Any

    @classmethod
    def load(cls, registry: ModelRegistry, name: str, reference: int | str | None = None) -> "Predictor":
        model = registry.get(name, reference)
        if model.flavor != "sklearn":
            raise RegistryError(f"model {name}:{model.version} has flavor {model.flavor!r}, not 'sklearn'")
        return cls(model, load_skops(registry.read_file(name, model.version, "model.skops")))

    @property
    def feature_names(self) -> list[str]:
        return [item["name"] for item in self.model.signature["inputs"]]

    def matrix(self, instances: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows of raw feature values -> a float matrix in signature order, or InputError."""
        names = self.feature_names
        expected = set(names)
        matrix = np.empty((len(instances), len(names)), dtype=np.float64)
        for row_number, instance in enumerate(instances):
            if not isinstance(instance, Mapping):
                raise InputError(f"instances[{row_number}] must be an object of feature values")
            missing = [n for n in names if n not in instance]
            if missing:
                raise InputError(f"instances[{row_number}]: missing feature(s) {', '.join(missing)}")
            unknown = sorted(set(instance) - expected)
            if unknown:
                raise InputError(f"instances[{row_number}]: unknown feature(s) {', '.join(unknown)}")
            for column, name in enumerate(names):
                value = instance[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InputError(f"instances[{row_number}].{name} must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise InputError(f"instances[{row_number}].{name} must be finite, got {value!r}")
                matrix[row_number, column] = value
        return matrix

    def predict(self, instances: Sequence[Mapping[str, Any]]) -> list:
        features = self.matrix(instances)
        if self.model.signature["task"] == "classification":
            probabilities = self.estimator.predict_proba(features)
            classes = [str(c) for c in self.estimator.classes_]
            return [
                {"label": classes[int(np.argmax(row))], "probabilities": dict(zip(classes, map(float, row)))}
                for row in probabilities
            ]
        return [float(value) for value in self.estimator.predict(features)]


def load_skops(data: bytes) -> Any:
    import skops.io as sio

    types = sio.get_untrusted_types(data=data)
    refused = [t for t in types if not t.startswith(TRUSTED_MODULE_PREFIXES)]
    if refused:
        raise RegistryError(f"stored model contains types that are not trusted: {', '.join(refused)}")
    return sio.loads(data, trusted=types)
