import json

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

COMMANDS = [[], ["demo"], ["generate"], ["features"], ["features", "list"], ["features", "run"], ["train"],
            ["models"], ["models", "list"], ["models", "show"], ["models", "promote"], ["models", "best"], ["serve"],
            ["api-key"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "orchard")
def test_every_command_has_help_describing_every_option(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_generate_then_list_as_json(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["--storage", str(tmp_path), "generate", "fruit", "--rows", "20", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["rows"] == 20
    assert (tmp_path / document["files"][0]).exists()


def test_unknown_domain_is_refused_by_name(tmp_path):
    result = CliRunner().invoke(app, ["--storage", str(tmp_path), "generate", "bananas"])
    assert result.exit_code != 0
    assert "unknown data generator 'bananas'" in " ".join(result.output.replace("│", " ").split())


def test_bad_storage_uri_is_a_usage_error():
    result = CliRunner().invoke(app, ["--storage", "ftp://x/y", "models", "list"])
    assert result.exit_code == 2
    assert "unsupported scheme" in result.output


def test_features_list_json_names_the_fruit_group():
    result = CliRunner().invoke(app, ["features", "list", "--json"])
    assert {row["group"] for row in json.loads(result.stdout)} >= {"fruit_measurements:1"}


def test_pipeline_modules_have_help():
    import subprocess
    import sys

    for module in ("pipelines.features", "pipelines.train"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "--storage" in result.stdout


def _registered(tmp_path, accuracies):
    from orchard.registry import ModelRegistry
    from orchard.storage import Storage

    registry = ModelRegistry(Storage(str(tmp_path)))
    for accuracy in accuracies:
        registry.register("clf", {"w.bin": str(accuracy).encode()},
                          {"flavor": "test", "signature": {}, "metrics": {"test": {"accuracy": accuracy}}})
    return registry


def _invoke(tmp_path, *arguments):
    return CliRunner().invoke(app, ["--storage", str(tmp_path), "models", *arguments])


def test_promote_and_roll_back_through_the_cli(tmp_path):
    registry = _registered(tmp_path, [0.8, 0.9])
    result = _invoke(tmp_path, "promote", "clf", "2", "--alias", "production", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"model": "clf", "alias": "production", "version": 2, "previous": None}
    rolled_back = _invoke(tmp_path, "promote", "clf", "1", "--json")  # production is the default alias
    assert json.loads(rolled_back.stdout)["previous"] == 2
    assert registry.aliases("clf") == {"production": 1}
    assert [(e["from"], e["to"]) for e in registry.alias_history("clf")] == [(None, 2), (2, 1)]
    missing = _invoke(tmp_path, "promote", "clf", "3")
    assert missing.exit_code == 2 and "no version 3" in missing.output


def test_best_version_by_metric_and_promote_it(tmp_path):
    registry = _registered(tmp_path, [0.8, 0.95, 0.9])
    result = _invoke(tmp_path, "best", "clf", "--metric", "accuracy", "--promote", "staging", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"model": "clf", "version": 2, "metric": "accuracy", "value": 0.95,
                                         "alias": "staging", "previous": None}
    assert registry.aliases("clf") == {"staging": 2}
    lowest = _invoke(tmp_path, "best", "clf", "--metric", "accuracy", "--lower-is-better", "--json")
    assert json.loads(lowest.stdout)["version"] == 1
    unknown = _invoke(tmp_path, "best", "clf", "--metric", "f2")
    assert unknown.exit_code == 2 and "f2" in unknown.output


def test_list_one_models_versions_with_aliases_and_metrics(tmp_path):
    registry = _registered(tmp_path, [0.8, 0.9])
    registry.promote("clf", 1, "production")
    result = _invoke(tmp_path, "list", "clf", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["version"], r["aliases"], r["test_metrics"]) for r in rows] == [
        (1, ["production"], {"accuracy": 0.8}), (2, [], {"accuracy": 0.9})]


def test_orchard_serve_replica_options_become_a_fixed_count_or_an_autoscaling_range():
    from orchard.errors import UsageError
    from pipelines.cli import serving_scale
    from serve.app import autoscaling_config

    assert serving_scale(None, None, None, None) == {}
    assert serving_scale(3, None, None, None) == {"num_replicas": 3}
    scaled = serving_scale(None, 0, 4, 300)
    assert scaled == {"autoscaling": {"min_replicas": 0, "max_replicas": 4, "downscale_to_zero_delay_s": 300}}
    assert autoscaling_config(scaled["autoscaling"])["target_ongoing_requests"] == 16  # Orchard's default kept
    for arguments, message in (((2, 0, None, None), "one or the other"), ((None, 5, 2, None), "above"),
                               ((None, 1, 4, 60), "--min-replicas 0")):
        with pytest.raises(UsageError, match=message):
            serving_scale(*arguments)
    with pytest.raises(ValueError, match="0 <= min <= max"):
        autoscaling_config({"min_replicas": 3, "max_replicas": 1})
