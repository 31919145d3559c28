"""Real HTTP against the running Serve application."""

import json

import httpx
import numpy as np
import pytest
import skops.io as sio

from features.transforms import TransformSet
from orchard.registry import ModelRegistry
from training.trainer import get_spec

pytestmark = [pytest.mark.ray, pytest.mark.serve]

FRUIT_INPUTS = ("red", "green", "blue", "weight_g", "diameter_mm", "smoothness")


def _own_prediction(storage, name, version, instances):
    """The registered model loaded directly (skops + its stored transforms), independent of the serving code."""
    folder = storage.path(f"models/{name}/{version}")
    with open(f"{folder}/model.skops", "rb") as handle:
        raw = handle.read()
    estimator = sio.loads(raw, trusted=sio.get_untrusted_types(data=raw))
    with open(f"{folder}/transforms.json") as handle:
        transforms = TransformSet.from_json(handle.read())
    with open(f"{folder}/model.json") as handle:
        columns = json.load(handle)["signature"]["model_inputs"]
    matrix = np.array([[row[c] for c in columns] for row in transforms.transform_rows(instances)])
    if name == "fruit_classifier":
        return estimator.predict_proba(matrix)
    return estimator.predict(matrix)


def _instances(storage, name, count=20):
    """Raw rows of the model's test split, as a client would send them."""
    from features.catalog import get_view
    from features.datasets import TrainingDataset

    spec = get_spec(name)
    inputs = [i["name"] for i in ModelRegistry(storage).get(name).signature["inputs"]]
    rows = TrainingDataset.open(storage, get_view(spec.view)).read("test").take(200)
    complete = [row for row in rows if all(row[f] is not None for f in inputs)]
    return [{f: row[f] for f in inputs} for row in complete[:count]]


@pytest.mark.parametrize("name", ["fruit_classifier", "surf_regressor"])
def test_served_predictions_equal_the_models_own(ingress_url, trained_models, name):
    storage, results = trained_models
    instances = _instances(storage, name)
    response = httpx.post(f"{ingress_url}/v1/models/{name}:predict", json={"instances": instances}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == (name, results[name]["version"])
    expected = _own_prediction(storage, name, body["version"], instances)
    if name == "fruit_classifier":
        classes = ["apple", "orange"]
        served = np.array([[p["probabilities"][c] for c in classes] for p in body["predictions"]])
        np.testing.assert_array_equal(served, expected)
        assert [p["label"] for p in body["predictions"]] == [classes[i] for i in expected.argmax(axis=1)]
    else:
        np.testing.assert_array_equal(np.array(body["predictions"]), expected)


def test_an_exact_version_can_be_addressed(ingress_url, trained_models):
    response = httpx.post(f"{ingress_url}/v1/models/fruit_classifier/versions/1:predict",
                          json={"instances": _instances(trained_models[0], "fruit_classifier")[:2]}, timeout=30)
    assert response.status_code == 200
    assert response.json()["version"] == 1


def test_models_are_listed_with_versions_and_aliases(ingress_url, trained_models):
    models = {m["name"]: m for m in httpx.get(f"{ingress_url}/v1/models", timeout=30).json()["models"]}
    assert models["fruit_classifier"]["versions"] == [1]
    assert models["fruit_classifier"]["aliases"] == {"production": 1}


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"instances": [{"red": 0.5}]}, 422, "missing feature(s) green"),
        ({"instances": [{**{f: 1.0 for f in FRUIT_INPUTS}, "colour": 1}]}, 422, "unknown feature(s) colour"),
        ({"instances": [{**{f: 1.0 for f in FRUIT_INPUTS}, "red": "crimson"}]}, 422, "red must be a number"),
        ({"instances": []}, 422, "instances"),
        ({"rows": []}, 422, "instances"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem(ingress_url, trained_models, body, status, fragment):
    response = httpx.post(f"{ingress_url}/v1/models/fruit_classifier:predict", json=body, timeout=30)
    assert response.status_code == status
    assert fragment in response.text


def test_unknown_model_or_version_is_a_404(ingress_url, trained_models):
    instance = _instances(trained_models[0], "fruit_classifier")[:1]
    assert httpx.post(f"{ingress_url}/v1/models/pear_classifier:predict", json={"instances": instance}, timeout=30).status_code == 404
    missing = httpx.post(f"{ingress_url}/v1/models/fruit_classifier/versions/7:predict", json={"instances": instance}, timeout=30)
    assert missing.status_code == 404 and "no version 7" in missing.json()["error"]


def test_health_endpoints_answer(ingress_url):
    assert httpx.get(f"{ingress_url}/v2/health/live", timeout=30).json() == {"live": True}
    assert httpx.get(f"{ingress_url}/v2/health/ready", timeout=30).json() == {"ready": True}


def test_the_replica_answers_directly_what_the_proxy_answers(serve_url, session_config, trained_models):
    """Direct ingress: the replica's own port (Serve's target group) gives the proxy's answer, without the proxy."""
    from urllib.parse import urlsplit

    from serve.app import replica_urls

    urls = replica_urls(wait_s=30)
    assert len(urls) == 1, urls  # one replica, one address
    assert 30000 <= urlsplit(urls[0]).port < 31000 and urlsplit(urls[0]).port != session_config.serve_port
    storage, _ = trained_models
    body = {"instances": _instances(storage, "fruit_classifier", 5)}
    via_proxy = httpx.post(f"{serve_url}/v1/models/fruit_classifier:predict", json=body, timeout=30).json()
    direct = httpx.post(f"{urls[0]}/v1/models/fruit_classifier:predict", json=body, timeout=30).json()
    assert direct == via_proxy


HOSTILE_PATHS = [
    ("POST", "/v1/models/..%2F..%2Fetc%2Fpasswd:predict"),
    ("POST", "/v1/models/%2e%2e:predict"),
    ("POST", "/v1/models/fruit_classifier%0A:predict"),
    ("POST", "/v1/models/fruit_classifier/versions/..%2F1:predict"),
    ("POST", "/v1/models/fruit_classifier/versions/%C2%B2:predict"),
    ("POST", "/v2/models/..%2Fsurf_regressor/infer"),
    ("GET", "/v2/models/%2e%2e%2fmodels/versions/1"),
    ("GET", "/ui/api/models/..%2F..%2Fetc"),
    ("GET", "/ui/files/models/fruit_classifier/1/..%2F..%2F..%2F..%2Fetc%2Fpasswd"),
    ("GET", "/ui/files/models/fruit_classifier/1/manifest.json"),
    ("GET", "/ui/files/models/fruit_classifier/1/%2Fetc%2Fpasswd"),
    ("GET", "/ui/files/monitoring/fruit_classifier/..%2F..%2Fmodels%2Ffruit_classifier%2Faliases.json"),
]


@pytest.mark.parametrize(("method", "path"), HOSTILE_PATHS, ids=[p for _, p in HOSTILE_PATHS])
def test_names_in_paths_that_try_to_leave_their_folder_get_a_4xx_that_says_why(serve_url, trained_models, method,
                                                                                path):
    response = httpx.request(method, f"{serve_url}{path}", json={"instances": [{"red": 0.5}]}, timeout=30)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.json()["error"]
    assert "root:" not in response.text and '"aliases"' not in response.text and "sha256" not in response.text
