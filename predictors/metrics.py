"""Prediction-quality metrics, one home for the accuracy and latency predictors (and the benches).

One argument order throughout: `(real, predicted)` -- the measured values first, the predictor's second.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def kendall_tau(real: Sequence[float], predicted: Sequence[float]) -> float:
    """Kendall's tau between the two rankings: nan under two points, 0.0 for constant values (no ranking)."""
    from scipy.stats import kendalltau

    if len(real) < 2:
        return float("nan")
    tau = kendalltau(real, predicted).statistic
    return float(tau) if tau == tau else 0.0  # constant predictions -> nan -> no ranking ability


def topk_hit_rate(real: Sequence[float], predicted: Sequence[float], k: int) -> float:
    """Fraction of the truly best k that the predictor also ranks in its best k."""
    k = max(1, min(k, len(real)))
    true_top = set(np.argsort(-np.asarray(real), kind="stable")[:k].tolist())
    pred_top = set(np.argsort(-np.asarray(predicted), kind="stable")[:k].tolist())
    return len(true_top & pred_top) / k


def accuracy_quality(real: Sequence[float], predicted: Sequence[float], top_fraction: float = 0.1) -> dict[str, float]:
    """Absolute errors, rank agreement and top-k hits (accuracy predictors): n, rmse, mae, kendall_tau,
    topk_k, topk_hit_rate."""
    real, predicted = np.asarray(real, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    k = max(1, int(round(top_fraction * len(real))))
    return {
        "n": int(len(real)),
        "rmse": float(np.sqrt(np.mean((real - predicted) ** 2))),
        "mae": float(np.mean(np.abs(real - predicted))),
        "kendall_tau": kendall_tau(real, predicted),
        "topk_k": k,
        "topk_hit_rate": topk_hit_rate(real, predicted, k),
    }


def latency_quality(real: Sequence[float], predicted: Sequence[float],
                    within: Sequence[float] = (0.10, 0.20)) -> dict[str, float]:
    """Relative errors (latency predictors): mape_pct, max_err_pct, within_<P>pct for each fraction in
    `within`, kendall_tau, n."""
    real, predicted = np.asarray(real, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    rel = np.abs(predicted - real) / real
    out: dict[str, float] = {"mape_pct": float(100 * rel.mean()), "max_err_pct": float(100 * rel.max())}
    for w in within:
        out[f"within_{round(100 * w)}pct"] = float((rel <= w).mean())
    out["kendall_tau"] = kendall_tau(real, predicted)
    out["n"] = int(len(real))
    return out


__all__ = ["accuracy_quality", "kendall_tau", "latency_quality", "topk_hit_rate"]
