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

Loading and predicting belong to the version's flavor (`training.flavors`),
found by the name in its card; no flavor unpickles anything.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.images import ImageError, ImageSpec, check_pixels, decode_image, pixels_to_model
from orchard.errors import StateError, UsageError
from orchard.registry import ModelRegistry, ModelVersion
from training.flavors import Flavor, flavor_class

_ARROW_TYPES = {"FP64": pa.float64(), "INT64": pa.int64(), "BYTES": pa.string(), "BOOL": pa.bool_()}


class InputError(UsageError):
    """A prediction request does not match the model's signature."""

    http_status = 422


@dataclass(frozen=True)
class Predictor:
    model: ModelVersion
    estimator: Any
    transforms: Any = None
    """The version's fitted TransformSet, or None when its signature's inputs are the model's columns."""
    flavor: type[Flavor] | None = None

    @classmethod
    def load(cls, registry: ModelRegistry, name: str, reference: int | str | None = None) -> "Predictor":
        model = registry.get(name, reference)
        flavor = flavor_class(model.flavor)
        artifact = registry.read_file(name, model.version, model.card.get("artifact", flavor.artifact))
        estimator = flavor.load(artifact, model.card.get("flavor_config", {}))
        transforms = None
        if model.card.get("transforms"):
            from features.transforms import TransformSet

            transforms = TransformSet.from_json(registry.read_file(name, model.version, model.card["transforms"]).decode())
        return cls(model, estimator, transforms, flavor)

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
        images = image_inputs(self.signature)
        pixels = {name: [row[name] for row in rows] for name in images}  # images pass the transforms untouched
        if images:
            rows = [{name: value for name, value in row.items() if name not in images} for row in rows]
        if self.transforms is not None:
            try:
                rows = self.transforms.transform_rows(rows)
            except ValueError as error:
                raise InputError(f"instances could not be transformed: {error}") from None
        columns = self.signature.get("model_inputs") or self.feature_names
        missing = [name for name in columns if rows and name not in rows[0] and name not in images]
        if missing:
            raise StateError(f"model {self.model.name}:{self.model.version}: its transformations do not produce "
                                f"the model input(s) {missing}; the stored signature and transforms disagree")
        blocks = []
        for name in columns:
            if name in images:
                blocks.append(pixels_to_model(pixels[name], images[name]).astype(np.float64))
                continue
            block = np.empty((len(rows), 1), dtype=np.float64)
            for row_number, row in enumerate(rows):
                value = row[name]
                if value is None or isinstance(value, str):
                    raise InputError(f"instances[{row_number}]: model input {name!r} became {value!r}")
                block[row_number, 0] = value
            blocks.append(block)
        return np.concatenate(blocks, axis=1) if blocks else np.empty((len(rows), 0))

    def predict_pixels(self, pixels: Sequence[np.ndarray]) -> list:
        """Predictions for a model whose only input is one image, from decoded pixels (batch inference)."""
        (name, spec), = image_inputs(self.signature).items()
        matrix = pixels_to_model(list(pixels), spec)
        return self._outputs(self.flavor.predict(self.estimator, matrix, self.signature))

    def predict_table(self, table: pa.Table) -> list:
        """Predictions for a table of raw inputs, as `predict` gives them (see `predict_arrays`)."""
        return self._outputs(self.predict_arrays(table))

    def predict_arrays(self, table: pa.Table) -> np.ndarray:
        """The flavor's raw outputs for a table of raw inputs (batch inference): a value per row (regressors) or a
        probability per row and class in `classes` order (classifiers). The columns are checked and cast to the
        signature's types as a whole, then transformed by the same transformations in their Arrow form, the one
        training applied; a null, NaN or infinity is an InputError naming the column."""
        columns = {}
        for item in self.signature["inputs"]:
            name, datatype = item["name"], item.get("datatype", "FP64")
            if item.get("image"):
                raise InputError(f"input {name!r} is an image: predict over a folder of image files instead "
                                 "(orchard predict MODEL --input FOLDER)")
            if name not in table.column_names:
                raise InputError(f"the rows lack the input {name!r}")
            try:
                column = table.column(name).cast(_ARROW_TYPES[datatype])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
                raise InputError(f"input {name!r} cannot be read as {datatype}: {str(error).splitlines()[0]}") from None
            if column.null_count:
                raise InputError(f"input {name!r} holds {column.null_count} null value(s)")
            if datatype == "FP64" and not pc.all(pc.is_finite(column)).as_py():
                raise InputError(f"input {name!r} holds NaN or infinite values")
            columns[name] = column
        batch = pa.table(columns)
        if self.transforms is not None:
            try:
                batch = self.transforms.transform(batch)
            except ValueError as error:
                raise InputError(f"rows could not be transformed: {error}") from None
        names = self.signature.get("model_inputs") or self.feature_names
        matrix = np.empty((batch.num_rows, len(names)), dtype=np.float64)
        for position, name in enumerate(names):
            matrix[:, position] = batch.column(name).to_numpy(zero_copy_only=False)
        return np.asarray(self.flavor.predict(self.estimator, matrix, self.signature), dtype=np.float64)

    @property
    def classes(self) -> list[str]:
        return self.signature.get("classes") or [str(c) for c in getattr(self.estimator, "classes_", ())]

    def predict(self, instances: Sequence[Mapping[str, Any]], *, validated: bool = False) -> list:
        """A label and every class's probability per instance (classifier), or a number (regressor)."""
        return self._outputs(self.flavor.predict(self.estimator, self.matrix(instances, validated=validated),
                                                 self.signature))

    def _outputs(self, outputs) -> list:
        if self.signature["task"] != "classification":
            return [float(value) for value in np.asarray(outputs).reshape(-1)]
        return _label_and_probabilities(np.asarray(outputs, dtype=np.float64), list(self.classes))


def image_inputs(signature: Mapping[str, Any]) -> dict[str, ImageSpec]:
    """The signature's image inputs and their specs."""
    return {item["name"]: ImageSpec.from_dict(item["image"]) for item in signature["inputs"] if item.get("image")}


def _image(value: Any, spec: ImageSpec, where: str) -> np.ndarray:
    """An image input as pixels: the bytes of an image file, {"b64": base64 of one}, or a UINT8 array of the
    spec's shape; decoded, converted and resized by the code that ingested the training images."""
    try:
        if isinstance(value, Mapping):
            if set(value) != {"b64"} or not isinstance(value["b64"], str):
                raise ImageError('an image in JSON must be {"b64": "<base64 of the image file>"}')
            try:
                value = base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise ImageError("the 'b64' value is not valid base64") from None
        if isinstance(value, (bytes, bytearray, memoryview)):
            return decode_image(bytes(value), spec)
        if isinstance(value, np.ndarray):
            return check_pixels(value, spec)
        raise ImageError('an image must be an uploaded file, {"b64": "<base64 of the image file>"} or a UINT8 '
                         f"tensor of shape {list(spec.shape)}; got {type(value).__name__}")
    except ImageError as error:
        raise InputError(f"{where}: {error}") from None


def validate_instances(signature: Mapping[str, Any], instances: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Each instance checked against a signature's inputs (names, types, finite numbers), in signature order.
    An image input's value becomes its pixels (`_image`)."""
    fields = [(item["name"], item.get("datatype", "FP64")) for item in signature["inputs"]]
    images = image_inputs(signature)
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
        rows.append({name: _image(instance[name], images[name], f"{where}.{name}") if name in images
                     else _checked(instance[name], datatype, f"{where}.{name}") for name, datatype in fields})
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
