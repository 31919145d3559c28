"""Apple defects end to end: photos -> a convolutional network on Ray Train -> an image endpoint -> batch inference.

The network is the one the session's `orchard demo` run trained and registered (the photos' ingestion and its
quarantine are test_image_pipeline.py's); one Serve app of its own beside the session's serves it from there.
"""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
from apple_images.generate import CLASSES, _apple, encode, write_apple_images
from apple_images.groups import PHOTO
from deltalake import DeltaTable
from PIL import Image

from features.images import decode_image
from orchard.registry import ModelRegistry
from orchard.storage import Storage
from serve.batch import run_batch_inference, table_location
from serve.prediction_log import read_predictions
from tests.helpers import serve_metric_lines
from training.predictor import Predictor

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(960)]  # the demo may run first

MODEL = "apple_defect_cnn"
APP = "apple_images"


@pytest.fixture(scope="module")
def apple_storage(demo_run, ray_cluster):
    """The demo's storage: three days of 300 photos each, ingested, and the network trained on them."""
    return Storage(str(demo_run.registered().storage))


@pytest.fixture(scope="module")
def trained(apple_storage):
    """The network as the demo trained and registered it (`train_model`, the spec's 15 epochs, as `orchard train`)."""
    card = ModelRegistry(apple_storage).get(MODEL, "production").card
    return {"version": card["version"], "metrics": card["metrics"]}


def test_the_network_clearly_beats_the_majority_class_on_held_out_photos(trained):
    metrics = trained["metrics"]
    test, baseline = metrics["test"], metrics["baseline"]
    print(f"\napple_defect_cnn on {test['n']} held-out photos: accuracy {test['accuracy']:.3f} (majority class "
          f"{baseline['accuracy']:.3f}), macro-F1 {test['macro_f1']:.3f}, recall per class "
          f"{dict(zip(sorted(CLASSES), [round(r, 2) for r in test['per_class_recall']]))}")
    assert test["accuracy"] >= 0.6 and test["accuracy"] >= baseline["accuracy"] + 0.3
    assert test["macro_f1"] >= 0.55
    assert all(recall >= 0.3 for recall in test["per_class_recall"])  # every class is found, not only some
    assert np.asarray(test["confusion_matrix"]).sum() == test["n"]


def test_the_registered_version_describes_its_image_input(apple_storage, trained):
    card = ModelRegistry(apple_storage).get(MODEL, trained["version"]).card
    (image,) = card["signature"]["inputs"]
    assert image["name"] == "image" and image["datatype"] == "BYTES" and image["image"] == PHOTO.to_dict()
    assert card["signature"]["classes"] == sorted(CLASSES)
    assert card["lineage"]["rows"]["train"] > 550


def test_the_rate_decays_along_the_cosine_and_the_epoch_of_lowest_validation_loss_is_registered(
        apple_storage, trained):
    card = ModelRegistry(apple_storage).get(MODEL, trained["version"]).card
    history = card["learning_curve"]["points"]
    assert [m["epoch"] for m in history] == list(range(1, 16))
    rates = [m["learning_rate"] for m in history]
    assert rates[0] == pytest.approx(0.003) and all(a > b > 0 for a, b in zip(rates, rates[1:]))
    best = min(history, key=lambda m: (m["val_loss"], m["epoch"]))["epoch"]
    assert card["hyperparameters"]["chosen_epoch"] == best and card["hyperparameters"]["keep"] == "best"


# -- the image endpoint


@pytest.fixture(scope="module")
def apple_app(trained, apple_storage, session_config):
    from ray import serve

    from serve.app import deploy, replica_urls

    config = session_config.with_overrides(storage=apple_storage.root_uri)
    proxy = deploy(config, name=APP, route_prefix="/apples", replica_cpus=0)
    direct = (replica_urls(APP, wait_s=60) or [None])[0]
    yield proxy, direct
    serve.delete(APP)


def _photos(storage: Storage, count: int, day: str = "day-0001") -> list[tuple[str, bytes]]:
    paths = [e.path for e in storage.find_files(f"landing/apple_images/{day}") if e.path.endswith((".png", ".jpg"))]
    good = []
    for path in paths:
        data = storage.read_bytes(path)
        try:
            decode_image(data, PHOTO)
        except Exception:
            continue
        good.append((path, data))
        if len(good) == count:
            break
    return good


def test_an_uploaded_photo_base64_json_and_the_predictor_agree(apple_app, apple_storage, trained):
    proxy, _ = apple_app
    photos = _photos(apple_storage, 3)
    expected = Predictor.load(ModelRegistry(apple_storage), MODEL).predict([{"image": data} for _, data in photos])
    upload = httpx.post(f"{proxy}/v1/models/{MODEL}:predict", timeout=60,
                        files=[("image", (path.rsplit("/", 1)[-1], data, "image/png")) for path, data in photos])
    assert upload.status_code == 200, upload.text
    assert upload.json()["predictions"] == expected and upload.json()["version"] == trained["version"]
    as_json = httpx.post(f"{proxy}/v1/models/{MODEL}:predict", timeout=60, json={
        "instances": [{"image": {"b64": base64.b64encode(data).decode()}} for _, data in photos]})
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["predictions"] == expected


def test_v2_takes_image_files_as_bytes_and_pixels_as_uint8(apple_app, apple_storage):
    tritonclient = pytest.importorskip("tritonclient.http")
    proxy, direct = apple_app
    photos = _photos(apple_storage, 2)
    expected = [p["label"] for p in Predictor.load(ModelRegistry(apple_storage), MODEL).predict(
        [{"image": data} for _, data in photos])]
    if direct is not None:  # tritonclient as it is: binary tensors, no Content-Type
        host = direct.split("://", 1)[1]
        client = tritonclient.InferenceServerClient(url=host, network_timeout=60)
        tensor = tritonclient.InferInput("image", [len(photos)], "BYTES")
        tensor.set_data_from_numpy(np.array([data for _, data in photos], dtype=object))
        labels = client.infer(MODEL, [tensor]).as_numpy("label").tolist()
        assert [label.decode() for label in labels] == expected
        client.close()
    pixels = np.stack([decode_image(data, PHOTO) for _, data in photos])
    answer = httpx.post(f"{proxy}/v2/models/{MODEL}/infer", timeout=60, json={"inputs": [
        {"name": "image", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.reshape(-1).tolist()}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == expected


@pytest.mark.parametrize("case, status, message", [
    ("text", 422, "not an image in a format Pillow reads"),
    ("wrong_size", 422, "the image is 48x48 pixels; accepted sizes are 96x96"),
    ("too_large", 413, "larger than 1000000 bytes"),
    ("wrong_shape", 422, "the model takes images of shape [N, 64, 64, 3]"),
    ("no_file", 422, "the multipart body has no file"),
])
def test_what_is_not_a_photo_the_model_takes_gets_a_4xx_that_says_why(apple_app, case, status, message):
    proxy, _ = apple_app
    url = f"{proxy}/v1/models/{MODEL}:predict"
    if case == "text":
        response = httpx.post(url, files={"image": ("notes.png", b"a label printer's log line\n")}, timeout=60)
    elif case == "wrong_size":
        small = encode(_apple(np.random.default_rng(0), "rot", size=48), "png")
        response = httpx.post(url, files={"image": ("small.png", small)}, timeout=60)
    elif case == "too_large":
        noise = np.random.default_rng(1).integers(0, 256, (700, 700, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="PNG")
        response = httpx.post(url, files={"image": ("huge.png", buffer.getvalue())}, timeout=60)
    elif case == "wrong_shape":
        response = httpx.post(f"{proxy}/v2/models/{MODEL}/infer", timeout=60, json={"inputs": [
            {"name": "image", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * (32 * 32 * 3)}]})
    else:
        body = b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\nno photo\r\n--x--\r\n'
        response = httpx.post(url, content=body, headers={"content-type": "multipart/form-data; boundary=x"},
                              timeout=60)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_concurrent_uploads_are_answered_each_with_its_own_prediction(apple_app, apple_storage):
    """A network's requests go through Serve's batching (`@serve.batch`): concurrent uploads share a call to the
    network, and each still gets its own photo's answer."""
    proxy, _ = apple_app
    photos = _photos(apple_storage, 12)
    expected = Predictor.load(ModelRegistry(apple_storage), MODEL).predict([{"image": data} for _, data in photos])
    answers: dict[int, dict] = {}
    start = threading.Barrier(len(photos))

    def send(index: int, data: bytes) -> None:
        start.wait()
        response = httpx.post(f"{proxy}/v1/models/{MODEL}:predict", files={"image": ("p.png", data)}, timeout=60)
        answers[index] = response.json()["predictions"][0] if response.status_code == 200 else response.text

    threads = [threading.Thread(target=send, args=(i, data)) for i, (_, data) in enumerate(photos)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    served = [answers[i] for i in range(len(photos))]
    assert all(isinstance(answer, dict) for answer in served), served
    # Each answer is its own photo's: same label, same probabilities up to float32 rounding (the server batches
    # concurrent uploads, and a network's kernels round differently for batches of different sizes).
    assert [answer["label"] for answer in served] == [prediction["label"] for prediction in expected]
    for answer, prediction in zip(served, expected):
        assert answer["probabilities"] == pytest.approx(prediction["probabilities"], abs=1e-3)
    # And they were batched: some call of the network answered more than one request (Serve's own histogram of
    # requests per call, exported to Prometheus every few seconds; its _sum is estimated, its buckets are counts).
    deadline, calls, single = time.monotonic() + 30, 0.0, 0.0
    while calls - single < 1 and time.monotonic() < deadline:
        time.sleep(1)
        lines = [line for line in serve_metric_lines("ray_orchard_predict_batch_requests", APP)
                 if f'model="{MODEL}"' in line]
        calls = sum(float(line.rsplit(" ", 1)[1]) for line in lines
                    if line.startswith("ray_orchard_predict_batch_requests_count{"))
        single = sum(float(line.rsplit(" ", 1)[1]) for line in lines
                     if line.startswith("ray_orchard_predict_batch_requests_bucket{") and 'le="1.0"' in line)
    assert calls - single >= 1, f"{calls} calls of the network, every one for a single request"


def test_predictions_of_photos_are_logged_by_pixel_hash_not_pixels(apple_app, apple_storage):
    import hashlib

    proxy, _ = apple_app

    def digest(data: bytes) -> str:
        return hashlib.sha256(decode_image(data, PHOTO).tobytes()).hexdigest()

    # A photo no request has sent yet (the demo and the tests above sent some), so only this request can log it.
    seen = {i["image"].get("sha256") for r in read_predictions(apple_storage, MODEL) for i in r["inputs"]}
    data = next(data for _, data in _photos(apple_storage, 30, day="day-0003") if digest(data) not in seen)
    sha256 = digest(data)
    assert httpx.post(f"{proxy}/v1/models/{MODEL}:predict", files={"image": ("p.png", data)}, timeout=60).is_success
    deadline = time.monotonic() + 20
    logged = []
    while time.monotonic() < deadline and not logged:
        logged = [r for r in read_predictions(apple_storage, MODEL)
                  if any(i["image"].get("sha256") == sha256 for i in r["inputs"])]
        time.sleep(0.5)
    assert logged and logged[0]["inputs"][0]["image"] == {"sha256": sha256, "shape": [64, 64, 3]}


# -- batch inference over a folder of photos


def test_batch_inference_predicts_every_photo_of_a_folder_once(apple_storage, trained):
    generated = write_apple_images(apple_storage, rows=48, seed=9, location="incoming/apples", bad_fraction=0.1)
    report = run_batch_inference(apple_storage, MODEL, "incoming/apples", workers=1)
    assert report.mode == "images" and report.rows == 48
    assert (report.predicted, report.missing) == (48 - len(generated.corrupt_files), len(generated.corrupt_files))
    rows = DeltaTable(apple_storage.uri(table_location(MODEL))).to_pyarrow_table().to_pylist()
    assert {row["model_version"] for row in rows} == {trained["version"]}
    by_path = {row["path"].rsplit("/incoming/apples/", 1)[1]: row for row in rows}
    predictor = Predictor.load(ModelRegistry(apple_storage), MODEL)
    for path in generated.files[:10]:
        row = by_path[path.split("incoming/apples/", 1)[1]]
        if path in generated.corrupt_files:
            assert row["prediction"] is None and row["missing"].startswith("image could not be read")
        else:
            assert row["prediction"] == predictor.predict([{"image": apple_storage.read_bytes(path)}])[0]["label"]
    again = run_batch_inference(apple_storage, MODEL, "incoming/apples", workers=1)
    assert again.already_done and again.rows == 0
