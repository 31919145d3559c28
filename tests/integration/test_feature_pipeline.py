import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from fruit.generate import write_fruit

from features.catalog import get_group
from features.pipeline import run_feature_pipeline
from features.store import OfflineStore
from orchard.storage import Storage

pytestmark = pytest.mark.ray

FRUIT = get_group("fruit_measurements")


def _ids(storage):
    return OfflineStore(storage).read_table(FRUIT)["fruit_id"].to_pylist()


def test_both_sources_land_in_one_table_in_the_groups_units(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    write_fruit(storage, rows=400, seed=11)
    report = run_feature_pipeline(storage, FRUIT)
    assert (report.files_read, report.rows_read, report.rows_written, report.rows_quarantined) == (2, 400, 400, 0)
    table = OfflineStore(storage).read_table(FRUIT)
    assert table.schema.remove_metadata() == FRUIT.schema.remove_metadata()
    # CSV rows came in grams, JSON Lines rows in kilograms: after conforming both are grams.
    assert pc.min(table["weight_g"]).as_py() > 40 and pc.max(table["weight_g"]).as_py() < 600
    assert pc.min(table["diameter_mm"]).as_py() > 40


def test_a_second_run_with_no_new_data_writes_nothing(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    write_fruit(storage, rows=200, seed=12)
    first = run_feature_pipeline(storage, FRUIT)
    second = run_feature_pipeline(storage, FRUIT)
    assert second.files_read == 0 and second.rows_read == 0
    assert second.table_version == first.table_version
    assert len(_ids(storage)) == 200


def test_after_new_files_arrive_only_those_are_read(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    write_fruit(storage, rows=200, seed=13)
    run_feature_pipeline(storage, FRUIT)
    write_fruit(storage, rows=300, seed=13)
    report = run_feature_pipeline(storage, FRUIT)
    assert (report.files_read, report.rows_read, report.rows_written) == (2, 300, 300)
    ids = _ids(storage)
    assert len(ids) == len(set(ids)) == 500


def test_the_same_records_in_a_new_file_are_counted_as_duplicates_not_added(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    generated = write_fruit(storage, rows=200, seed=14)
    run_feature_pipeline(storage, FRUIT)
    storage.write_bytes("landing/fruit/resent/scale.csv", storage.read_bytes(generated.files[0]))
    report = run_feature_pipeline(storage, FRUIT)
    assert (report.rows_read, report.rows_written, report.rows_duplicate) == (100, 0, 100)
    assert len(_ids(storage)) == 200


def test_bad_records_are_quarantined_with_reason_source_and_line(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    generated = write_fruit(storage, rows=400, seed=15, bad_fraction=0.1)
    report = run_feature_pipeline(storage, FRUIT)
    assert report.rows_read == report.rows_written + report.rows_quarantined + report.rows_duplicate
    assert report.rows_quarantined == generated.bad_records == 40
    assert report.rows_written == 360
    assert report.files_quarantined == 1
    quarantine = OfflineStore(storage).read_quarantine(FRUIT).to_pylist()
    assert len(quarantine) == 41
    whole_file = [q for q in quarantine if q["line"] is None]
    assert [q["source"] for q in whole_file] == list(generated.corrupt_files)
    assert "not valid UTF-8" in whole_file[0]["reason"]
    for row in quarantine:
        assert row["reason"] and row["source"].startswith("landing/fruit/")
        if row["line"] is not None:
            assert row["line"] >= 1 and row["raw"]


def test_older_table_versions_stay_readable(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    write_fruit(storage, rows=100, seed=16)
    first = run_feature_pipeline(storage, FRUIT)
    write_fruit(storage, rows=100, seed=16)
    run_feature_pipeline(storage, FRUIT)
    store = OfflineStore(storage)
    assert store.read_table(FRUIT, version=first.table_version).num_rows == 100
    assert store.read(FRUIT).count() == 200


def test_a_run_killed_before_its_commit_leaves_the_table_as_it_was(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    write_fruit(storage, rows=200, seed=17)
    before = run_feature_pipeline(storage, FRUIT)
    write_fruit(storage, rows=200, seed=17, bad_fraction=0.05)

    import ray

    env = {**os.environ, "ORCHARD_CRASH_AT": "before_feature_commit"}
    killed = subprocess.run(
        [sys.executable, "-m", "pipelines.features", "fruit_measurements", "--storage", str(tmp_path),
         "--ray-address", ray.get_runtime_context().gcs_address],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == 86, killed.stderr[-2000:]
    store = OfflineStore(storage)
    assert store.table_version(FRUIT) == before.table_version
    assert len(_ids(storage)) == 200

    after = run_feature_pipeline(storage, FRUIT)
    assert after.rows_written == 190 and after.rows_quarantined == 10
    ids = _ids(storage)
    assert len(ids) == len(set(ids)) == 390
    quarantine = store.read_quarantine(FRUIT)
    line_rows = quarantine.filter(pc.is_valid(quarantine["line"]))
    assert line_rows.num_rows == 10  # the killed run's quarantine commit is not repeated


def test_features_show_reports_rows_quarantine_and_the_last_run(ray_cluster, tmp_path):
    import json

    from typer.testing import CliRunner

    from pipelines.cli import app

    storage = Storage(str(tmp_path))
    write_fruit(storage, rows=100, seed=18, bad_fraction=0.1)
    report = run_feature_pipeline(storage, FRUIT)
    result = CliRunner().invoke(app, ["--storage", str(tmp_path), "features", "show", "fruit_measurements", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["rows"], shown["quarantined_rows"]) == (90, 11)
    assert shown["last_run"]["run_id"] == report.run_id
    assert shown["last_run"]["rows_quarantined"] == 10
    assert {f["name"] for f in shown["features"]} >= {"fruit_id", "weight_g", "label"}


def test_deduplication_works_with_a_single_bucket(ray_cluster, tmp_path):
    import ray.data

    from features.ingest import bookkeeping_schema
    from features.pipeline import _deduplicate

    storage = Storage(str(tmp_path))
    write_fruit(storage, rows=60, seed=19)
    run_feature_pipeline(storage, FRUIT)
    stored = OfflineStore(storage).read_table(FRUIT)
    rows = stored.select(FRUIT.schema.names).slice(0, 10)
    extra = {"_source": pa.array(["x"] * 10), "_line": pa.array(range(10), pa.int64()),
             "_order": pa.array(range(10), pa.int64()), "_reason": pa.nulls(10, pa.string()),
             "_raw": pa.nulls(10, pa.string())}
    for name, column in extra.items():
        rows = rows.append_column(name, column)
    new = rows.set_column(0, "fruit_id", pa.array([f"new-{i}" for i in range(10)]))
    valid = ray.data.from_arrow([rows.cast(bookkeeping_schema(FRUIT)), new.cast(bookkeeping_schema(FRUIT))])
    unique = _deduplicate(valid, OfflineStore(storage), FRUIT, buckets=1)
    assert sorted(unique.to_pandas()["fruit_id"]) == [f"new-{i}" for i in range(10)]
