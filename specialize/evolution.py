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

METRICS = ("accuracy", "latency_ms", "macs", "params")


# ------------------------------------------------------------------------------------------------
# genomes
class Genome:
    """Integer genome of a space: [kernel index per block | expand index per block | depth index per stage | r index]."""

    def __init__(self, space: SpaceSpec, resolutions: Sequence[int] | None = None):
        self.space = space
        nb, ns = space.n_blocks, space.n_stages
        self.nb, self.ns = nb, ns
        self.ks = np.asarray(space.ks_choices)
        self.e = np.asarray(space.e_choices)
        self.r = np.asarray(space.pick_resolutions(resolutions))   # the resolution gene indexes these only
        dch = [space.depth_choices(s) for s in range(ns)]
        self.d_table = np.array([list(c) + [c[-1]] * (max(map(len, dch)) - len(c)) for c in dch])
        self.n_opts = np.array([len(self.ks)] * nb + [len(self.e)] * nb + [len(c) for c in dch] + [len(self.r)])
        self.length = len(self.n_opts)
        self.stage = np.asarray(space.stage_of_block())
        self.pos = np.concatenate([np.arange(m) for m in space.stage_max_depth])
        self.k_min, self.e_min = int(np.argmin(self.ks)), int(np.argmin(self.e))
        # rank of each option by size (0 = smallest) so "small/large" biased sampling works for any choice order
        self._order = [np.argsort(np.argsort(ch)) for ch in
                       [self.ks] * nb + [self.e] * nb + [self.d_table[s, :len(dch[s])] for s in range(ns)] + [self.r]]

    def shrink(self, g: np.ndarray, rng: np.random.Generator, n_genes: int = 1) -> np.ndarray:
        """Each row with `n_genes` random genes (of active blocks, depths or resolution) moved one size step down."""
        if not hasattr(self, "_down"):
            width = int(self.n_opts.max())
            self._down = np.tile(np.arange(width), (self.length, 1))
            for pos, order in enumerate(self._order):        # option index -> index of the next smaller option
                inv = np.argsort(order)
                for rank in range(1, len(order)):
                    self._down[pos, inv[rank]] = inv[rank - 1]
        g = g.copy()
        active = self.pos[None, :] < self.depths(g)[:, self.stage]
        live = np.concatenate([active, active, np.ones((len(g), self.ns + 1), dtype=bool)], axis=1)
        rows = np.arange(len(g))
        for _ in range(n_genes):
            score = np.where(live & (self._down[np.arange(self.length)[None, :], g] != g), rng.random(g.shape), -1.0)
            pick = np.argmax(score, axis=1)
            can = score[rows, pick] >= 0
            g[rows[can], pick[can]] = self._down[pick[can], g[rows[can], pick[can]]]
        return g

    def random(self, rng: np.random.Generator, n: int, size_bias: bool = False) -> np.ndarray:
        """n random genomes; with size_bias each genome gets its own skew from mostly-small to mostly-large."""
        u = rng.random((n, self.length))
        if size_bias:
            gamma = 4.0 ** (2 * rng.random((n, 1)) - 1)          # exponent in [1/4, 4] per genome
            u = u ** gamma                                        # large gamma -> near 0 -> small choices
        rank = np.minimum((u * self.n_opts).astype(np.int64), self.n_opts - 1)
        if not size_bias:
            return rank
        out = np.empty_like(rank)
        for g, order in enumerate(self._order):                 # map size rank -> option index
            inv = np.argsort(order)
            out[:, g] = inv[rank[:, g]]
        return out

    def smallest(self) -> np.ndarray:
        return self.from_archs([self.space.smallest(int(self.r.min()))])[0]

    def largest(self) -> np.ndarray:
        return self.from_archs([self.space.largest(int(self.r.max()))])[0]

    def depths(self, g: np.ndarray) -> np.ndarray:
        di = g[:, 2 * self.nb: 2 * self.nb + self.ns]
        return self.d_table[np.arange(self.ns)[None, :], di]

    def canonical(self, g: np.ndarray) -> np.ndarray:
        """Inactive blocks' kernel/expand set to the smallest choice (same network, one genome)."""
        g = g.copy()
        inactive = ~(self.pos[None, :] < self.depths(g)[:, self.stage])
        g[:, : self.nb][inactive] = self.k_min
        g[:, self.nb: 2 * self.nb][inactive] = self.e_min
        return g

    def to_archs(self, g: np.ndarray) -> list[Arch]:
        """Archs of genome rows, validated in bulk against the space (a genome outside it is a bug: ValueError)."""
        g = np.asarray(g)
        if g.ndim != 2 or g.shape[1] != self.length or ((g < 0) | (g >= self.n_opts)).any():
            raise ValueError(f"genome rows outside space {self.space.name}'s choices: {g.shape} array, "
                             f"genes must lie in [0, {self.n_opts.tolist()})")
        ks = self.ks[g[:, : self.nb]]
        es = self.e[g[:, self.nb: 2 * self.nb]]
        ds = self.depths(g)
        rs = self.r[g[:, -1]]
        sp = self.space
        bad = [name for name, ok in (
            ("ks", np.isin(ks, sp.ks_choices).all()), ("e", np.isin(es, sp.e_choices).all()),
            ("d", all(np.isin(ds[:, s], sp.depth_choices(s)).all() for s in range(self.ns))),
            ("r", np.isin(rs, sp.resolutions).all())) if not ok]
        if bad:
            raise ValueError(f"genome decodes to {', '.join(bad)} values outside space {sp.name}")
        return [_checked_arch(k, e, d, r) for k, e, d, r in zip(ks.tolist(), es.tolist(), ds.tolist(), rs.tolist())]

    def from_archs(self, archs: Sequence[Arch]) -> np.ndarray:
        sp = self.space
        rs = self.r.tolist()
        rows = []
        for a in archs:
            sp.validate(a)
            if a.r not in rs:
                raise OFAError(f"arch at resolution {a.r} is outside this search's resolutions {rs}")
            rows.append([sp.ks_choices.index(k) for k in a.ks] + [sp.e_choices.index(v) for v in a.e]
                        + [sp.depth_choices(s).index(v) for s, v in enumerate(a.d)] + [rs.index(a.r)])
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), self.length)

    def mutate(self, parents: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
        mask = rng.random(parents.shape) < prob
        fresh = np.minimum((rng.random(parents.shape) * self.n_opts).astype(np.int64), self.n_opts - 1)
        return np.where(mask, fresh, parents)

    def crossover(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.where(rng.random(a.shape) < 0.5, a, b)

    def _moves(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(gene, new value) of every single-gene change that alters the network (inactive blocks skipped)."""
        active = self.pos < self.depths(g[None, :])[0, self.stage]
        live = np.concatenate([active, active, np.ones(self.ns + 1, dtype=bool)])
        genes, vals = [], []
        for pos in np.flatnonzero(live):
            for v in range(self.n_opts[pos]):
                if v != g[pos]:
                    genes.append(pos)
                    vals.append(v)
        return np.asarray(genes, dtype=np.int64), np.asarray(vals, dtype=np.int64)

    def neighbours(self, g: np.ndarray) -> np.ndarray:
        """All genomes differing from `g` (one genome) in exactly one gene that matters."""
        genes, vals = self._moves(g)
        out = np.repeat(g[None, :], len(genes), axis=0)
        out[np.arange(len(genes)), genes] = vals
        return out


def _checked_arch(ks: list[int], e: list[int], d: list[int], r: int) -> Arch:
    """An Arch of plain ints that `Genome.to_archs` has just validated in bulk against the space: the per-field
    conversion of `Arch.__post_init__` would only repeat that check, one value at a time (20x slower)."""
    a = object.__new__(Arch)
    object.__setattr__(a, "ks", tuple(ks))
    object.__setattr__(a, "e", tuple(e))
    object.__setattr__(a, "d", tuple(d))
    object.__setattr__(a, "r", int(r))
    return a


# ------------------------------------------------------------------------------------------------
# scoring with a cache
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


def _feasible(c: Constraints, m: dict[str, np.ndarray], slack: float = 0.0) -> np.ndarray:
    ok = np.ones(len(m["accuracy"]), dtype=bool)
    if c.latency_ms is not None:
        ok &= m["latency_ms"] <= c.latency_ms * (1 + slack)
    if c.macs is not None:
        ok &= m["macs"] <= c.macs * (1 + slack)
    if c.params is not None:
        ok &= m["params"] <= c.params * (1 + slack)
    return ok


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
        if c.empty or _feasible(c, big_m)[0]:
            note = None if c.empty else (f"the budget ({c.describe()}) is at or above the largest subnet{at_res} "
                                         f"({_describe_metrics(big_m, 0, lat_pred is not None)}); returning the largest subnet")
            results[j] = _result(c, genome, big_g[0], big_m, 0, note)
        else:
            todo.append(j)
    # 2) budgets nothing can meet: find how far the space goes and say so
    seeds = []
    for j in todo:
        c = cons[j]
        if not _feasible(c, small_m)[0]:
            found, minima = _minimum_reachable(c, genome, scorer, rng, cfg)
            if found is None:
                raise OFAError(_infeasible_message(c, space, minima, where))
            seeds.append(found)
    # 3) evolve all remaining budgets side by side
    gens_run = 0
    if todo:
        todo_cons = [cons[j] for j in todo]
        scorer.acc_for = lambda m: np.logical_or.reduce([_feasible(c, m) for c in todo_cons])
        best_g, gens_run = _evolve([cons[j] for j in todo], genome, scorer, rng, cfg, progress, seeds)
        for j, g in zip(todo, best_g):
            gg, m = scorer(g[None, :])
            results[j] = _result(cons[j], genome, gg[0], m, 0, None)
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
        winners = _local_search(base_cons, genome, scorer, starts)
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
        bad[mine] = ~_feasible(c, {k: v[mine] for k, v in km.items()})
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
            ok[mine] = _feasible(c, {k: v[mine] for k, v in cm.items()})
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
    ok = np.flatnonzero(_feasible(c, m))
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


def _local_search(cons: list[Constraints], genome: Genome, scorer: Scorer, starts: list[np.ndarray],
                  max_rounds: int = 30) -> list[np.ndarray]:
    """Greedy polish: for each budget, move each start (rows of starts[j]) to its best feasible single-gene
    neighbour while that improves accuracy; all neighbourhoods of a round are scored in one batch."""
    cur = [np.array(s, dtype=np.int64).reshape(-1, genome.length) for s in starts]
    cur_acc = [scorer(c)[1]["accuracy"].copy() for c in cur]
    active = [(j, k) for j in range(len(cur)) for k in range(len(cur[j]))]
    for _ in range(max_rounds):
        if not active:
            break
        blocks = [genome.neighbours(cur[j][k]) for j, k in active]
        g, m = scorer(np.concatenate(blocks))
        nxt, start = [], 0
        for (j, k), blk in zip(active, blocks):
            sl = slice(start, start + len(blk))
            start += len(blk)
            sub = {key: v[sl] for key, v in m.items()}
            acc = np.where(_feasible(cons[j], sub), sub["accuracy"], -np.inf)
            i = int(np.argmax(acc))
            if acc[i] > cur_acc[j][k] + 1e-9:
                cur[j][k], cur_acc[j][k] = g[sl][i], float(acc[i])
                nxt.append((j, k))
        active = nxt
    return [c[int(np.argmax(a))] for c, a in zip(cur, cur_acc)]


# ------------------------------------------------------------------------------------------------
# the edges of the space
def _minimize(metric: str, genome: Genome, scorer: Scorer, rng: np.random.Generator, cfg: EvolutionConfig,
              generations: int = 30) -> tuple[np.ndarray, float]:
    """Smallest value of `metric` reachable (evolution + local search from the smallest arch)."""
    pop = np.concatenate([genome.smallest()[None, :], genome.random(rng, 200, size_bias=True)])
    g, m = scorer(pop)
    order = np.argsort(m[metric], kind="stable")[:25]
    pg, best = g[order], float(m[metric][order[0]])
    for _ in range(generations):
        kids = np.concatenate([genome.mutate(pg[rng.integers(0, len(pg), 60)], rng, cfg.mutate_prob),
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


def _minimum_reachable(c: Constraints, genome: Genome, scorer: Scorer, rng: np.random.Generator,
                       cfg: EvolutionConfig) -> tuple[np.ndarray | None, dict[str, float]]:
    """(a feasible genome or None, the minimum found of each bounded metric) by searching for the minima."""
    minima: dict[str, float] = {}
    for metric, bound in (("latency_ms", c.latency_ms), ("macs", c.macs), ("params", c.params)):
        if bound is None:
            continue
        g, v = _minimize(metric, genome, scorer, rng, cfg)
        minima[metric] = v
        gg, m = scorer(g[None, :])
        if _feasible(c, m)[0]:
            return gg[0], minima
    return None, minima


def _infeasible_message(c: Constraints, space: SpaceSpec, minima: dict[str, float], where: str) -> str:
    parts = []
    for metric, what, fmt in (("latency_ms", "fastest latency", lambda v: f"{v:.2f} ms"),
                              ("macs", "fewest MACs", lambda v: f"{v / 1e6:.1f}M MACs"),
                              ("params", "fewest params", lambda v: f"{v / 1e6:.2f}M params")):
        if metric in minima:
            parts.append(f"the {what} it reaches{where if metric == 'latency_ms' else ''} is {fmt(minima[metric])}")
    return f"no subnet of space {space.name} meets {c.describe()}{where}: " + "; ".join(parts) + "; raise the budget"


# ------------------------------------------------------------------------------------------------
# Pareto
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
