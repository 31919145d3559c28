"""The end-to-end demo: raw files -> features -> training datasets -> trained models -> HTTP predictions.

It runs every definition of the loaded projects, in order: each data
generator writes a new day of raw data, each feature group's pipeline runs
(source groups before the groups aggregated from them), each feature view gets
a new training dataset, each model trains and registers (production alias),
then Ray Serve serves them all and the demo queries each one over HTTP with
held-out rows (simple JSON and the Open Inference Protocol), checking the
answers against the registered model's own predictions.

With no project configured it loads the example projects that come with
Orchard (`examples/`: fruit, surf, hotel). Every step is the same library call
the individual commands make.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Callable

import httpx

from features.catalog import all_groups, all_views, generators, get_view
from features.datasets import RandomSplit, TrainingDataset, create_training_dataset
from features.definitions import FeatureGroup
from features.pipeline import run_feature_pipeline
from orchard.config import OrchardConfig
from orchard.errors import OrchardError
from orchard.projects import activate, parse_entries
from orchard.registry import ModelRegistry
from orchard.runtime import ray_session
from orchard.storage import Storage
from training.catalog import get_spec, model_specs
from training.flavors import FlavorError, TrainOptions
from training.predictor import Predictor, image_inputs
from training.trainer import BelowBaselineError, train_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_PROJECTS = ("fruit", "surf", "hotel", "apple_images")
STEPS = 8
HELD_OUT_ROWS = 5000
"""Test rows read to draw the demo's requests from."""
MONITORED_ROWS = 40
"""Held-out rows each tabular model predicts over HTTP (in requests of ten) for the monitoring step."""


class DemoError(OrchardError):
    """The demo found the service disagreeing with the registered model."""


def example_config(config: OrchardConfig) -> OrchardConfig:
    """`config` with the bundled example projects when it names no project of its own."""
    if config.projects:
        return config
    if not EXAMPLES.is_dir():
        raise DemoError(f"no project is configured and the example projects are not at {EXAMPLES}; "
                        "name a project with --project")
    refs = parse_entries([str(EXAMPLES / name) for name in EXAMPLE_PROJECTS], base=EXAMPLES, source="orchard demo")
    return config.with_overrides(projects=refs)


def pipeline_order(groups: list[FeatureGroup]) -> list[FeatureGroup]:
    """Groups read from sources first, then each aggregated group after the group it aggregates."""
    ordered: list[FeatureGroup] = []
    pending = list(groups)
    while pending:
        ready = [g for g in pending if g.aggregation is None or g.aggregation.upstream in ordered
                 or g.aggregation.upstream not in groups]
        if not ready:
            raise DemoError(f"feature groups aggregate each other in a cycle: {[g.ref for g in pending]}")
        ordered.extend(ready)
        pending = [g for g in pending if g not in ready]
    return ordered


def held_out_rows(storage: Storage, model: str, count: int) -> list[dict]:
    """Rows of the test split of the dataset the production version trained on: raw features plus the truth."""
    card = ModelRegistry(storage).get(model).card
    view = get_view(card["lineage"]["view"])
    inputs = [item["name"] for item in card["signature"]["inputs"]]
    target = card["signature"]["target"]
    rows = TrainingDataset.open(storage, view, card["lineage"]["dataset_version"]).read("test").take(HELD_OUT_ROWS)
    complete = [row for row in rows if all(row.get(name) is not None for name in [*inputs, target])]
    # Drawn across the split (stored in key order: its first rows would be a few entities only), the same every run.
    return [{**{name: complete[i][name] for name in inputs}, "_truth": complete[i][target]}
            for i in _sample_order([row[target] for row in complete], card["signature"]["task"])[:count]]


def _sample_order(targets: list, task: str) -> list[int]:
    """A fixed random order of the rows (asking for more gives the same first ones, then others). A classifier's
    rows are interleaved so that every prefix keeps the split's class shares: a few dozen rows drawn plainly
    can miss a class mix by enough to look like drift."""
    order = list(range(len(targets)))
    random.Random(0).shuffle(order)
    if task != "classification" or not order:
        return order
    queues: dict = {}
    for i in order:
        queues.setdefault(targets[i], []).append(i)
    shares = {label: len(queue) / len(order) for label, queue in queues.items()}
    taken = dict.fromkeys(queues, 0)
    interleaved = []
    while len(interleaved) < len(order):
        label = min((lab for lab in queues if taken[lab] < len(queues[lab])),
                    key=lambda lab: ((taken[lab] + 1) / shares[lab], str(lab)))
        interleaved.append(queues[label][taken[label]])
        taken[label] += 1
    return interleaved


def held_out_photos(storage: Storage, model: str, count: int) -> list[dict]:
    """For a model that takes one image: files of photos in the test split of the dataset its production version
    trained on, found in their landing folder through the image source's path fields ({input: bytes, "_file",
    "_truth"}); empty if the files cannot be found."""
    from features.images import ImageSource

    card = ModelRegistry(storage).get(model).card
    view = get_view(card["lineage"]["view"])
    (image_input,) = [item["name"] for item in card["signature"]["inputs"]]
    target, keys = card["signature"]["target"], list(view.label.columns)
    rows = TrainingDataset.open(storage, view, card["lineage"]["dataset_version"]).read("test").take(count)
    wanted = {tuple(row[k] for k in keys): row[target] for row in rows}
    photos = []
    for source in view.label.group.sources:
        if not isinstance(source, ImageSource):
            continue
        for entry in storage.find_files(source.location, source.pattern):
            fields = source.match(entry.path[len(source.location.rstrip("/")) + 1:]) or {}
            key = tuple(fields.get(k) for k in keys)
            if key in wanted:
                photos.append({image_input: storage.read_bytes(entry.path), "_file": entry.path,
                               "_truth": wanted.pop(key)})
    return photos[:count]


def _query_images(client: httpx.Client, v2_client: httpx.Client, direct_url: str, registry: ModelRegistry,
                  storage: Storage, name: str, summary: dict, echo: Callable[[str], None]) -> None:
    """An image model: held-out photo files uploaded (multipart) to V1 and sent base64 to V2."""
    import base64

    photos = held_out_photos(storage, name, 2)
    if not photos:
        echo(f"      {name}: no held-out photo file found in the landing folder; not queried")
        return
    (image_input,) = [k for k in photos[0] if not k.startswith("_")]
    files = [(image_input, (photo["_file"].rsplit("/", 1)[-1], photo[image_input])) for photo in photos]
    response = client.post(f"/v1/models/{name}:predict", files=files)
    if response.status_code != 200:
        raise DemoError(f"{name}: HTTP {response.status_code}: {response.text}")
    body = response.json()
    expected = Predictor.load(registry, name, body["version"]).predict(
        [{image_input: photo[image_input]} for photo in photos])
    if body["predictions"] != expected:
        raise DemoError(f"{name}: served predictions differ from the registered model's")
    summary["predictions"][name] = {"files": [photo["_file"] for photo in photos], **body}
    echo(f"      POST {str(client.base_url).rstrip('/')}/v1/models/{name}:predict (photo files uploaded) -> "
         f"version {body['version']}")
    for photo, prediction in zip(photos, body["predictions"]):
        confidence = prediction["probabilities"][prediction["label"]]
        echo(f"        {photo['_file'].rsplit('/', 1)[-1]} -> {prediction['label']} (p={confidence:.2f}; "
             f"truly {photo['_truth']})")
    tensor = {"name": image_input, "datatype": "BYTES", "shape": [len(photos)],
              "parameters": {"content_type": "base64"},
              "data": [base64.b64encode(photo[image_input]).decode() for photo in photos]}
    answer = v2_client.post(f"{direct_url}/v2/models/{name}/infer", json={"inputs": [tensor]})
    if answer.status_code != 200 or answer.json()["outputs"][0]["data"] != [p["label"] for p in expected]:
        raise DemoError(f"{name}: V2 infer: HTTP {answer.status_code}: {answer.text[:300]}")
    summary["v2"][name] = {"url": direct_url, **answer.json()}
    echo(f"      POST {direct_url}/v2/models/{name}/infer (the photos as base64 BYTES) -> the same predictions")


def _takes_epochs(name: str) -> bool:
    spec = get_spec(name)
    try:
        spec.flavor.check_options(spec, TrainOptions(epochs=1))
    except FlavorError:
        return False
    return True


def run_demo(config: OrchardConfig, *, rows: int | None = None, seed: int = 0, epochs: int | None = None, days: int = 3,
             models: list[str] | None = None, echo: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    config = example_config(config)
    activate(config.projects)
    storage = Storage(config.storage)
    summary: dict = {"storage": config.storage, "projects": [ref.module for ref in config.projects], "models": {},
                     "predictions": {}, "v2": {}, "refused": {}, "monitoring": {}}

    def step(number: int, text: str) -> None:
        echo(f"[{number}/{STEPS}] {text}  ({time.perf_counter() - started:.1f}s)")

    found = generators()
    groups = pipeline_order(all_groups())
    step(1, f"{days} day(s) of raw data from {', '.join(found) or 'no generator'} "
            f"(projects: {', '.join(summary['projects'])}), each day followed by every feature pipeline (step 2)")
    summary["features"] = {}
    with ray_session(config, quiet=True):
        for day in range(1, days + 1):
            for name, generator in found.items():
                generated = generator.write(storage, rows=rows or generator.default_rows, seed=seed + day - 1,
                                            databases=config.databases)
                echo(f"      day {day}, {name}: {generated.rows} records in {len(generated.files)} file(s), "
                     f"e.g. {storage.uri(generated.files[0])}")
            if day == 1:
                step(2, "running the feature pipelines on Ray Data into the offline store, after every day")
            for group in groups:
                report = run_feature_pipeline(storage, group, config.databases, config.online_store)
                echo(f"      day {day}, {group.ref}: {report.rows_written} rows from {report.files_read} source(s) "
                     f"(table version {report.table_version})")
                previous = summary["features"].get(group.ref, {"rows_written": 0})
                summary["features"][group.ref] = {**report.to_dict(),
                                                  "rows_written": previous["rows_written"] + report.rows_written}

        step(3, "building point-in-time correct training datasets (train/validation/test, fitted transforms)")
        for view in all_views():
            metadata = create_training_dataset(storage, view, RandomSplit(seed=seed))
            echo(f"      {metadata['view']} v{metadata['version']}: "
                 + ", ".join(f"{n} {c}" for n, c in metadata["rows"].items()))

        known = list(model_specs())
        unknown = sorted(set(models or ()) - set(known))
        if unknown:
            raise DemoError(f"no model {', '.join(unknown)} in the loaded projects; they define {', '.join(known)}")
        models = [name for name in known if not models or name in models]
        step(4, f"training {len(models)} models (trees: a grid search, one Ray task per candidate; networks: "
                f"Ray Train, {f'{epochs} epochs' if epochs else 'each its own epochs'})")
        for name in models:
            options = {"epochs": epochs} if epochs and _takes_epochs(name) else {}
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

        from serve.app import deploy, replica_urls, stop_serving

        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        url = deploy(config)
        # The replica's own port (Serve's direct ingress) when Ray runs with it: the V2 requests go there.
        direct_url = (replica_urls(wait_s=30) or [url])[0]
        registry = ModelRegistry(storage)
        outcomes: dict[str, list[dict]] = {}
        try:
            with httpx.Client(base_url=url, timeout=60) as client, httpx.Client(timeout=60) as v2_client:
                for name in summary["models"]:
                    if image_inputs(registry.get(name).card["signature"]):
                        _query_images(client, v2_client, direct_url, registry, storage, name, summary, echo)
                        continue
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
                    outcomes[name] = _more_traffic(client, storage, name, response, rows_with_truth)
                if outcomes:
                    step(7, "a new day: the outcomes of these predictions arrive (POST .../outcomes); monitoring "
                            "joins them to the prediction log and checks drift against each training split")
                    _monitor(client, storage, outcomes, summary, echo)
        finally:
            stop_serving()

    step(8, "shut down Serve and Ray")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    echo(f"done in {summary['seconds']}s; explore with `orchard --storage {config.storage} models list`")
    return summary


def _more_traffic(client: httpx.Client, storage: Storage, name: str, first: httpx.Response,
                  first_rows: list[dict]) -> list[dict]:
    """More held-out rows of the model, ten per request; the outcomes of every request so far (the truth of each
    row, by request id and index), to send once "the next day" comes."""
    sent = [(first.headers["x-request-id"], first_rows)]
    rows = held_out_rows(storage, name, MONITORED_ROWS + len(first_rows))[len(first_rows):]
    for start in range(0, len(rows), 10):
        part = rows[start:start + 10]
        response = client.post(f"/v1/models/{name}:predict",
                               json={"instances": [{k: v for k, v in row.items() if k != "_truth"} for row in part]})
        if response.status_code != 200:
            raise DemoError(f"{name}: HTTP {response.status_code}: {response.text}")
        sent.append((response.headers["x-request-id"], part))
    return [{"request_id": request_id, "index": index, "outcome": row["_truth"]}
            for request_id, part in sent for index, row in enumerate(part)]


def _monitor(client: httpx.Client, storage: Storage, outcomes: dict[str, list[dict]], summary: dict,
             echo: Callable[[str], None]) -> None:
    from monitoring.monitor import monitor
    from monitoring.report import write_report
    from serve.prediction_log import read_predictions

    for name, records in outcomes.items():
        response = client.post(f"/v1/models/{name}/outcomes", json={"outcomes": records})
        if response.status_code != 200:
            raise DemoError(f"{name}: outcomes: HTTP {response.status_code}: {response.text}")
    wanted = {name: {r["request_id"] for r in records} for name, records in outcomes.items()}
    deadline = time.monotonic() + 30  # the service writes its prediction log about once a second
    while time.monotonic() < deadline and any(
            not ids <= {r["request_id"] for r in read_predictions(storage, name)}
            for name, ids in wanted.items()):
        time.sleep(0.25)
    for name in outcomes:
        report = write_report(storage, monitor(storage, name))
        section = report["versions"][str(ModelRegistry(storage).aliases(name)["production"])]["overall"]
        performance = section["performance"]
        figures = ", ".join(f"{k} {v:.3f}" for k, v in performance["metrics"].items()
                            if k in ("accuracy", "macro_f1", "mae", "rmse")) if performance else "no outcomes"
        page = storage.uri(f"{report['folder']}/report.html")
        summary["monitoring"][name] = {"page": page, "predictions": section["predictions"],
                                       "with_outcome": section["with_outcome"], "performance": performance,
                                       "drifted_features": section["drifted_features"], "alerts": report["alerts"]}
        echo(f"      {name}: {section['with_outcome']} of {section['predictions']} predictions with an outcome; "
             f"live {figures}; drifted inputs: {', '.join(section['drifted_features']) or 'none'}")
        echo(f"        report {page}")


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
                      for k, v in list(row.items())[:6] if k != "_truth")
    if len(row) > 7:
        shown += ", ..."
    if isinstance(prediction, dict):
        confidence = prediction["probabilities"][prediction["label"]]
        return f"{shown} -> {prediction['label']} (p={confidence:.2f}; truly {row['_truth']})"
    return f"{shown} -> {prediction:.2f} (truly {row['_truth']:.2f})"
