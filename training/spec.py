"""A model definition: what every model has, and the flavor that knows how to train, store and run it.

A project defines models as module-level `ModelSpec` objects; `training.catalog`
collects them. The fields here are the same for every model; everything
specific to a library (its estimator, grid, network builder, how it is saved
and loaded without pickle) lives in the flavor (`training.flavors`):

    FRUIT_TREE = ModelSpec(
        name="fruit_classifier", view="fruit_classification", task="classification",
        flavor=SklearnFlavor(DecisionTreeClassifier, params={"random_state": 0}, grid={"max_depth": (2, 4, 6)}),
        description="Apple or orange from colour, size and skin.")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from orchard.errors import UsageError
from orchard.registry import MODEL_NAME  # a model's name names its folder in the registry
from training.flavors import Flavor

Task = Literal["classification", "regression"]
TASKS = ("classification", "regression")


class ModelSpecError(UsageError):
    """A model is defined inconsistently."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    """Registry name: lower case letters, digits, '_' or '-'."""
    view: str
    """The feature view it trains on (`fruit_classification` or `fruit_classification:1`)."""
    task: Task
    flavor: Any
    """A `training.flavors.Flavor`: how the model is trained, saved, loaded and run."""
    target: str | None = None
    """Target column; None takes the view's label target."""
    excluded_features: tuple[str, ...] = ()
    """View features the model does not take (identifiers, join keys)."""
    seed: int = 0
    description: str = ""
    retrain: Any = None
    """A `training.RetrainPolicy` for `orchard retrain` (None: the defaults, only `--force` retrains)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not MODEL_NAME.match(self.name):
            raise ModelSpecError(f"model name {self.name!r} must be lower case letters, digits, '_' or '-'")
        if not isinstance(self.view, str) or not self.view:
            raise ModelSpecError(f"model {self.name}: view must name a feature view, got {self.view!r}")
        if self.task not in TASKS:
            raise ModelSpecError(f"model {self.name}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not isinstance(self.flavor, Flavor):
            raise ModelSpecError(f"model {self.name}: flavor must be a training.flavors.Flavor "
                                 f"(SklearnFlavor, KerasFlavor or a registered one), got {self.flavor!r}")
        if isinstance(self.excluded_features, str) or not all(isinstance(f, str) for f in self.excluded_features):
            raise ModelSpecError(f"model {self.name}: excluded_features must be a list of feature names, "
                                 f"got {self.excluded_features!r}")
        object.__setattr__(self, "excluded_features", tuple(self.excluded_features))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ModelSpecError(f"model {self.name}: seed must be an integer, got {self.seed!r}")
        from training.policy import RetrainPolicy

        if self.retrain is not None and not isinstance(self.retrain, RetrainPolicy):
            raise ModelSpecError(f"model {self.name}: retrain must be a training.RetrainPolicy, got {self.retrain!r}")
        self.flavor.check_spec(self)

    def describe(self) -> dict:
        """Plain data for the model card's lineage."""
        return {"name": self.name, "view": self.view, "task": self.task, "target": self.target,
                "excluded_features": list(self.excluded_features), "seed": self.seed,
                "description": self.description, "flavor": self.flavor.name, **self.flavor.describe(),
                **({"retrain": self.retrain.to_dict()} if self.retrain is not None else {})}
