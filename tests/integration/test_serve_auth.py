"""API keys over real HTTP: an app deployed with a keys file refuses requests without a valid key (through Serve's
proxy and straight to its replica), lets the health probes through, logs the web UI in with a cookie, takes a
changed keys file without a redeploy, and writes no key into any log of the session's Ray."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from orchard.registry import ModelRegistry
from serve.auth import COOKIE
from tests.conftest import API_KEY as KEY
from tests.conftest import OTHER_API_KEY as NEW_KEY
from tests.integration.test_serve import _instances
from training.predictor import Predictor

pytestmark = [pytest.mark.ray, pytest.mark.serve]

APP = "guarded"


def test_predictions_need_a_valid_key_through_the_proxy_and_straight_to_the_replica(guarded):
    storage = guarded["storage"]
    instances = _instances(storage, "fruit_classifier", count=3)
    expected = Predictor.load(ModelRegistry(storage), "fruit_classifier").predict(instances)
    assert len(guarded["urls"]) == 2, guarded["urls"]  # both ways in are checked
    for url in guarded["urls"]:
        predict = f"{url}/v1/models/fruit_classifier:predict"
        missing = httpx.post(predict, json={"instances": instances}, timeout=30)
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer"), url
        assert "needs an API key" in missing.json()["error"]
        wrong = httpx.post(predict, json={"instances": instances}, headers={"x-api-key": NEW_KEY}, timeout=30)
        assert (wrong.status_code, wrong.json()["error"]) == (401, "the API key sent is not valid")
        for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
            answer = httpx.post(predict, json={"instances": instances}, headers=headers, timeout=30)
            assert answer.status_code == 200 and answer.json()["predictions"] == expected, (url, answer.text)
        # Everything that reveals a model needs the key too; the probes a load balancer sends do not.
        for path in ("/v1/models", "/v2/models/fruit_classifier", "/v2/models/fruit_classifier/ready",
                     "/metrics/monitoring", "/ui/api/overview", "/ui/api/models/fruit_classifier"):
            assert httpx.get(f"{url}{path}", timeout=30).status_code == 401, (url, path)
        for path in ("/v2/health/live", "/v2/health/ready", "/ui", "/openapi.json"):
            assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, (url, path)


def test_the_ui_signs_in_with_a_cookie_the_page_cannot_read(guarded):
    proxy = guarded["urls"][0]
    with httpx.Client(base_url=proxy, timeout=30) as browser:
        assert browser.post("/ui/login", json={"key": NEW_KEY}).status_code == 401
        assert browser.post("/ui/login", content=b"not json").status_code == 401
        assert COOKIE not in browser.cookies
        login = browser.post("/ui/login", json={"key": KEY})
        assert login.status_code == 200, login.text
        cookie = login.headers["set-cookie"]
        assert all(part in cookie for part in ("HttpOnly", "SameSite=Strict", f"Path=/{APP}")), cookie
        overview = browser.get("/ui/api/overview")  # the client sends the cookie back, as a browser would
        assert overview.status_code == 200 and "fruit_classifier" in overview.text
        version = ModelRegistry(guarded["storage"]).get("fruit_classifier").version
        plot = browser.get(f"/ui/files/models/fruit_classifier/{version}/confusion_matrix.png")
        assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")


def test_a_changed_keys_file_takes_effect_without_a_redeploy(guarded):
    keys_file: Path = guarded["keys_file"]
    url = guarded["urls"][0]
    original = keys_file.read_text()

    def status(key: str) -> int:
        return httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=30).status_code

    try:
        keys_file.write_text(f"{NEW_KEY}\n")  # the old key revoked, a new one issued
        deadline = time.monotonic() + 20
        while (status(NEW_KEY), status(KEY)) != (200, 401) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (status(NEW_KEY), status(KEY)) == (200, 401)
    finally:
        keys_file.write_text(original)
        deadline = time.monotonic() + 20
        while status(KEY) != 200 and time.monotonic() < deadline:
            time.sleep(0.5)


def test_no_log_of_the_session_holds_a_key(guarded, ray_temp_dir):
    logs = [Path(folder) / name for folder, _, names in os.walk(ray_temp_dir) for name in names
            if name.endswith((".log", ".out", ".err"))]
    assert logs, f"no log files under {ray_temp_dir}"
    holding = [str(path) for path in logs if any(key.encode() in path.read_bytes() for key in (KEY, NEW_KEY))]
    assert holding == []
