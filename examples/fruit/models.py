"""Fruit models: apple or orange (classification) and an apple's weight (regression), each a tree and a network."""

from __future__ import annotations

from training import KerasFlavor, ModelSpec, SklearnFlavor

FRUIT_CLASSIFIER = ModelSpec(
    name="fruit_classifier",
    view="fruit_classification",
    task="classification",
    flavor=SklearnFlavor("sklearn.tree.DecisionTreeClassifier", params={"random_state": 0},
                         grid={"max_depth": (2, 4, 6, 10), "min_samples_leaf": (1, 10)}),
    description="Apple or orange from colour, size, weight and skin: a decision tree "
                "(red apples make the boundary non-linear).",
)

FRUIT_DNN_CLASSIFIER = ModelSpec(
    name="fruit_dnn_classifier",
    view="fruit_classification",
    task="classification",
    flavor=KerasFlavor(params={"hidden_units": (32, 16)}, epochs=5),
    description="Apple or orange from colour, size, weight and skin: softmax over the label encoder's classes.",
)

APPLE_WEIGHT_REGRESSOR = ModelSpec(
    name="apple_weight_regressor",
    view="apple_weight",
    task="regression",
    flavor=SklearnFlavor("sklearn.tree.DecisionTreeRegressor", params={"random_state": 0},
                         grid={"max_depth": (4, 6, 8, 12), "min_samples_leaf": (1, 5, 20)}),
    description="An apple's weight in grams from its diameter and colour: a regression tree.",
)

APPLE_WEIGHT_DNN_REGRESSOR = ModelSpec(
    name="apple_weight_dnn_regressor",
    view="apple_weight",
    task="regression",
    flavor=KerasFlavor(params={"hidden_units": (32, 16)}, epochs=5, learning_rate=0.01),
    description="An apple's weight in grams from its diameter and colour: a small dense network.",
)
