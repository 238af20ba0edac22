"""Evolutionary search for the most accurate arch under latency / MACs / params budgets, fully batched.

The algorithm is OFA's evolution (truncation selection: the best `parent_ratio` of the population are kept as
parents; children are `mutation_ratio` mutants, resampling each gene with `mutate_prob`, and the rest uniform
crossovers) with these engineering changes, all aimed at quality per second:
- archs are integer genomes in numpy arrays; mutation, crossover, canonicalization and feasibility are vectorized;
  a whole generation (of every budget) is scored by ONE call to each predictor;
- every arch is canonicalized (inactive blocks' entries fixed) and scored once: a cache keyed on the canonical
  genome serves repeats; populations hold distinct archs only (no clones crowding out diversity);
- children are bred in bulk (oversampled) instead of rejection-sampled one by one;
- the initial population is the best feasible archs of a large batched sample drawn across the whole size range
  (uniform sampling alone piles up around mid-size archs and misses the edges of tight and loose budgets);
- over-budget children are repaired (random genes shrunk a step, batched, a few rounds) instead of discarded:
  under a tight budget the good archs sit on its edge, and repair lands children there;
- parent selection keeps a few parents of every resolution (niches) besides the best overall, so the search keeps
  exploring the resolution basins rather than collapsing onto the first good one;
- early stop after `patience` generations without improvement, then a batched greedy local search (all
  single-gene changes at once) polishes the best arch of every niche, and the best polished one wins;
- several budgets in one call evolve side by side and share the cache and every generation's children (a child bred
  for one budget competes in all budgets it meets); the result also carries the Pareto front of everything scored.
- BLAS is held to one thread during the search: batches are small, and multi-threaded BLAS stalls badly when the
  machine is shared.

A budget no arch can meet raises OFAError with the fastest (smallest) value the space reaches, found by searching
for the minimum; a budget the largest subnet already meets returns the largest subnet and says so in `note`.

The parts live beside this module: the genome (specialize/genome.py), the cached scoring and the budget check
(specialize/scoring.py), the local search (specialize/local_search.py), the minimum a space reaches for budgets
nothing meets (specialize/infeasible.py) and the Pareto front (specialize/pareto.py); here are the genetic loop
(selection, breeding, repair) and the public `search` / `pareto_sweep`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec
from predictors.encoding import arch_macs_params
from specialize.budget import Constraints
from specialize.genome import Genome
from specialize.infeasible import infeasible_message, minimum_reachable
from specialize.local_search import local_search
from specialize.pareto import pareto_front
from specialize.scoring import METRICS, Scorer, feasible


# ------------------------------------------------------------------------------------------------
# results
@dataclass
class SearchResult:
    constraints: Constraints
    arch: Arch
    accuracy: float
    latency_ms: float | None
    macs: float
    params: float
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.constraints.describe(), "arch": self.arch.to_dict(), "predicted_accuracy": self.accuracy,
                "predicted_latency_ms": self.latency_ms, "macs": self.macs, "params": self.params, "note": self.note}


@dataclass
class SearchOutcome:
    results: list[SearchResult]
    pareto: list[dict[str, Any]]                 # non-dominated (latency or MACs, accuracy) points, fastest first
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> SearchResult:
        return self.results[0]


@dataclass(frozen=True)
class EvolutionConfig:
    population: int = 100            # children per generation per budget (as OFA)
    generations: int = 500           # upper bound; early stop usually ends far sooner
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1
    patience: int = 25               # generations without improvement before stopping
    init_samples: int = 2000         # batched size-biased sample the first population is picked from
    oversample: float = 1.5          # children bred per slot (infeasible / duplicate ones are dropped)
    islands: int = 1                 # independent populations per budget (batched together)
    repair_rounds: int = 1           # over-budget children: shrink one gene a step, up to this many times
    local_search: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.islands < 1 or self.population < 4 or self.generations < 0 or not (0 < self.parent_ratio <= 1) \
                or not (0 <= self.mutation_ratio <= 1) or not (0 < self.mutate_prob <= 1):
            raise OFAError("evolution settings: islands >= 1, population >= 4, generations >= 0, parent_ratio in (0,1], "
                           "mutation_ratio in [0,1], mutate_prob in (0,1]")


# ------------------------------------------------------------------------------------------------
def search(space: SpaceSpec, acc_pred: Any, lat_pred: Any = None,
           constraints: Constraints | Sequence[Constraints] = (), *, config: EvolutionConfig | None = None,
           device: str | None = None, progress: Callable[[int, list[float]], None] | None = None,
           resolutions: Sequence[int] | None = None, **overrides: Any) -> SearchOutcome:
    """Best arch per budget (results in the order given) plus the Pareto front of all archs scored.

    `acc_pred.predict(archs)` and `lat_pred.predict(archs)` are called on whole batches. `resolutions` limits the
    input resolutions searched (default: all of the space's; one value fixes it). `overrides` set
    EvolutionConfig fields (population=, generations=, patience=, seed=, ...).
    """
    res = space.pick_resolutions(resolutions)
    cfg = config or EvolutionConfig()
    if overrides:
        cfg = EvolutionConfig(**{**cfg.__dict__, **overrides})
    cons = [constraints] if isinstance(constraints, Constraints) else list(constraints)
    if not cons:
        cons = [Constraints()]
    if any(c.latency_ms is not None for c in cons) and lat_pred is None:
        raise OFAError("a latency budget needs a latency predictor (a device); give a device or use MACs/params budgets")
    pred_space = getattr(acc_pred, "space", None)
    if pred_space is not None and pred_space.name.replace("-small", "") != space.name.replace("-small", ""):
        raise OFAError(f"the accuracy predictor is for space {pred_space.name}, the search is over {space.name}")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # batches are small: one BLAS thread is as fast and never
        return _search(space, acc_pred, lat_pred, cons, cfg, device, progress, res)  # spins against other processes


def _search(space: SpaceSpec, acc_pred: Any, lat_pred: Any, cons: list[Constraints], cfg: EvolutionConfig,
            device: str | None, progress: Callable[[int, list[float]], None] | None,
            resolutions: tuple[int, ...]) -> SearchOutcome:
    t0 = time.perf_counter()
    genome = Genome(space, resolutions)
    need_macs = any(c.macs is not None for c in cons)
    need_params = any(c.params is not None for c in cons)
    scorer = Scorer(genome, acc_pred, lat_pred, need_macs, need_params)
    rng = np.random.default_rng(cfg.seed)
    at_res = "" if resolutions == tuple(space.resolutions) else f" at resolution {', '.join(map(str, resolutions))}"
    where = (f" on {device}" if device else "") + at_res

    # 1) budgets the largest subnet meets: answer directly
    big_g, big_m = scorer(genome.largest()[None, :])
    small_g, small_m = scorer(genome.smallest()[None, :])
    results: list[SearchResult | None] = [None] * len(cons)
    todo = []
    for j, c in enumerate(cons):
        if c.empty or feasible(c, big_m)[0]:
            note = None if c.empty else (f"the budget ({c.describe()}) is at or above the largest subnet{at_res} "
                                         f"({_describe_metrics(big_m, 0, lat_pred is not None)}); returning the largest subnet")
            results[j] = _result(c, genome, big_g[0], big_m, 0, note)
        else:
            todo.append(j)
    # 2) budgets nothing can meet: find how far the space goes and say so
    seeds = []
    for j in todo:
        c = cons[j]
        if not feasible(c, small_m)[0]:
            found, minima = minimum_reachable(c, genome, scorer, rng, cfg.mutate_prob)
            if found is None:
                raise OFAError(infeasible_message(c, space, minima, where))
            seeds.append(found)
    # 3) evolve all remaining budgets side by side
    gens_run = 0
    if todo:
        todo_cons = [cons[j] for j in todo]
        scorer.acc_for = lambda m: np.logical_or.reduce([feasible(c, m) for c in todo_cons])
        best_g, gens_run = _evolve([cons[j] for j in todo], genome, scorer, rng, cfg, progress, seeds)
        for j, g in zip(todo, best_g):
            gg, m = scorer(g[None, :])
            results[j] = _result(cons[j], genome, gg[0], m, 0, None)
    # more budget is never worse: an answer found for one budget serves every other budget it meets (the largest
    # subnet, the direct answer to a loose budget, is not always the one predicted most accurate)
    if len(cons) > 1:
        all_g, all_m = scorer(genome.from_archs([r.arch for r in results]))
        for j, c in enumerate(cons):
            ok = np.flatnonzero(feasible(c, all_m))
            k = int(ok[np.argmax(all_m["accuracy"][ok])]) if len(ok) else j
            if all_m["accuracy"][k] > results[j].accuracy:
                results[j] = _result(c, genome, all_g[k], all_m, k, None)
    # exact MACs/params for the answers
    final = [r for r in results if r is not None]
    macs, params = arch_macs_params(space, [r.arch for r in final])
    for r, mc, pa in zip(final, macs, params):
        r.macs, r.params = float(mc), float(pa)
    stats = {"seconds": time.perf_counter() - t0, "generations": gens_run, "archs_scored": scorer.n_predicted,
             "score_requests": scorer.n_requests, "budgets": len(cons)}
    return SearchOutcome(final, pareto_front(genome, scorer, x="latency_ms" if lat_pred is not None else "macs"), stats)


def _describe_metrics(m: dict[str, np.ndarray], i: int, has_lat: bool) -> str:
    parts = []
    if has_lat and not math.isnan(m["latency_ms"][i]):
        parts.append(f"{m['latency_ms'][i]:.2f} ms")
    if not math.isnan(m["macs"][i]):
        parts.append(f"{m['macs'][i] / 1e6:.1f}M MACs")
    if not math.isnan(m["params"][i]):
        parts.append(f"{m['params'][i] / 1e6:.2f}M params")
    return ", ".join(parts)


def _result(c: Constraints, genome: Genome, g: np.ndarray, m: dict[str, np.ndarray], i: int,
            note: str | None) -> SearchResult:
    lat = m["latency_ms"][i]
    return SearchResult(c, genome.to_archs(g[None, :])[0], float(m["accuracy"][i]),
                        None if math.isnan(lat) else float(lat), float(m["macs"][i]), float(m["params"][i]), note)


def _evolve(cons: list[Constraints], genome: Genome, scorer: Scorer, rng: np.random.Generator,
            cfg: EvolutionConfig, progress: Callable[[int, list[float]], None] | None,
            seeds: Sequence[np.ndarray] = ()) -> tuple[list[np.ndarray], int]:
    """Evolve `cfg.islands` populations per budget in lockstep; return the best genome per budget and the
    generations run. Populations of one island share their children across budgets (a child bred for one budget
    competes in every budget it meets); islands only meet again in the final local search."""
    base_cons, n_isl = cons, cfg.islands
    cons = [c for c in base_cons for _ in range(n_isl)]       # subpopulation j: budget j // n_isl, island j % n_isl
    island = np.arange(len(cons)) % n_isl
    n_par = max(2, int(round(cfg.parent_ratio * cfg.population)))
    n_mut = int(round(cfg.mutation_ratio * cfg.population))
    n_cross = cfg.population - n_mut

    # initial populations: best feasible of a size-biased batched sample (+ the smallest arch, always feasible here)
    init = np.concatenate([genome.random(rng, cfg.init_samples, size_bias=True), genome.smallest()[None, :],
                           *[np.asarray(x)[None, :] for x in seeds]])
    g, m = scorer(init)
    n_init = cfg.init_samples
    pops = []
    for j, c in enumerate(cons):
        part = np.r_[np.arange(island[j], n_init, n_isl), np.arange(n_init, len(g))]  # disjoint random parts
        pops.append(_select(g[part], {k: v[part] for k, v in m.items()}, c, n_par, niche=g[part, -1]))
    best = [float(p[1]["accuracy"].max()) for p in pops]
    stale, gens = 0, 0
    for gen in range(cfg.generations):
        kids = []
        for pg, _ in pops:
            k_mut = int(math.ceil(n_mut * cfg.oversample))
            k_cross = int(math.ceil(n_cross * cfg.oversample))
            par = pg[rng.integers(0, len(pg), k_mut)]
            kids.append(genome.mutate(par, rng, cfg.mutate_prob))
            if k_cross:
                a, b = pg[rng.integers(0, len(pg), k_cross)], pg[rng.integers(0, len(pg), k_cross)]
                kids.append(genome.crossover(a, b, rng))
        owner = np.concatenate([np.full(len(k), j // 2 if n_cross else j) for j, k in enumerate(kids)])
        kg, km = scorer(np.concatenate(kids))                 # one batched scoring for every budget
        if cfg.repair_rounds:                                 # nudge over-budget children just under their budget
            kg, km, owner = _repair(cons, genome, scorer, rng, kg, km, owner, cfg.repair_rounds)
        improved = False
        kid_island = island[owner]
        for j, c in enumerate(cons):
            pg, pm = pops[j]
            mine = kid_island == island[j] if n_isl > 1 else slice(None)
            allg = np.concatenate([pg, kg[mine]])
            allm = {k: np.concatenate([pm[k], km[k][mine]]) for k in METRICS}
            pops[j] = _select(allg, allm, c, n_par, niche=allg[:, -1])
            top = float(pops[j][1]["accuracy"].max())
            if top > best[j] + 1e-9:
                best[j], improved = top, True
        gens = gen + 1
        if progress is not None:
            progress(gens, list(best))
        stale = 0 if improved else stale + 1
        if stale >= cfg.patience:
            break
    per_budget = [[_sorted(pops[b * n_isl + i]) for i in range(n_isl)] for b in range(len(base_cons))]
    if cfg.local_search:
        starts = [np.concatenate([_niche_best(*p) for p in isl]) for isl in per_budget]
        winners = local_search(base_cons, genome, scorer, starts)
    else:
        winners = [max(isl, key=lambda p: p[1]["accuracy"][0])[0][0] for isl in per_budget]
    return winners, gens


def _sorted(pop: tuple[np.ndarray, dict[str, np.ndarray]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    g, m = pop
    order = np.argsort(-m["accuracy"], kind="stable")
    return g[order], {k: v[order] for k, v in m.items()}


def _repair(cons: list[Constraints], genome: Genome, scorer: Scorer, rng: np.random.Generator, kg: np.ndarray,
            km: dict[str, np.ndarray], owner: np.ndarray, rounds: int
            ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Children over their own budget get random genes shrunk a step at a time (batched, `rounds` times); the
    repaired versions join the children. Good archs under a tight budget sit on its edge: this lands there."""
    bad = np.ones(len(kg), dtype=bool)
    for j, c in enumerate(cons):
        mine = owner == j
        bad[mine] = ~feasible(c, {k: v[mine] for k, v in km.items()})
    cur, cur_owner = kg[bad], owner[bad]
    extra_g, extra_m, extra_o = [kg], [km], [owner]
    for _ in range(rounds):
        if len(cur) == 0:
            break
        cur = genome.shrink(cur, rng, n_genes=1)
        cg, cm = scorer(cur)
        ok = np.zeros(len(cg), dtype=bool)
        for j, c in enumerate(cons):
            mine = cur_owner == j
            ok[mine] = feasible(c, {k: v[mine] for k, v in cm.items()})
        extra_g.append(cg[ok])
        extra_m.append({k: v[ok] for k, v in cm.items()})
        extra_o.append(cur_owner[ok])
        cur, cur_owner = cg[~ok], cur_owner[~ok]
    return (np.concatenate(extra_g), {k: np.concatenate([m[k] for m in extra_m]) for k in METRICS},
            np.concatenate(extra_o))


def _select(g: np.ndarray, m: dict[str, np.ndarray], c: Constraints, n: int,
            niche: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The n most accurate distinct feasible genomes (canonical rows). With `niche` (a label per row, e.g. the
    resolution), half the places go to the best overall and the rest are shared out over the niches first, so
    the parents keep exploring every basin instead of collapsing onto the first good one."""
    ok = np.flatnonzero(feasible(c, m))
    if len(ok) == 0:
        raise OFAError(f"no feasible arch found for {c.describe()}")  # unreachable: a feasible seed is in the pool
    _, first = np.unique(g[ok], axis=0, return_index=True)
    ok = ok[first]
    ranked = ok[np.argsort(-m["accuracy"][ok], kind="stable")]
    if niche is None or len(ranked) <= n:
        order = ranked[:n]
    else:
        labels = niche[ranked]
        values = np.unique(labels)
        per = max(1, n // (2 * len(values)))
        take = np.zeros(len(ranked), dtype=bool)
        take[: n // 2] = True
        for v in values:
            idx = np.flatnonzero(labels == v)[:per]
            take[idx] = True
        if take.sum() < n:  # fill with the next best overall
            rest = np.flatnonzero(~take)[: n - int(take.sum())]
            take[rest] = True
        order = ranked[take][:n]   # more niches than places: the best-ranked n of those taken
    return g[order], {k: v[order] for k, v in m.items()}


def _niche_best(pg: np.ndarray, pm: dict[str, np.ndarray]) -> np.ndarray:
    """The best genome of each resolution among the (accuracy-sorted) parents."""
    _, first = np.unique(pg[:, -1], return_index=True)
    return pg[np.sort(first)]


# ------------------------------------------------------------------------------------------------
# Pareto sweep
def pareto_sweep(space: SpaceSpec, acc_pred: Any, lat_pred: Any = None, n_budgets: int = 10, *,
                 metric: str = "latency_ms", config: EvolutionConfig | None = None,
                 resolutions: Sequence[int] | None = None, **overrides: Any) -> SearchOutcome:
    """Search `n_budgets` budgets spread between the smallest and the largest subnet (latency, or MACs without a
    latency predictor) in one call; the outcome's `pareto` is the whole front."""
    if n_budgets < 1:
        raise OFAError(f"number of budgets for a Pareto sweep must be >= 1, got {n_budgets}")
    if metric == "latency_ms" and lat_pred is None:
        metric = "macs"
    res = space.pick_resolutions(resolutions)
    ends = [space.smallest(min(res)), space.largest(max(res))]
    if metric == "latency_ms":
        lo, hi = (float(v) for v in lat_pred.predict(ends))
        make = lambda v: Constraints(latency_ms=float(v))  # noqa: E731
    else:
        lo, hi = (float(v) for v in arch_macs_params(space, ends)[0])
        make = lambda v: Constraints(macs=float(v))  # noqa: E731
    budgets = np.geomspace(lo * 1.02, hi * 0.999, n_budgets) if n_budgets > 1 else np.array([(lo + hi) / 2])
    return search(space, acc_pred, lat_pred, [make(v) for v in budgets], config=config, resolutions=res, **overrides)


__all__ = ["EvolutionConfig", "Genome", "SearchOutcome", "SearchResult", "pareto_front", "pareto_sweep", "search"]
