"""A user's own project, in a folder outside the repository, through every step: as commands with a local Ray in
the project's folder, and as jobs sent with `ray job submit` to a `ray start --head` cluster. No file of Orchard
changes.

The project (`tests/projects/greenhouse`, copied to a temporary folder) has two feature groups (CSV and SQL), a
view joining them point-in-time, its own transformation, its own scikit-learn compatible estimator class and its
own Keras architecture with a custom layer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from orchard.projects import ProjectRef, activate, active
from orchard.registry import ModelRegistry
from orchard.storage import Storage
from tests.helpers import REPOSITORY, answers, free_port, processes_mentioning, readme_block
from tests.ray_head import RayHeadCluster, ray_head_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # each way ~4.5 min

FIXTURE = REPOSITORY / "tests" / "projects" / "greenhouse"
MODELS = ("yield_ridge", "yield_resnet")
PYPROJECT = """\
[project]
name = "greenhouse"
version = "0.1.0"

[tool.orchard]
projects = ["greenhouse"]
"""


def _repository_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPOSITORY,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def repository_before():
    return _repository_state()


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, repository_before) -> Path:
    root = tmp_path_factory.mktemp("user-project")
    assert REPOSITORY not in root.parents
    shutil.copytree(FIXTURE, root / "greenhouse", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pyproject.toml").write_text(PYPROJECT)
    return root


@pytest.fixture()
def greenhouse_loaded(project_dir):
    """The project loaded in this test process too (to compare served answers with its models' own)."""
    before = active()
    activate([ProjectRef("greenhouse", str(project_dir / "greenhouse"), "test")])
    yield
    activate(before)


def _env(ray_temp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "RAY_"))}
    env.update(RAY_TMPDIR=ray_temp, ORCHARD_NUM_CPUS="2")
    return env


def _orchard(project_dir: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    orchard = Path(sys.executable).parent / "orchard"
    result = subprocess.run([str(orchard), *args], cwd=project_dir, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"orchard {' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def _test_rows(storage: Storage, name: str, count: int = 4) -> list[dict]:
    import pyarrow.parquet as pq

    card = ModelRegistry(storage).get(name).card
    location = card["lineage"]["dataset_location"]
    inputs = [item["name"] for item in card["signature"]["inputs"]]
    rows = pq.read_table(f"{location}/test").to_pylist()
    return [{f: row[f] for f in inputs} for row in rows if all(row[f] is not None for f in inputs)][:count]


def _check_served(url: str, storage: Storage) -> None:
    from training.predictor import Predictor

    registry = ModelRegistry(storage)
    for name in MODELS:
        instances = _test_rows(storage, name)
        response = httpx.post(f"{url}/v1/models/{name}:predict", json={"instances": instances}, timeout=120)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["predictions"] == Predictor.load(registry, name).predict(instances), name


def _check_registered(storage: Storage) -> None:
    registry = ModelRegistry(storage)
    assert sorted(registry.models()) == sorted(MODELS)
    for name in MODELS:
        card = registry.get(name, "production").card
        assert card["metrics"]["beats_baseline"], (name, card["metrics"])
        assert card["metrics"]["test"]["r2"] > 0.5, (name, card["metrics"]["test"])
    ridge = registry.get("yield_ridge").card
    assert ridge["lineage"]["model_spec"]["estimator"] == "greenhouse.estimators.ShrunkenRidge"
    assert "greenhouse.estimators.ShrunkenRidge" in ridge["flavor_config"]["trusted_types"]
    assert registry.get("yield_resnet").card["flavor_config"] == {"build_module": "greenhouse._networks"}
    transforms = json.loads(registry.read_file("yield_ridge", 1, "transforms.json"))
    assert "Log1p" in json.dumps(transforms)
    projects = registry.get("yield_ridge").card["lineage"]["projects"]
    assert [(p["module"], Path(p["folder"]).name) for p in projects] == [("greenhouse", "greenhouse")]


def test_orchard_check_in_the_project_folder_finds_it_from_pyproject(project_dir, ray_temp):
    """`orchard check` run in the folder finds the project through `[tool.orchard] projects` and lists it."""
    check = json.loads(_orchard(project_dir, _env(ray_temp), "check", "--json").stdout)
    assert check["ok"] and check["projects"] == [f"greenhouse ({project_dir / 'greenhouse'})"]
    assert [g["group"] for g in check["groups"]] == ["bed_climate:1", "plants:1"]
    assert [m["model"] for m in check["models"]] == sorted(MODELS)


def test_a_project_outside_the_repository_runs_every_step_with_a_local_ray(project_dir, ray_temp, greenhouse_loaded):
    env = _env(ray_temp)
    for _ in range(2):
        _orchard(project_dir, env, "generate", "greenhouse")
    for group in ("plants", "bed_climate"):
        report = json.loads(_orchard(project_dir, env, "features", "run", group, "--json").stdout)
        assert report["rows_written"] > 0 and report["rows_quarantined"] == 0, report
    dataset = json.loads(_orchard(project_dir, env, "datasets", "create", "plant_yield", "--json").stdout)
    assert set(dataset["unmatched"].values()) == {0}, dataset
    trained = json.loads(_orchard(project_dir, env, "train", *MODELS, "--alias", "production", "--json").stdout)
    assert [(t["model"], t["registered"]) for t in trained] == [(m, True) for m in MODELS]
    storage = Storage(str(project_dir / "orchard-data"))
    _check_registered(storage)

    port = free_port()
    orchard = Path(sys.executable).parent / "orchard"
    server = subprocess.Popen([str(orchard), "serve", "--port", str(port)], cwd=project_dir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while not answers(f"{url}/v2/health/ready") and time.monotonic() < deadline:
            assert server.poll() is None, server.communicate()[1][-3000:]
            time.sleep(1)
        _check_served(url, storage)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=120)
    assert server.returncode == 0
    deadline = time.monotonic() + 20
    while processes_mentioning(ray_temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(ray_temp) == []


def _wait_until_served(cluster: RayHeadCluster, submission_id: str, port: int) -> str:
    """The URL of a serving job's app once it is ready; fails with the job's log if the job ends first."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while not answers(f"{url}/v2/health/ready") and time.monotonic() < deadline:
        status = cluster.job_info(submission_id)["status"]
        assert status in ("PENDING", "RUNNING"), cluster.job_logs(submission_id)[-3000:]
        time.sleep(1)
    return url


@pytest.fixture(scope="module")
def cluster(project_dir):
    """A `ray start --head` cluster whose jobs get the project's folder as their working directory."""
    with ray_head_cluster(num_cpus=2, working_dir=project_dir) as started:
        yield started


def test_the_same_project_runs_as_jobs_on_a_ray_start_cluster(cluster, project_dir, ray_temp, tmp_path,
                                                              greenhouse_loaded):
    storage = Storage(str(tmp_path / "cluster-storage"))
    for _ in range(2):  # the raw data lands from outside, as from any other system (`generate` uses no Ray)
        _orchard(project_dir, _env(ray_temp), "--storage", storage.root_uri, "generate", "greenhouse")
    steps = [
        ("plants", ["python", "-m", "pipelines.features", "plants", "--storage", storage.root_uri]),
        ("climate", ["python", "-m", "pipelines.features", "bed_climate", "--storage", storage.root_uri]),
        ("dataset", ["python", "-m", "pipelines.datasets", "plant_yield", "--storage", storage.root_uri]),
        ("train", ["python", "-m", "pipelines.train", *MODELS, "--alias", "production", "--storage", storage.root_uri]),
    ]
    for name, args in steps:
        returncode, logs = cluster.submit(args, timeout=600, submission_id=name)
        assert returncode == 0, f"job {name}:\n{logs[-4000:]}"
    _check_registered(storage)
    port = free_port()
    cluster.start(["python", "-m", "pipelines.cli", "--storage", storage.root_uri, "serve", "--port", str(port)],
                  submission_id="serve")
    try:
        _check_served(_wait_until_served(cluster, "serve", port), storage)
    finally:
        status = cluster.stop_job("serve")
    assert status == "STOPPED", cluster.job_logs("serve")[-3000:]


def test_the_readme_job_commands_run_the_project_orchard_init_writes(cluster, tmp_path, ray_temp):
    """README's `ray job submit` lines ("Your own project") as written, in the folder `orchard init` writes, with this
    cluster's address for HEAD:8265, a folder for /shared/orchard-data and a free port for 8000."""
    script = readme_block("## Your own project", which=1)
    assert script.count("ray job submit --address http://HEAD:8265 --working-dir . ") == 5, script
    _orchard(tmp_path, _env(ray_temp), "init", "my-shop")
    port, storage = free_port(), tmp_path / "shared-orchard-data"
    script = (script.replace("http://HEAD:8265", cluster.address).replace("/shared/orchard-data", str(storage))
              .replace("8000", str(port)))
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path / "my-shop", env=cluster.env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-3000:]}"
    (serving,) = [job for job in cluster.request("GET", "/api/jobs/") if f"serve --port {port}" in job["entrypoint"]]
    try:
        url = _wait_until_served(cluster, serving["submission_id"], port)
        order = {"basket_eur": 80, "items": 3, "delivery_days": 9, "channel": "web"}  # the README's curl line's
        response = httpx.post(f"{url}/v1/models/returns_classifier:predict", json={"instances": [order]}, timeout=60)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["model"], answer["version"], answer["predictions"][0]["label"]) == ("returns_classifier", 1,
                                                                                           "yes")
    finally:
        status = cluster.stop_job(serving["submission_id"])
    assert status == "STOPPED", cluster.job_logs(serving["submission_id"])[-3000:]


def test_no_file_of_orchard_changed(project_dir, repository_before):
    assert _repository_state() == repository_before
