"""Per-layer linear latency model over shape features (MACs by op, activation traffic, stride, SE, h-swish).

latency(layer) = coef . features(layer), with non-negative coefficients. Because the model is linear per
layer, a network's latency is coef . (sum of its layers' features), so the same model is fit either on
single-layer entries of a lookup table or on whole-network measurements, and it generalizes to shapes,
widths and resolutions no table holds. Fits minimize relative error (rows weighted by 1/latency).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from predictors.layers import FEATURE_INDEX, FEATURES, N_FEATURES, Layer, features_matrix


class LayerRegression:
    def __init__(self, coef: np.ndarray | list[float]):
        coef = np.asarray(coef, dtype=float)
        if coef.shape != (N_FEATURES,):
            raise ValueError(f"expected {N_FEATURES} coefficients, got {coef.shape}")
        self.coef = coef

    def predict_layers(self, layers: list[Layer]) -> np.ndarray:
        return features_matrix(layers) @ self.coef

    def to_dict(self) -> dict[str, float]:
        return {name: float(c) for name, c in zip(FEATURES, self.coef)}

    @classmethod
    def from_dict(cls, data: dict) -> "LayerRegression":
        unknown = set(data) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown regression features {sorted(unknown)}")
        return cls([float(data.get(name, 0.0)) for name in FEATURES])


def fit_relative(X: np.ndarray, y: np.ndarray, columns: list[str] | None = None,
                 fixed: np.ndarray | None = None) -> np.ndarray:
    """Non-negative least squares on relative error: min sum ((X c + fixed - y) / y)^2 over `columns` only.

    Returns a full coefficient vector (zeros outside `columns`). `fixed` is a per-row latency already
    accounted for (e.g. layers priced by a table) that the fitted part adds to.
    """
    X = np.asarray(X, float)
    idx = [FEATURE_INDEX[c] for c in columns] if columns is not None else list(range(N_FEATURES))
    coef = np.zeros(N_FEATURES)
    coef[idx] = nnls_relative(X[:, idx], y, fixed)
    return coef


def nnls_relative(A: np.ndarray, y: np.ndarray, fixed: np.ndarray | None = None) -> np.ndarray:
    """c >= 0 minimizing sum ((A c + fixed - y) / y)^2: each row weighted by 1/y, so errors are relative."""
    A, y = np.asarray(A, float), np.asarray(y, float)
    A = A / y[:, None]
    # scale columns to unit size so NNLS is well conditioned
    scale = np.maximum(np.abs(A).max(axis=0), 1e-12) if len(A) else np.ones(A.shape[1])
    target = (y - (0 if fixed is None else np.asarray(fixed, float))) / y
    sol, _ = nnls(A / scale, target, maxiter=50 * A.shape[1] + 100)
    return sol / scale
