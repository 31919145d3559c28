"""The baseline of `bench_serve`: the same registered model behind plain uvicorn + FastAPI, no Ray.

    ORCHARD_BENCH_STORAGE=<root> python -m uvicorn bench.plain_server:app --port 8001

It answers `POST /v1/models/{name}:predict` with the predictor the Serve app uses
(`training.predictor.Predictor`: validation, stored transforms, the model), so the
two servers differ only in what sits between the socket and the predictor.
"""

import os
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from orchard.registry import ModelRegistry
from orchard.storage import Storage
from training.predictor import InputError, Predictor

app = FastAPI(title="plain baseline")
_registry = ModelRegistry(Storage(os.environ["ORCHARD_BENCH_STORAGE"]))
_predictors: dict[str, Predictor] = {}


class PredictRequest(BaseModel):
    instances: list[dict[str, Any]] = Field(min_length=1, max_length=1000)


@app.post("/v1/models/{name}:predict")
async def predict(name: str, body: PredictRequest):
    if name not in _predictors:
        _predictors[name] = Predictor.load(_registry, name)
    predictor = _predictors[name]
    try:
        predictions = predictor.predict(body.instances)
    except InputError as error:
        return JSONResponse(status_code=422, content={"error": str(error)})
    return {"predictions": predictions, "model": name, "version": predictor.model.version}
