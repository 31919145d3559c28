"""`orchard check` on a real storage root: what a run would change, and a changed schema refused with advice."""

from __future__ import annotations

import dataclasses

import fruit.groups
import pyarrow as pa
import pytest
from fruit.generate import write_fruit

from features.catalog import get_group
from features.definitions import Feature
from features.pipeline import run_feature_pipeline
from features.store import OfflineStore, SchemaChangedError
from orchard.storage import Storage
from pipelines.check import check

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def fruit_storage(ray_cluster, tmp_path_factory) -> Storage:
    storage = Storage(str(tmp_path_factory.mktemp("check")))
    write_fruit(storage, rows=200, seed=3)
    run_feature_pipeline(storage, get_group("fruit_measurements"))
    write_fruit(storage, rows=100, seed=4)  # a day the table does not hold yet
    return storage


def test_check_says_what_each_run_would_do(fruit_storage):
    plan = check(fruit_storage)
    assert plan.problems == []
    groups = {row["group"]: row["plan"] for row in plan.groups}
    assert groups["fruit_measurements:1"] == "append to table: read 2 new file(s)"
    assert groups["buoy_readings:1"] == "create table: read 0 new file(s)"
    assert groups["beaches:1"] == "create table: read 1 SQL table(s) past their watermark"
    views = {row["view"]: row["plan"] for row in plan.views}
    assert views["fruit_classification:1"] == "`datasets create` makes training dataset version 1"
    models = {row["model"]: row["plan"] for row in plan.models}
    assert models["fruit_classifier"] == "`train` registers version 1 (sklearn on fruit_classification)"
    assert "ok: every definition is consistent" in plan.human()


def _changed_measurements():
    original = get_group("fruit_measurements")
    features = tuple(Feature("weight_g", pa.int64(), "Weight in whole grams.") if f.name == "weight_g" else f
                     for f in original.features) + (Feature("variety", pa.string(), "Variety.", nullable=True),)
    return dataclasses.replace(original, features=features)


def test_a_changed_schema_of_an_existing_version_is_refused_with_advice(fruit_storage, monkeypatch):
    changed = _changed_measurements()
    with pytest.raises(SchemaChangedError) as refused:
        run_feature_pipeline(fruit_storage, changed)
    message = str(refused.value)
    assert "added column 'variety'" in message
    assert "column 'weight_g' changed type from double to long" in message
    assert "define the changed group as a new version (version=2)" in message

    monkeypatch.setattr(fruit.groups, "FRUIT_MEASUREMENTS", changed)
    plan = check(fruit_storage)
    assert [p for p in plan.problems if p.startswith("feature group fruit_measurements:1")] == [
        "feature group fruit_measurements:1: its schema differs from its table's (added column 'variety'; column "
        "'weight_g' changed type from double to long); define it as version 2 instead"]
    assert "REFUSED: schema changed; make a new version" in plan.human()


def test_a_new_version_with_the_changed_schema_gets_a_table_of_its_own(fruit_storage):
    original = get_group("fruit_measurements")
    without_smoothness = tuple(f for f in original.features if f.name != "smoothness")
    assert OfflineStore(fruit_storage).schema_changes(dataclasses.replace(original, features=without_smoothness)) == [
        "removed column 'smoothness'"]
    report = run_feature_pipeline(fruit_storage, dataclasses.replace(original, version=2, features=without_smoothness))
    assert (report.group, report.table_version, report.rows_written) == ("fruit_measurements:2", 0, 300)
