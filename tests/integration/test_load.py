"""Steady load over real HTTP on an app of two replicas: one replica killed under it, and a soak of several
minutes on raw features and entity keys. Every request is counted, failed ones included."""

from __future__ import annotations

import os
import time
from collections import Counter

import httpx
import pytest

from tests.helpers import Traffic, answers
from tests.integration.test_serve import _instances

pytestmark = [pytest.mark.ray, pytest.mark.serve]

CLIENTS = 4
SOAK_S = int(os.environ.get("ORCHARD_SOAK_S", "180"))  # longer only for a manual leak hunt; CI runs 180


@pytest.fixture(scope="module")
def pair(serve_url, trained_models, session_config):
    """The session's storage served by an app of two replicas, through Serve's proxy."""
    from ray import serve

    from serve.app import deploy

    storage, _ = trained_models
    url = deploy(session_config, name="pair", route_prefix="/pair", replica_cpus=0, num_replicas=2)
    deadline = time.monotonic() + 120
    while _running() < 2 or not answers(f"{url}/v2/health/ready"):
        assert time.monotonic() < deadline, _replicas()
        time.sleep(0.5)
    yield url, storage
    serve.delete("pair")


def _replicas() -> list[str]:
    """The names of the pair app's live replica actors."""
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::pair#"))


def _running() -> int:
    """How many of the pair app's replicas Serve reports RUNNING (ready to take requests)."""
    from ray import serve

    application = serve.status().applications.get("pair")
    if application is None:
        return 0
    return sum(deployment.replica_states.get("RUNNING", 0) for deployment in application.deployments.values())


def _replica_processes() -> list:
    """The pair app's replica processes (Ray titles a replica's process `ray::ServeReplica:<app>:<deployment>`)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("ServeReplica:pair:" in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


class Load(Traffic):
    """`CLIENTS` clients of steady traffic; a request counts by the time it was sent."""

    def __init__(self, url: str, requests: list[tuple[str, dict]]):
        super().__init__(url, requests, clients=CLIENTS)

    def failed(self, since: float = 0.0) -> list[tuple[float, int | str]]:
        return [(sent, outcome) for sent, _, outcome, _ in self.answers if sent >= since and outcome != 200]


def test_a_replica_killed_under_steady_load_costs_under_one_percent_of_requests(pair, capsys):
    import ray

    url, storage = pair
    request = ("/v1/models/surf_regressor:predict", {"instances": _instances(storage, "surf_regressor", count=1)})
    before = _replicas()
    victim = before[0]
    with Load(url, [request]) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        deadline = killed_at + 60
        while time.monotonic() < deadline and not (set(_replicas()) - set(before) and _running() >= 2):
            time.sleep(0.2)
        replaced_s = time.monotonic() - killed_at  # until a new replica is RUNNING, not merely created
        time.sleep(5)
    failed = load.failed()
    total = len(load.answers)
    assert total > 200, total
    assert len(failed) / total < 0.01, (len(failed), total, Counter(outcome for _, outcome in failed))
    assert all(t - killed_at < 10 for t, _ in failed), failed  # none sent 10 s or more after the kill failed
    assert set(_replicas()) - set(before) and victim not in _replicas(), "Serve did not start a replacement"
    with capsys.disabled():
        print(f"\nreplica killed under load: {total} requests, {len(failed)} failed "
              f"({Counter(o for _, o in failed)}), a replacement running {replaced_s:.1f} s after the kill")


@pytest.mark.slow  # three minutes of load
def test_a_soak_on_raw_features_and_entity_keys_has_no_errors_and_flat_memory(pair, capsys):
    url, storage = pair
    requests = [("/v1/models/fruit_classifier:predict",
                 {"instances": _instances(storage, "fruit_classifier", count=4)}),
                ("/v1/models/surf_regressor:predict", {"instances": _instances(storage, "surf_regressor", count=4)}),
                ("/v1/models/surf_regressor:predict",
                 {"entities": [{"beach_id": "ocean-beach"}, {"beach_id": "mavericks"}]})]
    for path, body in requests:
        answer = httpx.post(f"{url}{path}", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
    processes = _replica_processes()
    assert len(processes) == 2, processes
    memory: list[tuple[float, int]] = []
    started = time.monotonic()
    with Load(url, requests) as load:
        while time.monotonic() - started < SOAK_S:
            memory.append((time.monotonic() - started, sum(p.memory_info().rss for p in processes)))
            time.sleep(5)
    total = len(load.answers)
    assert load.failed() == [], Counter(outcome for _, outcome in load.failed())
    # Flat: the last minute's mean against the second minute's (the first warms caches and allocators).
    second = [rss for t, rss in memory if 60 <= t < 120]
    last = [rss for t, rss in memory if t >= SOAK_S - 60]
    growth_mb = (sum(last) / len(last) - sum(second) / len(second)) / 2**20
    assert growth_mb < 20, [(round(t), rss // 2**20) for t, rss in memory]
    with capsys.disabled():
        print(f"\nsoak: {total} requests in {SOAK_S} s ({total / SOAK_S:.0f}/s, {CLIENTS} clients), none failed; "
              f"the two replicas' memory {memory[0][1] / 2**20:.0f} MB at the start, {last[-1] / 2**20:.0f} MB at "
              f"the end, {growth_mb:+.1f} MB from the second minute to the last; every 30 s: "
              f"{[rss // 2**20 for t, rss in memory if round(t) % 30 < 5]} MB")
