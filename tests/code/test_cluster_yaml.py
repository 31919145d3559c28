"""cluster.yaml, checked offline: Ray's own schema, what each node type runs, and the README's commands for it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _start_commands(config: dict) -> dict[str, str]:
    found = {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [command for command in config[key] if "ray start" in command]
        assert len(start) == 1, start
        found[key] = start[0]
    return found


def test_cluster_yaml_is_a_valid_ray_cluster_launcher_config(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))  # Ray's schema; raises on an invalid file
    assert config["head_node_type"] in config["available_node_types"]


def test_worker_types_scale_from_zero_and_gpu_nodes_get_the_cuda_build(config):
    types = config["available_node_types"]
    workers = {name: spec for name, spec in types.items() if name != config["head_node_type"]}
    assert {spec["min_workers"] for spec in workers.values()} == {0}
    gpu = [name for name, spec in workers.items() if spec["resources"].get("GPU")]
    cpu = [name for name, spec in workers.items() if not spec["resources"].get("GPU")]
    assert gpu and cpu
    assert any("nvidia-smi" in command and "[gpu]" in command for command in config["setup_commands"])


def test_every_node_starts_ray_with_token_auth_storage_on_s3_and_orchards_settings(config):
    """Settings are read by each Ray process at start: each node's `ray start` must carry all of them, the same."""
    from orchard.runtime import SERVE_ENV

    settings = {}
    for key, command in _start_commands(config).items():
        keys = {"ORCHARD_REQUIRE_API_KEY": "1", "ORCHARD_API_KEYS_FILE": "/home/ubuntu/.orchard/api_keys"}
        for name, value in {**SERVE_ENV, **keys, "RAY_AUTH_MODE": "token", "TF_USE_LEGACY_KERAS": "1"}.items():
            assert f"{name}={value} " in command, (key, name)
        settings[key] = re.search(r"ORCHARD_STORAGE=(\S+) ", command).group(1)
    assert len(set(settings.values())) == 1 and next(iter(settings.values())).startswith("s3://"), settings


def test_the_token_and_api_keys_travel_as_files_and_no_secret_is_in_the_file(config):
    text = (ROOT / "cluster.yaml").read_text()
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert config["file_mounts"]["/home/ubuntu/.orchard/api_keys"] == "~/.orchard/api_keys"
    assert "chmod 600 /home/ubuntu/.ray/auth_token /home/ubuntu/.orchard/api_keys" in config["setup_commands"]
    assert not re.search(r"AKIA[0-9A-Z]{16}|AWS_SECRET_ACCESS_KEY|RAY_AUTH_TOKEN=", text)
    for spec in config["available_node_types"].values():
        assert "IamInstanceProfile" in spec["node_config"]  # the nodes' S3 access comes from a role


def _readme_cluster_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## From laptop to cluster"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_documents_the_commands_cluster_yaml_runs(config):
    commands = _readme_cluster_commands()
    assert "ray get-auth-token --generate" in commands and "ray up cluster.yaml" in commands
    head = _start_commands(config)["head_start_ray_commands"]
    assert head in commands  # what the head node runs, as the README shows it
    header = [line.removeprefix("#").strip().split("  #")[0].strip()
              for line in (ROOT / "cluster.yaml").read_text().splitlines()[:6] if line.startswith("#   ")]
    assert header and all(any(line in command for command in commands) for line in header), header


def test_the_readmes_cluster_jobs_name_real_modules_and_options():
    jobs = [command.split(" -- ", 1)[1] for command in _readme_cluster_commands() if command.startswith("ray job submit")]
    assert len(jobs) >= 4, jobs
    for job in jobs:
        words = job.split()
        assert words[:2] == ["python", "-m"], job
        usage = subprocess.run([sys.executable, "-m", words[2], "--help"], capture_output=True, text=True, cwd=ROOT,
                               timeout=120)
        assert usage.returncode == 0, (job, usage.stderr[-2000:])
        for option in (word.split("=")[0] for word in words[3:] if word.startswith("--")):
            assert option in usage.stdout, (job, option)


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
