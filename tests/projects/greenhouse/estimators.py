"""A scikit-learn compatible estimator of the project's own: ridge regression toward zero, solved in closed form."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin


class ShrunkenRidge(RegressorMixin, BaseEstimator):
    """Least squares with an L2 penalty `alpha` on the coefficients (not the intercept)."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, features, target):
        x, y = np.asarray(features, np.float64), np.asarray(target, np.float64)
        mean_x, mean_y = x.mean(axis=0), y.mean()
        centred = x - mean_x
        gram = centred.T @ centred + self.alpha * np.eye(x.shape[1])
        self.coef_ = np.linalg.solve(gram, centred.T @ (y - mean_y))
        self.intercept_ = float(mean_y - mean_x @ self.coef_)
        self.n_features_in_ = x.shape[1]
        return self

    def predict(self, features):
        return np.asarray(features, np.float64) @ self.coef_ + self.intercept_
