import pyarrow.compute as pc
import pytest

from features.catalog import get_group
from features.pipeline import run_feature_pipeline
from features.store import OfflineStore
from features.synthetic import write_fruit
from orchard.storage import Storage

pytestmark = pytest.mark.ray


def test_both_sources_land_in_one_table_in_the_groups_units(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    generated = write_fruit(storage, rows=400, seed=11)
    group = get_group("fruit_measurements")
    report = run_feature_pipeline(storage, group)
    assert (report.files_read, report.rows_read, report.rows_written) == (2, 400, 400)
    table = OfflineStore(storage).read_table(group)
    assert table.schema == group.schema
    assert table.num_rows == generated.rows
    # CSV rows came in grams, JSON Lines rows in kilograms: after conforming both are grams.
    assert pc.min(table["weight_g"]).as_py() > 40 and pc.max(table["weight_g"]).as_py() < 600
    assert pc.min(table["diameter_mm"]).as_py() > 40


def test_rerun_without_new_files_keeps_the_same_rows(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    write_fruit(storage, rows=200, seed=12)
    group = get_group("fruit_measurements")
    run_feature_pipeline(storage, group)
    run_feature_pipeline(storage, group)
    table = OfflineStore(storage).read_table(group)
    assert table.num_rows == 200
    assert len(set(table["fruit_id"].to_pylist())) == 200


def test_the_store_reads_as_a_ray_dataset(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    write_fruit(storage, rows=100, seed=13)
    group = get_group("fruit_measurements")
    run_feature_pipeline(storage, group)
    assert OfflineStore(storage).read(group).count() == 100
