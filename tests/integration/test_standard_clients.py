"""Standard Open Inference Protocol clients, as they are: tritonclient's HTTP client with its defaults (binary
tensors both ways, no Content-Type header) and with JSON tensors, against the running Serve app."""

from __future__ import annotations

from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from tests.integration.test_serve import _instances

pytestmark = [pytest.mark.ray, pytest.mark.serve]

tritonclient = pytest.importorskip("tritonclient.http")


def _client(url: str):
    parsed = urlparse(url)
    return tritonclient.InferenceServerClient(url=f"{parsed.hostname}:{parsed.port}", network_timeout=30)


def _inputs(instances, *, binary: bool):
    tensors = []
    for name in instances[0]:
        values = [row[name] for row in instances]
        text = isinstance(values[0], str)
        array = np.array(values, dtype=np.object_ if text else np.float64)
        tensor = tritonclient.InferInput(name, [len(values)], "BYTES" if text else "FP64")
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    return tensors


@pytest.mark.parametrize("name", ["fruit_classifier", "surf_regressor"])
def test_tritonclient_with_its_defaults_gets_what_the_simple_endpoint_answers(ingress_url, trained_models, name):
    storage, _ = trained_models
    instances = _instances(storage, name, count=6)
    simple = httpx.post(f"{ingress_url}/v1/models/{name}:predict", json={"instances": instances}, timeout=30).json()
    client = _client(ingress_url)
    assert client.is_server_live() and client.is_model_ready(name)
    assert client.get_model_metadata(name)["name"] == name
    result = client.infer(name, _inputs(instances, binary=True))  # binary inputs, binary outputs (its defaults)
    assert result.get_response()["model_version"] == "1"
    if name == "fruit_classifier":
        labels = [value.decode() for value in result.as_numpy("label")]
        assert labels == [p["label"] for p in simple["predictions"]]
        probabilities = result.as_numpy("probabilities").reshape(6, 2)
        assert probabilities.tolist() == [[p["probabilities"][c] for c in ("apple", "orange")]
                                          for p in simple["predictions"]]
    else:
        assert result.as_numpy("surf_height_m").tolist() == simple["predictions"]
    client.close()


def test_tritonclient_with_json_tensors_and_one_requested_output(ingress_url, trained_models):
    storage, _ = trained_models
    instances = _instances(storage, "fruit_classifier", count=4)
    simple = httpx.post(f"{ingress_url}/v1/models/fruit_classifier:predict", json={"instances": instances},
                        timeout=30).json()
    client = _client(ingress_url)
    result = client.infer("fruit_classifier", _inputs(instances, binary=False),
                          outputs=[tritonclient.InferRequestedOutput("label", binary_data=False)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")] == \
        [p["label"] for p in simple["predictions"]]
    client.close()


def test_a_json_body_without_a_content_type_is_read_as_json_on_both_protocols(ingress_url, trained_models):
    import json

    storage, _ = trained_models
    instances = _instances(storage, "fruit_classifier", count=2)
    body = json.dumps({"instances": instances}).encode()
    answer = httpx.post(f"{ingress_url}/v1/models/fruit_classifier:predict", content=body, timeout=30,
                        headers={"content-type": ""})
    assert answer.status_code == 200, answer.text
    tensors = [{"name": n, "shape": [2], "datatype": "FP64", "data": [r[n] for r in instances]} for n in instances[0]]
    v2 = httpx.post(f"{ingress_url}/v2/models/fruit_classifier/infer", content=json.dumps({"inputs": tensors}),
                    timeout=30, headers={"content-type": ""})
    assert v2.status_code == 200, v2.text


@pytest.mark.parametrize("header, body, words", [
    ("500", b'{"inputs": []}', "outside the body"),
    ("2", b'{}xx', "belong to no input"),
    ("94", b'{"inputs":[{"name":"red","shape":[2],"datatype":"FP64",'
           b'"parameters":{"binary_data_size":16}}]}' + b"\0" * 8, "runs past the body"),
    ("9", b"not json!", "binary tensor request"),
])
def test_a_broken_binary_request_is_a_400_that_says_why(ingress_url, trained_models, header, body, words):
    answer = httpx.post(f"{ingress_url}/v2/models/fruit_classifier/infer", content=body, timeout=30,
                        headers={"Inference-Header-Content-Length": header})
    assert answer.status_code == 400 and words in answer.json()["error"], answer.text


def test_every_error_status_is_declared_in_the_openapi_schema(ingress_url):
    schema = httpx.get(f"{ingress_url}/openapi.json", timeout=30).json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            declared = set(operation["responses"])
            expected = {"400", "404", "413", "422", "500", "503"}
            assert expected <= declared, (method, path, declared)
            assert operation["responses"]["422"]["content"]["application/json"]["schema"] == \
                {"$ref": "#/components/schemas/ErrorDocument"}, (method, path)
