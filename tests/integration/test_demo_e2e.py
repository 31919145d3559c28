"""`orchard demo` as a user runs it: a subprocess with a Ray of its own."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio

from tests.helpers import free_port, processes_mentioning

pytestmark = pytest.mark.e2e


@pytest.fixture()
def ray_temp():
    path = tempfile.mkdtemp(prefix="orchard-demo-ray-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_serves_version_one_models_and_leaves_no_ray_process(tmp_path, ray_temp):
    storage = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "RAY_"))}
    env.update(RAY_TMPDIR=ray_temp, ORCHARD_NUM_CPUS="2")
    orchard = Path(sys.executable).parent / "orchard"
    result = subprocess.run(
        [str(orchard), "--storage", str(storage), "demo", "--rows", "1000", "--port", str(free_port()), "--json"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)

    for step in range(1, 7):
        assert f"[{step}/6]" in result.stderr
    assert summary["features"]["rows_written"] == 1000
    for name in ("fruit_classifier", "apple_weight_regressor"):
        assert summary["models"][name]["version"] == 1
        served = summary["predictions"][name]
        assert served["version"] == 1
        raw = (storage / "models" / name / "1" / "model.skops").read_bytes()
        estimator = sio.loads(raw, trusted=sio.get_untrusted_types(data=raw))
        features = [i["name"] for i in json.loads((storage / "models" / name / "1" / "model.json").read_text())["signature"]["inputs"]]
        expected = estimator.predict(np.array([[row[f] for f in features] for row in served["instances"]]))
        got = [p["label"] for p in served["predictions"]] if name == "fruit_classifier" else served["predictions"]
        assert list(got) == list(expected)

    deadline = time.monotonic() + 20
    while processes_mentioning(ray_temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(ray_temp) == []
