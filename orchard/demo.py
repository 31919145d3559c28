"""The end-to-end demo: raw files -> features -> two trained models -> HTTP predictions.

Every step is the same library call the individual commands make; the demo only
strings them together and prints what happens.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import httpx

from features.catalog import get_group
from features.pipeline import run_feature_pipeline
from features.synthetic import fruit_frame, write_fruit
from orchard.config import OrchardConfig
from orchard.predictor import Predictor
from orchard.registry import ModelRegistry
from orchard.runtime import ray_session
from orchard.storage import Storage
from orchard.training import get_spec, train_and_register

DEMO_MODELS = ("fruit_classifier", "apple_weight_regressor")


class DemoError(RuntimeError):
    """The demo found the service disagreeing with the registered model."""


def sample_fruit(seed: int = 12345, count: int = 6) -> list[dict]:
    """Fresh fruit the models have never seen, as raw feature values."""
    frame = fruit_frame(count * 4, seed=seed)
    picks = frame.groupby("variety").head(count // 3 or 1).head(count)
    return picks.drop(columns=["fruit_id", "measured_at"]).to_dict(orient="records")


def run_demo(config: OrchardConfig, *, rows: int = 2000, seed: int = 0, echo: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    storage = Storage(config.storage)
    summary: dict = {"storage": config.storage, "models": {}, "predictions": {}}

    def step(number: int, text: str) -> None:
        echo(f"[{number}/6] {text}  ({time.perf_counter() - started:.1f}s)")

    step(1, f"generating {rows} fruit measurements (CSV in g/mm, JSON Lines in kg/cm)")
    generated = write_fruit(storage, rows=rows, seed=seed)
    for path in generated.files:
        echo(f"      wrote {storage.uri(path)}")

    with ray_session(config, quiet=True):
        step(2, "running the feature pipeline on Ray Data into the offline store")
        group = get_group("fruit_measurements")
        report = run_feature_pipeline(storage, group)
        echo(f"      {report.rows_written} rows from {report.files_read} files -> "
             f"{storage.uri(f'offline/{group.name}/v{group.version}')} (table version {report.table_version})")
        summary["features"] = report.to_dict()

        step(3, "training a decision-tree classifier and regressor as Ray tasks")
        registry = ModelRegistry(storage)
        for name in DEMO_MODELS:
            version, metrics = train_and_register(storage, get_spec(name))
            shown = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k != "seconds")
            echo(f"      {name}: {shown}")
            registry.set_alias(name, "production", version.version)
            summary["models"][name] = {"version": version.version, "metrics": metrics}

        step(4, "registered: " + ", ".join(f"{n} version {m['version']} (production)" for n, m in summary["models"].items()))

        step(5, "deploying both models with Ray Serve and sending HTTP requests")
        from ray import serve

        from serve.app import deploy

        logging.getLogger("ray.serve").setLevel(logging.WARNING)

        url = deploy(config)
        try:
            instances = sample_fruit()
            apples = [row for row in instances if row["label"] == "apple"]
            requests = {
                "fruit_classifier": [{k: row[k] for k in get_spec("fruit_classifier").features} for row in instances],
                "apple_weight_regressor": [
                    {k: row[k] for k in get_spec("apple_weight_regressor").features} for row in apples
                ],
            }
            with httpx.Client(base_url=url, timeout=30) as client:
                for name, batch in requests.items():
                    response = client.post(f"/v1/models/{name}:predict", json={"instances": batch})
                    if response.status_code != 200:
                        raise DemoError(f"{name}: HTTP {response.status_code}: {response.text}")
                    body = response.json()
                    expected = Predictor.load(registry, name, body["version"]).predict(batch)
                    if body["predictions"] != expected:
                        raise DemoError(f"{name}: served predictions differ from the registered model's")
                    summary["predictions"][name] = {"instances": batch, **body}
                    echo(f"      POST {url}/v1/models/{name}:predict -> version {body['version']}")
                    truth = instances if name == "fruit_classifier" else apples
                    for row, prediction in zip(truth, body["predictions"]):
                        echo("        " + _describe(name, row, prediction))
        finally:
            serve.shutdown()

    step(6, "shut down Serve and Ray")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    echo(f"done in {summary['seconds']}s; explore with `orchard models list --storage {config.storage}`")
    return summary


def _describe(name: str, row: dict, prediction) -> str:
    colour = f"rgb=({row['red']:.2f},{row['green']:.2f},{row['blue']:.2f})"
    if name == "fruit_classifier":
        confidence = prediction["probabilities"][prediction["label"]]
        return (f"{colour} {row['weight_g']:.0f} g {row['diameter_mm']:.0f} mm -> {prediction['label']} "
                f"(p={confidence:.2f}; truly {row['label']})")
    return f"{colour} {row['diameter_mm']:.0f} mm -> {prediction:.0f} g (truly {row['weight_g']:.0f} g)"
