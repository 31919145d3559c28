"""`orchard demo` as a user runs it: a subprocess with a Ray of its own (the session's `demo_run`)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import skops.io as sio

from features.catalog import generators
from features.transforms import TransformSet
from orchard.registry import ModelRegistry
from orchard.storage import Storage
from tests.helpers import REPOSITORY, failure_looking_lines, free_port, processes_mentioning
from training.catalog import model_specs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # ~9 min: beyond make test's budget

PNG = b"\x89PNG\r\n\x1a\n"
DEMO_MODELS = tuple(model_specs())  # every model of the example projects, which the demo loads with no project set


def _own_predictions(folder: Path, instances: list[dict]):
    """What a registered decision tree answers, loaded directly with skops and its stored transforms."""
    raw = (folder / "model.skops").read_bytes()
    estimator = sio.loads(raw, trusted=sio.get_untrusted_types(data=raw))
    transforms = TransformSet.from_json((folder / "transforms.json").read_text())
    columns = json.loads((folder / "model.json").read_text())["signature"]["model_inputs"]
    return estimator.predict(np.array([[row[c] for c in columns] for row in transforms.transform_rows(instances)]))


@pytest.mark.timeout(960)
def test_demo_trains_and_serves_every_example_model_and_leaves_no_ray_process(demo_run):
    result, storage, ray_temp, port = demo_run.result, demo_run.storage, demo_run.ray_temp, demo_run.port
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)

    for step in range(1, 9):
        assert f"[{step}/8]" in result.stderr
    assert failure_looking_lines(result.stderr) == []  # a healthy run prints only its own progress
    fruit_rows = generators()["fruit"].default_rows
    assert summary["features"]["fruit_measurements:1"]["rows_written"] == 3 * fruit_rows  # three days (--days 3)
    assert summary["refused"] == {}
    assert sorted(summary["models"]) == sorted(DEMO_MODELS)
    for name in DEMO_MODELS:
        assert summary["models"][name]["version"] == 1
        served = summary["predictions"][name]
        sent = served.get("instances") or served["files"]  # rows of features, or photo files uploaded
        assert served["version"] == 1 and len(served["predictions"]) == len(sent) > 0
        # The same rows through the Open Inference Protocol, sent to the replica's own port (direct ingress).
        v2 = summary["v2"][name]
        assert v2["model_name"] == name and v2["model_version"] == "1"
        assert urlsplit(v2["url"]).port != port
        first = v2["outputs"][0]
        assert first["shape"][0] == len(sent)
        assert first["data"] == [p["label"] if isinstance(p, dict) else p for p in served["predictions"]]
    for name in ("fruit_classifier", "surf_regressor"):
        served = summary["predictions"][name]
        expected = _own_predictions(storage / "models" / name / "1", served["instances"])
        if name == "fruit_classifier":
            classes = ["apple", "orange"]
            assert [p["label"] for p in served["predictions"]] == [classes[int(i)] for i in expected]
        else:
            assert served["predictions"] == list(expected)

    # A new day brought the outcomes of the tabular models' predictions: each got its monitoring report.
    tabular = [name for name in DEMO_MODELS if "instances" in summary["predictions"][name]]
    assert sorted(summary["monitoring"]) == sorted(tabular)
    reports = {}
    for name in tabular:
        monitoring = summary["monitoring"][name]
        # The rows shown, the same rows again through V2, and 40 more; outcomes came for the V1 requests.
        assert (monitoring["predictions"], monitoring["with_outcome"]) == (48, 44)
        assert monitoring["performance"] is not None
        page = Path(monitoring["page"])
        report = reports[name] = json.loads((page.parent / "report.json").read_text())
        # Every input got a drift verdict (whether a few dozen rows look drifted is up to chance: the p-values of
        # rows from the training distribution are uniform; the statistics' own tests check the false-alarm rate).
        inputs = [i["name"] for i in json.loads((storage / "models" / name / "1" / "model.json").read_text())
                  ["signature"]["inputs"]]
        drift = report["versions"]["1"]["overall"]["drift"]
        assert drift and set(drift) <= set(inputs), name
        assert all(result["drifted"] in (True, False) for result in drift.values())
        assert monitoring["drifted_features"] == sorted(n for n, result in drift.items() if result["drifted"])
        assert name in page.read_text()
        for plot in ("performance.png", "drift.png"):
            assert (page.parent / plot).read_bytes().startswith(PNG), (name, plot)
    fruit = summary["monitoring"]["fruit_classifier"]
    fruit_drift = reports["fruit_classifier"]["versions"]["1"]["overall"]["drift"]
    assert sorted(fruit_drift) == ["blue", "diameter_mm", "green", "red", "smoothness", "weight_g"]
    accuracy = fruit["performance"]["metrics"]["accuracy"]
    assert accuracy >= summary["models"]["fruit_classifier"]["metrics"]["accuracy"] - 0.1
    assert (Path(fruit["page"]).parent / "confusion_over_time.png").read_bytes().startswith(PNG)
    gauges = (Path(fruit["page"]).parent / "metrics.prom").read_text()
    assert f'orchard_monitor_metric{{model="fruit_classifier",version="1",metric="accuracy"}} {accuracy:.10g}' \
        in gauges

    deadline = time.monotonic() + 20
    while processes_mentioning(ray_temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(ray_temp) == []


@pytest.mark.timeout(600)
def test_the_demo_run_again_adds_the_next_day_and_registers_version_2(demo_run, tmp_path, ray_temp):
    """README: "Run it again and it adds the next days of data and registers version 2" (on a copy of the session's
    demo store, for the fruit project and its tree only)."""
    storage = tmp_path / "store"
    shutil.copytree(demo_run.registered().storage, storage)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "RAY_"))}
    env.update(RAY_TMPDIR=ray_temp, ORCHARD_NUM_CPUS="2")
    result = subprocess.run([str(Path(sys.executable).parent / "orchard"), "--storage", str(storage), "--project",
                             str(REPOSITORY / "examples" / "fruit"), "demo", "--days", "1", "--model",
                             "fruit_classifier", "--port", str(free_port()), "--json"],
                            capture_output=True, text=True, timeout=540, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert failure_looking_lines(result.stderr) == []
    summary = json.loads(result.stdout)
    # Only the new day was read: the three days already in the table were not read again.
    assert summary["features"]["fruit_measurements:1"]["rows_written"] == generators()["fruit"].default_rows
    days = sorted(p.relative_to(storage).as_posix() for p in storage.glob("landing/**/day-*") if p.is_dir())
    before = sorted(p.relative_to(demo_run.storage).as_posix() for p in demo_run.storage.glob("landing/**/day-*")
                    if p.is_dir())
    assert days == sorted([*before, "landing/fruit/day-0004"])
    assert summary["models"] == {"fruit_classifier": summary["models"]["fruit_classifier"]}
    assert summary["models"]["fruit_classifier"]["version"] == 2
    assert summary["predictions"]["fruit_classifier"]["version"] == 2
    registry = ModelRegistry(Storage(str(storage)))
    assert registry.versions("fruit_classifier") == [1, 2]
    assert registry.get("fruit_classifier", "production").version == 2
    first, second = (registry.get("fruit_classifier", v).card["lineage"] for v in (1, 2))
    assert (first["dataset_version"], second["dataset_version"]) == (1, 2), (first, second)
