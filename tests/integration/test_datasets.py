"""Training datasets from feature views: point-in-time joins of real feature tables, splits, no skew."""

from __future__ import annotations

import math
import struct
from datetime import datetime, timezone

import pyarrow as pa
import pytest
from fruit.generate import write_fruit
from hotel.generate import write_hotel
from hotel.groups import FEATURE_GROUPS as HOTEL_GROUPS
from surf.generate import write_surf
from surf.groups import FEATURE_GROUPS as SURF_GROUPS

from features.catalog import get_view
from features.datasets import DatasetError, RandomSplit, TimeSplit, TrainingDataset, create_training_dataset
from features.pipeline import run_feature_pipeline
from features.store import OfflineStore
from features.transforms import TransformSet
from orchard.storage import Storage

pytestmark = pytest.mark.ray


def _table(dataset) -> pa.Table:
    import ray

    return pa.concat_tables(ray.get(dataset.to_arrow_refs()))


@pytest.fixture(scope="module")
def hotel_storage(ray_cluster, tmp_path_factory):
    """Three days of the hotel platform, every hotel group built after each day."""
    storage = Storage(str(tmp_path_factory.mktemp("hotel")))
    for _ in range(3):
        write_hotel(storage, rows=300, seed=11)
        for group in HOTEL_GROUPS:
            run_feature_pipeline(storage, group)
    return storage


def test_the_hotel_view_joins_four_groups_to_every_booking(hotel_storage):
    view = get_view("booking_cancellation")
    metadata = create_training_dataset(hotel_storage, view, RandomSplit(seed=1))
    store = OfflineStore(hotel_storage)
    bookings = store.read_table(view.label.group)
    assert sum(metadata["rows"].values()) == bookings.num_rows  # no label row lost or duplicated
    assert set(metadata["unmatched"]) == {"hotel_weekly_vacancy:2", "hotel_users:1", "user_session_embedding:2",
                                          "electricity_prices:1"}
    # Day one's bookings predate every daily total, later days' bookings see the previous day's.
    assert 0 < metadata["unmatched"]["hotel_weekly_vacancy:2"] < bookings.num_rows
    assert metadata["unmatched"]["electricity_prices:1"] == 0  # a price every hour, at most 2 hours old
    assert metadata["table_versions"] == {g.ref: store.table_version(g) for g in
                                          (view.label.group, *(s.group for s in view.selections))}
    assert metadata["sensitive_features"] == {
        "hotel_users.accessibility_needs": view.sensitive_allowed["hotel_users.accessibility_needs"]}

    dataset = TrainingDataset.open(hotel_storage, view, metadata["version"])
    rows = pa.concat_tables([_table(dataset.read(s)) for s in ("train", "validation", "test")])
    assert sorted(rows.column("booking_id").to_pylist()) == sorted(bookings.column("booking_id").to_pylist())
    assert "status" in rows.column_names and "check_in" not in rows.column_names


def test_every_joined_feature_is_the_latest_known_at_the_label_time(hotel_storage):
    """Brute force on the stored tables, for each of the four groups: the latest row at or before the
    booking (within the TTL), never one from later."""
    view = get_view("booking_cancellation")
    metadata = create_training_dataset(hotel_storage, view, RandomSplit(seed=2))
    dataset = TrainingDataset.open(hotel_storage, view, metadata["version"])
    joined = pa.concat_tables([_table(dataset.read(s)) for s in ("train", "validation", "test")]).to_pylist()
    store = OfflineStore(hotel_storage)
    for selection in view.selections:
        group, feature = selection.group, selection.features[0]
        history: dict[tuple, list] = {}
        for row in store.read_table(group).to_pylist():
            history.setdefault(tuple(row[k] for k in selection.join_keys), []).append(row)
        checked = 0
        for row in joined:
            key = tuple(row[selection.join_keys[k]] for k in selection.join_keys)
            known = [r for r in history.get(key, []) if r[group.event_time] <= row["booked_at"]
                     and (selection.ttl is None or r[group.event_time] >= row["booked_at"] - selection.ttl)]
            expected = max(known, key=lambda r: r[group.event_time])[feature] if known else None
            assert row[selection.output_name(feature)] == expected, (group.name, row["booking_id"])
            checked += expected is not None
        assert checked > 0, group.name  # every group matched some bookings: the check is not vacuous


def test_transforms_are_fitted_on_the_training_split_only(hotel_storage):
    view = get_view("booking_cancellation")
    metadata = create_training_dataset(hotel_storage, view, RandomSplit(0.5, 0.25, 0.25, seed=3))
    dataset = TrainingDataset.open(hotel_storage, view, metadata["version"])
    fitted = dataset.transforms()
    train = _table(dataset.read("train"))
    prices = [p for p in train.column("price_eur_mwh").to_pylist() if p is not None]
    scaler = next(t for t in fitted.transforms if t.column == "price_eur_mwh")
    assert (scaler.data_min_, scaler.data_max_) == (min(prices), max(prices))
    on_train_only = TransformSet(list(view.transforms)).fit_table(train)
    for mine, theirs in zip(on_train_only.transforms, fitted.transforms):
        for name in ("data_min_", "data_max_", "categories_", "classes_"):
            assert getattr(mine, name, None) == getattr(theirs, name, None)
        for name in ("mean_", "std_"):  # merged block statistics agree with one pass to rounding
            assert getattr(mine, name, 0.0) == pytest.approx(getattr(theirs, name, 0.0), rel=1e-12)


def _bits(value) -> object:
    return struct.pack("<d", value) if isinstance(value, float) else value


def test_the_vector_training_saw_is_the_vector_serving_builds(hotel_storage):
    """No training/serving skew: Ray Data's transformed split equals, bit for bit, the serving path per row."""
    view = get_view("booking_cancellation")
    metadata = create_training_dataset(hotel_storage, view, RandomSplit(seed=4))
    dataset = TrainingDataset.open(hotel_storage, view, metadata["version"])
    trained_on = _table(dataset.read_transformed("train")).sort_by("booking_id").to_pylist()
    raw = _table(dataset.read("train")).sort_by("booking_id").to_pylist()
    assert len(trained_on) == len(raw) == metadata["rows"]["train"] > 0
    serving = TransformSet.from_json(
        hotel_storage.read_bytes(f"{dataset.location}/transforms.json").decode())  # what an endpoint loads
    request_fields = [c for c in raw[0] if c != "status"]  # a request carries raw features, not the label
    for seen, row in zip(trained_on, raw):
        served = serving.transform_rows([{c: row[c] for c in request_fields}])[0]
        for column, value in served.items():
            assert _bits(value) == _bits(seen[column]) or (
                isinstance(value, float) and math.isnan(value) and math.isnan(seen[column])), (column, row)


def test_a_time_split_puts_later_labels_in_later_splits(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    for _ in range(3):
        write_fruit(storage, rows=90, seed=12)
    run_feature_pipeline(storage, get_view("fruit_classification").label.group)
    split = TimeSplit(datetime(2026, 1, 2, tzinfo=timezone.utc), datetime(2026, 1, 3, tzinfo=timezone.utc))
    metadata = create_training_dataset(storage, get_view("fruit_classification"), split)
    assert metadata["rows"] == {"train": 90, "validation": 90, "test": 90}
    assert metadata["split"]["kind"] == "time"


def test_a_label_filter_keeps_only_the_label_rows_it_names(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    write_fruit(storage, rows=300, seed=5)
    group = get_view("apple_weight").label.group
    run_feature_pipeline(storage, group)
    fruit = OfflineStore(storage).read_table(group)
    apples = {row["fruit_id"] for row in fruit.to_pylist() if row["label"] == "apple"}
    assert 0 < len(apples) < fruit.num_rows
    metadata = create_training_dataset(storage, get_view("apple_weight"), RandomSplit(seed=0))
    assert metadata["label"]["where"] == {"label": ["apple"]}
    dataset = TrainingDataset.open(storage, get_view("apple_weight"), metadata["version"])
    kept = {row["fruit_id"] for split in ("train", "validation", "test") for row in _table(dataset.read(split)).to_pylist()}
    assert kept == apples


def test_the_surf_view_chains_beach_and_buoy(ray_cluster, tmp_path):
    storage = Storage(str(tmp_path))
    write_surf(storage, rows=120, seed=13)
    for group in SURF_GROUPS:
        run_feature_pipeline(storage, group)
    metadata = create_training_dataset(storage, get_view("surf_height"), RandomSplit(seed=5))
    assert sum(metadata["rows"].values()) == 120
    # Observations before a buoy's first reading of the day (or over 3 hours after its last) have no swell.
    assert metadata["unmatched"]["beaches:1"] == 0
    train = _table(TrainingDataset.open(storage, get_view("surf_height")).read_transformed("train"))
    assert {"bottom=sand", "bottom=reef", "bottom=point", "bottom=__other__"} <= set(train.column_names)


def test_a_missing_feature_table_is_a_clear_error(ray_cluster, tmp_path):
    with pytest.raises(DatasetError, match="feature group surf_observations:1 has no table yet"):
        create_training_dataset(Storage(str(tmp_path)), get_view("surf_height"), RandomSplit())


def test_the_cli_creates_lists_and_shows_datasets(ray_cluster, tmp_path):
    import json

    from typer.testing import CliRunner

    from pipelines.cli import app

    def orchard(*args: str):
        return CliRunner().invoke(app, ["--storage", str(tmp_path), *args])

    write_fruit(Storage(str(tmp_path)), rows=120, seed=14)
    assert orchard("features", "run", "fruit_measurements").exit_code == 0
    created = orchard("datasets", "create", "fruit_classification", "--split", "random:0.8,0.1,0.1", "--json")
    assert created.exit_code == 0, created.output
    metadata = json.loads(created.stdout)
    assert metadata["version"] == 1 and sum(metadata["rows"].values()) == 120
    listed = json.loads(orchard("datasets", "list", "--json").stdout)
    assert {"view": "fruit_classification:1", "datasets": [1]}.items() <= next(
        r for r in listed if r["view"] == "fruit_classification:1").items()
    shown = json.loads(orchard("datasets", "show", "fruit_classification", "--json").stdout)
    assert shown["split"] == {"kind": "random", "train": 0.8, "validation": 0.1, "test": 0.1, "seed": 0}
    refused = orchard("datasets", "create", "fruit_classification", "--split", "random:0.9,0.2,0.1")
    assert refused.exit_code == 2 and "add up to 1" in refused.output
