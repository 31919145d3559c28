"""API keys: where they come from, how a presented key is found and checked, and the middleware's answers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from orchard.errors import ConfigError
from pipelines.cli import app as cli
from serve import auth

KEY = "k" * 20 + "-first"
OTHER = "o" * 20 + "-second"


def _keys_file(tmp_path, *lines: str):
    path = tmp_path / "api_keys"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_a_keys_file_gives_its_keys_and_skips_comments_and_blank_lines(tmp_path):
    path = _keys_file(tmp_path, "# the team's keys", "", f"{KEY}  # ci", OTHER)
    keys = auth.ApiKeys.from_settings(str(path), environ={})
    assert keys.enabled
    assert keys.accepts(KEY) and keys.accepts(OTHER)
    assert not keys.accepts("k" * 20) and not keys.accepts("") and not keys.accepts(None)


def test_keys_from_the_environment_and_the_file_both_count(tmp_path):
    environ = {auth.KEYS_ENV: f"{OTHER}, {'e' * 16}", auth.KEYS_FILE_ENV: str(_keys_file(tmp_path, KEY))}
    keys = auth.ApiKeys.from_settings(environ=environ)
    assert all(keys.accepts(k) for k in (KEY, OTHER, "e" * 16))


def test_no_key_means_no_check_unless_keys_are_required(tmp_path):
    assert not auth.ApiKeys.from_settings(environ={}).enabled
    for required in ({"required": True, "environ": {}}, {"environ": {auth.REQUIRE_ENV: "1"}}):
        with pytest.raises(ConfigError, match="must require an API key .* neither ORCHARD_API_KEYS_FILE nor"):
            auth.ApiKeys.from_settings(**required)
    for required in (True, False):  # a keys file that holds no key is refused even when keys are not required
        with pytest.raises(ConfigError, match="api_keys holds no key; refusing to serve"):
            auth.ApiKeys.from_settings(str(_keys_file(tmp_path, "# nobody yet")), required=required, environ={})


def test_the_environments_requirement_is_a_floor_an_app_argument_cannot_lift():
    with pytest.raises(ConfigError, match="must require an API key"):
        auth.ApiKeys.from_settings(required=False, environ={auth.REQUIRE_ENV: "1"})


def test_a_key_of_other_than_printable_ascii_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="line 1: an API key must be at least 16 printable ASCII"):
        auth.ApiKeys.from_settings(str(_keys_file(tmp_path, "schlüssel-" + "x" * 16)), environ={})


def test_a_short_key_is_refused_by_its_line_never_by_its_value(tmp_path):
    path = _keys_file(tmp_path, KEY, "tooshort123")
    with pytest.raises(ConfigError, match=r"api_keys, line 2: an API key must be at least 16 printable") as error:
        auth.ApiKeys.from_settings(str(path), environ={})
    assert "tooshort123" not in str(error.value)


def test_an_unreadable_keys_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"API keys file .*missing cannot be read: No such file"):
        auth.ApiKeys.from_settings(str(tmp_path / "missing"), environ={})


def test_a_changed_file_is_read_again_and_a_bad_edit_keeps_the_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "RELOAD_S", 0.0)
    path = _keys_file(tmp_path, KEY)
    keys = auth.ApiKeys.from_settings(str(path), environ={})
    path.write_text(f"{OTHER}\n")  # KEY revoked, OTHER added
    assert keys.accepts(OTHER) and not keys.accepts(KEY)
    path.write_text("short\n")  # a mistake while editing: neither opens nor closes the service
    assert keys.accepts(OTHER)
    path.unlink()
    assert keys.accepts(OTHER)
    path.write_text("# every key revoked\n")  # the last key revoked (or the file caught half-written): locked
    assert keys.enabled and not keys.accepts(OTHER) and not keys.accepts(KEY)


@pytest.mark.parametrize(("headers", "found"), [
    ({b"authorization": f"Bearer {KEY}".encode()}, KEY),
    ({b"authorization": f"bearer   {KEY} ".encode()}, KEY),
    ({b"x-api-key": KEY.encode()}, KEY),
    ({b"cookie": f"theme=dark; {auth.COOKIE}={KEY}".encode()}, KEY),
    ({b"authorization": b"Basic dXNlcjpwYXNz"}, None),
    ({b"authorization": b"Bearer "}, None),
    ({b"cookie": b"\x00;;=="}, None),
    ({}, None),
], ids=["bearer", "bearer-spacing", "x-api-key", "cookie", "basic", "empty-bearer", "bad-cookie", "none"])
def test_the_presented_key_is_found_in_bearer_header_or_cookie(headers, found):
    assert auth.presented_key(headers) == found


def test_route_paths_are_relative_to_the_route_prefix():
    assert auth.route_path({"path": "/guarded/v2/health/ready", "root_path": "/guarded"}) == "/v2/health/ready"
    assert auth.route_path({"path": "/guarded", "root_path": "/guarded"}) == "/"
    assert auth.route_path({"path": "/v2/health/ready", "root_path": ""}) == "/v2/health/ready"


def test_the_login_cookie_is_httponly_strict_and_scoped_to_the_app():
    cookie = auth.login_cookie(KEY, path="/guarded", secure=True)
    assert cookie.startswith(f"{auth.COOKIE}={KEY}")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/guarded", "Secure", f"Max-Age={auth.COOKIE_MAX_AGE_S}"):
        assert attribute in cookie
    assert "Secure" not in auth.login_cookie(KEY, path="/", secure=False)


def _through_middleware(keys: auth.ApiKeys, path: str, headers: dict[str, str]) -> httpx.Response:
    """A request through ApiKeyAuth in front of an app that answers 200 and counts the bodies it read."""
    reached = []

    async def inner(scope, receive, send):
        reached.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inside"})

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=auth.ApiKeyAuth(inner))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            return await client.post(path, content=b"{}", headers=headers)

    before = auth.active()
    auth.configure(keys)
    try:
        response = asyncio.run(call())
    finally:
        auth.configure(before)
    assert (response.status_code == 200) == bool(reached)  # a refused request's body is never read
    return response


def test_the_middleware_refuses_without_a_valid_key_and_says_how_to_send_one(tmp_path):
    keys = auth.ApiKeys.from_settings(str(_keys_file(tmp_path, KEY)), environ={})
    missing = _through_middleware(keys, "/v1/models/m:predict", {})
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert "needs an API key" in missing.json()["error"] and "Authorization: Bearer KEY" in missing.json()["error"]
    wrong = _through_middleware(keys, "/v1/models/m:predict", {"x-api-key": OTHER})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "the API key sent is not valid"})
    assert OTHER not in wrong.text
    assert _through_middleware(keys, "/v1/models/m:predict", {"authorization": f"Bearer {KEY}"}).text == "inside"
    for open_path in sorted(auth.OPEN_PATHS):
        assert _through_middleware(keys, open_path, {}).status_code == 200, open_path
    assert _through_middleware(auth.ApiKeys.from_settings(environ={}), "/v1/models", {}).status_code == 200


@pytest.mark.parametrize("path", ["/v2/health/ready/../../v1/models", "/docs/../v1/models", "/ui/./../v1/models",
                                  "/v2/health/live%2f..%2f..%2fv1%2fmodels", "//v1/models", "/V2/HEALTH/LIVE"])
def test_a_path_that_only_looks_open_needs_a_key(tmp_path, path):
    """Sent as raw ASGI scopes (an HTTP client would normalise the dot segments before sending)."""
    keys = auth.ApiKeys.from_settings(str(_keys_file(tmp_path, KEY)), environ={})
    reached, sent = [], []

    async def inner(scope, receive, send):
        reached.append(scope["path"])

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": []}
    before = auth.active()
    auth.configure(keys)
    try:
        asyncio.run(auth.ApiKeyAuth(inner)(scope, receive, send))
    finally:
        auth.configure(before)
    assert reached == [] and sent[0]["status"] == 401, (path, reached, sent[:1])
    assert _through_middleware(auth.ApiKeys.from_settings(environ={}), "/v1/models", {}).status_code == 200


def test_orchard_api_key_prints_a_new_long_key_each_time():
    first, second = (CliRunner().invoke(cli, ["api-key"]).output.strip() for _ in range(2))
    assert first != second and len(first) >= 40 and json.dumps(first) == f'"{first}"'


def test_orchard_serve_refuses_to_start_without_a_key_when_one_is_required(tmp_path):
    """Before Ray starts: exit 2 (a usage error) with the reason, and no Ray process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "RAY_"))}
    result = subprocess.run([str(Path(sys.executable).parent / "orchard"), "--storage", str(tmp_path), "serve",
                             "--require-api-key"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: the service must require an API key")
    assert "Ray" not in result.stderr and "Traceback" not in result.stderr
