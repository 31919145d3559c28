"""Fitting a transform set over the blocks of a Ray Dataset gives what one fit on the whole table gives."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from features.transforms import LabelEncoder, MinMaxScaler, OneHotEncoder, StandardScaler, TransformSet

pytestmark = pytest.mark.ray

FUELS = np.array(["gas", "wind", "solar", "coal", "hydro"])
REGIMES = np.array(["low", "normal", "peak"])


def _hours(count: int, seed: int) -> pa.Table:
    """Hours of an electricity market: spot price (some missing), fuel on the margin, load and price regime."""
    rng = np.random.default_rng(seed)
    price = rng.normal(70.0, 35.0, count)
    return pa.table({
        "spot_price": pa.array(price, mask=rng.random(count) < 0.05),
        "fuel": pa.array(FUELS[rng.integers(0, len(FUELS) - (seed % 2), count)]),
        "load_mw": rng.normal(600.0, 80.0, count) + 1e6,  # a large offset: cancellation would show in the std
        "regime": pa.array(REGIMES[rng.integers(0, len(REGIMES), count)]),
    })


def _set() -> TransformSet:
    return TransformSet([MinMaxScaler("spot_price"), OneHotEncoder("fuel", unknown="other"),
                         StandardScaler("load_mw"), LabelEncoder("regime")])


def test_fit_dataset_over_several_blocks_equals_fit_table_on_their_concatenation(ray_cluster):
    import ray

    blocks = [_hours(count, seed) for seed, count in enumerate([700, 1, 350, 1200, 90])]
    dataset = ray.data.from_arrow(blocks)
    assert dataset.num_blocks() == len(blocks)

    whole = pa.concat_tables(blocks)
    distributed = _set().fit_dataset(dataset)
    local = _set().fit_table(whole)

    minmax, onehot, standard, label = distributed.transforms
    local_minmax, local_onehot, local_standard, local_label = local.transforms
    assert minmax.state_ == local_minmax.state_
    assert onehot.state_ == local_onehot.state_ and onehot.categories_ == sorted(FUELS.tolist())
    assert label.classes_ == local_label.classes_ == sorted(REGIMES.tolist())
    assert standard.n_samples_ == local_standard.n_samples_ == 2341
    assert math.isclose(standard.mean_, local_standard.mean_, rel_tol=1e-12)
    assert math.isclose(standard.std_, local_standard.std_, rel_tol=1e-12)
    assert math.isclose(standard.std_, float(np.std(whole["load_mw"].to_numpy())), rel_tol=1e-12)
    exact = ["spot_price", "fuel=gas", "fuel=__other__", "regime"]
    assert distributed.transform(whole).select(exact).equals(local.transform(whole).select(exact))


def test_fit_dataset_reports_a_missing_column_by_name(ray_cluster):
    import ray

    dataset = ray.data.from_arrow([_hours(20, 1).drop_columns(["load_mw"])])
    with pytest.raises(ValueError, match="training dataset lacks column\\(s\\) 'load_mw'"):
        _set().fit_dataset(dataset)


def test_fit_dataset_on_an_empty_dataset_is_an_error(ray_cluster):
    import ray

    with pytest.raises(ValueError, match="the training dataset is empty|has no non-null values"):
        _set().fit_dataset(ray.data.from_arrow([_hours(5, 0).slice(0, 0)]))
