"""The object store taken away in the middle of runs, as a restart or a network fault does.

A proxy stands between Orchard and the S3 server (moto, which keeps nothing across a real restart): an outage
resets every open connection and refuses new ones for a few seconds, then the same server answers again. Outages
come at seeded random times during feature-pipeline runs (Ray Data reading and writing through pyarrow and
deltalake, in a job of its own) and during registrations and promotions. Each run ends with a retry that bridged
the outage or a clear error; the stores are never left half-written, and one more run makes the totals exact.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

import pytest

from features.store import OfflineStore
from orchard.registry import ModelRegistry, RegistryError
from orchard.storage import Storage, StorageError
from tests.conftest import S3_TEST_KEYS
from tests.crash_driver import version_files
from tests.helpers import FlakyProxy
from tests.integration.test_crash_safety import GROUP, PreparedJob, _check_offline, _readings, _write_trial

SEED = 20261204
ROUNDS = 2


@pytest.fixture()
def flaky_root(s3_server, monkeypatch):
    """A new bucket reached through a FlakyProxy; this process and the jobs it starts use the proxy's address."""
    import boto3

    with FlakyProxy(int(s3_server["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])) as proxy:
        for name, value in {**s3_server, "AWS_ENDPOINT_URL": f"http://{proxy.address}"}.items():
            monkeypatch.setenv(name, value)
        bucket = f"outage-{uuid.uuid4().hex[:12]}"
        boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}/store", proxy


def _outage_after(proxy: FlakyProxy, delay: float, seconds: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        proxy.outage(seconds)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _clear_failure(code: int, err: str, root: str) -> None:
    """A run that did not bridge the outage ends with Orchard's one-line error naming the store, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, -9) and lines and lines[-1].startswith("error: "), (code, err[-3000:])
    assert root.split("/")[2] in lines[-1], lines[-1]
    assert "Traceback" not in err, err[-3000:]


def test_feature_runs_through_object_store_outages_end_complete_or_with_a_clear_error(ray_cluster, flaky_root,
                                                                                      tmp_path, capsys):
    import ray

    root, proxy = flaky_root
    storage = Storage(root)
    address = ray.get_runtime_context().gcs_address
    rng = random.Random(SEED)
    outcomes = []
    for trial in range(ROUNDS + 1):
        _write_trial(storage, trial)
        job = PreparedJob(address, storage, ["features", "run", GROUP.name],
                          {**os.environ, "ORCHARD_ONLINE_STORE": f"sqlite:///{tmp_path / 'online.sqlite'}"})
        if trial < ROUNDS:  # the last run has no outage and must make everything exact
            # at one of the run's first connections to the store: a moment picked in time missed the runs once
            proxy.outage_at_connection(rng.randint(1, 6), rng.uniform(1.0, 6.0))
        code, err, seconds = job.run(300)
        proxy.restore()
        assert S3_TEST_KEYS["AWS_SECRET_ACCESS_KEY"] not in err  # nor in a failure's message
        if code:
            _clear_failure(code, err, root)
        else:
            assert not err.strip() or "error" not in err.lower(), err[-3000:]
        outcomes.append("completed" if code == 0 else "refused: " + err.strip().splitlines()[-1][:300])
        _check_offline(storage, trial + 1)  # readable, whole files only, each row once
    assert outcomes[-1] == "completed", outcomes
    assert proxy.cut_connections + proxy.refused_connections > 0  # the outages met the runs' traffic
    rows, quarantined = _check_offline(storage, ROUNDS + 1)
    assert len(rows) == len({(r["station"], r["time"]) for t in range(ROUNDS + 1) for r in _readings(t)})
    assert len(quarantined) == ROUNDS + 1
    assert OfflineStore(storage).exists(GROUP)
    with capsys.disabled():
        print(f"\nfeature runs through {proxy.outages} object-store outages ({proxy.cut_connections} open "
              f"connections cut, {proxy.refused_connections} refused): {outcomes}")


def test_registrations_and_promotions_through_outages_lose_nothing_they_promised(flaky_root, capsys):
    root, proxy = flaky_root
    registry = ModelRegistry(Storage(root))
    bucket = root.split("/")[2]
    rng = random.Random(SEED)
    stop = threading.Event()

    def outages() -> None:
        while not stop.is_set():
            time.sleep(rng.uniform(0.2, 1.5))
            proxy.outage(rng.uniform(0.3, 3.0))

    returned, failed = {}, 0
    thread = threading.Thread(target=outages)
    thread.start()
    try:
        for count in range(16):
            try:
                version = registry.register("m", version_files(SEED, count), {"task": "regression", "count": count})
                returned[version.version] = count
                registry.promote("m", version.version, "production")
            except (StorageError, RegistryError) as error:  # nothing else: no raw library error
                assert "cannot" in str(error) and bucket in str(error), error
                assert S3_TEST_KEYS["AWS_SECRET_ACCESS_KEY"] not in str(error)
                failed += 1
    finally:
        stop.set()
        thread.join()
    visible = set(registry.versions("m"))
    assert set(returned) <= visible, "a version register returned is gone"
    assert len(visible - set(returned)) <= failed
    for version in visible:
        registry.verify("m", version)  # every visible version is whole
        card = registry.get("m", version).card
        assert registry.read_file("m", version, "weights.bin") == version_files(SEED, card["count"])["weights.bin"]
    production = registry.resolve("m", "production")
    assert production in visible
    assert proxy.outages >= 4 and returned  # the outages came, and registrations went on between them

    # one outage, and one call at once: refused with the same clear error
    outage = _outage_after(proxy, 0, 10.0)  # longer than pyarrow retries (about 6 s)
    time.sleep(0.1)
    try:
        with pytest.raises(StorageError, match=f"cannot list s3://{bucket}/store/models/m"):
            registry.versions("m")
    finally:
        proxy.end_outage()
        outage.join()
    assert set(registry.versions("m")) == visible
    with capsys.disabled():
        print(f"\nregistration through {proxy.outages} outages ({proxy.cut_connections} connections cut, "
              f"{proxy.refused_connections} refused): {len(returned)} versions returned, {failed} "
              f"refused with a clear error, {len(visible)} visible, all whole")
