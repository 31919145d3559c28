"""Projects: found by configuration, loaded the same way in every process, definitions collected by type."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.catalog import all_groups, get_group, get_view
from orchard.config import OrchardConfig
from orchard.errors import NotFoundError, ProjectError
from orchard.projects import PROJECTS_ENV, ProjectRef, activate, active, configured, from_pyproject, parse_entries
from pipelines.cli import app
from tests.helpers import REPOSITORY

GROUP = """
import pyarrow as pa
from features import EVENT_TIME_TYPE, Feature, FeatureGroup, FileSource

{name} = FeatureGroup(
    name="{group}", version=1, description="A group.", primary_key=("id",), event_time="at",
    features=(Feature("id", pa.string(), "Id."), Feature("at", EVENT_TIME_TYPE, "Time."),
              Feature("value", pa.float64(), "Value.")),
    sources=(FileSource(name="csv", format="csv", location="landing/{group}", pattern="*.csv"),),
)
"""


def make_project(root: Path, name: str, files: dict[str, str]) -> Path:
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""A test project."""\n')
    for file_name, text in files.items():
        (package / file_name).write_text(textwrap.dedent(text))
    return package


@pytest.fixture(autouse=True)
def restore_active_projects():
    before = active()
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:  # each test's own project packages are imported afresh next time
        if name.split(".")[0].startswith("proj_"):
            del sys.modules[name]
    activate(before)


def test_flags_win_over_the_environment_which_wins_over_pyproject(tmp_path):
    for name in ("proj_flag", "proj_env", "proj_toml"):
        make_project(tmp_path, name, {})
    (tmp_path / "pyproject.toml").write_text('[tool.orchard]\nprojects = ["proj_toml"]\n')
    env = {PROJECTS_ENV: f"{tmp_path}/proj_env"}
    assert [r.module for r in configured(["./proj_flag"], env, tmp_path)] == ["proj_flag"]
    assert [r.module for r in configured(None, env, tmp_path)] == ["proj_env"]
    assert [r.module for r in configured(None, {}, tmp_path)] == ["proj_toml"]
    assert configured(None, {}, tmp_path / "proj_flag") == ()  # no pyproject.toml there: no project


def test_pyproject_folders_are_relative_to_the_file_not_the_cwd(tmp_path):
    make_project(tmp_path / "repo" / "src", "proj_one", {})
    (tmp_path / "repo" / "pyproject.toml").write_text('[tool.orchard]\nprojects = ["src/proj_one"]\n')
    (ref,) = from_pyproject(tmp_path / "repo")
    assert ref == ProjectRef("proj_one", str(tmp_path / "repo" / "src" / "proj_one"), str(tmp_path / "repo" / "pyproject.toml"))


@pytest.mark.parametrize(("entry", "message"), [
    ("./missing", "does not exist"),
    ("./plain", "is not a Python package: it needs an __init__.py"),
    ("not a name!", "is neither a folder nor a module name"),
])
def test_a_bad_entry_is_refused_by_name(tmp_path, entry, message):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ProjectError, match=message):
        parse_entries([entry], base=tmp_path, source="--project")


def test_a_bare_name_is_a_module_when_it_imports_and_a_folder_next_to_the_configuration_otherwise(tmp_path):
    make_project(tmp_path, "proj_here", {})
    (folder_ref,) = parse_entries(["proj_here"], base=tmp_path, source="test")
    assert folder_ref.folder == str(tmp_path / "proj_here")
    make_project(tmp_path, "json", {})  # shadowed by the importable module of that name
    (module_ref,) = parse_entries(["json"], base=tmp_path, source="test")
    assert module_ref == ProjectRef("json", None, "test")


def test_definitions_are_collected_from_every_module_of_a_project(tmp_path):
    package = make_project(tmp_path, "proj_collect", {"readings.py": GROUP.format(name="READINGS", group="readings"),
                                                      "reuse.py": "from proj_collect.readings import READINGS\n",
                                                      "_private.py": "raise RuntimeError('never imported')\n"})
    activate(parse_entries([str(package)], base=tmp_path, source="test"))
    assert [g.ref for g in all_groups()] == ["readings:1"]  # imported twice, defined once
    assert get_group("readings").name == "readings"
    with pytest.raises(NotFoundError, match=r"no feature view named 'fruit_classification'.*projects loaded: proj_collect"):
        get_view("fruit_classification")


def test_two_definitions_with_one_name_name_both_places(tmp_path):
    package = make_project(tmp_path, "proj_twice", {"a.py": GROUP.format(name="FIRST", group="readings"),
                                                    "b.py": GROUP.format(name="SECOND", group="readings")})
    activate(parse_entries([str(package)], base=tmp_path, source="test"))
    with pytest.raises(ProjectError) as error:
        all_groups()
    message = str(error.value)
    assert "two feature groups named 'readings:1'" in message
    assert f"proj_twice.a.FIRST ({package / 'a.py'})" in message and f"proj_twice.b.SECOND ({package / 'b.py'})" in message


def test_a_project_that_fails_to_import_is_named_with_the_error(tmp_path):
    package = make_project(tmp_path, "proj_broken", {"groups.py": "import numpy\nundefined_name\n"})
    with pytest.raises(ProjectError, match=r"project proj_broken .*importing proj_broken.groups failed: NameError"):
        activate(parse_entries([str(package)], base=tmp_path, source="test"))


def test_a_folder_whose_name_is_taken_by_another_imported_module_is_refused(tmp_path):
    first = make_project(tmp_path / "one", "proj_same", {})
    second = make_project(tmp_path / "two", "proj_same", {})
    activate(parse_entries([str(first)], base=tmp_path, source="test"))
    with pytest.raises(ProjectError, match="a different module named 'proj_same' is already imported"):
        activate(parse_entries([str(second)], base=tmp_path, source="test"))


def test_the_runtime_env_ships_project_folders_and_names_their_modules(tmp_path):
    package = make_project(tmp_path, "proj_shipped", {})
    config = OrchardConfig.from_sources(env={}, storage=str(tmp_path / "s"), projects=[str(package)])
    runtime_env = config.runtime_env()
    assert runtime_env["py_modules"] == [str(package)]
    assert runtime_env["env_vars"][PROJECTS_ENV] == "proj_shipped"


def test_a_fresh_process_loads_the_projects_its_environment_names(tmp_path):
    """What a Ray worker does: the package is on its path (py_modules) and ORCHARD_PROJECTS names it; a stored
    transformation of the project's own is found by name, with nothing else imported first."""
    package = make_project(tmp_path, "proj_worker", {
        "groups.py": GROUP.format(name="READINGS", group="readings"),
        "scale.py": """
            import pyarrow as pa
            from features import Transform, register_transform

            @register_transform
            class Doubled(Transform):
                def _partial(self, column): return {"count": len(column)}
                def _check_state(self, state): return state
                def _merge(self, a, b): return {"count": a["count"] + b["count"]}
                def _learn(self, state): pass
                def _apply(self, column):
                    return [(self.column, pa.array([None if v is None else 2 * v for v in column.to_pylist()]))]
        """})
    stored = json.dumps({"format": "orchard.transform_set", "format_version": 1, "transforms": [
        {"format": "orchard.transform", "format_version": 1, "type": "Doubled", "column": "value", "params": {},
         "state": {"count": 3}}]})
    script = textwrap.dedent(f"""
        from features.transforms import TransformSet
        from features.catalog import get_group
        transforms = TransformSet.from_json({stored!r})
        print(transforms.transform_rows([{{"value": 2.5}}]), get_group("readings").ref)
    """)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")},
           PROJECTS_ENV: "proj_worker", "PYTHONPATH": f"{tmp_path}:{REPOSITORY}"}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path / "proj_worker", capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[{'value': 5.0}] readings:1"
    assert package.is_dir()


def test_a_stored_transformation_of_no_loaded_project_is_refused_by_name():
    from features.transforms import TransformSet

    stored = json.dumps({"format": "orchard.transform_set", "format_version": 1, "transforms": [
        {"format": "orchard.transform", "format_version": 1, "type": "Mystery", "column": "x", "params": {},
         "state": None}]})
    with pytest.raises(ValueError, match="'type' must be one of .*StandardScaler.*got 'Mystery'"):
        TransformSet.from_json(stored)


def test_the_cli_reports_clashing_definitions_and_exits_2(tmp_path):
    package = make_project(tmp_path, "proj_cli", {"a.py": GROUP.format(name="FIRST", group="readings"),
                                                  "b.py": GROUP.format(name="SECOND", group="readings")})
    result = CliRunner().invoke(app, ["--storage", str(tmp_path / "s"), "--project", str(package), "features", "list"])
    assert result.exit_code == 2
    assert "two feature groups named 'readings:1': proj_cli.a.FIRST" in result.output


def test_the_cli_lists_a_projects_groups(tmp_path):
    package = make_project(tmp_path, "proj_list", {"a.py": GROUP.format(name="READINGS", group="readings")})
    result = CliRunner().invoke(app, ["--storage", str(tmp_path / "s"), "--project", str(package), "features", "list"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["readings:1", "A", "group."]
