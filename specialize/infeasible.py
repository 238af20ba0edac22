"""The edges of the space, for budgets no arch meets: the smallest latency / MACs / params the space reaches
(found by searching for the minimum), and the error message that reports them."""
from __future__ import annotations

import numpy as np

from elastic.spaces import SpaceSpec
from specialize.budget import Constraints
from specialize.genome import Genome
from specialize.scoring import Scorer, feasible


def minimize(metric: str, genome: Genome, scorer: Scorer, rng: np.random.Generator, mutate_prob: float,
             generations: int = 30) -> tuple[np.ndarray, float]:
    """Smallest value of `metric` reachable (evolution + local search from the smallest arch)."""
    pop = np.concatenate([genome.smallest()[None, :], genome.random(rng, 200, size_bias=True)])
    g, m = scorer(pop)
    order = np.argsort(m[metric], kind="stable")[:25]
    pg, best = g[order], float(m[metric][order[0]])
    for _ in range(generations):
        kids = np.concatenate([genome.mutate(pg[rng.integers(0, len(pg), 60)], rng, mutate_prob),
                               genome.crossover(pg[rng.integers(0, len(pg), 40)], pg[rng.integers(0, len(pg), 40)], rng)])
        kg, km = scorer(kids)
        allg = np.concatenate([pg, kg])
        allv = scorer(allg)[1][metric]
        _, first = np.unique(allg, axis=0, return_index=True)
        keep = first[np.argsort(allv[first], kind="stable")[:25]]
        pg = allg[keep]
        if allv[keep[0]] < best - 1e-12:
            best = float(allv[keep[0]])
    cur, cur_v = pg[0], best
    while True:  # local descent
        ng, nm = scorer(genome.neighbours(cur))
        i = int(np.argmin(nm[metric]))
        if nm[metric][i] >= cur_v - 1e-12:
            break
        cur, cur_v = ng[i], float(nm[metric][i])
    return cur, cur_v


def minimum_reachable(c: Constraints, genome: Genome, scorer: Scorer, rng: np.random.Generator,
                      mutate_prob: float) -> tuple[np.ndarray | None, dict[str, float]]:
    """(a feasible genome or None, the minimum found of each bounded metric) by searching for the minima."""
    minima: dict[str, float] = {}
    for metric, bound in (("latency_ms", c.latency_ms), ("macs", c.macs), ("params", c.params)):
        if bound is None:
            continue
        g, v = minimize(metric, genome, scorer, rng, mutate_prob)
        minima[metric] = v
        gg, m = scorer(g[None, :])
        if feasible(c, m)[0]:
            return gg[0], minima
    return None, minima


def infeasible_message(c: Constraints, space: SpaceSpec, minima: dict[str, float], where: str) -> str:
    parts = []
    for metric, what, fmt in (("latency_ms", "fastest latency", lambda v: f"{v:.2f} ms"),
                              ("macs", "fewest MACs", lambda v: f"{v / 1e6:.1f}M MACs"),
                              ("params", "fewest params", lambda v: f"{v / 1e6:.2f}M params")):
        if metric in minima:
            parts.append(f"the {what} it reaches{where if metric == 'latency_ms' else ''} is {fmt(minima[metric])}")
    return f"no subnet of space {space.name} meets {c.describe()}{where}: " + "; ".join(parts) + "; raise the budget"


__all__ = ["infeasible_message", "minimize", "minimum_reachable"]
