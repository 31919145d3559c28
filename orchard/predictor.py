"""Loading a registered model and predicting from raw feature values.

The same code serves HTTP requests, evaluates models in tests and runs the
demo, so input validation, the model-dependent transformations and the output
shape are defined once:

1. every instance is checked against the signature's raw inputs (names, types,
   finite numbers), and an `InputError` names the instance, field and problem;
2. the model version's own fitted transformations (`transforms.json`, stored
   with it in the registry) turn the raw values into model columns, with the
   code that transformed the training data (`TransformSet.transform_rows`);
3. the model predicts; a classifier answers the label and every class's
   probability, a regressor a number.

Nothing is unpickled: scikit-learn models load with skops restricted to
scikit-learn and NumPy types, networks from Keras' native `.keras` format with
safe mode on (no Python lambdas are deserialized).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from orchard.registry import ModelRegistry, ModelVersion, RegistryError
from orchard.runtime import prepare_driver_environment

# Only these module prefixes may appear inside a stored scikit-learn model; skops
# refuses anything else instead of running arbitrary code the way pickle would.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "builtins.")
ARTIFACTS = {"sklearn": "model.skops", "keras": "model.keras"}


class InputError(ValueError):
    """A prediction request does not match the model's signature."""


@dataclass(frozen=True)
class Predictor:
    model: ModelVersion
    estimator: Any
    transforms: Any = None
    """The version's fitted TransformSet, or None when its signature's inputs are the model's columns."""

    @classmethod
    def load(cls, registry: ModelRegistry, name: str, reference: int | str | None = None) -> "Predictor":
        model = registry.get(name, reference)
        if model.flavor not in ARTIFACTS:
            raise RegistryError(f"model {name}:{model.version} has flavor {model.flavor!r}; "
                                f"Orchard loads {', '.join(sorted(ARTIFACTS))}")
        artifact = registry.read_file(name, model.version, model.card.get("artifact", ARTIFACTS[model.flavor]))
        estimator = load_skops(artifact) if model.flavor == "sklearn" else load_keras(artifact)
        transforms = None
        if model.card.get("transforms"):
            from features.transforms import TransformSet

            transforms = TransformSet.from_json(registry.read_file(name, model.version, model.card["transforms"]).decode())
        return cls(model, estimator, transforms)

    @property
    def signature(self) -> dict:
        return self.model.signature

    @property
    def feature_names(self) -> list[str]:
        return [item["name"] for item in self.signature["inputs"]]

    def validate(self, instances: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Each instance checked against the signature's inputs, as a dict in signature order."""
        return validate_instances(self.signature, instances)

    def matrix(self, instances: Sequence[Mapping[str, Any]], *, validated: bool = False) -> np.ndarray:
        """Raw instances -> the model's float matrix (validated, then transformed), or InputError.

        `validated`: the instances are already `validate`'s output (the service checks
        a request before it reaches the model), so they are not checked twice.
        """
        rows = list(instances) if validated else self.validate(instances)
        if self.transforms is not None:
            try:
                rows = self.transforms.transform_rows(rows)
            except ValueError as error:
                raise InputError(f"instances could not be transformed: {error}") from None
        columns = self.signature.get("model_inputs") or self.feature_names
        matrix = np.empty((len(rows), len(columns)), dtype=np.float64)
        missing = [name for name in columns if rows and name not in rows[0]]
        if missing:
            raise RegistryError(f"model {self.model.name}:{self.model.version}: its transformations do not produce "
                                f"the model input(s) {missing}; the stored signature and transforms disagree")
        for row_number, row in enumerate(rows):
            for column, name in enumerate(columns):
                value = row[name]
                if value is None or isinstance(value, str):
                    raise InputError(f"instances[{row_number}]: model input {name!r} became {value!r}")
                matrix[row_number, column] = value
        return matrix

    def predict(self, instances: Sequence[Mapping[str, Any]], *, validated: bool = False) -> list:
        features = self.matrix(instances, validated=validated)
        classification = self.signature["task"] == "classification"
        if self.model.flavor == "keras":
            outputs = self.estimator(features.astype(np.float32), training=False).numpy().astype(np.float64)
            if not classification:
                return [float(value) for value in outputs.reshape(-1)]
            classes = list(self.signature["classes"])
            if outputs.shape[1] != len(classes):
                raise RegistryError(f"model {self.model.name}:{self.model.version} has {outputs.shape[1]} outputs "
                                    f"but its signature names {len(classes)} classes")
            return _label_and_probabilities(outputs, classes)
        if not classification:
            return [float(value) for value in self.estimator.predict(features)]
        return _label_and_probabilities(self._sklearn_probabilities(features), self._classes())

    def _classes(self) -> list[str]:
        return list(self.signature.get("classes") or [str(c) for c in self.estimator.classes_])

    def _sklearn_probabilities(self, features: np.ndarray) -> np.ndarray:
        """One column per signature class, in order, also for classes the estimator never saw in training."""
        classes = self._classes()
        known = [] if self.signature.get("classes") else list(range(len(classes)))
        for value in self.estimator.classes_ if not known else ():
            if isinstance(value, (int, np.integer)) and 0 <= value < len(classes):
                known.append(int(value))  # trained on label-encoded targets: an index into the signature's classes
            elif str(value) in classes:
                known.append(classes.index(str(value)))  # trained on the class names themselves
            else:
                raise RegistryError(f"model {self.model.name}:{self.model.version}: the estimator's class {value!r} "
                                    f"is neither a class nor a class index of the signature's {classes}")
        probabilities = np.zeros((len(features), len(classes)))
        probabilities[:, known] = self.estimator.predict_proba(features)
        return probabilities


def validate_instances(signature: Mapping[str, Any], instances: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Each instance checked against a signature's inputs (names, types, finite numbers), in signature order."""
    fields = [(item["name"], item.get("datatype", "FP64")) for item in signature["inputs"]]
    expected = {name for name, _ in fields}
    rows = []
    for row_number, instance in enumerate(instances):
        where = f"instances[{row_number}]"
        if not isinstance(instance, Mapping):
            raise InputError(f"{where} must be an object of feature values")
        missing = [name for name, _ in fields if name not in instance]
        if missing:
            raise InputError(f"{where}: missing feature(s) {', '.join(missing)}")
        unknown = sorted(set(instance) - expected)
        if unknown:
            raise InputError(f"{where}: unknown feature(s) {', '.join(map(str, unknown))}")
        rows.append({name: _checked(instance[name], datatype, f"{where}.{name}") for name, datatype in fields})
    return rows


def _label_and_probabilities(probabilities: np.ndarray, classes: list[str]) -> list[dict]:
    return [{"label": classes[int(np.argmax(row))], "probabilities": dict(zip(classes, map(float, row)))}
            for row in probabilities]


def _checked(value: Any, datatype: str, where: str) -> Any:
    if value is None:
        raise InputError(f"{where} must not be null")
    if datatype == "BYTES":
        if not isinstance(value, str):
            raise InputError(f"{where} must be a string, got {value!r}")
        return value
    if datatype == "BOOL":
        if not isinstance(value, bool):
            raise InputError(f"{where} must be true or false, got {value!r}")
        return value
    if datatype == "INT64":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise InputError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InputError(f"{where} must be finite, got {value!r}")
    return float(value)


def load_skops(data: bytes) -> Any:
    import skops.io as sio

    types = sio.get_untrusted_types(data=data)
    refused = [t for t in types if not t.startswith(TRUSTED_MODULE_PREFIXES)]
    if refused:
        raise RegistryError(f"stored model contains types that are not trusted: {', '.join(refused)}")
    return sio.loads(data, trusted=types)


def load_keras(data: bytes) -> Any:
    """A tf-keras model from the bytes of a native `.keras` file, in safe mode and without its optimizer."""
    prepare_driver_environment()  # the legacy-Keras switch, before TensorFlow is first imported
    import tf_keras

    with tempfile.TemporaryDirectory(prefix="orchard-keras-") as folder:
        path = os.path.join(folder, "model.keras")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            return tf_keras.models.load_model(path, compile=False, safe_mode=True)
        except (ValueError, OSError) as error:
            raise RegistryError(f"the stored network cannot be loaded: {error}") from None
