"""Hotel model: will a booking be cancelled, from the five engineered features of the lecture's table."""

from __future__ import annotations

from training import ModelSpec, SklearnFlavor

CANCELLATION_CLASSIFIER = ModelSpec(
    name="cancellation_classifier",
    view="booking_cancellation",
    task="classification",
    flavor=SklearnFlavor("sklearn.ensemble.RandomForestClassifier",
                         params={"n_estimators": 100, "random_state": 0, "n_jobs": 1},
                         grid={"max_depth": (4, 8), "min_samples_leaf": (5, 20)}),
    # The view may hold accessibility_needs only for an audit of cancellations (its justification says so): the
    # model does not take it.
    excluded_features=("accessibility_needs",),
    description="Cancelled or confirmed, as known at the moment of booking: the stay week's vacancy, the user's age "
                "band, home country and browsing embedding, and the hour's electricity price; a random forest.",
)
