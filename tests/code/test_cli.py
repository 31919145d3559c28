import json

import pytest
from typer.testing import CliRunner

from orchard.cli import app

COMMANDS = [[], ["demo"], ["generate"], ["features"], ["features", "list"], ["features", "run"], ["train"],
            ["models"], ["models", "list"], ["models", "show"], ["serve"]]


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
    assert "unknown domain 'bananas'" in result.output


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
