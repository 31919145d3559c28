"""The end-to-end demo: raw files -> features -> training datasets -> four trained models -> HTTP predictions.

Every step is the same library call the individual commands make; the demo only
strings them together and prints what happens. Two domains from the lecture:
fruit (apple or orange, a classifier) and surf (wave height at a beach, a
regressor), each with a decision tree (grid search on Ray tasks) and a tf-keras
network (Ray Train).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import httpx

from features.catalog import get_view
from features.datasets import RandomSplit, TrainingDataset, create_training_dataset
from features.pipeline import run_feature_pipeline
from features.surf import FEATURE_GROUPS as SURF_GROUPS
from features.synthetic import write_fruit
from features.synthetic_surf import write_surf
from orchard.config import OrchardConfig
from orchard.dnn import DnnSpec
from orchard.predictor import Predictor
from orchard.registry import ModelRegistry
from orchard.runtime import ray_session
from orchard.storage import Storage
from orchard.training import BelowBaselineError, get_spec, train_model

DEMO_MODELS = ("fruit_classifier", "surf_regressor", "fruit_dnn_classifier", "surf_dnn_regressor")
STEPS = 7


class DemoError(RuntimeError):
    """The demo found the service disagreeing with the registered model."""


def held_out_rows(storage: Storage, model: str, count: int) -> list[dict]:
    """Rows of the test split of the dataset the production version trained on: raw features plus the truth."""
    view = get_view(get_spec(model).view)
    card = ModelRegistry(storage).get(model).card
    inputs = [item["name"] for item in card["signature"]["inputs"]]
    target = view.label.target
    rows = TrainingDataset.open(storage, view, card["lineage"]["dataset_version"]).read("test").take(10 * count)
    complete = [row for row in rows if all(row[name] is not None for name in [*inputs, target])]
    return [{**{name: row[name] for name in inputs}, "_truth": row[target]} for row in complete[:count]]


def run_demo(config: OrchardConfig, *, rows: int = 2000, seed: int = 0, epochs: int = 5,
             echo: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    storage = Storage(config.storage)
    summary: dict = {"storage": config.storage, "models": {}, "predictions": {}, "v2": {}, "refused": {}}

    def step(number: int, text: str) -> None:
        echo(f"[{number}/{STEPS}] {text}  ({time.perf_counter() - started:.1f}s)")

    surf_rows = max(rows // 3, 100)
    step(1, f"generating {rows} fruit measurements (CSV in g/mm, JSON Lines in kg/cm) and {surf_rows} surf "
            "observations (buoy JSON Lines, beaches in SQL, lifeguards' CSV)")
    for generated in (write_fruit(storage, rows=rows, seed=seed), write_surf(storage, rows=surf_rows, seed=seed)):
        echo(f"      wrote {len(generated.files)} file(s), e.g. {storage.uri(generated.files[0])}")

    with ray_session(config, quiet=True):
        step(2, "running the feature pipelines on Ray Data into the offline store")
        summary["features"] = {}
        for group in (get_view("fruit_classification").label.group, *SURF_GROUPS):
            report = run_feature_pipeline(storage, group, config.databases)
            echo(f"      {group.ref}: {report.rows_written} rows from {report.files_read} source(s) "
                 f"(table version {report.table_version})")
            summary["features"][group.ref] = report.to_dict()

        step(3, "building point-in-time correct training datasets (train/validation/test, fitted transforms)")
        for view_name in ("fruit_classification", "surf_height"):
            metadata = create_training_dataset(storage, get_view(view_name), RandomSplit(seed=seed))
            echo(f"      {metadata['view']} v{metadata['version']}: "
                 + ", ".join(f"{n} {c}" for n, c in metadata["rows"].items()))

        step(4, f"training two decision trees (grid search, one Ray task per candidate) and two networks "
                f"(Ray Train, {epochs} epochs)")
        for name in DEMO_MODELS:
            options = {"epochs": epochs} if isinstance(get_spec(name), DnnSpec) else {}
            try:
                result = train_model(storage, name, alias="production", **options)
            except BelowBaselineError as refused:
                echo(f"      {name}: NOT registered: {refused}")
                summary["refused"][name] = refused.result["summary"]
                continue
            echo(f"      {name} v{result['version']}: {result['summary']}  [{result['seconds']:.0f}s]")
            summary["models"][name] = {"version": result["version"], "metrics": result["metrics"]["test"],
                                       "baseline": result["metrics"]["baseline"]}

        step(5, "registered (production): " + ", ".join(f"{n} v{m['version']}" for n, m in summary["models"].items()))

        step(6, "deploying the models with Ray Serve and sending HTTP requests")
        from ray import serve

        from serve.app import deploy, replica_urls

        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        url = deploy(config)
        # The replica's own port (Serve's direct ingress) when Ray runs with it: the V2 requests go there.
        direct_url = (replica_urls(wait_s=30) or [url])[0]
        registry = ModelRegistry(storage)
        try:
            with httpx.Client(base_url=url, timeout=60) as client, httpx.Client(timeout=60) as v2_client:
                for name in summary["models"]:
                    rows_with_truth = held_out_rows(storage, name, 4)
                    instances = [{k: v for k, v in row.items() if k != "_truth"} for row in rows_with_truth]
                    response = client.post(f"/v1/models/{name}:predict", json={"instances": instances})
                    if response.status_code != 200:
                        raise DemoError(f"{name}: HTTP {response.status_code}: {response.text}")
                    body = response.json()
                    expected = Predictor.load(registry, name, body["version"]).predict(instances)
                    if body["predictions"] != expected:
                        raise DemoError(f"{name}: served predictions differ from the registered model's")
                    summary["predictions"][name] = {"instances": instances, **body}
                    echo(f"      POST {url}/v1/models/{name}:predict -> version {body['version']}")
                    for row, prediction in zip(rows_with_truth, body["predictions"]):
                        echo("        " + _describe(row, prediction))
                    summary["v2"][name] = _infer_v2(v2_client, direct_url, name, instances, body["predictions"])
                    echo(f"      POST {direct_url}/v2/models/{name}/infer (Open Inference Protocol) -> "
                         f"version {summary['v2'][name]['model_version']}, the same predictions")
        finally:
            serve.shutdown()

    step(7, "shut down Serve and Ray")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    echo(f"done in {summary['seconds']}s; explore with `orchard --storage {config.storage} models list`")
    return summary


def _infer_v2(client: httpx.Client, url: str, name: str, instances: list[dict], expected: list) -> dict:
    """The same rows through the V2 protocol, one tensor per input as the model's V2 metadata describes them."""
    metadata = client.get(f"{url}/v2/models/{name}")
    if metadata.status_code != 200:
        raise DemoError(f"{name}: V2 metadata: HTTP {metadata.status_code}: {metadata.text}")
    inputs = [{"name": item["name"], "datatype": item["datatype"], "shape": [len(instances)],
               "data": [row[item["name"]] for row in instances]} for item in metadata.json()["inputs"]]
    response = client.post(f"{url}/v2/models/{name}/infer", json={"inputs": inputs})
    if response.status_code != 200:
        raise DemoError(f"{name}: V2 infer: HTTP {response.status_code}: {response.text}")
    answer = response.json()
    first = answer["outputs"][0]["data"]  # labels of a classifier, values of a regressor
    if first != [p["label"] if isinstance(p, dict) else p for p in expected]:
        raise DemoError(f"{name}: V2 and V1 predictions differ")
    return {"url": url, **answer}


def _describe(row: dict, prediction) -> str:
    shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in row.items() if k != "_truth")
    if isinstance(prediction, dict):
        confidence = prediction["probabilities"][prediction["label"]]
        return f"{shown} -> {prediction['label']} (p={confidence:.2f}; truly {row['_truth']})"
    return f"{shown} -> {prediction:.2f} m (truly {row['_truth']:.2f} m)"
