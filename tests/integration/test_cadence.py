"""A feature's value at a time does not depend on how often the pipeline ran: three days of hotel data ingested in
one run (a backfill) and one run per day give the same training dataset and the same online vectors."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hotel.generate import write_hotel
from hotel.groups import BOOKING_CANCELLATION, ELECTRICITY_PRICES, FEATURE_GROUPS, HOTEL_BOOKINGS, HOTEL_USERS

from features import FeatureView, Label, Selection
from features.datasets import DatasetError, RandomSplit, TrainingDataset, create_training_dataset
from features.online import open_online_store
from features.pipeline import run_feature_pipeline
from features.store import OfflineStore
from orchard.storage import Storage

pytestmark = [pytest.mark.ray]

DAYS = 2
# The booking-cancellation view without the users' profile: those rows come from a SQL table that updates a user's
# row in place, so the source itself forgets earlier versions; a backfill can only ever see the last one.
CANCELLATION = FeatureView(
    name="cancellation_by_cadence", version=1, description=BOOKING_CANCELLATION.description,
    label=BOOKING_CANCELLATION.label,
    selections=tuple(s for s in BOOKING_CANCELLATION.selections if s.group is not HOTEL_USERS),
    transforms=tuple(t for t in BOOKING_CANCELLATION.transforms if t.column not in ("home_country", "age_band")))


def _run_all(storage: Storage) -> None:
    for group in FEATURE_GROUPS:  # upstream groups come before the aggregations over them
        run_feature_pipeline(storage, group)


@pytest.fixture(scope="module")
def backfilled_and_daily(ray_cluster, tmp_path_factory):
    backfill = Storage(str(tmp_path_factory.mktemp("backfill")))
    daily = Storage(str(tmp_path_factory.mktemp("daily")))
    for day in range(DAYS):
        write_hotel(backfill, rows=250, seed=21)
        write_hotel(daily, rows=250, seed=21)
        _run_all(daily)
    _run_all(backfill)
    return backfill, daily


def _rows(storage: Storage, split: str) -> list[dict]:
    import ray

    dataset = TrainingDataset.open(storage, CANCELLATION)
    table = pa.concat_tables(ray.get(dataset.read(split).to_arrow_refs()))
    return sorted(table.to_pylist(), key=lambda row: row["booking_id"])


def test_a_backfill_and_daily_runs_give_the_same_training_dataset(backfilled_and_daily):
    backfill, daily = backfilled_and_daily
    first = create_training_dataset(backfill, CANCELLATION, RandomSplit(seed=3))
    second = create_training_dataset(daily, CANCELLATION, RandomSplit(seed=3))
    assert first["rows"] == second["rows"] and sum(first["rows"].values()) == DAYS * 250
    assert first["unmatched"] == second["unmatched"]
    # A booking sees its week's totals once an earlier booking of that week is an hour old (the first sees none).
    assert 0 < first["unmatched"]["hotel_weekly_vacancy:2"] < sum(first["rows"].values())
    for split in ("train", "validation", "test"):
        assert _rows(backfill, split) == _rows(daily, split), split
    assert TrainingDataset.open(backfill, CANCELLATION).transforms().to_json() == \
        TrainingDataset.open(daily, CANCELLATION).transforms().to_json()


def test_a_backfill_and_daily_runs_give_the_same_online_vectors(backfilled_and_daily):
    backfill, daily = backfilled_and_daily
    stores = [open_online_store(None, storage) for storage in (backfill, daily)]
    for group in FEATURE_GROUPS:
        if not group.online:
            continue
        keys = sorted({tuple(row[k] for k in group.primary_key)
                       for row in OfflineStore(backfill).read_table(group).select(list(group.primary_key)).to_pylist()})
        found = [store.read(group, keys) for store in stores]
        assert found[0].found == found[1].found == [True] * len(keys), group.ref
        assert found[0].event_times.equals(found[1].event_times), group.ref
        assert found[0].values.equals(found[1].values), group.ref
    for store in stores:
        store.close()


def test_a_selection_that_matches_no_label_row_names_itself_and_why(backfilled_and_daily):
    backfill, _ = backfilled_and_daily
    label = Label(group=HOTEL_BOOKINGS, target="status", columns=("booking_id", "zone"),
                  derive=lambda t: t.append_column("zone", pa.array(["XX"] * t.num_rows, pa.string())))
    nowhere = FeatureView(name="nowhere", version=1, description="Prices of a zone that does not exist.", label=label,
                          selections=(Selection(ELECTRICITY_PRICES, ("price_eur_mwh",), join_keys={"zone": "zone"}),))
    with pytest.raises(DatasetError, match=rf"electricity_prices:1 \(price_eur_mwh\) matched none of the "
                                           rf"{DAYS * 250} label rows: no row's key matches the label rows' \['zone'\]"):
        create_training_dataset(backfill, nowhere, RandomSplit(seed=0))
    stale = FeatureView(name="stale", version=1, description="Prices valid for a microsecond.",
                        label=BOOKING_CANCELLATION.label,
                        selections=(Selection(ELECTRICITY_PRICES, ("price_eur_mwh",), join_keys={"zone": "zone"},
                                              ttl=timedelta(microseconds=1)),))
    with pytest.raises(DatasetError, match="older than the selection's TTL"):
        create_training_dataset(backfill, stale, RandomSplit(seed=0))
    early = pc.min(OfflineStore(backfill).read_table(ELECTRICITY_PRICES).column("hour_start")).as_py()
    assert early is not None
