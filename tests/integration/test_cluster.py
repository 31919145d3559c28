"""From laptop to cluster: Orchard's jobs on a two-node Ray cluster whose only storage is an S3-compatible server.

One module-scoped cluster (`ray start --head` plus one node joined with `ray start --address`, each with a temp
folder of its own) gets the object store's address and keys in its nodes' environment, as a cloud cluster's nodes
get them from their image or instance profile; the jobs only get `--storage s3://...`. Through the Jobs API they
run the feature pipeline over raw data (some of it bad), build the training dataset, train a scikit-learn
model and a tf-keras network (one worker, then two workers on the two nodes), run batch inference, serve with one
replica per node, and monitor the logged predictions against outcomes. The test then reads every persistent
thing back from the bucket and greps every log of the run for the secret key.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from orchard.registry import ModelRegistry
from orchard.storage import Storage
from tests.conftest import S3_TEST_KEYS
from tests.helpers import answers, failure_looking_lines, free_port
from tests.ray_head import WorkerNode, ray_head_cluster

# The first test's set-up runs every job of the path (`pipeline`): about 6 minutes, over 10 in a slow hour.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]

GLOBAL_BATCH = 64

# One job trains the fruit network twice on the same dataset with the same global batch: one worker taking 64 rows
# a step, then two workers (spread over the two nodes) taking 32 each. It prints both runs' last epoch.
NETWORK_JOB = """
import dataclasses, json, sys
import ray
from ray.util.state import list_actors
from orchard.config import OrchardConfig
from orchard.projects import activate
from orchard.runtime import ray_session
from orchard.storage import Storage
config = OrchardConfig.from_sources(env={}, storage=sys.argv[1])
activate(config.projects)
from training.flavors.keras import train_network
from training.model_data import prepare_splits
from training.trainer import get_spec
spec = get_spec("fruit_dnn_classifier")
storage = Storage(config.storage)
runs, seen = {}, set()
with ray_session(config, quiet=True):
    data = prepare_splits(storage, spec, None)  # one dataset version, read once, for both runs
    for workers in (1, 2):
        flavor = dataclasses.replace(spec.flavor, batch_size=int(sys.argv[2]) // workers)
        trained = train_network(storage, dataclasses.replace(spec, flavor=flavor), workers=workers,
                                epochs=int(sys.argv[3]), data=data)
        # Ray Train's workers are actors: the nodes they ran on, from Ray's state API
        actors = [a for a in list_actors(limit=10000, detail=True) if "TrainWorker" in a.class_name]
        nodes = [a.node_id for a in actors if a.actor_id not in seen]
        seen.update(a.actor_id for a in actors)
        runs[workers] = {"last": trained["history"][-1], "environment": trained["worker_environment"],
                         "train_rows": data.dataset.metadata["rows"]["train"],
                         "run_path": trained["run_path"], "worker_nodes": nodes,
                         "fit_seconds": [epoch["fit_seconds"] for epoch in trained["history"]]}
    cluster_nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
print("NETWORKS " + json.dumps({"runs": runs, "nodes": cluster_nodes}))
"""


def _json_document(logs: str) -> dict:
    """The one JSON document a job's --json prints, after the echoed entrypoint."""
    start = logs.index("{\n")
    return json.loads(logs[start:logs.index("\n}", start) + 2])


@pytest.fixture(scope="module")
def s3_cluster(s3_server):
    import boto3

    bucket = f"cluster-{uuid.uuid4().hex[:10]}"
    boto3.session.Session(aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"],
                          region_name=s3_server["AWS_REGION"]).client(
        "s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
    # Two nodes on one machine share its ports: Serve's proxy runs on the head only, replicas without ports of
    # their own (on a cloud cluster, each node has its address and both run). A proxy prefers the replicas of its
    # own node; with one proxy, that would leave the other node's replica idle.
    env = {**s3_server, "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}
    with ray_head_cluster(num_cpus=2, worker_nodes=(WorkerNode(num_cpus=2),), env=env,
                          serve_direct_ingress=False) as cluster:
        yield cluster, f"s3://{bucket}/orchard"


@pytest.fixture(scope="module")
def module_monkeypatch():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def pipeline(s3_cluster, s3_server, module_monkeypatch):
    """Every job of the path, in order; their JSON reports and logs by step name."""
    cluster, root = s3_cluster
    monkeypatch = module_monkeypatch
    steps = {
        "features": ["python", "-m", "pipelines.features", "fruit_measurements", "--storage", root, "--json"],
        "dataset": ["python", "-m", "pipelines.datasets", "fruit_classification", "--storage", root, "--json"],
        "train": ["python", "-m", "pipelines.train", "fruit_classifier", "--alias", "production", "--storage", root,
                  "--json"],
        "networks": ["python", "-c", NETWORK_JOB, root, str(GLOBAL_BATCH), "3"],
        "batch": ["python", "-m", "pipelines.batch_inference", "fruit_classifier@production", "--input",
                  "fruit_measurements", "--storage", root, "--json"],
    }
    from fruit.generate import write_fruit

    for name, value in s3_server.items():  # the raw data lands in the bucket from here, as from any other system
        monkeypatch.setenv(name, value)
    generated = write_fruit(Storage(root), rows=900, seed=5, bad_fraction=0.02)
    results = {"generated": generated}
    for name, command in steps.items():
        returncode, logs = cluster.submit(command, timeout=600, submission_id=f"{name}-{uuid.uuid4().hex[:6]}")
        assert returncode == 0, f"job {name} failed:\n{logs[-4000:]}"
        results[name] = logs
    print("job seconds:", {k: round(v) for k, v in cluster.timings.items()})
    return results


def _storage(root: str, s3_server, monkeypatch) -> Storage:
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    return Storage(root)


def test_feature_dataset_and_training_jobs_write_everything_to_the_object_store(pipeline, s3_cluster, s3_server,
                                                                                 monkeypatch):
    from deltalake import DeltaTable
    from fruit.groups import FRUIT_MEASUREMENTS

    from features.store import OfflineStore

    _, root = s3_cluster
    storage = _storage(root, s3_server, monkeypatch)
    generated, features = pipeline["generated"], _json_document(pipeline["features"])
    store = OfflineStore(storage)
    offline = DeltaTable(store.table_uri(FRUIT_MEASUREMENTS)).to_pyarrow_table()
    quarantine = DeltaTable(store.quarantine_uri(FRUIT_MEASUREMENTS)).to_pyarrow_table()
    # every generated record is in the offline table or, with its reason, in quarantine; none twice
    assert features["rows_read"] == features["rows_written"] + features["rows_quarantined"] + features["rows_duplicate"]
    assert features["rows_quarantined"] == generated.bad_records > 0
    assert offline.num_rows == features["rows_written"] == generated.rows - generated.bad_records
    assert quarantine.num_rows == generated.bad_records + features["files_quarantined"]
    assert all(quarantine.column("reason").to_pylist())
    assert len(set(offline.column("fruit_id").to_pylist())) == offline.num_rows
    # the ingestion checkpoint (named by the table's Delta commit) knows every source file
    assert set(store.checkpoint(FRUIT_MEASUREMENTS).files.values()) == set(generated.files)

    dataset = _json_document(pipeline["dataset"])
    folder = f"datasets/fruit_classification/v1/{dataset['version']}"
    assert storage.read_json(f"{folder}/metadata.json")["rows"] == dataset["rows"]
    assert sum(dataset["rows"].values()) > 0 and [entry for entry in storage.find_files(f"{folder}/train")]

    registry = ModelRegistry(storage)
    model = registry.get("fruit_classifier", "production")
    registry.verify("fruit_classifier", model.version)
    assert model.card["metrics"]["beats_baseline"]
    assert registry.alias_history("fruit_classifier")[-1]["to"] == model.version

    batch = _json_document(pipeline["batch"])
    predictions = DeltaTable(storage.uri("predictions/batch/fruit_classifier")).to_pyarrow_table()
    assert predictions.num_rows == batch["predicted"] == offline.num_rows
    assert set(predictions.column("model_version").to_pylist()) == {model.version}


def test_a_network_trained_on_two_nodes_learns_what_one_worker_learns(pipeline, s3_cluster, s3_server, monkeypatch):
    """Data-parallel training with the same global batch ends where one worker's training ends."""
    logs = pipeline["networks"]
    report = json.loads(next(line for line in logs.splitlines() if line.startswith("NETWORKS "))[len("NETWORKS "):])
    one, two = report["runs"]["1"], report["runs"]["2"]
    assert (one["environment"]["world_size"], two["environment"]["world_size"]) == (1, 2)
    assert len(report["nodes"]) == 2 and sorted(two["worker_nodes"]) == sorted(report["nodes"]), report
    for metric, tolerance in (("val_loss", 0.1), ("val_accuracy", 0.05)):
        assert abs(one["last"][metric] - two["last"][metric]) <= tolerance, (metric, one["last"], two["last"])
    assert two["last"]["val_accuracy"] > 0.9, two["last"]
    rates = {workers: run["train_rows"] / min(run["fit_seconds"][1:]) for workers, run in report["runs"].items()}
    print(f"\ntraining samples per second after the first epoch: one worker {rates['1']:.0f}, two workers on two "
          f"nodes {rates['2']:.0f} ({rates['2'] / rates['1']:.2f}x); job {json.dumps(report)}")
    # the runs' checkpoints are in the bucket
    storage = _storage(s3_cluster[1], s3_server, monkeypatch)
    for run in (one, two):
        folder = "train_runs/" + run["run_path"].rstrip("/").split("/train_runs/")[1].split("/")[0]
        assert [entry.path for entry in storage.find_files(folder, "model.keras")], folder


def test_serve_replicas_on_both_nodes_answer_and_log_to_the_object_store(pipeline, s3_cluster, s3_server,
                                                                          monkeypatch):
    cluster, root = s3_cluster
    storage = _storage(root, s3_server, monkeypatch)
    port = free_port()
    cluster.start(["python", "-m", "pipelines.cli", "--storage", root, "serve", "--port", str(port), "--replicas", "2",
                   "--proxy-location", "HeadOnly"], submission_id="serve")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        replicas = []
        while time.monotonic() < deadline:
            if answers(f"{url}/v2/health/ready"):
                details = cluster.request("GET", "/api/serve/applications/")
                deployment = details["applications"]["orchard"]["deployments"]["PredictionService"]
                replicas = [r for r in deployment["replicas"] if r["state"] == "RUNNING"]
                if len(replicas) == 2:
                    break
            time.sleep(1)
        assert len({r["node_id"] for r in replicas}) == 2, replicas

        rows = [{"red": 0.6, "green": 0.9, "blue": 0.3, "weight_g": 140.0, "diameter_mm": 69.0, "smoothness": 0.8},
                {"red": 0.95, "green": 0.6, "blue": 0.1, "weight_g": 270.0, "diameter_mm": 82.0, "smoothness": 0.5}]
        request_ids = []
        with httpx.Client(timeout=60) as client:
            for i in range(60):
                response = client.post(f"{url}/v1/models/fruit_classifier:predict", json={"instances": rows})
                assert response.status_code == 200, response.text
                assert [p["label"] for p in response.json()["predictions"]] == ["apple", "orange"]
                request_ids.append(response.headers["x-request-id"])
            outcomes = [{"request_id": rid, "index": index, "outcome": label}
                        for rid in request_ids for index, label in enumerate(["apple", "orange"])]
            response = client.post(f"{url}/v1/models/fruit_classifier/outcomes", json={"outcomes": outcomes})
            assert response.status_code == 200, response.text

        # both replicas' prediction logs reach the bucket: one writer per replica process, named with its pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            files = [entry.path for entry in storage.find_files("predictions/fruit_classifier", "*.jsonl")]
            writers = {name.rsplit("/", 1)[1].split("-")[1] for name in files}
            if writers >= {str(r["pid"]) for r in replicas}:
                break
            time.sleep(1)
        assert writers == {str(r["pid"]) for r in replicas}, (files, replicas)
    finally:
        assert cluster.stop_job("serve") == "STOPPED"

    returncode, logs = cluster.submit(["python", "-m", "pipelines.monitor", "fruit_classifier", "--storage", root,
                                       "--json"], timeout=300, submission_id="monitor")
    assert returncode == 0, logs[-4000:]
    report = _json_document(logs)
    overall = report["versions"]["1"]["overall"]
    assert overall["predictions"] == 120 and overall["with_outcome"] == 120, overall
    latest = storage.read_json("monitoring/fruit_classifier/latest.json")
    assert storage.exists(f"{latest['folder']}/report.html") and storage.exists(f"{latest['folder']}/drift.png")


def test_a_worker_node_lost_mid_job_leaves_the_job_complete_or_cleanly_failed_and_nothing_half_committed(
        pipeline, s3_cluster, s3_server, monkeypatch, capsys):
    """The second node dies (every process of it SIGKILLed at once) while a feature job runs on both: the job ends
    (succeeded, its lost tasks run again on the head; or failed with a clear error), the table is at its old or its
    next version, never between, and one more run on the node left makes the rows exact. Runs last but one: the
    module's cluster has one node after it."""
    import random

    from fruit.generate import write_fruit

    from features.catalog import get_group
    from features.store import OfflineStore

    cluster, root = s3_cluster
    storage = _storage(root, s3_server, monkeypatch)
    group, store = get_group("fruit_measurements"), OfflineStore(storage)
    version, rows = store.table_version(group), store.read_table(group).num_rows
    write_fruit(storage, rows=20000, seed=11)  # a day with many rows, in files for both nodes' tasks
    job = f"node-lost-{uuid.uuid4().hex[:6]}"
    cluster.start(["python", "-m", "pipelines.features", "fruit_measurements", "--storage", root, "--json"], job)
    deadline = time.monotonic() + 120
    while cluster.job_info(job)["status"] == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(random.Random(20261205).uniform(4, 10))  # into the job's reading and parsing
    status_at_loss = cluster.job_info(job)["status"]
    killed = cluster.lose_worker_node(0)
    assert status_at_loss == "RUNNING", cluster.job_logs(job)[-3000:]  # the loss came in the middle of the job
    deadline = time.monotonic() + 300
    while cluster.job_info(job)["status"] in ("PENDING", "RUNNING") and time.monotonic() < deadline:
        time.sleep(1)
    info, logs = cluster.job_info(job), cluster.job_logs(job)
    assert info["status"] in ("SUCCEEDED", "FAILED"), info
    after = store.table_version(group)
    table = store.read_table(group)
    assert len(set(table.column("fruit_id").to_pylist())) == table.num_rows, "a row was committed twice"
    if info["status"] == "SUCCEEDED":
        assert after == version + 1 and table.num_rows == rows + _json_document(logs)["rows_written"]
    else:
        assert (after, table.num_rows) == (version, rows), "a failed job committed"
        assert "Traceback" not in logs.splitlines()[-1], logs[-3000:]

    returncode, again = cluster.submit(["python", "-m", "pipelines.features", "fruit_measurements", "--storage",
                                        root, "--json"], timeout=300, submission_id=f"{job}-again")
    assert returncode == 0, again[-4000:]
    report = _json_document(again)
    final = store.read_table(group)
    assert len(set(final.column("fruit_id").to_pylist())) == final.num_rows
    new_rows = final.num_rows - rows
    # the day's rows, once, whichever run wrote them
    if info["status"] == "SUCCEEDED":
        assert report["rows_written"] == 0 and new_rows == _json_document(logs)["rows_written"]
    else:
        assert new_rows == report["rows_written"]
    assert new_rows > 19000, new_rows
    with capsys.disabled():
        print(f"\nworker node lost ({killed} processes killed) with the job {status_at_loss.lower()}: the job "
              f"{info['status'].lower()}, table version {version} -> {after}; the next run wrote "
              f"{report['rows_written']} rows; {new_rows} new rows in all, each once")


def test_no_log_of_the_run_holds_the_secret_key(pipeline, s3_cluster):
    cluster, _ = s3_cluster
    secret = S3_TEST_KEYS["AWS_SECRET_ACCESS_KEY"]
    for name, logs in pipeline.items():
        if name == "generated":
            continue
        assert secret not in logs, name
        assert failure_looking_lines(logs) == [], (name, failure_looking_lines(logs))
    searched = 0
    for folder in (cluster.temp_dir, *cluster.worker_temp_dirs):
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix in (".log", ".out", ".err", ".txt", ".json"):
                searched += 1
                assert secret.encode() not in path.read_bytes(), path
    assert searched > 20
