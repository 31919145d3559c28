"""What `orchard init` writes runs end to end as it is: check, generate, features, dataset, train, serve."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import failure_looking_lines, free_port, processes_mentioning, readme_block

pytestmark = pytest.mark.e2e


@pytest.mark.slow  # ~2 min: seven commands, each with a Ray of its own
def test_the_readme_walk_through_runs_the_project_orchard_init_writes(tmp_path, ray_temp):
    """README's "Your own project" commands, as a new user types them in an empty folder: init, check, generate,
    features, dataset, train, serve, and an HTTP prediction with curl."""
    script = readme_block("## Your own project")
    assert script.startswith("orchard init my-shop")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "RAY_"))}
    env.update(RAY_TMPDIR=ray_temp, ORCHARD_NUM_CPUS="2", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace("8000", str(port))], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert failure_looking_lines(result.stdout + result.stderr) == []
    folder = tmp_path / "my-shop"
    assert (folder / "pyproject.toml").is_file() and (folder / "my_shop" / "models.py").is_file()
    assert "cd " in result.stdout and "my_shop/groups.py" in result.stdout  # init says where to go and what to edit
    assert "ok: every definition is consistent" in result.stdout
    assert "returns_classifier version 1 (production)" in result.stdout
    answer = next(line for line in result.stdout.splitlines() if '"predictions"' in line)
    prediction = json.loads(answer[answer.index("{"):answer.rindex("}") + 1])
    assert prediction["model"] == "returns_classifier" and prediction["version"] == 1
    assert prediction["predictions"][0]["label"] == "yes"  # a slow delivery ordered on the web is sent back
    # `orchard serve` printed its replica's own address (direct ingress) beside the proxy's, and stopped cleanly
    # on the script's `kill` (SIGTERM): `wait` gave 0, and Ray's own handler did not dump a stack trace.
    direct = re.findall(r"http://127\.0\.0\.1:(\d+)", result.stdout.split("replicas answering directly")[1])
    assert len(direct) == 1 and int(direct[0]) != port, result.stdout[-2000:]
    assert "SIGTERM received" not in result.stderr
    deadline = time.monotonic() + 20
    while processes_mentioning(ray_temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(ray_temp) == []


def test_init_refuses_a_folder_that_already_holds_a_project(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    orchard = str(Path(sys.executable).parent / "orchard")
    subprocess.run([orchard, "init", str(tmp_path / "shop")], env=env, check=True, capture_output=True)
    again = subprocess.run([orchard, "init", str(tmp_path / "shop")], env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "already holds" in again.stderr
