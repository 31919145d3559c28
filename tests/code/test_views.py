"""Feature view definitions: the sensitive-feature guard both ways, and definition errors."""

from __future__ import annotations

import pytest

from features.catalog import all_views, get_group, get_view
from features.datasets import DatasetError, RandomSplit, TimeSplit, parse_split
from features.definitions import DefinitionError
from features.views import FeatureView, Label, Selection, SensitiveFeatureError

USERS, BOOKINGS = get_group("hotel_users"), get_group("hotel_bookings")


def _view(**changes) -> FeatureView:
    arguments = dict(
        name="audit", version=1, description="test view",
        label=Label(group=BOOKINGS, target="status", columns=("booking_id", "user_id")),
        selections=(Selection(USERS, ("home_country", "accessibility_needs"), join_keys={"user_id": "user_id"}),),
        sensitive_allowed={"hotel_users.accessibility_needs": "audit of step-free room cancellations"},
    )
    return FeatureView(**{**arguments, **changes})


def test_a_sensitive_feature_with_a_justification_is_allowed():
    assert _view().sensitive_features() == ["hotel_users.accessibility_needs"]


@pytest.mark.parametrize("allowed", [{}, {"hotel_users.accessibility_needs": "  "}])
def test_a_sensitive_feature_without_a_justification_is_refused_by_name(allowed):
    with pytest.raises(SensitiveFeatureError, match="sensitive feature 'hotel_users.accessibility_needs'"):
        _view(sensitive_allowed=allowed)


def test_a_justification_for_a_feature_not_selected_is_an_error():
    with pytest.raises(DefinitionError, match="justifications for unselected features"):
        _view(selections=(Selection(USERS, ("home_country",), join_keys={"user_id": "user_id"}),))


def test_join_keys_must_cover_the_groups_primary_key():
    with pytest.raises(DefinitionError, match=r"must map its key \['user_id'\]"):
        _view(selections=(Selection(USERS, ("home_country",), join_keys={"country": "x"}),), sensitive_allowed={})


def test_output_names_must_not_clash():
    with pytest.raises(DefinitionError, match="appear twice"):
        _view(label=Label(group=BOOKINGS, target="status", columns=("booking_id", "user_id", "hotel_id")),
              selections=(Selection(get_group("hotel_weekly_vacancy"), ("hotel_id",),
                                    join_keys={"hotel_id": "hotel_id", "week_start": "check_in"}),),
              sensitive_allowed={})


def test_each_domain_has_a_view():
    assert {v.name for v in all_views()} == {"fruit_classification", "apple_weight", "surf_height", "booking_cancellation",
                                            "apple_defects"}
    assert [s.group.name for s in get_view("booking_cancellation").selections] == [
        "hotel_weekly_vacancy", "hotel_users", "user_session_embedding", "electricity_prices"]


def test_split_rules_are_parsed_and_checked():
    assert parse_split(None, seed=3) == RandomSplit(seed=3)
    assert parse_split("random:0.8,0.1,0.1") == RandomSplit(0.8, 0.1, 0.1)
    assert isinstance(parse_split("time:2026-01-02T00:00Z,2026-01-03T00:00Z"), TimeSplit)
    with pytest.raises(DatasetError, match="add up to 1"):
        parse_split("random:0.8,0.3,0.1")
    with pytest.raises(DatasetError, match="must be 'random"):
        parse_split("kfold:5")
    naive = parse_split("time:2026-01-02T00:00,2026-01-03T00:00")  # naive means UTC
    assert naive == parse_split("time:2026-01-02T00:00Z,2026-01-03T00:00Z")


def test_a_sensitive_feature_on_the_label_side_needs_a_justification_too():
    with pytest.raises(SensitiveFeatureError, match="'hotel_users.accessibility_needs'"):
        FeatureView(name="x", version=1, description="d",
                    label=Label(group=USERS, target="home_country", columns=("user_id", "accessibility_needs")),
                    selections=())


def test_a_selected_feature_may_not_shadow_the_label_time_or_target():
    with pytest.raises(DefinitionError, match=r"\['measured_at'\] appear twice"):
        FeatureView(name="x", version=1, description="d",
                    label=Label(group=get_group("fruit_measurements"), target="label", columns=("fruit_id",)),
                    selections=(Selection(get_group("fruit_measurements"), ("red", "measured_at"),
                                          join_keys={"fruit_id": "fruit_id"}),))


def test_a_row_keeps_its_random_split_whatever_batch_it_is_in():
    from datetime import datetime

    import pyarrow as pa

    from features.datasets import SPLIT_COLUMN, _assign_split

    rule = RandomSplit(0.5, 0.0, 0.5, seed=7).describe()  # a zero fraction is allowed
    times = [datetime(2026, 1, 1, h) for h in range(24)]
    table = pa.table({"k": pa.array(list(range(23)) + [None], pa.int64()), "t": pa.array(times, pa.timestamp("ns"))})
    whole = _assign_split(table, rule, ["k"], "t").column(SPLIT_COLUMN).to_pylist()
    one_by_one = [_assign_split(table.slice(i, 1).cast(pa.schema([("k", pa.int64()), ("t", pa.timestamp("us", tz="UTC"))])),
                                rule, ["k"], "t").column(SPLIT_COLUMN)[0].as_py() for i in range(24)]
    assert whole == one_by_one and set(whole) == {"train", "test"}


def test_a_label_filter_must_name_a_label_column_and_list_values():
    fruit = get_view("apple_weight").label.group
    with pytest.raises(DefinitionError, match="label filter on 'colour', which the label group"):
        FeatureView(name="bad", version=1, description="d", selections=(),
                    label=Label(group=fruit, target="weight_g", columns=("fruit_id",), where={"colour": ("red",)}))
    with pytest.raises(DefinitionError, match="must list the values to keep, got 'apple'"):
        FeatureView(name="bad", version=1, description="d", selections=(),
                    label=Label(group=fruit, target="weight_g", columns=("fruit_id",), where={"label": "apple"}))
