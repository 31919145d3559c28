"""Retraining policies: validation, configuration overrides, and the gate's comparison."""

from __future__ import annotations

from dataclasses import replace

import pytest

from monitoring.retraining import compare
from training import ModelSpec, RetrainPolicy
from training.catalog import get_spec
from training.policy import PolicyError, configured_policy
from training.spec import ModelSpecError


@pytest.mark.parametrize(("values", "message"), [
    ({"every": "soon"}, "every must be a positive duration"),
    ({"new_rows": 0}, "new_rows must be a positive integer or unset"),
    ({"drift": True}, "drift must be a positive integer or unset"),
    ({"tolerance": 1.0}, "tolerance must be a share from 0 to below 1"),
    ({"rollout": "blue-green"}, "rollout must be one of shadow, canary, direct"),
    ({"canary_share": 0}, "canary_share must be in (0, 1]"),
    ({"min_outcomes": 0}, "min_outcomes must be a positive integer"),
])
def test_a_bad_policy_is_refused_with_the_setting_named(values, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        RetrainPolicy(**values)


def test_only_set_triggers_count():
    assert RetrainPolicy().triggers == {}
    assert RetrainPolicy(every="7d", drift=2).triggers == {"every": "7d", "drift": 2}


def test_a_model_definition_carries_its_policy_into_its_description():
    spec = replace(get_spec("fruit_classifier"), retrain=RetrainPolicy(new_rows=500))
    assert spec.describe()["retrain"]["new_rows"] == 500
    with pytest.raises(ModelSpecError, match="retrain must be a training.RetrainPolicy"):
        ModelSpec(name="x", view="v", task="regression", flavor=spec.flavor, retrain={"new_rows": 5})


def test_the_pyproject_table_overrides_the_definitions_policy(tmp_path):
    spec = replace(get_spec("fruit_classifier"), retrain=RetrainPolicy(new_rows=500, rollout="canary"))
    assert configured_policy(spec, tmp_path) == spec.retrain  # no pyproject.toml: the definition's
    (tmp_path / "pyproject.toml").write_text('[tool.orchard.retrain.fruit_classifier]\nnew_rows = 50\n'
                                             'canary_share = 0.25\n')
    policy = configured_policy(spec, tmp_path)
    assert (policy.new_rows, policy.rollout, policy.canary_share) == (50, "canary", 0.25)
    (tmp_path / "pyproject.toml").write_text('[tool.orchard.retrain.fruit_classifier]\nnew_row = 50\n')
    with pytest.raises(PolicyError, match=r"unknown setting\(s\) \['new_row'\]"):
        configured_policy(spec, tmp_path)


@pytest.mark.parametrize(("metric", "challenger", "champion", "passes"), [
    ("accuracy", 0.90, 0.90, True),
    ("accuracy", 0.895, 0.90, True),    # within 1% of 0.90
    ("accuracy", 0.89, 0.90, False),
    ("rmse", 1.01, 1.0, True),
    ("rmse", 1.02, 1.0, False),
])
def test_the_gate_allows_the_tolerance_as_a_share_of_productions_metric(metric, challenger, champion, passes):
    verdict, words = compare(metric, challenger, champion, 0.01)
    assert verdict is passes and metric in words
