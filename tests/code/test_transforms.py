"""Model-dependent transforms: what they learn, how they merge, serialize and serve (no Ray)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.transforms import (
    LabelEncoder,
    MinMaxScaler,
    NotFittedError,
    OneHotEncoder,
    StandardScaler,
    Transform,
    TransformSet,
)

# Hourly day-ahead electricity spot prices in EUR/MWh: negative prices happen on sunny, windy days.
SPOT_PRICES = [42.5, 87.25, 130.0, -5.0, 61.75]


def _same_bits(left: dict, right: dict) -> bool:
    """Rows equal value for value, floats compared by their exact bits."""
    if list(left) != list(right):
        return False
    for name in left:
        a, b = left[name], right[name]
        if type(a) is not type(b):
            return False
        if isinstance(a, float) and a.hex() != b.hex():
            return False
        if not isinstance(a, float) and a != b:
            return False
    return True


def _close(actual: float, expected: float, scale: float) -> bool:
    """Equal within 1e-12 relative, or 1e-12 of the data's magnitude (float64's limit after cancellation)."""
    return math.isclose(actual, expected, rel_tol=1e-12, abs_tol=1e-12 * scale)


# -- MinMaxScaler


def test_min_max_scaler_maps_the_training_range_onto_zero_to_one():
    scaler = MinMaxScaler("spot_price").fit(pa.table({"spot_price": SPOT_PRICES}))
    assert (scaler.data_min_, scaler.data_max_, scaler.n_samples_) == (-5.0, 130.0, 5)
    scaled = scaler.transform(pa.table({"spot_price": SPOT_PRICES})).column("spot_price").to_pylist()
    assert scaled == pytest.approx([47.5 / 135, 92.25 / 135, 1.0, 0.0, 66.75 / 135], rel=1e-15)
    assert scaled[2] == 1.0 and scaled[3] == 0.0


def test_min_max_scaler_maps_prices_outside_the_fitted_range_outside_zero_to_one():
    scaler = MinMaxScaler("spot_price").fit(pa.table({"spot_price": SPOT_PRICES}))
    spike = scaler.transform(pa.table({"spot_price": [400.0, -140.0]})).column("spot_price").to_pylist()
    assert spike == pytest.approx([3.0, -1.0])


def test_min_max_scaler_maps_a_constant_column_to_zero():
    scaler = MinMaxScaler("spot_price").fit(pa.table({"spot_price": [50.0, 50.0]}))
    assert scaler.transform(pa.table({"spot_price": [50.0, 70.0]})).column("spot_price").to_pylist() == [0.0, 0.0]


def test_integer_input_is_scaled_to_float64():
    scaler = MinMaxScaler("rooms").fit(pa.table({"rooms": pa.array([10, 20, 30], pa.int32())}))
    column = scaler.transform(pa.table({"rooms": pa.array([20], pa.int32())})).column("rooms")
    assert column.type == pa.float64() and column.to_pylist() == [0.5]


# -- StandardScaler


def test_standard_scaler_uses_the_mean_and_population_std():
    values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]  # mean 5, population std 2
    scaler = StandardScaler("x").fit(pa.table({"x": values}))
    assert (scaler.mean_, scaler.std_, scaler.var_) == (5.0, 2.0, 4.0)
    assert scaler.transform(pa.table({"x": values})).column("x").to_pylist() == [-1.5, -0.5, -0.5, -0.5, 0, 0, 1, 2]


def test_standard_scaler_maps_a_constant_column_to_zero_with_std_exactly_zero():
    scaler = StandardScaler("x").fit(pa.table({"x": [0.1, 0.1, 0.1]}))
    assert scaler.std_ == 0.0 and scaler.mean_ == 0.1
    assert scaler.transform(pa.table({"x": [0.1, 3.0]})).column("x").to_pylist() == [0.0, 0.0]


@pytest.mark.parametrize("kind", [MinMaxScaler, StandardScaler])
def test_numeric_nulls_are_skipped_by_fit_and_stay_null(kind):
    scaler = kind("x").fit(pa.table({"x": [1.0, None, 3.0]}))
    assert scaler.n_samples_ == 2
    assert scaler.transform(pa.table({"x": [None, 3.0]})).column("x").to_pylist()[0] is None


@pytest.mark.parametrize("kind", [MinMaxScaler, StandardScaler])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_infinity_in_fit_data_is_an_error_naming_the_column(kind, bad):
    with pytest.raises(ValueError, match=r"column 'spot_price' has 1 NaN or infinite"):
        kind("spot_price").fit(pa.table({"spot_price": [1.0, bad, 2.0]}))


@pytest.mark.parametrize("kind", [MinMaxScaler, StandardScaler])
def test_nan_at_transform_time_is_an_error_too(kind):
    scaler = kind("x").fit(pa.table({"x": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="'x' has 1 NaN"):
        scaler.transform(pa.table({"x": [math.nan]}))


@pytest.mark.parametrize("kind", [MinMaxScaler, StandardScaler])
def test_a_column_with_no_values_cannot_be_fitted(kind):
    with pytest.raises(ValueError, match="column 'x' has no non-null values"):
        kind("x").fit(pa.table({"x": pa.array([None, None], pa.float64())}))


def test_a_scaler_refuses_a_text_column():
    with pytest.raises(ValueError, match=r"column 'x' must hold numbers .* got string"):
        StandardScaler("x").fit(pa.table({"x": ["1.5"]}))


# -- OneHotEncoder


def test_one_hot_encoder_learns_sorted_categories_and_replaces_the_column_in_place():
    table = pa.table({"id": [1, 2, 3], "fuel": ["wind", "gas", "wind"], "load": [1.0, 2.0, 3.0]})
    encoder = OneHotEncoder("fuel").fit(table)
    assert encoder.categories_ == ["gas", "wind"]
    encoded = encoder.transform(table)
    assert encoded.column_names == ["id", "fuel=gas", "fuel=wind", "load"]
    assert encoded.schema.field("fuel=gas").type == pa.float64()
    assert encoded.column("fuel=wind").to_pylist() == [1.0, 0.0, 1.0]


def test_an_unseen_category_is_all_zeros_when_unknown_is_ignore():
    encoder = OneHotEncoder("fuel", unknown="ignore").fit(pa.table({"fuel": ["gas", "wind"]}))
    assert encoder.transform_rows([{"fuel": "solar"}]) == [{"fuel=gas": 0.0, "fuel=wind": 0.0}]


def test_an_unseen_category_goes_to_the_other_column_when_unknown_is_other():
    encoder = OneHotEncoder("fuel", unknown="other").fit(pa.table({"fuel": ["gas", "wind"]}))
    assert encoder.output_names() == ["fuel=gas", "fuel=wind", "fuel=__other__"]
    assert encoder.transform_rows([{"fuel": "solar"}]) == [{"fuel=gas": 0.0, "fuel=wind": 0.0, "fuel=__other__": 1.0}]


@pytest.mark.parametrize("unknown", ["ignore", "other"])
def test_a_null_category_is_all_zeros(unknown):
    encoder = OneHotEncoder("fuel", unknown=unknown).fit(pa.table({"fuel": ["gas", None, "wind"]}))
    assert encoder.categories_ == ["gas", "wind"]
    row = encoder.transform(pa.table({"fuel": pa.array([None], pa.string())})).to_pylist()[0]
    assert set(row.values()) == {0.0}


def test_integer_categories_sort_as_numbers():
    encoder = OneHotEncoder("hour").fit(pa.table({"hour": [10, 2, 23, 2]}))
    assert encoder.categories_ == [2, 10, 23]
    assert encoder.transform_rows([{"hour": 10}]) == [{"hour=2": 0.0, "hour=10": 1.0, "hour=23": 0.0}]


def test_serving_text_to_an_encoder_fitted_on_integers_is_an_error():
    encoder = OneHotEncoder("hour").fit(pa.table({"hour": [1, 2]}))
    with pytest.raises(ValueError, match="'hour' must hold integer values as in training, got string"):
        encoder.transform_rows([{"hour": "1"}])


def test_a_category_named_other_clashes_with_the_other_column():
    with pytest.raises(ValueError, match="'fuel=__other__' would appear twice"):
        OneHotEncoder("fuel", unknown="other").fit(pa.table({"fuel": ["gas", "__other__"]}))


def test_an_unknown_policy_that_is_neither_ignore_nor_other_is_rejected():
    with pytest.raises(ValueError, match="unknown must be one of 'ignore', 'other', got 'error'"):
        OneHotEncoder("fuel", unknown="error").fit(pa.table({"fuel": ["gas"]}))


def test_one_hot_columns_must_not_overwrite_existing_columns():
    encoder = OneHotEncoder("fuel").fit(pa.table({"fuel": ["gas"]}))
    with pytest.raises(ValueError, match="'fuel=gas' already exist"):
        encoder.transform(pa.table({"fuel": ["gas"], "fuel=gas": [1.0]}))


# -- LabelEncoder


def test_label_encoder_maps_classes_to_int64_indices_in_sorted_order():
    encoder = LabelEncoder("fruit").fit(pa.table({"fruit": ["pear", "apple", "plum", "apple"]}))
    assert encoder.classes_ == ["apple", "pear", "plum"]
    column = encoder.transform(pa.table({"fruit": ["plum", "apple"]})).column("fruit")
    assert column.type == pa.int64() and column.to_pylist() == [2, 0]


def test_an_unknown_class_is_an_error_naming_it():
    encoder = LabelEncoder("fruit").fit(pa.table({"fruit": ["apple", "pear"]}))
    with pytest.raises(ValueError, match=r"unknown class\(es\) 'kiwi' \(1 in all, 2 row\(s\)\)"):
        encoder.transform(pa.table({"fruit": ["kiwi", "apple", "kiwi"]}))


def test_a_null_label_is_an_error_in_fit_and_in_transform():
    with pytest.raises(ValueError, match="column 'fruit' has 1 null value"):
        LabelEncoder("fruit").fit(pa.table({"fruit": ["apple", None]}))
    encoder = LabelEncoder("fruit").fit(pa.table({"fruit": ["apple"]}))
    with pytest.raises(ValueError, match="1 null label"):
        encoder.transform(pa.table({"fruit": pa.array([None], pa.string())}))


def test_inverse_transform_turns_indices_back_into_classes():
    encoder = LabelEncoder("fruit").fit(pa.table({"fruit": ["pear", "apple"]}))
    decoded = encoder.inverse_transform(pa.table({"fruit": [1, 0, 1]}))
    assert decoded.column("fruit").to_pylist() == ["pear", "apple", "pear"]
    with pytest.raises(ValueError, match="class index 2 is outside 0..1"):
        encoder.inverse_transform(pa.table({"fruit": [2]}))


# -- every transform

FITTED_EXAMPLES = [
    (MinMaxScaler("x"), pa.table({"x": [0.1, 0.7, 1 / 3, None, 2e-300]})),
    (StandardScaler("x"), pa.table({"x": [0.1, 0.7, 1 / 3, None, 2e-300]})),
    (OneHotEncoder("x", unknown="other"), pa.table({"x": ["b", "a", None, "c"]})),
    (LabelEncoder("x"), pa.table({"x": ["b", "a", "c", "a"]})),
]
IDS = [type(transform).__name__ for transform, _ in FITTED_EXAMPLES]


@pytest.mark.parametrize(("transform", "table"), FITTED_EXAMPLES, ids=IDS)
def test_transform_before_fit_is_refused(transform, table):
    fresh = type(transform)("x")
    with pytest.raises(NotFittedError, match=r"is not fitted: call fit\(table\)"):
        fresh.transform(table)
    with pytest.raises(NotFittedError):
        fresh.transform_rows([{"x": None}])


@pytest.mark.parametrize(("transform", "table"), FITTED_EXAMPLES, ids=IDS)
def test_a_missing_column_is_an_error_naming_it(transform, table):
    with pytest.raises(ValueError, match="the table lacks column 'x'; it has y"):
        type(transform)("x").fit(pa.table({"y": [1.0]}))


@pytest.mark.parametrize(("transform", "table"), FITTED_EXAMPLES, ids=IDS)
def test_json_round_trip_gives_bit_identical_outputs(transform, table):
    transform.fit(table)
    loaded = Transform.from_json(transform.to_json())
    assert type(loaded) is type(transform) and loaded.state_ == transform.state_
    for name in transform.output_names():
        original = transform.transform(table).column(name).to_numpy(zero_copy_only=False)
        reloaded = loaded.transform(table).column(name).to_numpy(zero_copy_only=False)
        assert original.dtype == reloaded.dtype
        assert original.tobytes() == reloaded.tobytes()


@pytest.mark.parametrize(("transform", "table"), FITTED_EXAMPLES, ids=IDS)
def test_transform_rows_gives_the_same_bits_as_the_row_of_the_transformed_table(transform, table):
    transform.fit(table)
    whole = transform.transform(table).to_pylist()
    rows = table.to_pylist()
    for index, row in enumerate(rows):
        assert _same_bits(transform.transform_rows([row])[0], whole[index])
    assert all(_same_bits(a, b) for a, b in zip(transform.transform_rows(rows), whole))


@given(values=st.lists(st.one_of(st.none(), st.floats(-1e9, 1e9)), min_size=2, max_size=40), data=st.data())
@settings(max_examples=60, deadline=None)
def test_a_served_row_matches_its_row_in_the_training_table_bit_for_bit(values, data):
    column = pa.array(values, pa.float64())
    if column.null_count == len(column):
        return
    table = pa.table({"x": column})
    for scaler in (MinMaxScaler("x"), StandardScaler("x")):
        scaler.fit(table)
        transformed = scaler.transform(table).column("x")
        index = data.draw(st.integers(0, len(values) - 1))
        served = scaler.transform_rows([{"x": values[index]}])[0]["x"]
        expected = transformed[index].as_py()
        assert (served is None and expected is None) or served.hex() == expected.hex()
        if values[index] is not None:
            single = scaler.transform(pa.table({"x": [values[index]]})).column("x").to_numpy()
            assert np.array_equal(single, transformed.to_numpy(zero_copy_only=False)[index:index + 1])


def test_state_floats_survive_json_exactly():
    awkward = [0.1, 1 / 3, 2 ** -1074, 1e150 / 3, -0.0, 123456789.12345679]
    for kind, learned in ((StandardScaler, ("mean_", "std_", "var_")), (MinMaxScaler, ("data_min_", "data_max_"))):
        fitted = kind("x").fit(pa.table({"x": awkward}))
        loaded = kind.from_json(fitted.to_json())
        for name in learned:
            assert getattr(loaded, name).hex() == getattr(fitted, name).hex()


def test_values_too_large_for_a_float64_variance_are_an_error_naming_the_column():
    with pytest.raises(ValueError, match="values of column 'x' are too large for a float64 variance"):
        StandardScaler("x").fit(pa.table({"x": [-1e300, 1e300]}))


def test_json_holds_format_type_column_params_and_state():
    encoder = OneHotEncoder("fuel", unknown="other").fit(pa.table({"fuel": ["wind", "gas", "wind"]}))
    assert json.loads(encoder.to_json()) == {
        "format": "orchard.transform", "format_version": 1, "type": "OneHotEncoder", "column": "fuel",
        "params": {"unknown": "other"},
        "state": {"kind": "string", "values": ["gas", "wind"], "counts": [1, 2]},
    }


def test_an_unfitted_transform_round_trips_as_unfitted():
    loaded = Transform.from_json(OneHotEncoder("fuel", unknown="other").to_json())
    assert isinstance(loaded, OneHotEncoder) and loaded.unknown == "other" and not loaded.is_fitted


def _scaler_json(**changes) -> str:
    data = json.loads(MinMaxScaler("x").fit(pa.table({"x": [1.0, 2.0]})).to_json())
    for key, value in changes.items():
        if key.startswith("state_"):
            data["state"][key.removeprefix("state_")] = value
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "transform JSON is malformed"),
    ("[]", "must be an object, got list"),
    (_scaler_json(format="sklearn"), "'format' must be 'orchard.transform'"),
    (_scaler_json(format_version=2), "'format_version' must be 1, got 2"),
    (_scaler_json(type="PowerTransformer"), "'type' must be one of MinMaxScaler"),
    (_scaler_json(column=""), "column must be a non-empty string"),
    (_scaler_json(params={"clip": True}), "'params' of a MinMaxScaler must have exactly the keys"),
    (_scaler_json(extra=1), "unexpected \\['extra'\\]"),
    (_scaler_json(state_min=5.0), "'min' 5.0 is above 'max' 2.0"),
    (_scaler_json(state_count=-1), "'count' must be a non-negative integer"),
    (_scaler_json(state_max="2"), "'max' must be a finite number"),
    (_scaler_json(state_max=1e400), "'max' must be a finite number"),
    (_scaler_json(state_count=0), "'min' and 'max' must be null when 'count' is 0"),
    ('{"format": "orchard.transform", "format_version": 1, "type": "StandardScaler", "column": "x", "params": {},'
     ' "state": {"count": 2, "mean": NaN, "m2": 0.0}}', "'mean' must be a finite number"),
    ('{"format": "orchard.transform", "format_version": 1, "type": "OneHotEncoder", "column": "x",'
     ' "params": {"unknown": "ignore"}, "state": {"kind": "string", "values": ["b", "a"], "counts": [1, 1]}}',
     "'values' must be sorted and distinct"),
    ('{"format": "orchard.transform", "format_version": 1, "type": "LabelEncoder", "column": "x",'
     ' "params": {}, "state": {"kind": "integer", "values": [1, "a"], "counts": [1, 1]}}',
     "'values' of kind 'integer' must all be int"),
])
def test_from_json_rejects_malformed_input_with_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        Transform.from_json(text)


def test_from_json_of_a_subclass_rejects_another_type():
    with pytest.raises(ValueError, match="holds a MinMaxScaler, not a StandardScaler"):
        StandardScaler.from_json(_scaler_json())


# -- merging partial states

_numbers = st.one_of(st.none(), st.floats(-1e6, 1e6), st.integers(-1000, 1000).map(float))
_words = st.one_of(st.none(), st.sampled_from(["gas", "wind", "solar", "coal", "hydro", "nuclear"]))


def _blocks(values: list, cuts: list[int]) -> list[list]:
    edges = [0] + sorted(cut % (len(values) + 1) for cut in cuts) + [len(values)]
    return [values[start:end] for start, end in zip(edges, edges[1:])]


def _merged(transform: Transform, blocks: list[list], value_type: pa.DataType) -> dict:
    states = [transform.partial_state(pa.table({"x": pa.array(block, value_type)})) for block in blocks]
    merged = states[0]
    for state in states[1:]:
        merged = transform.merge_states(merged, state)
    return merged


@given(values=st.lists(_numbers, min_size=1, max_size=60), cuts=st.lists(st.integers(0, 1000), max_size=6))
@settings(max_examples=150, deadline=None)
def test_merged_numeric_statistics_equal_a_fit_on_all_the_data(values, cuts):
    present = np.array([value for value in values if value is not None], dtype=np.float64)
    if not len(present):
        return
    table = pa.table({"x": pa.array(values, pa.float64())})
    blocks = _blocks(values, cuts)

    minmax = MinMaxScaler("x").from_state(_merged(MinMaxScaler("x"), blocks, pa.float64()))
    whole = MinMaxScaler("x").fit(table)
    assert (minmax.data_min_, minmax.data_max_, minmax.n_samples_) == (present.min(), present.max(), len(present))
    assert minmax.state_ == whole.state_

    standard = StandardScaler("x").from_state(_merged(StandardScaler("x"), blocks, pa.float64()))
    scale = float(np.abs(present).max())
    assert standard.n_samples_ == len(present)
    assert _close(standard.mean_, float(np.mean(present)), scale)
    assert _close(standard.std_, float(np.std(present)), scale)


@given(values=st.lists(_words, min_size=1, max_size=60), cuts=st.lists(st.integers(0, 1000), max_size=6))
@settings(max_examples=100, deadline=None)
def test_merged_category_counts_equal_a_fit_on_all_the_data(values, cuts):
    if all(value is None for value in values):
        return
    blocks = _blocks(values, cuts)
    table = pa.table({"x": pa.array(values, pa.string())})
    merged = OneHotEncoder("x").from_state(_merged(OneHotEncoder("x"), blocks, pa.string()))
    assert merged.state_ == OneHotEncoder("x").fit(table).state_
    assert merged.categories_ == sorted({value for value in values if value is not None})


@given(parts=st.lists(st.lists(st.floats(-1e6, 1e6), max_size=20), min_size=3, max_size=3),
       words=st.lists(st.lists(_words, max_size=20), min_size=3, max_size=3))
@settings(max_examples=100, deadline=None)
def test_merge_states_is_associative(parts, words):
    for transform in (MinMaxScaler("x"), StandardScaler("x")):
        a, b, c = (transform.partial_state(pa.table({"x": pa.array(part, pa.float64())})) for part in parts)
        left = transform.merge_states(transform.merge_states(a, b), c)
        right = transform.merge_states(a, transform.merge_states(b, c))
        if isinstance(transform, MinMaxScaler):
            assert left == right
        else:
            scale = max([abs(value) for part in parts for value in part], default=0.0)
            assert left["count"] == right["count"]
            assert _close(left["mean"], right["mean"], scale)
            assert _close(left["m2"], right["m2"], scale * scale * max(left["count"], 1))
    encoder = OneHotEncoder("x")
    a, b, c = (encoder.partial_state(pa.table({"x": pa.array(part, pa.string())})) for part in words)
    assert encoder.merge_states(encoder.merge_states(a, b), c) == encoder.merge_states(a, encoder.merge_states(b, c))


def test_the_state_of_an_empty_block_merges_as_nothing():
    for transform in (MinMaxScaler("x"), StandardScaler("x"), OneHotEncoder("x")):
        value_type = pa.string() if isinstance(transform, OneHotEncoder) else pa.float64()
        full = transform.partial_state(pa.table({"x": pa.array(["a", "b"] if value_type == pa.string() else [1.0, 4.0],
                                                             value_type)}))
        empty = transform.partial_state(pa.table({"x": pa.array([], value_type)}))
        assert transform.merge_states(empty, full) == full == transform.merge_states(full, empty)


def test_blocks_of_text_and_of_integers_do_not_merge():
    encoder = OneHotEncoder("x")
    text, numbers = encoder.partial_state(pa.table({"x": ["a"]})), encoder.partial_state(pa.table({"x": [1]}))
    with pytest.raises(ValueError, match="holds string values in one block and integer values in another"):
        encoder.merge_states(text, numbers)


# -- TransformSet

TRAINING = pa.table({
    "hour": [0, 1, 2, 3],
    "spot_price": [42.5, 87.25, None, -5.0],
    "fuel": ["gas", "wind", "wind", None],
    "load_mw": [510.0, 640.0, 720.0, 580.0],
    "regime": ["normal", "peak", "peak", "normal"],
})


def _set() -> TransformSet:
    return TransformSet([MinMaxScaler("spot_price"), OneHotEncoder("fuel", unknown="other"),
                         StandardScaler("load_mw"), LabelEncoder("regime")])


def test_a_transform_set_applies_every_transform_and_keeps_other_columns_in_place():
    transforms = _set().fit_table(TRAINING)
    transformed = transforms.transform(TRAINING)
    assert transformed.column_names == ["hour", "spot_price", "fuel=gas", "fuel=wind", "fuel=__other__",
                                        "load_mw", "regime"]
    assert transformed.column_names == transforms.output_columns(TRAINING.column_names)
    assert transformed.column("regime").to_pylist() == [0, 1, 1, 0]
    alone = StandardScaler("load_mw").fit(TRAINING).transform(TRAINING).column("load_mw")
    assert transformed.column("load_mw").equals(alone)


def test_serving_rows_without_the_label_skip_the_label_encoder():
    transforms = _set().fit_table(TRAINING)
    row = {"hour": 5, "spot_price": 130.0, "fuel": "solar", "load_mw": 600.0}
    served = transforms.transform_rows([row])[0]
    assert list(served) == ["hour", "spot_price", "fuel=gas", "fuel=wind", "fuel=__other__", "load_mw"]
    assert served["fuel=__other__"] == 1.0 and served["spot_price"] == pytest.approx(135 / 92.25)


def test_transform_set_rows_match_the_transformed_table_bit_for_bit():
    transforms = _set().fit_table(TRAINING)
    whole = transforms.transform(TRAINING).to_pylist()
    for index, row in enumerate(TRAINING.to_pylist()):
        assert _same_bits(transforms.transform_rows([row])[0], whole[index])


def test_a_transform_set_round_trips_through_json_with_identical_outputs():
    transforms = _set().fit_table(TRAINING)
    loaded = TransformSet.from_json(transforms.to_json())
    assert [repr(t) for t in loaded.transforms] == [repr(t) for t in transforms.transforms]
    assert loaded.transform(TRAINING).equals(transforms.transform(TRAINING))


def test_two_transforms_on_one_column_are_an_error_naming_it():
    doubled = TransformSet([StandardScaler("load_mw"), MinMaxScaler("load_mw")])
    with pytest.raises(ValueError, match="column 'load_mw' has more than one transform"):
        doubled.fit_table(TRAINING)


def test_a_transform_on_a_missing_column_is_an_error_naming_it():
    with pytest.raises(ValueError, match="lacks column\\(s\\) 'wind_speed'"):
        TransformSet([StandardScaler("wind_speed")]).fit_table(TRAINING)
    transforms = _set().fit_table(TRAINING)
    with pytest.raises(ValueError, match="input lacks column\\(s\\) 'load_mw'"):
        transforms.transform(TRAINING.drop_columns(["load_mw"]))


def test_an_unfitted_transform_set_refuses_to_transform():
    with pytest.raises(NotFittedError):
        _set().transform(TRAINING)
    with pytest.raises(NotFittedError):
        _set().transform_rows([])


def test_rows_with_different_keys_are_rejected():
    transforms = _set().fit_table(TRAINING)
    rows = [{"hour": 1, "spot_price": 1.0, "fuel": "gas", "load_mw": 1.0}, {"hour": 2, "spot_price": 1.0}]
    with pytest.raises(ValueError, match="row 1 must have the keys of row 0"):
        transforms.transform_rows(rows)


def test_transform_set_json_with_a_repeated_column_is_rejected():
    data = json.loads(TransformSet([StandardScaler("x")]).to_json())
    data["transforms"] *= 2
    with pytest.raises(ValueError, match="column 'x' has more than one transform"):
        TransformSet.from_json(json.dumps(data))
