from pathlib import Path

import yaml


def test_cluster_yaml_is_a_valid_ray_cluster_launcher_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((Path(__file__).parents[2] / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on an invalid file
    assert config["head_node_type"] in config["available_node_types"]
    assert any("TF_USE_LEGACY_KERAS=1" in command for command in config["worker_start_ray_commands"])


def test_every_node_starts_ray_with_orchards_serve_settings():
    """Serve's settings are read by each Ray process at start: cluster.yaml's `ray start` must carry all of them."""
    from orchard.runtime import SERVE_ENV

    config = yaml.safe_load((Path(__file__).parents[2] / "cluster.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [command for command in config[key] if "ray start" in command]
        assert len(start) == 1, start
        for name, value in SERVE_ENV.items():
            assert f"{name}={value} " in start[0], (key, name)


def test_a_local_ray_gets_orchards_serve_settings_unless_they_are_set(monkeypatch):
    from orchard.runtime import LOCAL_SERVE_ENV, prepare_local_cluster_environment

    for name in LOCAL_SERVE_ENV:
        monkeypatch.setenv(name, "recorded")  # so that monkeypatch restores whatever was there before the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", "0")
    prepare_local_cluster_environment()
    import os

    assert os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"  # the user's choice stays
    assert os.environ["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "1"
