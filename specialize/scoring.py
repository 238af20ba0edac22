"""Scoring genomes with the predictors through a cache (each distinct canonical arch predicted once), and the
batched budget check on the scores."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from predictors.encoding import arch_macs_params
from specialize.budget import Constraints
from specialize.genome import Genome

METRICS = ("accuracy", "latency_ms", "macs", "params")


class Scorer:
    """Scores genomes (canonicalized) with the predictors, each distinct arch once."""

    def __init__(self, genome: Genome, acc_pred: Any, lat_pred: Any, need_macs: bool, need_params: bool):
        self.genome, self.acc_pred, self.lat_pred = genome, acc_pred, lat_pred
        self.need_macs, self.need_params = need_macs, need_params
        self.index: dict[bytes, int] = {}
        self.size = 0
        self._rows = np.zeros((1024, genome.length), dtype=np.int64)
        self._cols = {m: np.full(1024, np.nan) for m in METRICS}   # grown by doubling
        self.n_predicted = 0
        self.n_requests = 0
        self.acc_for: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None  # rows worth an accuracy

    def __call__(self, g: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Canonical genomes and their metrics (accuracy, latency_ms, macs, params; NaN where not computed)."""
        g = self.genome.canonical(np.asarray(g, dtype=np.int64))
        keys = [row.tobytes() for row in g]
        self.n_requests += len(keys)
        new, seen = [], set()
        for i, k in enumerate(keys):
            if k not in self.index and k not in seen:
                seen.add(k)
                new.append(i)
        if new:
            self._add(g[new], [keys[i] for i in new])
        idx = np.fromiter((self.index[k] for k in keys), dtype=np.int64, count=len(keys))
        return g, {m: self._cols[m][idx] for m in METRICS}

    def _add(self, g: np.ndarray, keys: list[bytes]) -> None:
        archs = self.genome.to_archs(g)
        n = len(archs)
        lat = (np.asarray(self.lat_pred.predict(archs), dtype=np.float64).reshape(n) if self.lat_pred is not None
               else np.full(n, np.nan))
        if self.need_macs or self.need_params:
            macs, params = arch_macs_params(self.genome.space, archs)
        else:
            macs = params = np.full(n, np.nan)
        acc = np.full(n, np.nan)
        # accuracy (the costly predictor) only for archs that meet at least one budget: the rest are never selected
        want = (np.ones(n, dtype=bool) if self.acc_for is None
                else self.acc_for({"accuracy": acc, "latency_ms": lat, "macs": macs, "params": params}))
        if want.all():
            acc = np.asarray(self.acc_pred.predict(archs), dtype=np.float64).reshape(n)
        elif want.any():
            idx = np.flatnonzero(want)
            acc[idx] = np.asarray(self.acc_pred.predict([archs[i] for i in idx]), dtype=np.float64).reshape(len(idx))
        base, end = self.size, self.size + n
        if end > len(self._rows):
            cap = max(2 * len(self._rows), end)
            self._rows = np.concatenate([self._rows, np.zeros((cap - len(self._rows), self.genome.length), dtype=np.int64)])
            self._cols = {m: np.concatenate([v, np.full(cap - len(v), np.nan)]) for m, v in self._cols.items()}
        for j, k in enumerate(keys):
            self.index[k] = base + j
        self._rows[base:end] = g
        for m, v in zip(METRICS, (acc, lat, macs, params)):
            self._cols[m][base:end] = v
        self.size = end
        self.n_predicted += n

    def arrays(self) -> dict[str, np.ndarray]:
        return {m: v[: self.size] for m, v in self._cols.items()}

    def all_genomes(self) -> np.ndarray:
        return self._rows[: self.size]


def feasible(c: Constraints, m: dict[str, np.ndarray], slack: float = 0.0) -> np.ndarray:
    """Which rows of the metrics `m` meet every bound of `c` (each loosened by the fraction `slack`)."""
    ok = np.ones(len(m["accuracy"]), dtype=bool)
    if c.latency_ms is not None:
        ok &= m["latency_ms"] <= c.latency_ms * (1 + slack)
    if c.macs is not None:
        ok &= m["macs"] <= c.macs * (1 + slack)
    if c.params is not None:
        ok &= m["params"] <= c.params * (1 + slack)
    return ok


__all__ = ["METRICS", "Scorer", "feasible"]
