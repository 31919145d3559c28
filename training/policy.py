"""A model's retraining policy: when to train a challenger, how it must compare, and how it reaches traffic.

Set it in the model's definition (`ModelSpec(..., retrain=RetrainPolicy(new_rows=500))`) or, per model, in the
configuration: a `[tool.orchard.retrain.MODEL]` table in the pyproject.toml of the folder Orchard runs in, whose
keys override the definition's.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from orchard.durations import DurationError, parse_duration
from orchard.errors import UsageError

ROLLOUTS = ("shadow", "canary", "direct")


class PolicyError(UsageError):
    pass


@dataclass(frozen=True)
class RetrainPolicy:
    """Triggers (any one starts a retraining; none set means only `orchard retrain --force` does):

    - `every`: the production version is older than this ("7d", "12h");
    - `new_rows`: at least this many rows were added to the view's label group since the production version's
      training dataset was made;
    - `drift`: at least this many inputs drifted since the production version was promoted (`orchard monitor`'s
      verdicts, with `monitoring.stats.DriftThresholds`);
    - `performance_drop`: the live metric since the promotion is worse than the version's test metric by more than
      the thresholds' `performance_drop` share.

    The gate: the challenger's test metric on the new training dataset's test split must be at least the production
    version's on that same split, allowing `tolerance` (a share of the production version's metric).

    The rollout of a challenger that passes: `shadow` (it predicts a copy of every production request; its answers
    are logged, never returned), `canary` (it answers `canary_share` of the requests), or `direct` (promoted at
    once). After `min_outcomes` of its predictions have outcomes it is promoted if its live metric is at least the
    production version's over the same period (within `tolerance`), else rolled back; with too few outcomes
    after `max_duration` it is rolled back. (A canary whose production requests got no outcomes in the period
    has nothing to be compared with: it is promoted only if it beats its baseline and its live metric stays
    within the thresholds' `performance_drop` of its test metric.)

    Triggers count from the production version's start or from the loop's last attempt, whichever is later, so
    a refused or rolled-back challenger is not retrained from the same evidence again.
    """

    every: str | None = None
    new_rows: int | None = None
    drift: int | None = None
    performance_drop: bool = False
    tolerance: float = 0.01
    rollout: str = "shadow"
    canary_share: float = 0.1
    min_outcomes: int = 50
    max_duration: str = "7d"

    def __post_init__(self) -> None:
        for name in ("every", "max_duration"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_duration(value, name)
                except DurationError as error:
                    raise PolicyError(f"retrain policy: {error}") from None
        for name in ("new_rows", "drift"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise PolicyError(f"retrain policy: {name} must be a positive integer or unset, got {value!r}")
        if not isinstance(self.performance_drop, bool):
            raise PolicyError(f"retrain policy: performance_drop must be true or false, got {self.performance_drop!r}")
        if not _number(self.tolerance) or not 0 <= self.tolerance < 1:
            raise PolicyError(f"retrain policy: tolerance must be a share from 0 to below 1, got {self.tolerance!r}")
        if self.rollout not in ROLLOUTS:
            raise PolicyError(f"retrain policy: rollout must be one of {', '.join(ROLLOUTS)}, got {self.rollout!r}")
        if not _number(self.canary_share) or not 0 < self.canary_share <= 1:
            raise PolicyError(f"retrain policy: canary_share must be in (0, 1], got {self.canary_share!r}")
        if isinstance(self.min_outcomes, bool) or not isinstance(self.min_outcomes, int) or self.min_outcomes < 1:
            raise PolicyError(f"retrain policy: min_outcomes must be a positive integer, got {self.min_outcomes!r}")

    @property
    def triggers(self) -> dict[str, Any]:
        return {name: value for name, value in (("every", self.every), ("new_rows", self.new_rows),
                                                ("drift", self.drift), ("performance_drop", self.performance_drop))
                if value}

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, values: Mapping[str, Any]) -> "RetrainPolicy":
        known = {item.name for item in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PolicyError(f"retrain policy: unknown setting(s) {unknown}; known: {sorted(known)}")
        return replace(self, **dict(values))


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def configured_policy(spec, folder: Path | None = None) -> RetrainPolicy:
    """The model's policy: its definition's (or the defaults), overridden by `[tool.orchard.retrain.MODEL]`."""
    policy = getattr(spec, "retrain", None) or RetrainPolicy()
    path = (folder or Path.cwd()) / "pyproject.toml"
    if not path.is_file():
        return policy
    try:
        table = tomllib.loads(path.read_text()).get("tool", {}).get("orchard", {}).get("retrain", {})
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise PolicyError(f"cannot read {path}: {error}") from None
    overrides = table.get(spec.name)
    if overrides is None:
        return policy
    if not isinstance(overrides, dict):
        raise PolicyError(f"{path}: [tool.orchard.retrain.{spec.name}] must be a table of policy settings")
    return policy.with_overrides(overrides)
