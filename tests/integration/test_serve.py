"""Real HTTP against the running Serve application."""

import httpx
import numpy as np
import pytest
import skops.io as sio

from orchard.demo import sample_fruit
from orchard.registry import ModelRegistry
from orchard.training import get_spec

pytestmark = [pytest.mark.ray, pytest.mark.serve]


def _own_estimator(storage, name, version):
    """The registered model, loaded directly with skops, independent of the serving code."""
    data = (storage.path(f"models/{name}/{version}/model.skops"))
    with open(data, "rb") as handle:
        raw = handle.read()
    return sio.loads(raw, trusted=sio.get_untrusted_types(data=raw))


def _instances(name):
    rows = sample_fruit(seed=99, count=30)
    if name == "apple_weight_regressor":
        rows = [r for r in rows if r["label"] == "apple"]
    return [{k: r[k] for k in get_spec(name).features} for r in rows]


@pytest.mark.parametrize("name", ["fruit_classifier", "apple_weight_regressor"])
def test_served_predictions_equal_the_models_own(serve_url, trained_fruit, name):
    storage, versions = trained_fruit
    instances = _instances(name)
    response = httpx.post(f"{serve_url}/v1/models/{name}:predict", json={"instances": instances}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == (name, versions[name])
    estimator = _own_estimator(storage, name, versions[name])
    matrix = np.array([[row[f] for f in get_spec(name).features] for row in instances])
    expected = estimator.predict(matrix)
    if name == "fruit_classifier":
        assert [p["label"] for p in body["predictions"]] == list(expected)
        probabilities = estimator.predict_proba(matrix)
        served = np.array([[p["probabilities"][c] for c in estimator.classes_] for p in body["predictions"]])
        np.testing.assert_array_equal(served, probabilities)
    else:
        np.testing.assert_array_equal(np.array(body["predictions"]), expected)


def test_an_exact_version_can_be_addressed(serve_url, trained_fruit):
    response = httpx.post(f"{serve_url}/v1/models/fruit_classifier/versions/1:predict",
                          json={"instances": _instances("fruit_classifier")[:2]}, timeout=30)
    assert response.status_code == 200
    assert response.json()["version"] == 1


def test_models_are_listed_with_versions_and_aliases(serve_url, trained_fruit):
    models = {m["name"]: m for m in httpx.get(f"{serve_url}/v1/models", timeout=30).json()["models"]}
    assert models["fruit_classifier"]["versions"] == [1]
    assert models["fruit_classifier"]["aliases"] == {"production": 1}


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"instances": [{"red": 0.5}]}, 422, "missing feature(s) green"),
        ({"instances": [{**{f: 1.0 for f in get_spec("fruit_classifier").features}, "colour": 1}]}, 422, "unknown feature(s) colour"),
        ({"instances": [{**{f: 1.0 for f in get_spec("fruit_classifier").features}, "red": "crimson"}]}, 422, "red must be a number"),
        ({"instances": []}, 422, "instances"),
        ({"rows": []}, 422, "instances"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem(serve_url, trained_fruit, body, status, fragment):
    response = httpx.post(f"{serve_url}/v1/models/fruit_classifier:predict", json=body, timeout=30)
    assert response.status_code == status
    assert fragment in response.text


def test_unknown_model_or_version_is_a_404(serve_url, trained_fruit):
    instance = _instances("fruit_classifier")[:1]
    assert httpx.post(f"{serve_url}/v1/models/pear_classifier:predict", json={"instances": instance}, timeout=30).status_code == 404
    missing = httpx.post(f"{serve_url}/v1/models/fruit_classifier/versions/7:predict", json={"instances": instance}, timeout=30)
    assert missing.status_code == 404 and "no version 7" in missing.json()["error"]


def test_health_endpoints_answer(serve_url):
    assert httpx.get(f"{serve_url}/v2/health/live", timeout=30).json() == {"live": True}
    assert httpx.get(f"{serve_url}/v2/health/ready", timeout=30).json() == {"ready": True}
