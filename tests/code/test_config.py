from pathlib import Path

import pytest

from orchard.config import ConfigError, OrchardConfig, normalize_storage_uri


def test_flag_wins_over_environment_which_wins_over_default(tmp_path):
    env = {"ORCHARD_STORAGE": str(tmp_path / "from-env"), "ORCHARD_SERVE_PORT": "9001"}
    assert OrchardConfig.from_sources(env=env).storage == str(tmp_path / "from-env")
    assert OrchardConfig.from_sources(env=env).serve_port == 9001
    flagged = OrchardConfig.from_sources(env=env, storage=str(tmp_path / "from-flag"), serve_port=9002)
    assert flagged.storage == str(tmp_path / "from-flag")
    assert flagged.serve_port == 9002


def test_default_storage_is_an_absolute_folder_in_the_working_directory():
    config = OrchardConfig.from_sources(env={})
    assert config.storage == str(Path.cwd() / "orchard-data")


def test_relative_storage_becomes_absolute_so_ray_workers_find_it(tmp_path):
    assert normalize_storage_uri("data/store", cwd=tmp_path) == str(tmp_path / "data" / "store")
    assert normalize_storage_uri(f"file://{tmp_path}/x") == str(tmp_path / "x")


def test_object_store_uris_are_kept():
    assert normalize_storage_uri("s3://bucket/prefix/") == "s3://bucket/prefix"


@pytest.mark.parametrize("bad", ["", "ftp://host/x", "s3:///no-bucket"])
def test_bad_storage_uri_is_refused_with_its_value_named(bad):
    with pytest.raises(ConfigError) as error:
        normalize_storage_uri(bad)
    assert "storage root" in str(error.value)


def test_non_integer_port_in_environment_names_the_variable():
    with pytest.raises(ConfigError, match="ORCHARD_SERVE_PORT"):
        OrchardConfig.from_sources(env={"ORCHARD_SERVE_PORT": "eighty"})


def test_runtime_env_carries_legacy_keras_and_storage_to_every_worker(tmp_path):
    config = OrchardConfig.from_sources(env={}, storage=str(tmp_path))
    env_vars = config.runtime_env()["env_vars"]
    assert env_vars["TF_USE_LEGACY_KERAS"] == "1"
    assert env_vars["ORCHARD_STORAGE"] == str(tmp_path)


def test_importing_the_packages_has_no_side_effects(tmp_path):
    import subprocess
    import sys

    code = "import pipelines.cli, pipelines.demo, features.catalog, pipelines.features, pipelines.train, serve.app; import ray; print(ray.is_initialized())"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("uri", ["s3://KEYID:secret123@bucket/orchard", "s3://bucket/orchard?endpoint_override=x:9"])
def test_an_s3_root_with_credentials_or_settings_in_it_is_refused_without_repeating_them(uri):
    with pytest.raises(ConfigError, match="AWS_\\* environment variables") as refused:
        normalize_storage_uri(uri)
    assert "secret123" not in str(refused.value) and "KEYID" not in str(refused.value)


def test_ray_train_polls_its_workers_every_half_second_unless_the_environment_says_otherwise(monkeypatch):
    from orchard.config import TRAIN_POLL_ENV

    monkeypatch.delenv(TRAIN_POLL_ENV, raising=False)
    assert OrchardConfig.from_sources(env={}).runtime_env()["env_vars"][TRAIN_POLL_ENV] == "0.5"
    monkeypatch.setenv(TRAIN_POLL_ENV, "2")  # the user's (or their job's runtime env's) value reaches Ray itself
    assert TRAIN_POLL_ENV not in OrchardConfig.from_sources(env={}).runtime_env()["env_vars"]
