"""`python -m pipelines.retrain MODEL --follow` as a job runs it: a step per interval until SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # a Ray of its own: ~30 s


def test_follow_steps_every_interval_and_stops_on_sigterm(trained_models, ray_temp):
    storage, _ = trained_models
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "RAY_"))}
    env.update(RAY_TMPDIR=ray_temp, ORCHARD_NUM_CPUS="2")
    job = subprocess.Popen([sys.executable, "-m", "pipelines.retrain", "fruit_classifier", "--follow", "--interval",
                            "1s", "--storage", storage.root_uri, "--json"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while len(lines) < 2 and time.monotonic() < deadline:
        line = job.stdout.readline()
        if line.startswith("{"):
            lines.append(line)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 0, stderr[-2000:]
    steps = [json.loads(line) for line in lines]
    assert len(steps) == 2  # one per interval, each printed as it ends
    assert all(step["action"] == "none" and step["message"] == "no trigger of the retraining policy fired"
               for step in steps)
