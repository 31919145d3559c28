"""Surf models: the surf height at a beach, as a regression tree and as a network."""

from __future__ import annotations

from training import KerasFlavor, ModelSpec, SklearnFlavor

SURF_REGRESSOR = ModelSpec(
    name="surf_regressor",
    view="surf_height",
    task="regression",
    flavor=SklearnFlavor("sklearn.tree.DecisionTreeRegressor", params={"random_state": 0},
                         grid={"max_depth": (3, 6, 10), "min_samples_leaf": (1, 10, 30)}),
    excluded_features=("buoy_id",),  # a join key the view brings along, not a measurement
    description="Surf height in metres from the beach's shape and the latest swell at its buoy: a decision tree.",
)

SURF_DNN_REGRESSOR = ModelSpec(
    name="surf_dnn_regressor",
    view="surf_height",
    task="regression",
    target="surf_height_m",
    flavor=KerasFlavor(params={"hidden_units": (32, 16)}, epochs=5),
    excluded_features=("buoy_id",),
    description="Surf height in metres from the beach's shape and the latest swell at its buoy.",
)
