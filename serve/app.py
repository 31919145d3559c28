"""One Ray Serve application with a FastAPI ingress over the model registry.

Run it with ``orchard serve``, or ``serve run serve/config.yaml``. Nothing is
started at import time: `build_app` returns the application to deploy.
"""


import collections
import logging
import threading
from typing import Any, Callable, Optional, Union

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve

from orchard.config import OrchardConfig, normalize_storage_uri
from orchard.predictor import InputError, Predictor
from orchard.registry import ModelRegistry, RegistryError
from orchard.storage import Storage

log = logging.getLogger(__name__)

MAX_INSTANCES = 1000

api = FastAPI(title="Orchard prediction service", version="1")


@api.exception_handler(InputError)
async def _input_error(_request, error: InputError):
    return JSONResponse(status_code=422, content={"error": str(error)})


@api.exception_handler(RegistryError)
async def _registry_error(_request, error: RegistryError):
    return JSONResponse(status_code=404, content={"error": str(error)})


class PredictRequest(BaseModel):
    instances: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_INSTANCES)


class PredictResponse(BaseModel):
    predictions: list[Any]
    model: str
    version: int


class PredictorCache:
    """The most recently used predictors, at most `capacity` of them."""

    def __init__(self, load: Callable[[str, int], Predictor], capacity: int):
        self._load, self._capacity = load, capacity
        self._items: collections.OrderedDict[tuple[str, int], Predictor] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, version: int) -> Predictor:
        key = (name, version)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        predictor = self._load(name, version)
        with self._lock:
            self._items[key] = predictor
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return predictor


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class PredictionService:
    def __init__(self, storage_uri: str, max_models_per_replica: int = 8):
        self._registry = ModelRegistry(Storage(storage_uri))
        self._predictors = PredictorCache(
            lambda name, version: Predictor.load(self._registry, name, version), max_models_per_replica
        )

    def _predict(self, name: str, reference: Optional[Union[int, str]], request: PredictRequest) -> PredictResponse:
        version = self._registry.resolve(name, reference)
        predictor = self._predictors.get(name, version)
        return PredictResponse(predictions=predictor.predict(request.instances), model=name, version=version)

    @api.post("/v1/models/{name}:predict", response_model=PredictResponse)
    def predict(self, name: str, request: PredictRequest) -> PredictResponse:
        """Predict with the model's `production` version (its latest when no alias is set)."""
        return self._predict(name, None, request)

    @api.post("/v1/models/{name}/versions/{version}:predict", response_model=PredictResponse)
    def predict_version(self, name: str, version: int, request: PredictRequest) -> PredictResponse:
        """Predict with one exact version."""
        return self._predict(name, version, request)

    @api.get("/v1/models")
    def list_models(self) -> dict:
        return {
            "models": [
                {"name": name, "versions": self._registry.versions(name), "aliases": self._registry.aliases(name)}
                for name in self._registry.models()
            ]
        }

    @api.get("/v2/health/live")
    def live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready")
    def ready(self) -> dict:
        return {"ready": True}


def build_app(args: dict[str, str]) -> serve.Application:
    """Application builder for ``serve run serve.app:build_app storage=...``."""
    if not args.get("storage"):
        raise ValueError("the application needs the argument 'storage' (the storage root URI)")
    storage = normalize_storage_uri(str(args["storage"]))
    return PredictionService.bind(storage, int(args.get("max_models_per_replica", 8)))


def deploy(config: OrchardConfig, *, name: str = "orchard") -> str:
    """Start Serve's HTTP proxy on the configured port, deploy the app, return its URL."""
    serve.start(http_options={"host": config.serve_host, "port": config.serve_port})
    serve.run(build_app({"storage": config.storage}), name=name, route_prefix="/", blocking=False)
    return config.serve_url()
