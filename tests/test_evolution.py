import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from elastic import Arch, OFAError, get_space
from elastic.spaces import SPACES
from predictors.latency import get_latency_predictor
from predictors.ofa_predictor import load_ofa_predictor
from specialize.budget import Constraints
from specialize.evolution import pareto_sweep, search
from specialize.genome import Genome
from specialize.pareto_plot import plot_pareto

FAST = dict(population=40, patience=8, init_samples=400)


@pytest.fixture(scope="module")
def setup():
    space = get_space("mbv3-w1.2", resolutions=(160, 176, 192, 208, 224))
    return space, load_ofa_predictor(), get_latency_predictor("note10", space)


def test_genome_round_trip_and_canonical_match_the_space():
    for name in ("mbv3-w1.0", "proxyless-w1.3-small"):
        sp = get_space(name, n_classes=10)
        gen = Genome(sp)
        rng = random.Random(0)
        archs = [sp.sample(rng) for _ in range(30)]
        g = gen.from_archs(archs)
        assert gen.to_archs(g) == archs
        assert gen.to_archs(gen.canonical(g)) == [sp.canonical(a) for a in archs]
        for a in gen.to_archs(gen.random(np.random.default_rng(0), 50, size_bias=True)):
            sp.validate(a)



@pytest.mark.parametrize("name", sorted(SPACES))
def test_mutants_and_crossovers_stay_in_the_space(name):
    """The search breeds with Genome.mutate / Genome.crossover: every child decodes to an arch of the space."""
    sp = get_space(name, n_classes=10)
    gen = Genome(sp)
    rng = np.random.default_rng(1)
    a, b = gen.random(rng, 50), gen.random(rng, 50)
    for child in (gen.mutate(a, rng, 0.5), gen.crossover(a, b, rng)):
        for arch in gen.to_archs(child):
            sp.validate(arch)

def test_search_beats_random_sampling_and_meets_the_budget(setup):
    space, acc, lat = setup
    out = search(space, acc, lat, Constraints(latency_ms=25.0), seed=1, **FAST)
    r = out.best
    assert r.latency_ms <= 25.0 and r.note is None
    assert float(lat.predict([r.arch])[0]) == pytest.approx(r.latency_ms)
    assert float(acc.predict([r.arch])[0]) == pytest.approx(r.accuracy)
    # the best of 3000 uniformly sampled feasible archs is clearly worse than the search's answer
    rng = random.Random(0)
    pool = [space.sample(rng) for _ in range(3000)]
    ok = lat.predict(pool) <= 25.0
    best_random = acc.predict([a for a, f in zip(pool, ok) if f]).max()
    assert r.accuracy > best_random + 0.002
    # every distinct arch scored once: the cache served the repeats
    assert out.stats["archs_scored"] < out.stats["score_requests"]


def test_several_budgets_share_one_run_and_are_monotone(setup):
    space, acc, lat = setup
    budgets = [Constraints(latency_ms=b) for b in (40.0, 15.0, 25.0)]
    out = search(space, acc, lat, budgets, seed=0, **FAST)
    assert [r.constraints for r in out.results] == budgets          # results in the order asked
    by_ms = {r.constraints.latency_ms: r for r in out.results}
    for ms, r in by_ms.items():
        assert r.latency_ms <= ms
    assert by_ms[15.0].accuracy < by_ms[25.0].accuracy < by_ms[40.0].accuracy
    # the Pareto front: faster first, accuracy strictly rising, no point dominated by a result
    xs = [p["latency_ms"] for p in out.pareto]
    ys = [p["accuracy"] for p in out.pareto]
    assert xs == sorted(xs) and all(b > a for a, b in zip(ys, ys[1:]))
    for r in out.results:
        front_at = max(p["accuracy"] for p in out.pareto if p["latency_ms"] <= r.latency_ms)
        assert front_at == pytest.approx(r.accuracy)


def test_combined_latency_and_macs_budget(setup):
    space, acc, lat = setup
    loose = search(space, acc, lat, Constraints(latency_ms=30.0), seed=0, **FAST).best
    tight = Constraints(latency_ms=30.0, macs=0.8 * loose.macs)
    r = search(space, acc, lat, tight, seed=0, **FAST).best
    assert r.latency_ms <= 30.0 and r.macs <= tight.macs
    assert r.accuracy <= loose.accuracy + 0.003  # an extra constraint cannot help much (different search paths)


def test_infeasible_budget_names_the_fastest_reachable_latency(setup):
    space, acc, lat = setup
    smallest_ms = float(lat.predict([space.smallest()])[0])
    with pytest.raises(OFAError) as err:
        search(space, acc, lat, Constraints(latency_ms=smallest_ms * 0.8), device="note10", **FAST)
    msg = str(err.value)
    assert "fastest latency" in msg and "note10" in msg
    reached = float(msg.split("is ")[1].split(" ms")[0])
    assert reached <= smallest_ms + 0.01 and reached > smallest_ms * 0.8


def test_budget_above_the_largest_returns_the_largest(setup):
    space, acc, lat = setup
    big_ms = float(lat.predict([space.largest()])[0])
    r = search(space, acc, lat, Constraints(latency_ms=big_ms * 2), **FAST).best
    assert r.arch == space.largest() and "largest subnet" in r.note


def test_latency_budget_without_a_latency_predictor_is_an_error(setup):
    space, acc, _ = setup
    with pytest.raises(OFAError, match="latency predictor"):
        search(space, acc, None, Constraints(latency_ms=20.0))


def test_pareto_sweep_and_plot(setup, tmp_path):
    space, acc, lat = setup
    out = pareto_sweep(space, acc, lat, n_budgets=3, seed=0, **FAST)
    assert len(out.results) == 3 and len(out.pareto) >= 3
    png = plot_pareto(out.pareto, tmp_path / "front.png", chosen=out.results, device="note10")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_macs_only_budget_without_a_device(setup):
    space, acc, _ = setup
    out = search(space, acc, None, Constraints(macs=300e6), seed=0, **FAST)
    r = out.best
    assert r.macs <= 300e6 and r.latency_ms is None
    assert max(p["accuracy"] for p in out.pareto if p["macs"] <= 300e6) == pytest.approx(r.accuracy)
    with pytest.raises(OFAError, match="fewest MACs"):
        search(space, acc, None, Constraints(macs=1e6), **FAST)


def test_search_limited_to_given_resolutions(setup):
    space, acc, lat = setup
    free = search(space, acc, lat, Constraints(latency_ms=25.0), seed=0, **FAST).best
    for res in ([224], [160, 176]):
        out = search(space, acc, lat, Constraints(latency_ms=25.0), seed=0, resolutions=res, **FAST)
        r = out.best
        assert r.arch.r in res and r.latency_ms <= 25.0
        assert {p["arch"].r for p in out.pareto} <= set(res)          # nothing outside them was even scored
        assert r.accuracy <= free.accuracy + 0.003                     # a narrower search cannot do much better
    # the floor moves with the resolution: a budget only lower resolutions reach is infeasible at 224
    lo160, lo224 = (float(v) for v in lat.predict([space.smallest(160), space.smallest(224)]))
    assert lo160 < lo224
    with pytest.raises(OFAError) as err:
        search(space, acc, lat, Constraints(latency_ms=(lo160 + lo224) / 2), device="note10", resolutions=[224],
               **FAST)
    msg = str(err.value)
    assert "at resolution 224" in msg
    assert float(msg.split("is ")[1].split(" ms")[0]) == pytest.approx(lo224, abs=0.01)
    # above the largest subnet of the allowed resolutions: that one, not the space's largest
    big176 = float(lat.predict([space.largest(176)])[0])
    r = search(space, acc, lat, Constraints(latency_ms=big176 * 1.01), resolutions=[160, 176], **FAST).best
    assert r.arch == space.largest(176) and "at resolution 160, 176" in r.note
    with pytest.raises(OFAError, match="allowed: 160, 176, 192, 208, 224"):
        search(space, acc, lat, Constraints(latency_ms=25.0), resolutions=[150])


# ---- defects found by reading, and properties over random budgets -----------------------------------------------
def test_parent_selection_never_returns_more_than_n():
    """More resolution niches than parent places (population 4 at parent ratio 0.25 over 5 resolutions): the
    selection once returned one parent per niche, here 5 for 1 place."""
    from specialize.evolution import _select

    sp = get_space("mbv3-w1.2", resolutions=(160, 176, 192, 208, 224))
    gen = Genome(sp)
    g = gen.canonical(gen.random(np.random.default_rng(0), 60))
    g = np.unique(g, axis=0)
    acc = np.random.default_rng(1).random(len(g))
    m = {"accuracy": acc, "latency_ms": np.ones(len(g)), "macs": np.ones(len(g)), "params": np.ones(len(g))}
    assert len(np.unique(g[:, -1])) == 5
    for n in (1, 2, 3, 4, 7, 10, 40):
        pg, pm = _select(g, m, Constraints(latency_ms=2.0), n, niche=g[:, -1])
        assert len(pg) == n == len(pm["accuracy"]) and len(np.unique(pg, axis=0)) == n
        assert pm["accuracy"][0] == acc.max()                                  # the best is always kept
        if n >= 10:   # room for every niche: each resolution is represented
            assert len(np.unique(pg[:, -1])) == 5


def test_genomes_decode_only_to_archs_of_the_space():
    sp = get_space("proxyless-w1.3-small", n_classes=10)
    gen = Genome(sp)
    g = gen.random(np.random.default_rng(0), 200, size_bias=True)
    archs = gen.to_archs(g)
    for a in archs:
        assert sp.validate(a) is a
        assert a == Arch(list(a.ks), list(a.e), list(a.d), a.r) and hash(a) == hash(Arch(**a.to_dict()))
        assert all(type(v) is int for v in (*a.ks, *a.e, *a.d, a.r))
    bad = g[:3].copy()
    bad[0, 0] = gen.n_opts[0]                       # one past the last kernel choice
    with pytest.raises(ValueError, match="outside space"):
        gen.to_archs(bad)
    with pytest.raises(ValueError, match="outside space"):
        gen.to_archs(g[:, :-1])
    gen.ks = np.array([3, 5, 9])                    # a broken lookup table is caught too, not passed on
    with pytest.raises(ValueError, match="ks values outside"):
        gen.to_archs(g[:5])


class SyntheticAccuracy:
    """A stand-in accuracy predictor for any space: saturating in MACs plus a small per-arch wobble (batched)."""

    def __init__(self, space):
        from elastic.complexity import macs

        self.space, self.macs = space, macs
        self.scale = float(macs(space, [space.largest()])[0]) / 3

    def predict(self, archs):
        m = np.asarray(self.macs(self.space, archs), dtype=float)
        wobble = np.array([(hash((a.ks, a.e)) % 997) / 997 for a in archs]) * 2e-3
        return 0.95 - 0.3 * np.exp(-m / self.scale) + wobble


TINY = dict(population=12, generations=6, patience=3, init_samples=120)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(SPACES)), device=st.sampled_from(["pixel1", "flops"]),
       fracs=st.lists(st.floats(min_value=0.02, max_value=1.3), min_size=1, max_size=3),
       n_res=st.integers(min_value=1, max_value=3), seed=st.integers(min_value=0, max_value=10_000))
def test_every_result_is_in_its_space_meets_its_budget_and_more_budget_is_never_worse(name, device, fracs, n_res,
                                                                                      seed):
    space = get_space(name)
    res = sorted(space.resolutions)[:n_res]
    lat = get_latency_predictor(device, space)
    acc = SyntheticAccuracy(space)
    lo, hi = (float(v) for v in lat.predict([space.smallest(min(res)), space.largest(max(res))]))
    budgets = [lo + f * (hi - lo) for f in fracs]
    out = search(space, acc, lat, [Constraints(latency_ms=b) for b in budgets], seed=seed, resolutions=res, **TINY)
    assert len(out.results) == len(budgets)
    for r, b in zip(out.results, budgets):
        assert space.validate(r.arch) is r.arch and r.arch.r in res
        assert r.latency_ms <= b
        assert float(lat.predict([r.arch])[0]) == pytest.approx(r.latency_ms, rel=1e-9)
        assert float(acc.predict([r.arch])[0]) == pytest.approx(r.accuracy, rel=1e-9)
    by_budget = sorted(zip(budgets, (r.accuracy for r in out.results)))
    assert all(a2 >= a1 - 1e-12 for (_, a1), (_, a2) in zip(by_budget, by_budget[1:]))
