from pathlib import Path

import yaml


def test_cluster_yaml_is_a_valid_ray_cluster_launcher_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((Path(__file__).parents[2] / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on an invalid file
    assert config["head_node_type"] in config["available_node_types"]
    assert any("TF_USE_LEGACY_KERAS=1" in command for command in config["worker_start_ray_commands"])
