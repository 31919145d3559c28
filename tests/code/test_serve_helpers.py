"""Helpers of the Serve app that need no Ray: which targets are the app's replicas; freezing after a load; how deeply a
JSON body nests."""

import pytest
from ray.serve.schema import ServeInstanceDetails

from serve.app import replica_addresses


def _details(target_groups: list[dict], host: str = "127.0.0.1") -> ServeInstanceDetails:
    proxy = {"node_id": "n1", "node_ip": "10.0.0.1", "node_instance_id": "", "actor_id": "a1", "worker_id": "w1",
             "actor_name": "SERVE_PROXY_ACTOR-n1", "log_file_path": "", "status": "HEALTHY"}
    return ServeInstanceDetails(proxies={"n1": proxy}, applications={}, target_groups=target_groups,
                                http_options={"host": host, "port": 8000})


def _target(ip: str, port: int, name: str) -> dict:
    return {"ip": ip, "port": port, "instance_id": "", "name": name}


def test_while_no_replica_has_its_port_the_proxy_is_not_reported_as_one():
    starting = _details([{"app_name": "orchard", "protocol": "HTTP", "route_prefix": "/",
                          "ingress_deployment_name": "PredictionService",
                          "targets": [_target("10.0.0.1", 8000, "SERVE_PROXY_ACTOR-n1")]}])
    assert replica_addresses(starting, "orchard") == []


def test_only_the_apps_http_replicas_are_reported_reachable_on_serves_http_host():
    groups = [
        {"app_name": "orchard", "protocol": "HTTP", "route_prefix": "/models",
         "ingress_deployment_name": "PredictionService",
         "targets": [_target("10.0.0.1", 30000, "SERVE_REPLICA::orchard#PredictionService#a"),
                     _target("10.0.0.2", 30001, "SERVE_REPLICA::orchard#PredictionService#b")]},
        {"app_name": "orchard", "protocol": "gRPC", "route_prefix": "/models",
         "targets": [_target("10.0.0.1", 40000, "SERVE_REPLICA::orchard#PredictionService#a")]},
        {"app_name": "other", "protocol": "HTTP", "route_prefix": "/",
         "targets": [_target("10.0.0.1", 30002, "SERVE_REPLICA::other#Other#c")]},
    ]
    # Bound to loopback, the replicas answer on it, not on the node's address.
    assert replica_addresses(_details(groups, "127.0.0.1"), "orchard") == [
        "http://127.0.0.1:30000/models", "http://127.0.0.1:30001/models"]
    # Bound to every interface (a cluster), each replica is reached at its node's address.
    assert replica_addresses(_details(groups, "0.0.0.0"), "orchard") == [
        "http://10.0.0.1:30000/models", "http://10.0.0.2:30001/models"]
    assert replica_addresses(_details(groups, "::1"), "orchard")[0] == "http://[::1]:30000/models"


def test_a_load_freezes_what_is_alive_and_frees_what_an_earlier_freeze_kept():
    """After a model load the replica freezes the heap; a later load must free a model evicted meanwhile."""
    import gc
    import weakref

    from serve.app import refreeze

    class Model:
        pass

    try:
        evicted = Model()
        evicted.me = evicted  # a reference cycle, as in a network's layers: only the collector frees it
        gone = weakref.ref(evicted)
        refreeze()  # the load that brought it in froze it
        assert gc.get_freeze_count() > 0
        del evicted  # evicted from the replica's cache
        gc.collect()
        assert gone() is not None  # frozen: a collection alone never reaches it
        refreeze()  # the next load
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("body, depth", [
    (b"1", 0), (b"[]", 1), (b'{"a": [[1], {"b": []}]}', 4), (b'["[[[", "]]]"]', 1),
    (b'["a \\" [[ \\\\", [2]]', 2),  # an escaped quote stays inside its string; an escaped backslash ends nothing
    (b"[" * 5000 + b"]" * 5000, 5000),
])
def test_json_depth_counts_nesting_outside_strings(body, depth):
    from serve.app import json_depth

    assert json_depth(body) == depth
