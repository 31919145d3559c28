"""Images as features: one decoding path for the pipeline and the service, image sources, image inputs."""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pyarrow as pa
import pytest
from apple_images.generate import SIZE, _apple, encode
from apple_images.groups import APPLE_PHOTOS, PHOTO
from PIL import Image

from features import EVENT_TIME_TYPE, Feature, FeatureGroup, FileSource, ImageSource, ImageSpec
from features.definitions import DefinitionError
from features.images import ImageError, check_pixels, decode_image, pixels_to_model
from features.ingest import LINE_COLUMN, RAW_COLUMN, REASON_COLUMN, SourceFile, parse_image_files
from serve.binary_tensors import decode_request
from serve.protocol import instances_from_tensors
from training.predictor import InputError, validate_instances

RGB = ImageSpec(height=8, width=6)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _photo(seed: int = 0, defect: str = "rot", kind: str = "png", size: int = SIZE) -> bytes:
    return encode(_apple(np.random.default_rng(seed), defect, size=size), kind)


def test_any_image_file_becomes_pixels_of_the_specs_shape():
    for data in (_photo(kind="png"), _photo(kind="jpg"), _png(np.full((30, 20), 77, np.uint8))):  # grey too
        pixels = decode_image(data, RGB)
        assert pixels.shape == (8, 6, 3) and pixels.dtype == np.uint8
    grey = decode_image(_png(np.full((8, 6, 3), 200, np.uint8)), ImageSpec(8, 6, channels=1))
    assert grey.shape == (8, 6, 1) and int(grey[0, 0, 0]) == 200
    exact = np.random.default_rng(1).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(_png(exact), RGB), exact)  # no resize: lossless PNG pixels unchanged


@pytest.mark.parametrize("data, reason", [
    (b"", "the image file is empty"),
    (b"not an image: a label printer's log line\n", "not an image in a format Pillow reads"),
    (_photo(kind="jpg")[:200], "cannot be decoded"),
])
def test_what_is_not_an_image_is_refused_with_the_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data, RGB)


def test_a_size_the_spec_does_not_accept_is_refused_not_stretched():
    with pytest.raises(ImageError, match=f"the image is 48x48 pixels; accepted sizes are {SIZE}x{SIZE}"):
        decode_image(_photo(size=SIZE // 2), PHOTO)
    assert decode_image(_photo(), PHOTO).shape == (64, 64, 3)


def test_too_many_pixels_are_refused_from_the_header_before_decoding():
    huge = _png(np.zeros((400, 300, 3), np.uint8))  # a few hundred bytes of PNG, 120,000 pixels once decoded
    with pytest.raises(ImageError, match="the image is 300x400 pixels, more than the 100,000 accepted"):
        decode_image(huge, ImageSpec(8, 6, max_pixels=100_000))


def test_stored_pixels_and_arrays_give_the_same_model_inputs_in_0_to_1():
    arrays = [np.random.default_rng(i).integers(0, 256, (8, 6, 3), dtype=np.uint8) for i in range(3)]
    from_bytes = pixels_to_model([a.tobytes() for a in arrays], RGB)
    assert from_bytes.shape == (3, 144) and from_bytes.dtype == np.float32
    assert np.array_equal(from_bytes, pixels_to_model(arrays, RGB))
    assert np.allclose(from_bytes[0], arrays[0].reshape(-1) / 255.0)
    with pytest.raises(ImageError, match="must hold 144 bytes each"):
        pixels_to_model([b"\x00" * 143], RGB)


def test_a_pixel_tensor_must_have_the_specs_shape_and_byte_values():
    assert check_pixels(np.zeros((8, 6, 3), np.int64), RGB).dtype == np.uint8
    with pytest.raises(ImageError, match=r"has shape \[6, 8, 3\]; the model takes \[8, 6, 3\]"):
        check_pixels(np.zeros((6, 8, 3), np.uint8), RGB)
    with pytest.raises(ImageError, match="integers from 0 to 255"):
        check_pixels(np.full((8, 6, 3), 300), RGB)


# -- image sources and groups


def _group(**source) -> FeatureGroup:
    return FeatureGroup(
        name="photos", version=1, description="Photos.", primary_key=("photo_id",), event_time="taken_at",
        features=(Feature("photo_id", pa.string(), "Id."), Feature("taken_at", EVENT_TIME_TYPE, "Time."),
                  Feature("image", pa.binary(), "Pixels.", image=RGB),
                  Feature("label", pa.string(), "Class.", allowed_values=("a", "b"))),
        sources=(ImageSource(**{"name": "camera", "location": "landing", "image": "image",
                                "path_fields": r"(?P<label>[^/]+)/(?P<photo_id>[^/.]+)\.png$", **source}),))


def test_every_feature_of_an_image_group_must_come_from_somewhere():
    with pytest.raises(DefinitionError, match=r"feature\(s\) \['label'\] come from no path field"):
        _group(path_fields=r"(?P<photo_id>[^/.]+)\.png$")
    with pytest.raises(DefinitionError, match=r"path field\(s\) \['camera'\] are not features"):
        _group(path_fields=r"(?P<camera>\w+)/(?P<label>[^/]+)/(?P<photo_id>[^/.]+)\.png$")
    with pytest.raises(DefinitionError, match="'label' is not an image feature"):
        _group(image="label")
    with pytest.raises(DefinitionError, match="image feature 'image' must have dtype pa.binary()"):
        Feature("image", pa.string(), "Pixels.", image=RGB)
    with pytest.raises(DefinitionError, match="can only be read by image sources"):
        FeatureGroup(name="photos", version=1, description="Photos.", primary_key=("photo_id",),
                     event_time="taken_at", features=_group().features,
                     sources=(FileSource(name="csv", format="csv", location="landing", pattern="*.csv"),))


def test_each_file_becomes_one_row_with_its_pixels_or_the_reason_it_was_rejected():
    group = _group()
    (source,) = group.sources
    good = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    files = [("landing/a/p1.png", _png(good)), ("landing/c/p2.png", _png(good)),  # 'c' is not a class
             ("landing/b/p3.png", b"junk"), ("landing/p4.jpg", _png(good))]  # path does not match
    rows = parse_image_files([(SourceFile("camera", path, len(data), 1_790_000_000_000_000_000, i), data)
                              for i, (path, data) in enumerate(files)], source, group).to_pylist()
    assert [row["photo_id"] for row in rows] == ["p1", "p2", "p3", None]
    assert rows[0][REASON_COLUMN] is None and rows[0]["image"] == good.tobytes() and rows[0]["label"] == "a"
    assert rows[0]["taken_at"].timestamp() == 1_790_000_000  # the file's modification time
    assert rows[1][REASON_COLUMN] == "feature 'label' must be one of a, b; got 'c'"
    assert rows[2][REASON_COLUMN].startswith("image 'image' could not be read: the file is not an image")
    assert "does not match the source's path_fields" in rows[3][REASON_COLUMN]
    assert all(row[LINE_COLUMN] == 1 for row in rows)  # one record per file: counted as rows
    assert rows[2][RAW_COLUMN] == "b/p3.png (4 bytes)"  # the file and its size, never its bytes


def test_the_apple_photos_group_reads_the_class_and_id_from_the_folder_layout():
    (source,) = APPLE_PHOTOS.sources
    assert source.match("day-0003/scab/scab-0003-00012.jpg") == {"label": "scab", "photo_id": "scab-0003-00012"}
    assert source.match("day-0003/scab/notes.txt") is None


# -- image inputs of a model


SIGNATURE = {"task": "classification", "classes": ["a", "b"],
             "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1], "image": RGB.to_dict()}]}


def test_an_image_input_takes_file_bytes_base64_json_or_a_pixel_array():
    pixels = np.random.default_rng(2).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    data = _png(pixels)
    rows = validate_instances(SIGNATURE, [{"image": data}, {"image": {"b64": base64.b64encode(data).decode()}},
                                          {"image": pixels}])
    assert all(np.array_equal(row["image"], pixels) for row in rows)


@pytest.mark.parametrize("value, reason", [
    ({"b64": "%%%"}, "not valid base64"),
    ({"b64": base64.b64encode(b"text").decode()}, "not an image"),
    ({"url": "http://x"}, 'must be {"b64"'),
    ("aGVsbG8=", "an image must be an uploaded file"),
    (np.zeros((8, 8, 3), np.uint8), r"has shape \[8, 8, 3\]"),
])
def test_a_bad_image_input_is_refused_naming_the_instance(value, reason):
    with pytest.raises(InputError, match=rf"instances\[0\]\.image: .*{reason}"):
        validate_instances(SIGNATURE, [{"image": value}])


def test_v2_takes_an_image_as_base64_bytes_or_a_uint8_tensor_of_the_images_shape():
    pixels = np.random.default_rng(3).integers(0, 256, (2, 8, 6, 3), dtype=np.uint8)
    files = [base64.b64encode(_png(p)).decode() for p in pixels]
    as_bytes = instances_from_tensors(SIGNATURE, [{"name": "image", "datatype": "BYTES", "shape": [2],
                                                   "data": files}], 10)
    as_uint8 = instances_from_tensors(SIGNATURE, [{"name": "image", "datatype": "UINT8", "shape": [2, 8, 6, 3],
                                                   "data": pixels.reshape(-1).tolist()}], 10)
    for rows in (as_bytes, as_uint8):
        validated = validate_instances(SIGNATURE, rows)
        assert [np.array_equal(row["image"], p) for row, p in zip(validated, pixels)] == [True, True]
    with pytest.raises(InputError, match=r"has shape \[1, 6, 8, 3\]; the model takes images of shape \[N, 8, 6, 3\]"):
        instances_from_tensors(SIGNATURE, [{"name": "image", "datatype": "UINT8", "shape": [1, 6, 8, 3],
                                            "data": [0] * 144}], 10)
    with pytest.raises(InputError, match="an image is BYTES .* or UINT8"):
        instances_from_tensors(SIGNATURE, [{"name": "image", "datatype": "FP32", "shape": [1, 8, 6, 3],
                                            "data": [0.0] * 144}], 10)


def test_binary_tensor_data_that_is_not_text_arrives_as_base64():
    image = _png(np.zeros((8, 6, 3), np.uint8))
    raw = struct.pack("<I", len(image)) + image
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    request, _, _ = decode_request(header + raw, len(header))
    (tensor,) = request["inputs"]
    assert tensor["parameters"] == {"content_type": "base64"}
    assert base64.b64decode(tensor["data"][0]) == image
    text = struct.pack("<I", 5) + b"plain"
    header = json.dumps({"inputs": [{"name": "skin", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(text)}}]}).encode()
    request, _, _ = decode_request(header + text, len(header))
    assert request["inputs"][0]["data"] == ["plain"] and request["inputs"][0]["parameters"] == {}
