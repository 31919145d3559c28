"""Every name that becomes part of a path is checked before it is used: feature groups, views, models, aliases,
versions, project modules, and the storage layer under them all. A hostile name is refused with a message that
names it; nothing is read or written outside the storage root."""

from __future__ import annotations

import pyarrow as pa
import pytest

from features.definitions import DefinitionError, Feature, FeatureGroup
from orchard.errors import ProjectError
from orchard.projects import ProjectRef, parse_entries
from orchard.registry import ModelRegistry, RegistryError
from orchard.storage import Storage, StorageError
from training import ModelSpec, SklearnFlavor
from training.spec import ModelSpecError

HOSTILE = [
    "../escape", "..", "a/../../b", "/etc/passwd", "a/b", "a\\b", "%2e%2e%2fetc", "..%2f", "a%00b", "a\x00b",
    "fruit\n", "fruit\r\n", "\nfruit", " fruit", "fruit ", "Fruit", "fruït", "ﬁsh", "a.b", "a:b", "a;b", "$(id)",
    "`id`", "a*", "~user", "", "-fruit", "_fruit", "1fruit", "x" * 200, "ｆｒｕｉｔ", "fruit\t",
]


def _group(name: str) -> FeatureGroup:
    return FeatureGroup(name=name, version=1, description="d", primary_key=("k",), event_time="t",
                        features=(Feature("k", pa.string(), "key"), Feature("t", pa.timestamp("us", tz="UTC"), "time")))


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_a_feature_group_with_a_hostile_name_is_refused_by_name(name):
    with pytest.raises(DefinitionError, match="feature group name .* must be lower_snake_case"):
        _group(name)


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_a_model_spec_with_a_hostile_name_is_refused(name):
    with pytest.raises(ModelSpecError, match="model name .* must be lower case"):
        ModelSpec(name=name, view="v", task="regression", flavor=SklearnFlavor("sklearn.tree.DecisionTreeRegressor"))


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_the_registry_refuses_hostile_model_and_alias_names_before_touching_storage(tmp_path, name):
    root = tmp_path / "store"
    registry = ModelRegistry(Storage(str(root)))
    registry.register("fruit", {"w.bin": b"w"}, {"flavor": "test"})
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    for call in (lambda: registry.register(name, {"w.bin": b"w"}, {"flavor": "test"}),
                 lambda: registry.get(name), lambda: registry.versions(name),
                 lambda: registry.promote("fruit", 1, name), lambda: registry.delete_alias("fruit", name)):
        with pytest.raises(RegistryError):
            call()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("reference", ["../1", "1/../2", "²", "١", "1.0", "-1", " 1", "0x1", "1e0", "%31"], ids=repr)
def test_a_version_reference_that_is_not_a_plain_number_or_alias_is_refused(tmp_path, reference):
    registry = ModelRegistry(Storage(str(tmp_path)))
    registry.register("fruit", {"w.bin": b"w"}, {"flavor": "test"})
    with pytest.raises(RegistryError, match="model 'fruit' has no (alias|version) "):
        registry.get("fruit", reference)


def test_a_file_name_outside_the_manifest_is_never_read(tmp_path):
    registry = ModelRegistry(Storage(str(tmp_path)))
    registry.register("fruit", {"w.bin": b"w"}, {"flavor": "test"})
    for file_name in ("../../secret", "/etc/passwd", "aliases.json", "..", "w.bin/../manifest.json"):
        with pytest.raises(RegistryError, match="has no file"):
            registry.read_file("fruit", 1, file_name)


@pytest.mark.parametrize("relative", ["..", "../x", "a/../../x", "a/..", "x\x00y"], ids=repr)
def test_storage_refuses_a_path_that_leaves_its_root_locally_and_on_s3(tmp_path, s3_root, relative):
    for storage in (Storage(str(tmp_path)), Storage(s3_root)):
        with pytest.raises(StorageError, match="must not leave the storage root"):
            storage.path(relative)
        with pytest.raises(StorageError, match="must not leave the storage root"):
            storage.uri(relative)


def test_an_absolute_path_stays_under_the_root(tmp_path, s3_root):
    storage = Storage(str(tmp_path))
    assert storage.path("/etc/passwd") == f"{tmp_path}/etc/passwd"
    assert Storage(s3_root).uri("/etc/passwd") == f"{s3_root}/etc/passwd"


@pytest.mark.parametrize("module", ["../evil", "os.path/..", "a b", "evil\n", "a..b", ".hidden", "x;import os"],
                         ids=repr)
def test_a_project_module_name_that_is_not_a_dotted_identifier_is_refused_before_any_import(module):
    with pytest.raises(ProjectError, match="project module name .* must be a dotted Python name"):
        ProjectRef(module, None, "test")


@pytest.mark.parametrize("entry", ["x;import os", "a b", "a..b", "$(id)", "evil\x00"], ids=repr)
def test_a_configured_project_entry_that_is_neither_folder_nor_module_is_refused(tmp_path, entry):
    with pytest.raises(ProjectError, match="is neither a folder nor a module name"):
        parse_entries([entry], base=tmp_path, source="ORCHARD_PROJECTS")
