"""The greenhouse's models: its own estimator class and its own network architecture, on one view."""

from __future__ import annotations

from greenhouse.estimators import ShrunkenRidge
from training import KerasFlavor, ModelSpec, SklearnFlavor

YIELD_RIDGE = ModelSpec(
    name="yield_ridge",
    view="plant_yield",
    task="regression",
    flavor=SklearnFlavor(ShrunkenRidge, grid={"alpha": (0.1, 10.0)}),
    excluded_features=(),
    description="Yield from log leaf area, height, variety and climate: the project's own ridge regression.",
)

YIELD_RESNET = ModelSpec(
    name="yield_resnet",
    view="plant_yield",
    task="regression",
    flavor=KerasFlavor(build="greenhouse._networks.residual_network", params={"width": 16, "blocks": 2},
                       epochs=8, learning_rate=0.01),
    description="Yield from the same inputs: the project's own residual network.",
)
