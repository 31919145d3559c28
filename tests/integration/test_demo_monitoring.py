"""`orchard demo` for one model, as a user runs it: after the predictions, a new day brings their outcomes and the
demo's monitoring report shows the live metrics and no drift (the requests come from the training distribution)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import failure_looking_lines, free_port, processes_mentioning

pytestmark = pytest.mark.serve

FRUIT = Path(__file__).resolve().parents[2] / "examples" / "fruit"
PNG = b"\x89PNG\r\n\x1a\n"
INPUTS = ["red", "green", "blue", "weight_g", "diameter_mm", "smoothness"]


def test_the_demo_monitors_its_predictions_once_their_outcomes_arrive(tmp_path, ray_temp):
    storage = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "RAY_"))}
    env.update(RAY_TMPDIR=ray_temp, ORCHARD_NUM_CPUS="2")
    orchard = Path(sys.executable).parent / "orchard"
    result = subprocess.run(
        [str(orchard), "--storage", str(storage), "--project", str(FRUIT), "demo", "--days", "2", "--model",
         "fruit_classifier", "--port", str(free_port()), "--json"],
        capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    for step in range(1, 9):
        assert f"[{step}/8]" in result.stderr
    assert failure_looking_lines(result.stderr) == []
    assert sorted(summary["models"]) == ["fruit_classifier"]

    monitoring = summary["monitoring"]["fruit_classifier"]
    # The 4 rows shown, the same 4 again through V2, and 40 more; outcomes came for the V1 requests.
    assert (monitoring["predictions"], monitoring["with_outcome"]) == (48, 44)
    accuracy = monitoring["performance"]["metrics"]["accuracy"]
    assert accuracy >= summary["models"]["fruit_classifier"]["metrics"]["accuracy"] - 0.1
    # Every input got a verdict on 48 rows (whether a few dozen rows look drifted is up to chance: the p-values of
    # rows from the training distribution are uniform, and the statistics' own tests check the false-alarm rate).
    page = Path(monitoring["page"])
    report = json.loads((page.parent / "report.json").read_text())
    drift = report["versions"]["1"]["overall"]["drift"]
    assert sorted(drift) == sorted(INPUTS)
    assert all(result["drifted"] in (True, False) and result["test"]["method"] == "ks" for result in drift.values())
    assert monitoring["drifted_features"] == sorted(name for name, result in drift.items() if result["drifted"])
    html = page.read_text()
    assert "fruit_classifier" in html and "weight_g" in html
    for plot in ("performance.png", "confusion_over_time.png", "drift.png"):
        assert (page.parent / plot).read_bytes().startswith(PNG)
    gauges = (page.parent / "metrics.prom").read_text()
    assert f'orchard_monitor_metric{{model="fruit_classifier",version="1",metric="accuracy"}} {accuracy:.10g}' \
        in gauges
    deadline = time.monotonic() + 20
    while processes_mentioning(ray_temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(ray_temp) == []  # the demo stopped its Ray and Serve
