"""Which of Serve's targets `serve.app.replica_addresses` reports as the app's replicas (no Ray needed)."""

from ray.serve.schema import ServeInstanceDetails

from orchard.config import OrchardConfig
from serve.app import replica_addresses


def _details(target_groups: list[dict]) -> ServeInstanceDetails:
    proxy = {"node_id": "n1", "node_ip": "10.0.0.1", "node_instance_id": "", "actor_id": "a1", "worker_id": "w1",
             "actor_name": "SERVE_PROXY_ACTOR-n1", "log_file_path": "", "status": "HEALTHY"}
    return ServeInstanceDetails(proxies={"n1": proxy}, applications={}, target_groups=target_groups)


def _target(ip: str, port: int, name: str) -> dict:
    return {"ip": ip, "port": port, "instance_id": "", "name": name}


def _config(host: str) -> OrchardConfig:
    return OrchardConfig.from_sources(env={}, storage="/tmp/unused", serve_host=host)


def test_while_no_replica_has_its_port_the_proxy_is_not_reported_as_one():
    starting = _details([{"app_name": "orchard", "protocol": "HTTP", "route_prefix": "/",
                          "ingress_deployment_name": "PredictionService",
                          "targets": [_target("10.0.0.1", 8000, "SERVE_PROXY_ACTOR-n1")]}])
    assert replica_addresses(starting, _config("127.0.0.1"), "orchard") == []


def test_only_the_apps_http_replicas_are_reported_reachable_on_the_configured_host():
    details = _details([
        {"app_name": "orchard", "protocol": "HTTP", "route_prefix": "/models",
         "ingress_deployment_name": "PredictionService",
         "targets": [_target("10.0.0.1", 30000, "SERVE_REPLICA::orchard#PredictionService#a"),
                     _target("10.0.0.2", 30001, "SERVE_REPLICA::orchard#PredictionService#b")]},
        {"app_name": "orchard", "protocol": "gRPC", "route_prefix": "/models",
         "targets": [_target("10.0.0.1", 40000, "SERVE_REPLICA::orchard#PredictionService#a")]},
        {"app_name": "other", "protocol": "HTTP", "route_prefix": "/",
         "targets": [_target("10.0.0.1", 30002, "SERVE_REPLICA::other#Other#c")]},
    ])
    # Bound to loopback, the replicas answer on it, not on the node's address.
    assert replica_addresses(details, _config("127.0.0.1"), "orchard") == [
        "http://127.0.0.1:30000/models", "http://127.0.0.1:30001/models"]
    # Bound to every interface (a cluster), each replica is reached at its node's address.
    assert replica_addresses(details, _config("0.0.0.0"), "orchard") == [
        "http://10.0.0.1:30000/models", "http://10.0.0.2:30001/models"]
