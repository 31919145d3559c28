"""One Ray Serve application over the model registry: a FastAPI ingress that serves the models itself.

Run it with ``orchard serve``, ``serve run serve/config.yaml``, or deploy it with
``serve deploy serve/config.yaml``. Nothing is started at import time:
`build_app` returns the application.

`PredictionService` answers both protocols: simple JSON under ``/v1`` (or, for
a model that takes an image, a multipart upload of photo files) and the Open
Inference Protocol (KServe V2 REST) under ``/v2``. It resolves a request to
one model version (an exact version, the `production` alias, or a canary split
between aliases), validates the raw inputs against that version's signature and
predicts. Versions load on demand through Serve's model multiplexing (at most
`max_models_per_replica` per replica, least recently used evicted); networks,
whose cost is per call, predict through `@serve.batch`. Alias lookups are cached
for `alias_ttl_s` seconds, so a promotion takes effect within that time without
a redeploy; versions are immutable, so their cards are cached for good.

The models run inside the ingress replica rather than in a second deployment:
measured on the serving benchmark, the extra hop (a second replica process and
Serve's router between them) cost a third to two thirds of the throughput.
Clients reach the app through Serve's proxy (`deploy`'s URL) or, faster,
straight at a replica's own port (Serve's direct ingress, `replica_urls`).

Every answer names the version that gave it. Every prediction is logged to
`<storage>/predictions/` off the request path, and Prometheus metrics count
requests, errors and latency per model and version.
"""


import asyncio
import gc
import json
import logging
import random
import time
import uuid
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, ValidationError, model_validator
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchard.config import OrchardConfig, normalize_storage_uri
from orchard.errors import OrchardError
from orchard.registry import ModelRegistry, RegistryError, default_version
from orchard.storage import Storage
from serve import auth, protocol, request_context
from serve.binary_tensors import TensorBinaryExtension
from training.flavors import flavor_class
from training.predictor import InputError, Predictor, image_inputs, validate_instances

log = logging.getLogger(__name__)

MAX_INSTANCES = 1000
MAX_BODY_BYTES = 1_000_000
BODY_TIMEOUT_S = 10.0
MIN_BODY_RATE = 50_000
"""A request's body must arrive within BODY_TIMEOUT_S of its headers plus a second per MIN_BODY_RATE bytes (its
declared length, or the limit when chunked: 30 s for 1 MB), or it gets 408: a client that never finishes its body
does not hold a connection and its buffers for ever, while a photo on a slow line still gets through."""
MAX_JSON_DEPTH = 64
"""Arrays and objects nested deeper than this are refused before any parser sees them (Python's json recurses
once per level and gives up near 1,000, with an error that is not a ValueError). An image as nested lists in a
V2 tensor is about 8 levels deep."""
ALIAS_TTL_S = 2.0

class ErrorDocument(BaseModel):
    error: str = Field(description="What was wrong, naming the field, tensor, model, version or key.")


# Every error status the service answers, declared for every route (with the error document's schema) in the
# OpenAPI description; FastAPI's own 422 schema is replaced, since the service answers its errors in this form.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {status: {"model": ErrorDocument, "description": meaning} for
                                                    status, meaning in {
    400: "The body cannot be read: malformed binary tensor data or a header that does not fit it.",
    401: "The service requires an API key (`Authorization: Bearer KEY` or `x-api-key`) and none or a wrong one came.",
    404: "No such model, version, alias, feature view, or entity key.",
    413: "The body is larger than the service accepts.",
    422: "The request is well-formed but its instances, tensors or entities are not what the model takes.",
    500: "A stored model version is damaged (its checksums do not match).",
    503: "The online store cannot be reached.",
}.items()}

api = FastAPI(title="Orchard prediction service", version="1", responses=ERROR_RESPONSES,
              description="Versioned classifiers and regressors from the Orchard model registry.")


class PredictRequest(BaseModel):
    """Either `instances` (raw feature values) or `entities` (the view's entity columns, with any request-time
    values: the service looks the other features up in the online store)."""

    instances: Optional[list[dict[str, Any]]] = Field(None, min_length=1, max_length=MAX_INSTANCES)
    entities: Optional[list[dict[str, Any]]] = Field(None, min_length=1, max_length=MAX_INSTANCES)

    @model_validator(mode="after")
    def _one_of(self):
        if (self.instances is None) == (self.entities is None):
            raise ValueError("give either 'instances' (feature values) or 'entities' (keys to look features up by)")
        return self


class PredictResponse(BaseModel):
    predictions: list[Any]
    model: str
    version: int
    features: Optional[list[dict[str, Any]]] = None
    """For entities: per entity and group, the event time of the row used and its status (ok, missing, expired,
    future); an entity whose features are missing gets a null prediction, as training drops such rows."""


class OutcomesRequest(BaseModel):
    """What really happened, for earlier predictions: each outcome names its prediction by `request_id` (the
    x-request-id of the answer) and `index` (the instance's position, 0 by default), or by `entity` (the view's
    entity columns) and `time` (when it was observed; now if not given)."""

    outcomes: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_INSTANCES * 10)


class InferRequest(BaseModel):
    id: Optional[str] = None
    inputs: list[dict[str, Any]] = Field(min_length=1)
    outputs: Optional[list[dict[str, Any]]] = None
    """The outputs to return (by name, with their parameters); all of them when absent."""
    parameters: Optional[dict[str, Any]] = None


# The predict routes read their body themselves (JSON, or a multipart upload of image files), so their
# request body is described here for the OpenAPI schema.
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
    "multipart/form-data": {"schema": {
        "type": "object", "additionalProperties": {"type": "string", "format": "binary"},
        "description": "One instance per uploaded file of the model's image input (the form field is named after "
                       "the input); any other field is a value every instance takes (JSON, or else text)."}},
}}}


async def _predict_request(request: Request) -> PredictRequest:
    """The body of a predict call: JSON (`PredictRequest`), or a multipart form of image files."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await _form_request(request)
    body = await request.body()
    try:
        document = json.loads(body) if body else None
    except ValueError as error:  # as FastAPI words it for the routes that declare their body
        raise RequestValidationError([{"loc": ("body",), "msg": f"JSON decode error: {error}"}]) from None
    except RecursionError:  # a body that is not declared JSON skips the depth check: Python's parser gives up
        raise RequestValidationError([{"loc": ("body",), "msg": f"the JSON body nests arrays and objects more "
                                                                f"than {MAX_JSON_DEPTH} levels deep"}]) from None
    try:
        return PredictRequest.model_validate(document)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


async def _form_request(request: Request) -> PredictRequest:
    """Instances from an upload: one per file (under the image input's field name), each with the text fields."""
    try:
        form = await request.form(max_files=MAX_INSTANCES, max_fields=100)
    except Exception as error:  # the multipart parser's own errors: a malformed upload
        raise InputError(f"the multipart body cannot be read: {error}") from None
    files: dict[str, list[bytes]] = {}
    shared: dict[str, Any] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, str):
                try:
                    shared[key] = json.loads(value)
                except ValueError:
                    shared[key] = value
                except RecursionError:
                    raise InputError(f"form field {key!r} nests arrays or objects too deeply") from None
            else:
                files.setdefault(key, []).append(await value.read())
    finally:
        await form.close()
    if not files:
        raise InputError("the multipart body has no file: upload each image as a file field named after the "
                         "model's image input")
    if len(files) > 1:
        raise InputError(f"files come under several fields ({', '.join(sorted(files))}); a model takes one image "
                         "input per instance, so upload them under one field")
    (field_name, uploads), = files.items()
    return PredictRequest(instances=[{**shared, field_name: data} for data in uploads])


def _loggable(rows: list[dict], images: dict) -> list[dict]:
    """Logged inputs: an image as its pixels' SHA-256 and shape, never the pixels."""
    if not images:
        return rows
    import hashlib

    return [{name: {"sha256": hashlib.sha256(value.tobytes()).hexdigest(), "shape": list(value.shape)}
             if name in images else value for name, value in row.items()} for row in rows]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def _closing_error(status: int, message: str) -> JSONResponse:
    """An error for a request whose body was not read to its end: the connection closes after it, or the server
    would go on reading the rest of the body, however slowly it comes."""
    response = _error(status, message)
    response.headers["connection"] = "close"
    return response


@api.exception_handler(OrchardError)
async def _orchard_error(_request, error: OrchardError):
    """Every error Orchard raises carries its HTTP status (`orchard.errors`): a bad instance 422, an unknown model
    or version 404, a damaged stored model 500."""
    return _error(error.http_status, str(error))


@api.exception_handler(RequestValidationError)
async def _request_validation_error(_request, error: RequestValidationError):
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
        problems.append(f"{where}: {item.get('msg', 'is invalid')}")
    return _error(422, "; ".join(problems) or "the request body is invalid")


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request, error: StarletteHTTPException):
    return _error(error.status_code, str(error.detail))


def json_depth(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets inside strings do not count); linear in the
    number of brackets and quotes, which a JSON body of numbers or base64 text has few of."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body.translate(None, _NOT_STRUCTURE):
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # a backslash escapes the next character (a quote, or another backslash)
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"\\')


class BodyLimits:
    """Refuses bodies over `limit` bytes with 413 (by their declared length or, when chunked, as they arrive), bodies
    that have not arrived `timeout_s` after the headers with 408, and JSON bodies nested deeper than `max_depth` with
    422, before any route reads them.

    A plain ASGI middleware: Starlette's `BaseHTTPMiddleware` (the `@app.middleware`
    decorator) cost about 8% of the ingress replica's CPU in the serving profile.
    """

    def __init__(self, app, limit: int = MAX_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH,
                 timeout_s: float = BODY_TIMEOUT_S, min_rate: float = MIN_BODY_RATE):
        self.app, self.limit, self.max_depth = app, limit, max_depth
        self.timeout_s, self.min_rate = timeout_s, min_rate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        header_length = headers.get(b"inference-header-content-length", b"")  # V2's binary tensors: JSON first
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        is_json = kind in (b"application/json", b"") or kind.endswith(b"+json") or header_length.isdigit()
        # Every body is read here, up to the limit and the deadline (FastAPI would turn an error raised while it
        # reads into a 400); at most `limit` bytes are held, as the route would hold them.
        chunks, size, more = [], 0, True
        allowed_s = self.timeout_s + (int(declared) if declared is not None else self.limit) / self.min_rate
        try:
            async with asyncio.timeout(allowed_s):  # no task per request, as wait_for would make
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.limit:
                        break
                    more = message.get("more_body", False)
        except TimeoutError:
            return await _closing_error(408, f"the request body did not arrive within {allowed_s:g} s of its "
                                             f"headers ({size} bytes came)")(scope, receive, send)
        if size > self.limit:
            return await self._refuse(scope, receive, send)
        body = b"".join(chunks)
        del chunks  # one copy of the body while the route runs
        document = body[:int(header_length)] if header_length.isdigit() else body
        if is_json and document.count(b"[") + document.count(b"{") > self.max_depth and (
                await asyncio.to_thread(json_depth, document) if len(document) > 65536 else json_depth(document)
        ) > self.max_depth:  # brackets counted in C first; a long scan off the event loop
            return await _error(422, f"the JSON body nests arrays and objects more than {self.max_depth} levels "
                                     "deep")(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        await _closing_error(413, f"the request body is larger than {self.limit} bytes")(scope, receive, send)


api.add_middleware(TensorBinaryExtension)
api.add_middleware(BodyLimits)  # no body over the limit is read or decoded
api.add_middleware(auth.ApiKeyAuth)  # added last, so it runs first: no request without a valid key is read at all


# The helpers the deployments call are defined above them on purpose: Serve serializes the ingress class when
# `serve.ingress` wraps it, and a module-level name defined further down is then missing in the replica.


def check_canary(canary: Any) -> dict[str, dict[str, float]]:
    """{model: {alias: share}}: shares in (0, 1] summing to at most 1; the rest goes to `production`."""
    if not isinstance(canary, dict):
        raise ValueError(f"canary must map model names to {{alias: share}}, got {canary!r}")
    checked = {}
    for model, split in canary.items():
        if not isinstance(split, dict) or not split:
            raise ValueError(f"canary of {model!r} must map aliases to shares, got {split!r}")
        shares = {}
        for alias, share in split.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
                raise ValueError(f"canary share of {model}@{alias} must be in (0, 1], got {share!r}")
            shares[str(alias)] = float(share)
        if sum(shares.values()) > 1 + 1e-9:
            raise ValueError(f"canary shares of {model!r} add up to {sum(shares.values())}, more than 1")
        checked[str(model)] = shares
    return checked


def _metrics():
    from ray.serve import metrics

    tags = ("model", "version", "protocol")
    return {
        "requests": metrics.Counter("orchard_predict_requests", "Prediction requests answered.", tag_keys=tags),
        "instances": metrics.Counter("orchard_predict_instances", "Instances predicted.", tag_keys=tags),
        "errors": metrics.Counter("orchard_predict_errors", "Prediction requests refused or failed.",
                                  tag_keys=("model", "protocol", "status")),
        "latency": metrics.Histogram("orchard_predict_latency_ms", "Prediction latency in milliseconds.",
                                     boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000], tag_keys=tags),
        "loads": metrics.Counter("orchard_model_loads", "Model versions loaded into a replica (one evicted by "
                                 "max_models_per_replica and asked for again is loaded again).",
                                 tag_keys=("model", "version")),
        "batch": metrics.Histogram("orchard_predict_batch_requests",
                                   "Requests answered by one call of a network (Serve's batching).",
                                   boundaries=[1, 2, 4, 8, 16, 32, 64], tag_keys=("model", "version")),
    }


def _load_and_freeze(registry: ModelRegistry, name: str, version: int) -> Predictor:
    """Load a version, then take everything alive out of the garbage collector's way (`refreeze`)."""
    predictor = Predictor.load(registry, name, version)
    refreeze()
    return predictor


def refreeze() -> None:
    """Collect everything, then freeze what is left alive, after each model load.

    Serve freezes the objects of a replica's start-up (`gc.freeze`), but a model loads later, with the modules it
    imports; they stayed in the collected generations, and under load a full collection walked them about once a
    second, stopping the replica ~50 ms each time: p99 62 ms instead of 17 ms on bench/bench_serve.py.
    Unfreezing first lets this collection reach what earlier freezes kept, such as a model evicted since then
    (networks are full of reference cycles, which only the collector frees).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=128)
@serve.ingress(api)
class PredictionService:
    def __init__(self, storage_uri: str, max_models_per_replica: int = 4, canary: dict | None = None,
                 alias_ttl_s: float = ALIAS_TTL_S, log_predictions: bool = True, online_store: str | None = None,
                 api_keys_file: str | None = None, require_api_key: bool | None = None):
        import os

        from serve.prediction_log import PredictionLog

        # First: a replica that must require a key and has none fails here, before it could answer anything.
        auth.configure(auth.ApiKeys.from_settings(api_keys_file, require_api_key))

        self._storage = Storage(storage_uri)
        # The online store's URL may hold a password: from the app's arguments or the replica's environment.
        self._online_url = online_store or os.environ.get("ORCHARD_ONLINE_STORE") or None
        self._online = None
        self._views: dict[str, Any] = {}
        self._registry = ModelRegistry(self._storage)
        registry = self._registry

        async def load(model_id: str) -> Predictor:
            name, _, version = model_id.rpartition(":")
            # Loading reads and checks files and may import TensorFlow: off the event loop.
            predictor = await asyncio.get_running_loop().run_in_executor(None, _load_and_freeze, registry, name,
                                                                         int(version))
            self._metrics["loads"].inc(tags={"model": name, "version": str(version)})
            return predictor

        # A function, not a bound method: the bound limit comes from the application's arguments.
        self._get_model = serve.multiplexed(max_num_models_per_replica=max_models_per_replica)(load)
        self._canary = canary or {}  # checked by build_app
        self._alias_ttl_s = alias_ttl_s
        self._aliases: dict[str, tuple[float, dict[str, int], list[int]]] = {}  # name -> (read at, aliases, versions)
        self._cards: dict[tuple[str, int], dict] = {}
        self._rollouts: dict[str, dict | None] = {}  # name -> the challenger rollout the registry records, if any
        self._shadow_tasks: set[asyncio.Task] = set()
        self._metrics = _metrics()
        self._log = PredictionLog(self._storage) if log_predictions else None

    def __del__(self):
        if getattr(self, "_log", None) is not None:
            self._log.close()

    # -- resolving a request to one version
    def _stale(self, name: str) -> bool:
        cached = self._aliases.get(name)
        return cached is None or time.monotonic() - cached[0] > self._alias_ttl_s

    def _registry_view(self, name: str) -> tuple[dict[str, int], list[int]]:
        """The model's aliases and versions, read from the registry at most once per `alias_ttl_s`."""
        if self._stale(name):
            versions = self._registry.versions(name)
            if not versions:
                raise RegistryError(f"no model named {name!r} is registered")
            aliases, self._rollouts[name] = self._registry.aliases_and_rollout(name)
            self._aliases[name] = (time.monotonic(), aliases, versions)
        _, aliases, versions = self._aliases[name]
        return aliases, versions

    def _card(self, name: str, version: int) -> dict:
        key = (name, version)
        if key not in self._cards:  # versions are immutable: a card, once read, stays true
            self._cards[key] = self._registry.get(name, version).card
        return self._cards[key]

    def _choose(self, name: str, version: int | None) -> int:
        if version is not None:
            self._card(name, version)  # a 404 naming the version if it does not exist
            return version
        aliases, versions = self._registry_view(name)
        rollout = self._rollouts.get(name)
        if rollout and rollout["mode"] == "canary" and request_context.FOLLOWS_ROLLOUT.get() \
                and random.random() < rollout["share"]:
            return rollout["challenger"]
        split = self._canary.get(name)
        if split:
            draw, total = random.random(), 0.0
            for alias, share in split.items():
                total += share
                if draw < total and alias in aliases:
                    return aliases[alias]
        return default_version(aliases, versions)

    async def _resolve(self, name: str, version: int | None) -> tuple[int, dict]:
        """`_choose` and the chosen version's card for the async endpoints, which share the replica's event loop
        with every connection: the registry is read in a thread, when a cache misses or is due."""
        if version is None:
            if self._stale(name):
                await asyncio.to_thread(self._registry_view, name)
            version = self._choose(name, None)
        if (name, version) not in self._cards:
            await asyncio.to_thread(self._card, name, version)
        return version, self._cards[(name, version)]

    async def _predict(self, name: str, version: int, card: dict, instances: list[dict], protocol_name: str,
                       entities: dict | None = None, shadow: bool = False):
        started = time.perf_counter()
        tags = {"model": name, "version": str(version), "protocol": protocol_name}
        images = image_inputs(card["signature"])
        try:
            # Decoding images takes a while: in a thread, off the event loop every connection shares.
            validated = await asyncio.to_thread(validate_instances, card["signature"], instances) if images \
                else validate_instances(card["signature"], instances)
            predictions = await self._run_model(f"{name}:{version}", card["flavor"], validated)
        except InputError:
            self._metrics["errors"].inc(tags={"model": name, "protocol": protocol_name, "status": "422"})
            raise
        # Serve gives every request an id (the client's x-request-id if it sent one) and answers with it.
        request_id = serve.context._get_serve_request_context().request_id or uuid.uuid4().hex
        self._metrics["requests"].inc(tags=tags)
        self._metrics["instances"].inc(len(validated), tags=tags)
        self._metrics["latency"].observe((time.perf_counter() - started) * 1000, tags=tags)
        if self._log is not None:
            self._log.record(name, version, request_id, _loggable(validated, images), predictions,
                             **(entities or {}), shadow=shadow)
        rollout = self._rollouts.get(name)
        if rollout and rollout["mode"] == "shadow" and version == rollout["champion"] and not shadow \
                and request_context.FOLLOWS_ROLLOUT.get() and self._log is not None:
            # The challenger answers a copy of the request after the answer is on its way: logged, never returned.
            task = asyncio.create_task(self._shadow(name, rollout["challenger"], instances, protocol_name, entities))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        return predictions, request_id

    async def _shadow(self, name: str, version: int, instances: list[dict], protocol_name: str,
                      entities: dict | None) -> None:
        try:
            _, card = await self._resolve(name, version)
            await self._predict(name, version, card, instances, protocol_name, entities, shadow=True)
        except Exception as error:  # a challenger's failure never reaches the client; it is counted and logged
            self._metrics["errors"].inc(tags={"model": name, "protocol": "shadow", "status": "error"})
            log.warning("shadow prediction of %s version %d failed: %s", name, version, error)

    async def _run_model(self, model_id: str, flavor: str, instances: list[dict]) -> list:
        """Predictions for rows `validate_instances` already checked against the version's signature."""
        if flavor_class(flavor).batch_requests:
            return await self._predict_batched(model_id, instances)
        return (await self._get_model(model_id)).predict(instances, validated=True)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _predict_batched(self, model_ids: list[str], requests: list[list[dict]]) -> list[list]:
        """Concurrent requests for networks, one call per model (a network's cost is per call, not per row)."""
        answers: list[list] = [[] for _ in requests]
        for model_id in dict.fromkeys(model_ids):
            indices = [i for i, wanted in enumerate(model_ids) if wanted == model_id]
            predictor = await self._get_model(model_id)
            name, _, version = model_id.rpartition(":")
            self._metrics["batch"].observe(len(indices), tags={"model": name, "version": str(version)})
            # A network's call takes milliseconds: in a thread, not on the event loop every connection shares.
            predictions = await asyncio.to_thread(predictor.predict, [row for i in indices for row in requests[i]],
                                                  validated=True)
            start = 0
            for i in indices:
                answers[i] = predictions[start:start + len(requests[i])]
                start += len(requests[i])
        return answers

    # -- features by entity key
    def _online_store(self):
        if self._online is None:
            from features.online import open_online_store

            self._online = open_online_store(self._online_url, self._storage)
        return self._online

    def _view(self, ref: str):
        if ref not in self._views:
            from features.catalog import get_view

            self._views[ref] = get_view(ref)
        return self._views[ref]

    def _lookup(self, view_ref: str, entities: list[dict]):
        from features.vectors import online_vectors

        return online_vectors(self._view(view_ref), entities, self._online_store())

    async def _entity_instances(self, card: dict, entities: list[dict]) -> tuple[list[dict | None], list[dict]]:
        """Each entity's raw model inputs (None where a looked-up feature is missing) and what was used per group.

        The features come from the online store; request-time values the entity carries (inputs the view does not
        look up) are taken from it. Raw values are then checked and transformed like any instance."""
        view_ref = card["lineage"]["view"]
        vectors = await asyncio.to_thread(self._lookup, view_ref, entities)
        looked_up = set(self._view(view_ref).feature_columns())
        names = [item["name"] for item in card["signature"]["inputs"]]
        instances: list[dict | None] = []
        for entity, row in zip(entities, vectors.rows()):
            instance = {name: row[name] if name in looked_up else entity.get(name) for name in names}
            instances.append(None if any(instance[n] is None and n in looked_up for n in names) else instance)
        return instances, vectors.sources

    async def _predict_entities(self, name: str, version: int, card: dict, entities: list[dict], protocol_name: str,
                                all_or_nothing: bool = False):
        """Predictions for entities (None where features are missing), what each used, and the request id. With
        `all_or_nothing`, an entity lacking features refuses the whole request before anything is predicted."""
        from features.vectors import entity_columns

        instances, sources = await self._entity_instances(card, entities)
        lacking = [(i, ref) for i, used in enumerate(sources) for ref, u in used.items() if u["status"] != "ok"]
        if all_or_nothing and lacking:
            index, ref = lacking[0]
            raise InputError(f"entity {index} has no usable {ref} row ({sources[index][ref]['status']}); "
                             f"{len({i for i, _ in lacking})} of {len(entities)} entities lack features")
        positions = [i for i, instance in enumerate(instances) if instance is not None]
        keys = entity_columns(self._view(card["lineage"]["view"]))
        # Logged with each entity's key and its position in the request (the answer's), which outcomes name.
        logged = {"entities": [{key: entities[i].get(key) for key in keys} for i in positions],
                  "positions": positions}
        predicted, request_id = await self._predict(name, version, card, [instances[i] for i in positions],
                                                    protocol_name, logged) if positions else ([], None)
        answers = iter(predicted)
        return [next(answers) if instance is not None else None for instance in instances], sources, request_id

    @api.get("/v1/features/{view}")
    async def features(self, view: str, request: Request) -> dict:
        """One entity's feature vector from the online store: the view's entity columns as query parameters
        (`?beach_id=b-01`), the newest view version unless `view` is name:version."""
        definition = await asyncio.to_thread(self._view, view)
        entity = dict(request.query_params)
        vectors = await asyncio.to_thread(self._lookup, definition.ref, [entity])
        return {"entity": entity, **vectors.document(definition)}

    # -- simple JSON, or a multipart upload
    async def _v1(self, name: str, version: int | None, request: Request) -> PredictResponse:
        request_context.FOLLOWS_ROLLOUT.set(version is None)
        body = await _predict_request(request)
        version, card = await self._resolve(name, version)
        if body.entities is not None:
            predictions, sources, _ = await self._predict_entities(name, version, card, body.entities, "v1")
            return PredictResponse(predictions=predictions, model=name, version=version, features=sources)
        predictions, _ = await self._predict(name, version, card, body.instances, "v1")
        return PredictResponse(predictions=predictions, model=name, version=version)

    @api.post("/v1/models/{name}:predict", response_model=PredictResponse, response_model_exclude_none=True,
              openapi_extra=PREDICT_BODY)
    async def predict(self, name: str, request: Request):
        """Predict with the `production` version (or the canary split configured for the model)."""
        return await self._v1(name, None, request)

    @api.post("/v1/models/{name}/versions/{version}:predict", response_model=PredictResponse,
              response_model_exclude_none=True, openapi_extra=PREDICT_BODY)
    async def predict_version(self, name: str, version: int, request: Request):
        """Predict with one exact version."""
        return await self._v1(name, version, request)

    @api.post("/v1/models/{name}/outcomes")
    async def outcomes(self, name: str, body: OutcomesRequest) -> dict:
        """Record outcomes of earlier predictions for monitoring (`orchard monitor`). They are checked against the
        model's classes or target and stored before the answer: a 200 means they are on storage; a bad one is a
        422 naming it, and none of the batch is stored."""
        from monitoring.outcomes import check_outcomes, store_outcomes

        _, card = await self._resolve(name, None)
        signature = card["signature"]
        rollout = self._rollouts.get(name)
        if rollout and signature.get("classes") is not None:  # the challenger's classes count too
            _, challenger = await self._resolve(name, rollout["challenger"])
            classes = [*signature["classes"], *(c for c in challenger["signature"].get("classes") or []
                                                if c not in signature["classes"])]
            signature = {**signature, "classes": classes}
        checked = check_outcomes(signature, body.outcomes)
        stored = await asyncio.to_thread(store_outcomes, self._storage, name, checked)
        return {"model": name, "stored": len(checked), "file": stored}

    @api.get("/metrics/monitoring", responses={200: {"description": "Gauges in Prometheus' text format (0.0.4).",
                                                      "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def monitoring_metrics(self) -> PlainTextResponse:
        """The gauges of every model's latest monitoring report (`orchard monitor`), in Prometheus' text format."""
        from monitoring.report import latest_reports_text

        text = await asyncio.to_thread(latest_reports_text, self._storage, self._registry.models())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    # -- the web UI: one static page and the documents it shows
    @api.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    async def ui(self) -> HTMLResponse:
        from serve.ui import page

        return HTMLResponse(await asyncio.to_thread(page))

    @api.post("/ui/login", include_in_schema=False)
    async def ui_login(self, request: Request) -> JSONResponse:
        """The UI's page sends the key a user typed; a valid one comes back as an HttpOnly cookie for the app's
        path, so that the page's requests and images carry it."""
        keys = auth.active()
        if not keys.enabled:
            return JSONResponse({"login": "not needed: this service requires no API key"})
        try:
            key = json.loads(await request.body()).get("key")
        except (ValueError, AttributeError, RecursionError):
            key = None
        if not isinstance(key, str) or not keys.accepts(key):
            return _error(401, "the API key is not valid")
        answer = JSONResponse({"login": "ok"})
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        answer.headers["set-cookie"] = auth.login_cookie(key, path=request.scope.get("root_path") or "/",
                                                         secure=secure)
        return answer

    @api.get("/ui/api/overview")
    async def ui_overview(self) -> dict:
        """Projects, feature groups (rows, freshness, quarantined rows), views and datasets, models."""
        from serve.ui import overview

        return await asyncio.to_thread(overview, self._storage)

    @api.get("/ui/api/models/{name}")
    async def ui_model(self, name: str) -> dict:
        """A model's versions, metrics, lineage, alias and retraining history, and latest monitoring."""
        from serve.ui import model

        return await asyncio.to_thread(model, self._storage, name)

    @api.get("/ui/files/models/{name}/{version}/{file_name}", include_in_schema=False)
    async def ui_model_plot(self, name: str, version: int, file_name: str) -> Response:
        from serve.ui import model_plot

        return Response(await asyncio.to_thread(model_plot, self._storage, name, version, file_name),
                        media_type="image/png")

    @api.get("/ui/files/monitoring/{name}/{file_name}", include_in_schema=False)
    async def ui_monitoring_plot(self, name: str, file_name: str) -> Response:
        from serve.ui import monitoring_plot

        return Response(await asyncio.to_thread(monitoring_plot, self._storage, name, file_name),
                        media_type="image/png")

    @api.get("/v1/models")
    def list_models(self) -> dict:
        """Registered models, their versions and aliases."""
        return {"models": [{"name": name, "versions": self._registry.versions(name),
                            "aliases": self._registry.aliases(name)} for name in self._registry.models()]}

    # -- Open Inference Protocol (KServe V2)
    @api.get("/v2/health/live")
    def live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready")
    def ready(self) -> dict:
        return {"ready": True}

    @api.get("/v2/models/{name}")
    def model_metadata(self, name: str) -> dict:
        version = self._choose(name, None)
        return protocol.model_metadata(name, self._registry_view(name)[1], self._card(name, version))

    @api.get("/v2/models/{name}/versions/{version}")
    def version_metadata(self, name: str, version: int) -> dict:
        return protocol.model_metadata(name, [version], self._card(name, version))

    @api.get("/v2/models/{name}/ready")
    def model_ready(self, name: str) -> dict:
        return {"name": name, "ready": bool(self._choose(name, None))}

    @api.get("/v2/models/{name}/versions/{version}/ready")
    def version_ready(self, name: str, version: int) -> dict:
        self._card(name, version)  # a 404 naming the version if it does not exist
        return {"name": name, "version": str(version), "ready": True}

    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, body: InferRequest):
        return await self._infer(name, None, body)

    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(self, name: str, version: int, body: InferRequest):
        return await self._infer(name, version, body)

    async def _infer(self, name: str, version: int | None, body: InferRequest):
        request_context.FOLLOWS_ROLLOUT.set(version is None)
        version, card = await self._resolve(name, version)
        signature = card["signature"]
        entity_inputs = await self._entity_tensor_names(card, body.inputs)
        parameters = None
        if entity_inputs is None:
            instances = protocol.instances_from_tensors(signature, body.inputs, MAX_INSTANCES)
            predictions, request_id = await self._predict(name, version, card, instances, "v2")
        else:  # the key columns as tensors: features from the online store
            entities = protocol.rows_from_tensors(body.inputs, entity_inputs, MAX_INSTANCES)
            # A tensor has no nulls: an entity without features refuses the request rather than answer in part.
            predictions, sources, request_id = await self._predict_entities(name, version, card, entities, "v2",
                                                                            all_or_nothing=True)
            parameters = {"features": sources}
        answer = {"model_name": name, "model_version": str(version), "id": body.id or request_id,
                  "outputs": protocol.requested_outputs(protocol.output_tensors(signature, predictions), body.outputs)}
        if parameters is not None:
            answer["parameters"] = parameters
        return answer

    async def _entity_tensor_names(self, card: dict, inputs: Any) -> dict[str, str] | None:
        """{tensor name: accepted datatype} when a V2 request gives the view's entity columns instead of the
        model's inputs, None for an ordinary request."""
        if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
            return None
        given = {t.get("name") for t in inputs}
        inputs_of_model = {item["name"] for item in card["signature"]["inputs"]}
        if given == inputs_of_model or "lineage" not in card:
            return None
        from features.vectors import entity_columns

        view = await asyncio.to_thread(self._view, card["lineage"]["view"])
        keys = entity_columns(view)
        if not set(keys) <= given:
            return None
        request_time = {item["name"]: item.get("datatype", "FP64") for item in card["signature"]["inputs"]
                        if item["name"] not in view.feature_columns()}
        return {**{key: "ANY" for key in keys}, **request_time}


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run serve.app:build_app storage=...`` and serve/config.yaml.

    Arguments: `storage` (required), `max_models_per_replica` (default 4), `canary`
    ({model: {alias: share}}), `alias_ttl_s` (default 2), `log_predictions` (default true),
    `replica_cpus` (CPUs of each replica, default 0.5), `online_store` (the online store's URL; default the
    replicas' ORCHARD_ONLINE_STORE, else the SQLite file under a local storage root), `num_replicas` (a fixed
    number, default 1) or `autoscaling` (Serve's autoscaling config: min_replicas, max_replicas, ...;
    `autoscaling_config` fills in the rest, and min_replicas 0 lets an idle app scale to zero), `api_keys_file`
    (a file of API keys on every node; default the replicas' ORCHARD_API_KEYS_FILE) and `require_api_key`
    (replicas that find no key refuse to start; default the replicas' ORCHARD_REQUIRE_API_KEY): `serve.auth`.
    """
    if not args.get("storage"):
        raise ValueError("the application needs the argument 'storage' (the storage root URI)")
    storage = normalize_storage_uri(str(args["storage"]))
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": float(args.get("replica_cpus", 0.5))}}
    if args.get("num_replicas") is not None:
        options["num_replicas"] = int(args["num_replicas"])
    if args.get("autoscaling"):
        options["autoscaling_config"] = autoscaling_config(args["autoscaling"])
    canary = check_canary(args.get("canary") or {})
    require = args.get("require_api_key")
    return PredictionService.options(**options).bind(
        storage, int(args.get("max_models_per_replica", 4)), canary, float(args.get("alias_ttl_s", ALIAS_TTL_S)),
        _flag(args.get("log_predictions", True)), args.get("online_store") or None, args.get("api_keys_file") or None,
        None if require is None else _flag(require))


def _flag(value: Any) -> bool:
    """A yes/no application argument, as YAML or a command line gives it."""
    return str(value).strip().lower() not in ("false", "0", "no", "off", "")


AUTOSCALING_DEFAULTS = {"target_ongoing_requests": 16, "upscale_delay_s": 10, "downscale_delay_s": 120}
"""As serve/config.yaml sets them; with min_replicas 0, the last replica goes after downscale_delay_s idle unless
downscale_to_zero_delay_s says otherwise."""


def autoscaling_config(given: dict[str, Any]) -> dict[str, Any]:
    """Serve's autoscaling config for the app: Orchard's defaults under what `given` says; bounds checked here, so
    that a wrong one is an error that names it rather than a deployment that never becomes healthy."""
    config = {**AUTOSCALING_DEFAULTS, "min_replicas": 1, "max_replicas": 8, **given}
    low, high = int(config["min_replicas"]), int(config["max_replicas"])
    if low < 0 or high < 1 or low > high:
        raise ValueError(f"replicas: min_replicas {low} and max_replicas {high} must satisfy 0 <= min <= max, max >= 1")
    return config


def replica_urls(name: str = "orchard", *, wait_s: float = 0) -> list[str]:
    """The addresses at which the app's replicas answer HTTP themselves (Serve's direct ingress), one per replica.

    Empty when the cluster runs without direct ingress (`orchard.runtime.SERVE_ENV`) or no replica has its port
    yet (`wait_s`: how long to wait for one); the proxy (`deploy`'s URL) answers in any case. They are what a load
    balancer in front of the cluster routes to (Serve's target groups); a replica that restarts gets a new port.
    """
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    deadline = time.monotonic() + wait_s
    while True:
        client = _get_global_client(raise_if_no_controller_running=False)
        # As `serve.status()` reads it: the controller's instance details, Serve's public schema.
        urls = replica_addresses(ServeInstanceDetails(**client.get_serve_details()), name) if client else []
        if urls or time.monotonic() >= deadline:
            return urls
        time.sleep(0.2)


def replica_addresses(details, name: str) -> list[str]:
    """The HTTP targets of app `name` in Serve's instance details that are replicas, as URLs.

    Until a replica has its port (and always without direct ingress), the app's target group lists the proxies.
    """
    proxies = {proxy.actor_name for proxy in details.proxies.values()}
    # Replicas listen on Serve's HTTP host: bound to every interface, each is reached at its node's address;
    # bound to one address (loopback on a laptop), at that address.
    host = details.http_options.host if details.http_options else "127.0.0.1"
    urls = []
    for group in details.target_groups:
        if group.app_name != name or group.protocol != "HTTP":
            continue
        for target in group.targets:
            if target.name in proxies:
                continue
            address = target.ip if host in ("0.0.0.0", "::") else host
            address = f"[{address}]" if ":" in address else address
            urls.append(f"http://{address}:{target.port}{group.route_prefix.rstrip('/')}")
    return urls


def stop_serving() -> None:
    """Shut the application down where it outlives this process (a cluster); on a local Ray this process
    started, leave it to `ray.shutdown`, which stops Serve with everything else (Serve's own shutdown prints a
    spurious "Task ServeController.graceful_shutdown failed" there, as its controller exits under the call)."""
    from orchard.runtime import owns_local_ray

    if not owns_local_ray():
        serve.shutdown()


def deploy(config: OrchardConfig, *, name: str = "orchard", route_prefix: str = "/", proxy_location: str | None = None,
           **args: Any) -> str:
    """Start Serve's HTTP proxy on the configured port, deploy the app, return its URL (the proxy's).

    `proxy_location`: Serve's (EveryNode by default, HeadOnly for one proxy on the head node). `args`: build_app's.
    """
    serve.start(http_options={"host": config.serve_host, "port": config.serve_port},
                **({"proxy_location": proxy_location} if proxy_location else {}))
    if config.online_store:
        args.setdefault("online_store", config.online_store)
    serve.run(build_app({"storage": config.storage, **args}), name=name, route_prefix=route_prefix, blocking=False)
    return config.serve_url() + route_prefix.rstrip("/")
