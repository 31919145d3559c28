"""API keys for the prediction service and its web UI.

A client sends its key as `Authorization: Bearer KEY` or `x-api-key: KEY`; the web UI's page, which a browser
loads without headers, asks for the key once and keeps it in an HttpOnly, SameSite=Strict cookie.

Keys come from the replica's side, never through Serve's application arguments (which the dashboard shows):
a file named by the app argument `api_keys_file` or the environment's ORCHARD_API_KEYS_FILE, one key per line
(`#` starts a comment), and/or ORCHARD_API_KEYS (keys separated by commas). Only their SHA-256 digests are kept
in memory, a presented key is compared with every digest in constant time, and no key is ever logged or echoed.
The file is read again when it changes (checked at most every `RELOAD_S` seconds), so a key can be added or
revoked without a redeploy.

With at least one key, every path needs one except the health probes, the OpenAPI description and the UI's
empty page and login. With `require_api_key` (app argument, or ORCHARD_REQUIRE_API_KEY=1 as cluster.yaml sets
it) a replica that finds no key refuses to start rather than serve openly.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie

from starlette.responses import JSONResponse

from orchard.errors import ConfigError

KEYS_ENV = "ORCHARD_API_KEYS"
KEYS_FILE_ENV = "ORCHARD_API_KEYS_FILE"
REQUIRE_ENV = "ORCHARD_REQUIRE_API_KEY"
COOKIE = "orchard_api_key"
MIN_KEY_LENGTH = 16
RELOAD_S = 2.0
COOKIE_MAX_AGE_S = 8 * 3600
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json", "/ui", "/ui/login"})
"""Paths that answer without a key: the probes a load balancer sends, the API's description, and the UI's page
(no data in it) and its login."""


def new_key() -> str:
    """A fresh random key (256 bits, URL-safe text)."""
    import secrets

    return secrets.token_urlsafe(32)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys(text: str, source: str) -> list[str]:
    """The keys of a keys file's text: one per line, blank lines and `#` comments skipped. A key shorter than
    MIN_KEY_LENGTH is refused by its line number (never by its value)."""
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.split("#", 1)[0].strip()
        if not key:
            continue
        if len(key) < MIN_KEY_LENGTH or not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
            raise ConfigError(f"{source}, line {number}: an API key must be at least {MIN_KEY_LENGTH} printable ASCII "
                              "characters with no spaces (make one with `orchard api-key`)")
        keys.append(key)
    return keys


@dataclass
class ApiKeys:
    """The keys a replica accepts (as digests), and where they come from."""

    keys_file: str | None = None
    listed: tuple[str, ...] = ()
    """Keys given in the environment (ORCHARD_API_KEYS), as digests' sources: read once."""
    required: bool = False
    _digests: frozenset[bytes] = frozenset()
    _file_stamp: tuple[int, int] | None = None
    _checked_at: float = 0.0

    @classmethod
    def from_settings(cls, keys_file: str | None = None, required: bool | None = None,
                      environ: dict[str, str] | None = None) -> "ApiKeys":
        """Keys from the app's arguments, falling back to the environment; ConfigError when keys are required and
        none is found, or a key or the file is unusable."""
        environ = os.environ if environ is None else environ
        keys_file = keys_file or environ.get(KEYS_FILE_ENV) or None
        # The environment's requirement is a floor: an app's own `require_api_key: false` cannot lift a cluster's.
        required = bool(required) or environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes")
        listed = tuple(parse_keys(environ.get(KEYS_ENV, "").replace(",", "\n"), KEYS_ENV))
        keys = cls(keys_file=keys_file, listed=listed, required=required)
        keys._load()
        if (keys.required or keys_file) and not keys._digests:
            where = f"{keys_file} holds no key" if keys_file else f"neither {KEYS_FILE_ENV} nor {KEYS_ENV} is set"
            raise ConfigError(f"the service must require an API key ({REQUIRE_ENV}, require_api_key or a keys "
                              f"file) but {where}; refusing to serve without one")
        return keys

    @property
    def enabled(self) -> bool:
        """Keys are checked once any source of keys is configured: a keys file emptied later (the last key revoked,
        or caught half-written) locks the service rather than opening it."""
        return self.required or bool(self.keys_file) or bool(self.listed)

    def _load(self) -> None:
        keys = list(self.listed)
        if self.keys_file:
            try:
                status = os.stat(self.keys_file)
                with open(self.keys_file, encoding="utf-8") as handle:
                    text = handle.read()
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(f"API keys file {self.keys_file} cannot be read: "
                                  f"{getattr(error, 'strerror', None) or error}") from None
            keys += parse_keys(text, self.keys_file)
            self._file_stamp = (status.st_mtime_ns, status.st_size)
        self._digests = frozenset(_digest(key) for key in keys)

    def _refresh(self) -> None:
        """Read the keys file again if it changed since it was read (at most every RELOAD_S seconds). A file that
        became unreadable or malformed keeps the keys it held: a bad edit must not open or close the service."""
        now = time.monotonic()
        if not self.keys_file or now - self._checked_at < RELOAD_S:
            return
        self._checked_at = now
        try:
            status = os.stat(self.keys_file)
            if (status.st_mtime_ns, status.st_size) != self._file_stamp:
                self._load()
        except (OSError, ConfigError):
            pass

    def accepts(self, presented: str | None) -> bool:
        """Whether `presented` is one of the keys, compared with each in constant time."""
        self._refresh()
        if not presented:
            return False
        digest = _digest(presented)
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(known, digest)
        return found


_active = ApiKeys()


def configure(keys: ApiKeys) -> None:
    """The keys this process's service checks (set by the service's constructor in each replica)."""
    global _active
    _active = keys


def active() -> ApiKeys:
    return _active


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key a request carries: `Authorization: Bearer`, then `x-api-key`, then the UI's cookie."""
    authorization = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if headers.get(b"x-api-key"):
        return headers[b"x-api-key"].decode("latin-1").strip()
    if b"cookie" in headers:
        cookie = SimpleCookie()
        try:
            cookie.load(headers[b"cookie"].decode("latin-1"))
        except Exception:  # a malformed Cookie header carries no key
            return None
        if COOKIE in cookie:
            return cookie[COOKIE].value
    return None


def route_path(scope: dict) -> str:
    """The request's path inside the application (without the route prefix Serve mounts it under)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


class ApiKeyAuth:
    """ASGI middleware: a request without a valid key gets 401 before its body is read. Plain ASGI, like
    `BodyLimits`, to keep the per-request cost low."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        keys = _active
        if scope["type"] != "http" or not keys.enabled or route_path(scope) in OPEN_PATHS:
            return await self.app(scope, receive, send)
        presented = presented_key(dict(scope["headers"]))
        if keys.accepts(presented):
            return await self.app(scope, receive, send)
        message = ("this service needs an API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY`"
                   if presented is None else "the API key sent is not valid")
        refusal = JSONResponse({"error": message}, status_code=401,
                               headers={"www-authenticate": 'Bearer realm="orchard"'})
        await refusal(scope, receive, send)


def login_cookie(key: str, *, path: str, secure: bool) -> str:
    """The Set-Cookie value that keeps the UI's key in the browser: HttpOnly (no script reads it), SameSite=Strict
    (no other site's page sends it), for the app's own path, Secure over HTTPS."""
    cookie = SimpleCookie()
    cookie[COOKIE] = key
    morsel = cookie[COOKIE]
    morsel["httponly"], morsel["samesite"], morsel["path"], morsel["max-age"] = True, "Strict", path, COOKIE_MAX_AGE_S
    if secure:
        morsel["secure"] = True
    return morsel.OutputString()
