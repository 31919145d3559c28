"""The Open Inference Protocol (KServe V2 REST) in terms of Orchard's model signatures.

A V2 request carries one tensor per input (`name`, `shape`, `datatype`,
row-major `data`); Orchard's models take rows of named raw feature values. These
functions convert between the two and describe a model version as V2 metadata.
They only reshape: the values are validated by `training.predictor`, the same
as for the simple JSON endpoint, so both protocols refuse the same inputs.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from features.images import ImageSpec
from training.flavors import flavor_class
from training.predictor import InputError, image_inputs

# The V2 datatypes a request may use for each signature datatype.
ACCEPTED_DATATYPES = {
    "FP64": {"FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8"},
    "INT64": {"INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8"},
    "BYTES": {"BYTES"},
    "BOOL": {"BOOL"},
}


def instances_from_tensors(signature: Mapping[str, Any], inputs: Any, max_instances: int) -> list[dict]:
    """V2 `inputs` (one tensor of shape [N] or [N, 1] per feature) -> N rows of feature values.

    An image input is a BYTES tensor of shape [N] (each element an image file, base64 in JSON) or a UINT8 tensor
    of shape [N, height, width, channels]; either becomes one value per row for the predictor to check."""
    expected = {item["name"]: item.get("datatype", "FP64") for item in signature["inputs"]}
    images = image_inputs(signature)
    if images and isinstance(inputs, list):
        inputs = [_image_tensor(tensor, images[tensor["name"]], max_instances)
                  if isinstance(tensor, Mapping) and tensor.get("name") in images else tensor for tensor in inputs]
    return rows_from_tensors(inputs, expected, max_instances)


def _image_tensor(tensor: Mapping[str, Any], spec: ImageSpec, max_instances: int) -> dict:
    """An image tensor as a BYTES tensor of shape [N] whose elements the predictor takes: {"b64": ...} for an
    image file, a uint8 array for pixels."""
    name, shape, datatype, data = (tensor.get(key) for key in ("name", "shape", "datatype", "data"))
    where = f"input {name!r}"
    if datatype == "BYTES":
        if (tensor.get("parameters") or {}).get("content_type", "base64") != "base64":
            raise InputError(f"{where}: an image's BYTES elements must be base64 image files (content_type base64)")
        values = _flatten(data, where)
        if not all(isinstance(v, str) for v in values):
            raise InputError(f"{where}: each BYTES element must be an image file, base64-encoded")
        return {**tensor, "data": [{"b64": v} for v in values]}
    if datatype not in ACCEPTED_DATATYPES["INT64"]:
        raise InputError(f"{where} has datatype {datatype!r}; an image is BYTES (image files) or UINT8 (pixels)")
    expected = [spec.height, spec.width, spec.channels]
    if not isinstance(shape, list) or len(shape) != 4 or shape[1:] != expected \
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InputError(f"{where} has shape {shape!r}; the model takes images of shape [N, {', '.join(map(str, expected))}]"
                         " (height, width, channels)")
    if shape[0] > max_instances:
        raise InputError(f"{where} has {shape[0]} rows; at most {max_instances} per request")
    flat = _flatten(data, where)
    if len(flat) != shape[0] * spec.size:
        raise InputError(f"{where} has {len(flat)} values for shape {shape}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in flat):
        raise InputError(f"{where}: pixels must be integers from 0 to 255")
    pixels = np.asarray(flat, dtype=np.uint8).reshape([shape[0], *expected])
    return {"name": name, "datatype": "BYTES", "shape": [shape[0]], "data": list(pixels)}


def rows_from_tensors(inputs: Any, expected: Mapping[str, str], max_instances: int) -> list[dict]:
    """V2 `inputs` -> N rows of the `expected` tensors ({name: signature datatype, or "ANY"}), all required."""
    if not isinstance(inputs, list) or not inputs:
        raise InputError("'inputs' must be a non-empty list of tensors")
    columns: dict[str, list] = {}
    rows = None
    for position, tensor in enumerate(inputs):
        where = f"inputs[{position}]"
        if not isinstance(tensor, Mapping):
            raise InputError(f"{where} must be an object with name, shape, datatype and data")
        missing = [key for key in ("name", "shape", "datatype", "data") if key not in tensor]
        if missing:
            raise InputError(f"{where} lacks {', '.join(missing)}")
        name, shape, datatype, data = tensor["name"], tensor["shape"], tensor["datatype"], tensor["data"]
        where = f"input {name!r}"
        if name not in expected:
            raise InputError(f"{where} is not an input of the model; its inputs are {', '.join(expected)}")
        if name in columns:
            raise InputError(f"{where} is given twice")
        if expected[name] != "ANY" and datatype not in ACCEPTED_DATATYPES[expected[name]]:
            raise InputError(f"{where} has datatype {datatype!r}; the model takes {expected[name]}")
        if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                or (len(shape) == 2 and shape[1] != 1)):
            raise InputError(f"{where} must have shape [N] or [N, 1], got {shape!r}")
        if rows is not None and shape[0] != rows:
            raise InputError(f"{where} has {shape[0]} rows, other inputs have {rows}")
        rows = shape[0]
        if rows > max_instances:
            raise InputError(f"{where} has {rows} rows; at most {max_instances} per request")
        flat = _flatten(data, where)
        if len(flat) != rows:
            raise InputError(f"{where} has {len(flat)} values for shape {shape}")
        columns[name] = flat
    absent = [name for name in expected if name not in columns]
    if absent:
        raise InputError(f"missing input(s) {', '.join(absent)}")
    if not rows:
        raise InputError("the inputs hold no rows")
    return [{name: columns[name][row] for name in expected} for row in range(rows)]


def _flatten(data: Any, where: str) -> list:
    if not isinstance(data, list):
        raise InputError(f"{where} 'data' must be a list")
    flat: list = []
    for value in data:
        if isinstance(value, list):  # nested row-major data ([[v], [v]]) is accepted as well as flat
            flat.extend(_flatten(value, where))
        else:
            flat.append(value)
    return flat


def output_tensors(signature: Mapping[str, Any], predictions: Sequence[Any]) -> list[dict]:
    """Predictions of `training.predictor.Predictor.predict` as V2 output tensors."""
    rows = len(predictions)
    if signature["task"] == "classification":
        classes = list(signature["classes"])
        probabilities = [p["probabilities"][c] for p in predictions for c in classes]
        return [{"name": "label", "datatype": "BYTES", "shape": [rows], "data": [p["label"] for p in predictions]},
                {"name": "probabilities", "datatype": "FP64", "shape": [rows, len(classes)], "data": probabilities}]
    name = signature["outputs"][0]["name"] if signature.get("outputs") else "prediction"
    return [{"name": name, "datatype": "FP64", "shape": [rows], "data": list(predictions)}]


def requested_outputs(outputs: list[dict], requested: list[dict] | None) -> list[dict]:
    """The outputs a request names, in its order (all of them when it names none); an unknown name is an error."""
    if not requested:
        return outputs
    by_name = {output["name"]: output for output in outputs}
    chosen = []
    for position, item in enumerate(requested):
        name = item.get("name") if isinstance(item, Mapping) else None
        if name not in by_name:
            raise InputError(f"outputs[{position}] asks for {name!r}; the model's outputs are {', '.join(by_name)}")
        chosen.append(by_name[name])
    return chosen


def model_metadata(name: str, versions: Sequence[int], card: Mapping[str, Any]) -> dict:
    """V2 model metadata: name, versions, platform, inputs and outputs with datatypes and shapes."""
    signature = card["signature"]
    outputs = signature.get("outputs") or ([{"name": "label", "datatype": "BYTES", "shape": [-1]}]
                                           if signature["task"] == "classification"
                                           else [{"name": "prediction", "datatype": "FP64", "shape": [-1]}])
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": card.get("platform") or flavor_class(card["flavor"]).v2_platform,
        "inputs": [{"name": i["name"], "datatype": i.get("datatype", "FP64"), "shape": [-1]}
                   for i in signature["inputs"]],
        "outputs": [{"name": o["name"], "datatype": o["datatype"], "shape": list(o["shape"])} for o in outputs],
    }
