"""The Pareto front of everything a search scored: the non-dominated (latency or MACs, accuracy) archs."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from predictors.encoding import arch_macs_params
from specialize.genome import Genome
from specialize.scoring import Scorer


def pareto_front(genome: Genome, scorer: Scorer, x: str = "latency_ms") -> list[dict[str, Any]]:
    """Non-dominated archs among everything scored: lower `x` (latency or MACs), higher accuracy."""
    arr = scorer.arrays()
    if x == "macs" and np.isnan(arr["macs"]).all():
        g = scorer.all_genomes()
        macs, params = arch_macs_params(genome.space, genome.to_archs(g))
        xs = macs
    else:
        xs = arr[x]
    acc = np.where(np.isnan(arr["accuracy"]), -np.inf, arr["accuracy"])   # not scored (over every budget)
    if len(acc) == 0 or np.isnan(xs).all():
        return []
    order = np.lexsort((-acc, xs))
    keep, best = [], -np.inf
    for i in order:
        if acc[i] > best + 1e-12:
            keep.append(i)
            best = acc[i]
    g = scorer.all_genomes()[keep]
    archs = genome.to_archs(g)
    macs, params = arch_macs_params(genome.space, archs)
    out = []
    for a, i, mc, pa in zip(archs, keep, macs, params):
        lat = arr["latency_ms"][i]
        out.append({"arch": a, "accuracy": float(acc[i]), "latency_ms": None if math.isnan(lat) else float(lat),
                    "macs": float(mc), "params": float(pa)})
    return out


__all__ = ["pareto_front"]
