"""Both protocols over real HTTP: the simple JSON endpoint and the Open Inference Protocol (KServe V2)."""

import json

import httpx
import pytest

from serve.app import MAX_BODY_BYTES, MAX_INSTANCES
from tests.integration.test_serve import FRUIT_INPUTS, _instances

pytestmark = [pytest.mark.ray, pytest.mark.serve]


def _tensors(instances, datatypes):
    return [{"name": name, "shape": [len(instances)], "datatype": datatypes.get(name, "FP64"),
             "data": [row[name] for row in instances]} for name in instances[0]]


def test_v2_metadata_names_inputs_outputs_and_versions(ingress_url, trained_models):
    body = httpx.get(f"{ingress_url}/v2/models/fruit_classifier", timeout=30).json()
    assert body["name"] == "fruit_classifier" and body["versions"] == ["1"]
    assert body["platform"] == "scikit-learn_skops"
    assert body["inputs"] == [{"name": n, "datatype": "FP64", "shape": [-1]} for n in FRUIT_INPUTS]
    assert body["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]}]
    surf = httpx.get(f"{ingress_url}/v2/models/surf_regressor/versions/1", timeout=30).json()
    assert {"name": "bottom", "datatype": "BYTES", "shape": [-1]} in surf["inputs"]
    assert surf["outputs"] == [{"name": "surf_height_m", "datatype": "FP64", "shape": [-1]}]


def test_v2_readiness_of_the_server_and_of_models(ingress_url, trained_models):
    assert httpx.get(f"{ingress_url}/v2/models/fruit_classifier/ready", timeout=30).json()["ready"] is True
    assert httpx.get(f"{ingress_url}/v2/models/fruit_classifier/versions/1/ready", timeout=30).json()["ready"] is True
    missing = httpx.get(f"{ingress_url}/v2/models/pear_classifier/ready", timeout=30)
    assert missing.status_code == 404 and "pear_classifier" in missing.json()["error"]


@pytest.mark.parametrize("name", ["fruit_classifier", "surf_regressor"])
def test_v2_infer_answers_what_the_simple_endpoint_answers(ingress_url, trained_models, name):
    storage, _ = trained_models
    instances = _instances(storage, name, count=5)
    simple = httpx.post(f"{ingress_url}/v1/models/{name}:predict", json={"instances": instances}, timeout=30).json()
    response = httpx.post(f"{ingress_url}/v2/models/{name}/infer", timeout=30, json={
        "id": "req-7", "inputs": _tensors(instances, {"bottom": "BYTES"})})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (name, "1", "req-7")
    if name == "fruit_classifier":
        label, probabilities = body["outputs"]
        assert label == {"name": "label", "datatype": "BYTES", "shape": [5],
                         "data": [p["label"] for p in simple["predictions"]]}
        assert probabilities["shape"] == [5, 2]
        assert probabilities["data"] == [p["probabilities"][c] for p in simple["predictions"]
                                         for c in ("apple", "orange")]
    else:
        assert body["outputs"] == [{"name": "surf_height_m", "datatype": "FP64", "shape": [5],
                                    "data": simple["predictions"]}]


def test_every_answer_names_its_request_id(ingress_url, trained_models):
    instances = _instances(trained_models[0], "fruit_classifier", count=1)
    response = httpx.post(f"{ingress_url}/v1/models/fruit_classifier:predict", json={"instances": instances},
                          headers={"x-request-id": "abc-123"}, timeout=30)
    assert response.headers["x-request-id"] == "abc-123"
    generated = httpx.post(f"{ingress_url}/v1/models/fruit_classifier:predict", json={"instances": instances}, timeout=30)
    assert len(generated.headers["x-request-id"]) >= 32  # Serve's own id when the client sends none


GOOD = {name: 1.0 for name in FRUIT_INPUTS}


@pytest.mark.parametrize("body, status, fragment", [
    ({"instances": [{**GOOD, "red": float("nan")}]}, 422, "instances[0].red must be finite"),
    ({"instances": [{**GOOD, "red": float("inf")}]}, 422, "instances[0].red must be finite"),
    ({"instances": [{**GOOD, "red": None}]}, 422, "instances[0].red must not be null"),
    ({"instances": [{**GOOD, "red": True}]}, 422, "instances[0].red must be a number"),
    ({"instances": [GOOD] * (MAX_INSTANCES + 1)}, 422, "instances: List should have at most 1000 items"),
    ({"instances": "all of them"}, 422, "instances: Input should be a valid list"),
])
def test_v1_bad_input_is_a_4xx_naming_the_field(ingress_url, trained_models, body, status, fragment):
    response = httpx.post(f"{ingress_url}/v1/models/fruit_classifier:predict", timeout=30,
                          content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_a_malformed_or_oversized_body_is_refused_with_an_error_document(ingress_url, trained_models):
    broken = httpx.post(f"{ingress_url}/v1/models/fruit_classifier:predict", content=b"{not json",
                        headers={"content-type": "application/json"}, timeout=30)
    assert broken.status_code == 422 and "JSON" in broken.json()["error"]
    huge = httpx.post(f"{ingress_url}/v1/models/fruit_classifier:predict", timeout=30,
                      content=b'{"instances": [' + b" " * MAX_BODY_BYTES + b"]}",
                      headers={"content-type": "application/json"})
    assert huge.status_code == 413 and str(MAX_BODY_BYTES) in huge.json()["error"]

    def chunked():  # no Content-Length: the limit applies to the bytes as they arrive
        yield b'{"instances": ['
        for _ in range(MAX_BODY_BYTES // 10_000 + 1):
            yield b" " * 10_000
        yield b"]}"

    streamed = httpx.post(f"{ingress_url}/v1/models/fruit_classifier:predict", content=chunked(), timeout=30,
                          headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and str(MAX_BODY_BYTES) in streamed.json()["error"]


def _v2(name="red", shape=None, datatype="FP64", data=None, rows=2):
    inputs = [{"name": n, "shape": [rows], "datatype": "FP64", "data": [0.5] * rows} for n in FRUIT_INPUTS]
    for tensor in inputs:
        if tensor["name"] == name:
            tensor.update(datatype=datatype)
            if shape is not None:
                tensor["shape"] = shape
            if data is not None:
                tensor["data"] = data
    return {"inputs": inputs}


@pytest.mark.parametrize("body, fragment", [
    (_v2(datatype="BYTES"), "input 'red' has datatype 'BYTES'; the model takes FP64"),
    (_v2(name="blue", shape=[3]), "input 'blue' has 3 rows, other inputs have 2"),
    (_v2(shape=[2, 2]), "input 'red' must have shape [N] or [N, 1]"),
    (_v2(data=[0.5]), "input 'red' has 1 values for shape [2]"),
    (_v2(data=[0.5, "x"]), "instances[1].red must be a number"),
    ({"inputs": _v2()["inputs"][1:]}, "missing input(s) red"),
    ({"inputs": [*_v2()["inputs"], {"name": "colour", "shape": [2], "datatype": "FP64", "data": [1, 2]}]},
     "input 'colour' is not an input of the model"),
    ({"inputs": []}, "inputs: List should have at least 1 item"),
])
def test_v2_bad_input_is_a_4xx_naming_the_tensor(ingress_url, trained_models, body, fragment):
    response = httpx.post(f"{ingress_url}/v2/models/fruit_classifier/infer", json=body, timeout=30)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]


def test_unknown_model_and_version_are_404_in_both_protocols(ingress_url, trained_models):
    for url in ("/v2/models/pear/infer", "/v2/models/fruit_classifier/versions/9/infer"):
        response = httpx.post(f"{ingress_url}{url}", json=_v2(), timeout=30)
        assert response.status_code == 404 and "error" in response.json()
    assert httpx.get(f"{ingress_url}/v2/models/fruit_classifier/versions/9", timeout=30).status_code == 404


def test_openapi_docs_describe_both_protocols(ingress_url):
    paths = httpx.get(f"{ingress_url}/openapi.json", timeout=30).json()["paths"]
    assert {"/v1/models/{name}:predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
            "/v2/health/ready"} <= set(paths)
    assert httpx.get(f"{ingress_url}/docs", timeout=30).status_code == 200
