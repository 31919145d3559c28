"""`ray job submit --working-dir <project>` against a Ray started with `ray start --head`, as a deployment runs jobs."""

import json
import subprocess
import textwrap
import urllib.error
import urllib.request

import pytest

from orchard.registry import ModelRegistry
from orchard.storage import Storage
from tests.ray_head import ray_head_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # one `ray start` cluster for the module: ~4 min

# The job's driver goes through orchard.runtime.ray_session, as every Orchard command does, runs ten tasks, and
# prints one line of JSON about where it ran. Expected values are computed, so they never appear in the echoed
# entrypoint that heads the job's log.
PROBE_JOB = textwrap.dedent("""
    import json, os, sys
    import ray
    import orchard.runtime
    from orchard.config import OrchardConfig
    from orchard.runtime import ray_session

    @ray.remote
    def square(x):
        return x * x, os.environ.get("TF_USE_LEGACY_KERAS")

    with ray_session(OrchardConfig.from_sources(env={}, storage=sys.argv[1]), quiet=True):
        results = ray.get([square.remote(x) for x in range(10)])
        uploaded = [os.path.join(folder, name) for folder, _, names in os.walk(".") for name in names]
        report = {
            "gcs_address": ray.get_runtime_context().gcs_address,
            "cpus": ray.cluster_resources().get("CPU"),
            "sum_of_squares": sum(value for value, _ in results),
            "legacy_keras": {"driver": os.environ.get("TF_USE_LEGACY_KERAS"),
                             "workers": sorted({str(flag) for _, flag in results})},
            "orchard_imported_from": os.path.relpath(orchard.runtime.__file__),
            "working_dir_entries": sorted(os.listdir(".")),
            "working_dir_bytes": sum(os.path.getsize(path) for path in uploaded),
        }
    print("PROBE", json.dumps(report))
""")


@pytest.fixture(scope="module")
def head_cluster():
    with ray_head_cluster(num_cpus=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def probe_job(head_cluster, tmp_path_factory):
    storage = tmp_path_factory.mktemp("job-storage")
    returncode, logs = head_cluster.submit(["python", "-c", PROBE_JOB, str(storage)], timeout=180,
                                           submission_id="probe")
    reports = [line.removeprefix("PROBE ") for line in logs.splitlines() if line.startswith("PROBE {")]
    return returncode, logs, head_cluster.job_info("probe"), json.loads(reports[0]) if reports else None


@pytest.fixture(scope="module")
def probe_report(probe_job):
    _, logs, _, report = probe_job
    if report is None:
        pytest.fail(f"the probe job printed no PROBE line:\n{logs[-3000:]}")
    return report


def test_submitted_job_succeeds_and_logs_what_its_tasks_computed(probe_job):
    returncode, logs, info, report = probe_job
    assert (returncode, info["status"]) == (0, "SUCCEEDED"), logs[-3000:]
    assert report is not None and report["sum_of_squares"] == 285, logs[-3000:]


def test_job_driver_joins_the_head_cluster_through_ray_session(probe_report, head_cluster):
    assert probe_report["gcs_address"] == head_cluster.gcs_address
    assert probe_report["cpus"] == 2.0


def test_job_driver_and_its_workers_run_with_legacy_keras(probe_report):
    assert probe_report["legacy_keras"] == {"driver": "1", "workers": ["1"]}


def test_working_dir_upload_leaves_out_gitignored_folders(probe_report):
    report = probe_report
    assert report["orchard_imported_from"] == "orchard/runtime.py"  # the uploaded copy, not the installed one
    assert {"orchard", "features", "pipelines", "pyproject.toml"} <= set(report["working_dir_entries"])
    assert not {".venv", "orchard-data", ".git"} & set(report["working_dir_entries"])
    assert report["working_dir_bytes"] < 10 * 1024**2


def test_failing_job_is_reported_failed_with_its_exit_code(head_cluster):
    returncode, logs = head_cluster.submit(["python", "-c", "raise SystemExit(3)"], timeout=120,
                                           submission_id="exits-with-3")
    info = head_cluster.job_info("exits-with-3")
    assert returncode != 0, logs
    assert (info["status"], info["driver_exit_code"]) == ("FAILED", 3), info["message"]


def test_job_api_refuses_requests_without_the_cluster_token(head_cluster):
    with urllib.request.urlopen(f"{head_cluster.address}/api/authentication_mode", timeout=10) as response:
        assert json.load(response)["authentication_mode"] == "token"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{head_cluster.address}/api/jobs/", timeout=10)
    assert refused.value.code == 401


PREPARE_JOB = ("import sys; from orchard.config import OrchardConfig; from orchard.runtime import ray_session; "
               "from orchard.storage import Storage; from tests.conftest import prepare_domains; "
               "config = OrchardConfig.from_sources(env={}, storage=sys.argv[1]); "
               "exec('with ray_session(config, quiet=True): prepare_domains(Storage(config.storage), "
               "fruit_rows=600, surf_rows=300)')")
# The scikit-learn models: networks trained by a submitted job are test_cluster.py's and test_user_project.py's.
ALL_MODELS = ["fruit_classifier", "surf_regressor"]


@pytest.fixture(scope="module")
def trained_by_job(head_cluster, tmp_path_factory):
    """Data prepared by one job, then both models trained by `python -m pipelines.train` in a second."""
    storage = str(tmp_path_factory.mktemp("job-training"))
    returncode, logs = head_cluster.submit(["python", "-c", PREPARE_JOB, storage], timeout=300,
                                           submission_id="prepare")
    assert returncode == 0, logs[-3000:]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=head_cluster.working_dir).stdout.strip() or "unknown"
    returncode, logs = head_cluster.submit(
        ["python", "-m", "pipelines.train", *ALL_MODELS, "--alias", "production",
         "--storage", storage, "--json"],
        timeout=600, submission_id="train-all", runtime_env_json={"env_vars": {"ORCHARD_CODE_VERSION": commit}})
    return returncode, logs, Storage(storage), commit


def test_both_models_train_and_register_through_a_submitted_job(trained_by_job):
    returncode, logs, storage, commit = trained_by_job
    assert returncode == 0, logs[-5000:]
    registry = ModelRegistry(storage)
    assert sorted(registry.models()) == sorted(ALL_MODELS)
    for name in ALL_MODELS:
        model = registry.get(name, "production")
        registry.verify(name, model.version)
        assert model.card["metrics"]["beats_baseline"], (name, model.card["metrics"])
        assert model.card["lineage"]["code_version"] == commit  # the uploaded copy has no .git; the env names it


def _test_rows(storage, name: str, count: int = 3) -> list[dict]:
    """Raw rows of the test split the production version was evaluated on, read without Ray."""
    import pyarrow.parquet as pq

    from features.catalog import get_view
    from features.datasets import TrainingDataset
    from training.trainer import get_spec

    card = ModelRegistry(storage).get(name).card
    dataset = TrainingDataset.open(storage, get_view(get_spec(name).view), card["lineage"]["dataset_version"])
    inputs = [item["name"] for item in card["signature"]["inputs"]]
    rows = pq.read_table(storage.path(f"{dataset.location}/test")).to_pylist()
    return [{f: row[f] for f in inputs} for row in rows if all(row[f] is not None for f in inputs)][:count]


def test_serve_deploy_of_the_shipped_config_serves_the_registered_models(trained_by_job, head_cluster, tmp_path):
    """`serve deploy serve/config.yaml` as on a cluster: through the proxy, and at the replica's port that Serve's
    REST API lists for a load balancer."""
    import sys
    import time
    from pathlib import Path

    import httpx
    import yaml
    from ray.serve.schema import ServeInstanceDetails

    from serve.app import replica_addresses
    from tests.helpers import answers, free_port
    from training.predictor import Predictor

    returncode, logs, storage, _ = trained_by_job
    assert returncode == 0, logs[-3000:]
    config = yaml.safe_load((head_cluster.working_dir / "serve" / "config.yaml").read_text())
    port = free_port()
    config["http_options"].update(host="127.0.0.1", port=port)  # the file's 0.0.0.0:8000, made safe for a test
    config["applications"][0]["args"]["storage"] = storage.root_uri
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = str(Path(sys.executable).parent / "serve")
    deployed = subprocess.run([serve_cli, "deploy", str(path), "--address", head_cluster.address],
                              env=head_cluster.env, capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    try:
        proxy = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            # What a load balancer reads: Serve's target groups, from the dashboard's REST API.
            details = ServeInstanceDetails(**head_cluster.request("GET", "/api/serve/applications/"))
            targets = replica_addresses(details, "orchard")
            if targets and answers(f"{proxy}/v2/health/ready"):
                break
            time.sleep(1)
        assert len(targets) == 1, targets
        direct = targets[0]

        registry = ModelRegistry(storage)
        for name in ALL_MODELS:
            instances = _test_rows(storage, name)
            expected = Predictor.load(registry, name, 1).predict(instances)
            for url in (proxy, direct):
                response = httpx.post(f"{url}/v1/models/{name}:predict", json={"instances": instances}, timeout=120)
                assert response.status_code == 200, (url, response.text)
                assert response.json()["version"] == 1 and response.json()["predictions"] == expected, (url, name)
    finally:
        subprocess.run([serve_cli, "shutdown", "--yes", "--address", head_cluster.address],
                       env=head_cluster.env, capture_output=True, timeout=120)
