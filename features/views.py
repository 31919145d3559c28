"""Feature views: which features, from which groups, joined point-in-time to which label.

A view names a label (a column of a feature group, at that group's event
time), the features it selects from other groups with the label columns they
join on and an optional time-to-live, and the model-dependent transformations
to fit on the training split. A feature flagged `sensitive` in its group enters
a view only with a written justification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Mapping

import pyarrow as pa

from features.definitions import NAME_PATTERN, NAME_RULE, DefinitionError, FeatureGroup


class SensitiveFeatureError(DefinitionError):
    """A view selects a sensitive feature without a written justification."""


@dataclass(frozen=True)
class Label:
    """The label rows: one per row of `group`, at its event time.

    `columns` are kept from the label rows (entity keys and anything the joins
    need); `derive` may add columns computed from them (say, the Monday of a
    check-in date, to join a weekly table); `target` is the column to predict
    and may itself be derived.
    """

    group: FeatureGroup
    target: str
    columns: tuple[str, ...]
    derive: Callable[[pa.Table], pa.Table] | None = None
    reads: tuple[str, ...] = ()
    """Further label-group columns `derive` needs; read, then left out of the dataset."""
    where: Mapping[str, tuple] = field(default_factory=dict)
    """Keep only label rows whose column holds one of the listed values (`{"label": ("apple",)}`)."""


@dataclass(frozen=True)
class Selection:
    """Features of one group, joined on `join_keys` (group key column -> label column)."""

    group: FeatureGroup
    features: tuple[str, ...]
    join_keys: Mapping[str, str]
    ttl: timedelta | None = None
    prefix: str = ""
    """Prepended to the output names, where two groups share a feature name."""

    def output_name(self, feature: str) -> str:
        return f"{self.prefix}{feature}"


@dataclass(frozen=True)
class FeatureView:
    name: str
    version: int
    description: str
    label: Label
    selections: tuple[Selection, ...]
    transforms: tuple[Any, ...] = ()
    """Unfitted model-dependent transformations (features.transforms), fitted on the training split."""
    sensitive_allowed: Mapping[str, str] = field(default_factory=dict)
    """`group.feature` -> why this sensitive feature may be used. Without an entry, a sensitive feature is refused."""

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise DefinitionError(f"feature view name {self.name!r} {NAME_RULE}")
        if self.version < 1:
            raise DefinitionError(f"feature view {self.name!r}: version must be >= 1")
        label_names = {f.name for f in self.label.group.features}
        for column in (*self.label.columns, self.label.group.event_time):
            if column not in label_names and self.label.derive is None:
                raise DefinitionError(f"feature view {self.name!r}: label group has no column {column!r}")
        for column, values in self.label.where.items():
            if column not in label_names:
                raise DefinitionError(f"feature view {self.name!r}: label filter on {column!r}, which the label group "
                                      f"{self.label.group.ref} does not have")
            if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)) or not values:
                raise DefinitionError(f"feature view {self.name!r}: label filter on {column!r} must list the values "
                                      f"to keep, got {values!r}")
        outputs = list(dict.fromkeys([*self.label.columns, self.label.group.event_time, self.label.target,
                                      *self.label.reads]))
        for selection in self.selections:
            known = {f.name for f in selection.group.features}
            for feature in selection.features:
                if feature not in known:
                    raise DefinitionError(
                        f"feature view {self.name!r}: group {selection.group.ref} has no feature {feature!r}")
            if set(selection.join_keys) != set(selection.group.primary_key):
                raise DefinitionError(
                    f"feature view {self.name!r}: join on {selection.group.ref} must map its key "
                    f"{list(selection.group.primary_key)}, got {sorted(selection.join_keys)}")
            outputs.extend(selection.output_name(f) for f in selection.features)
        clashes = sorted({n for n in outputs if outputs.count(n) > 1})
        if clashes:
            raise DefinitionError(f"feature view {self.name!r}: output column(s) {clashes} appear twice; use a prefix")
        self.check_sensitive()

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def sensitive_features(self) -> list[str]:
        """`group.feature` of every sensitive feature the view uses, on the label side or selected."""
        label = self.label
        label_side = [c for c in dict.fromkeys([*label.columns, label.target, *label.reads])
                      if c in {f.name for f in label.group.features} and label.group.feature(c).sensitive]
        return [*(f"{label.group.name}.{name}" for name in label_side),
                *(f"{s.group.name}.{name}" for s in self.selections for name in s.features
                  if s.group.feature(name).sensitive)]

    def check_sensitive(self) -> None:
        for qualified in self.sensitive_features():
            if not str(self.sensitive_allowed.get(qualified, "")).strip():
                raise SensitiveFeatureError(
                    f"feature view {self.name!r} selects sensitive feature '{qualified}' without a justification; "
                    f"add sensitive_allowed={{'{qualified}': '<why it may be used>'}} or leave it out")
        unused = sorted(set(self.sensitive_allowed) - set(self.sensitive_features()))
        if unused:
            raise DefinitionError(f"feature view {self.name!r}: justifications for unselected features {unused}")

    def feature_columns(self) -> list[str]:
        return [s.output_name(f) for s in self.selections for f in s.features]
