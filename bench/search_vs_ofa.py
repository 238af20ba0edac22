"""Search quality and speed: our batched evolution vs. the original OFA EvolutionFinder, same process, same predictors.

Predictors: OFA's published ImageNet accuracy predictor (mbv3-w1.2, shipped in predictors/data) and the `note10`
latency profile, over the resolutions the original search used (160..224). For each budget (15, 25, 40 ms) the
baseline is a faithful re-implementation of OFA's `EvolutionFinder` (population 100, 500 generations, parent ratio
0.25, mutation ratio 0.5, mutate prob 0.1; archs as dicts deep-copied per child; random init and every child by
rejection sampling with one latency-predictor call per candidate arch; accuracy predicted once per generation for
the 100 children, as the original does). Ours is `specialize.evolution.search` with default settings, run per budget
and once for all three budgets together.

    python bench/search_vs_ofa.py [--seeds 3] [--baseline-seeds 1]

Prints a table and writes bench/results/search_vs_ofa.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elastic.arch import Arch  # noqa: E402
from elastic.spaces import get_space  # noqa: E402
from predictors.latency import get_latency_predictor  # noqa: E402
from predictors.ofa_predictor import load_ofa_predictor  # noqa: E402
from specialize.budget import Constraints  # noqa: E402
from specialize.evolution import search  # noqa: E402

BUDGETS_MS = (15.0, 25.0, 40.0)
OFA_REPORTED = {15.0: 0.785, 25.0: 0.819, 40.0: 0.836}   # figures the brief/OFA tutorial give for their search


class OFAEvolutionFinder:
    """The original algorithm (OFA tutorial `EvolutionFinder`), kept close to its structure on purpose."""

    def __init__(self, space, acc_pred, lat_pred, constraint_ms, seed, population_size=100, max_time_budget=500,
                 parent_ratio=0.25, mutation_ratio=0.5, mutate_prob=0.1):
        self.space, self.acc_pred, self.lat_pred, self.constraint = space, acc_pred, lat_pred, constraint_ms
        self.population_size, self.max_time_budget = population_size, max_time_budget
        self.parent_ratio, self.mutation_ratio, self.mutate_prob = parent_ratio, mutation_ratio, mutate_prob
        self.random = random.Random(seed)
        self.np_random = np.random.RandomState(seed)
        self.n_lat_calls = 0

    # ArchManager
    def _random_arch(self):
        sp, rnd = self.space, self.random
        return {"ks": [rnd.choice(sp.ks_choices) for _ in range(sp.n_blocks)],
                "e": [rnd.choice(sp.e_choices) for _ in range(sp.n_blocks)],
                "d": [rnd.choice(sp.depth_choices(s)) for s in range(sp.n_stages)],
                "r": [rnd.choice(sp.resolutions)]}

    @staticmethod
    def _arch(sample):
        return Arch(sample["ks"], sample["e"], sample["d"], sample["r"][0])

    def _efficiency(self, sample):
        self.n_lat_calls += 1
        return float(self.lat_pred.predict([self._arch(sample)])[0])

    def random_sample(self):
        while True:
            sample = self._random_arch()
            eff = self._efficiency(sample)
            if eff <= self.constraint:
                return sample, eff

    def mutate_sample(self, sample):
        sp, rnd = self.space, self.random
        while True:
            new = copy.deepcopy(sample)
            if rnd.random() < self.mutate_prob:
                new["r"][0] = rnd.choice(sp.resolutions)
            for i in range(sp.n_blocks):
                if rnd.random() < self.mutate_prob:
                    new["ks"][i] = rnd.choice(sp.ks_choices)
                    new["e"][i] = rnd.choice(sp.e_choices)
            for i in range(sp.n_stages):
                if rnd.random() < self.mutate_prob:
                    new["d"][i] = rnd.choice(sp.depth_choices(i))
            eff = self._efficiency(new)
            if eff <= self.constraint:
                return new, eff

    def crossover_sample(self, s1, s2):
        while True:
            new = copy.deepcopy(s1)
            for key in new:
                for i in range(len(new[key])):
                    new[key][i] = self.random.choice([s1[key][i], s2[key][i]])
            eff = self._efficiency(new)
            if eff <= self.constraint:
                return new, eff

    def run_evolution_search(self):
        mutation_numbers = int(round(self.mutation_ratio * self.population_size))
        parents_size = int(round(self.parent_ratio * self.population_size))
        best_valids, best_info = [-100.0], None
        population, child_pool, eff_pool = [], [], []
        for _ in range(self.population_size):
            s, e = self.random_sample()
            child_pool.append(s)
            eff_pool.append(e)
        accs = self.acc_pred.predict([self._arch(s) for s in child_pool])
        population = [(float(accs[i]), child_pool[i], eff_pool[i]) for i in range(self.population_size)]
        for _ in range(self.max_time_budget):
            parents = sorted(population, key=lambda x: x[0])[::-1][:parents_size]
            if parents[0][0] > best_valids[-1]:
                best_valids.append(parents[0][0])
                best_info = parents[0]
            else:
                best_valids.append(best_valids[-1])
            population, child_pool, eff_pool = parents, [], []
            for _ in range(mutation_numbers):
                par = population[self.np_random.randint(parents_size)][1]
                s, e = self.mutate_sample(par)
                child_pool.append(s)
                eff_pool.append(e)
            for _ in range(self.population_size - mutation_numbers):
                p1 = population[self.np_random.randint(parents_size)][1]
                p2 = population[self.np_random.randint(parents_size)][1]
                s, e = self.crossover_sample(p1, p2)
                child_pool.append(s)
                eff_pool.append(e)
            accs = self.acc_pred.predict([self._arch(s) for s in child_pool])
            population = population + [(float(accs[i]), child_pool[i], eff_pool[i]) for i in range(self.population_size)]
        return best_valids, best_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds for our search")
    ap.add_argument("--baseline-seeds", type=int, default=1, help="seeds for the original algorithm (slow)")
    ap.add_argument("--generations", type=int, default=500, help="baseline generations (500 = the original)")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

    acc = load_ofa_predictor()
    space = get_space("mbv3-w1.2", n_classes=1000, resolutions=(160, 176, 192, 208, 224))
    lat = get_latency_predictor("note10", space)
    rows = []
    for budget in BUDGETS_MS:
        base = []
        for seed in range(args.baseline_seeds):
            f = OFAEvolutionFinder(space, acc, lat, budget, seed=seed, max_time_budget=args.generations)
            t, c = time.perf_counter(), time.process_time()
            with threadpool_limits(limits=1, user_api="blas"):  # the same BLAS setting our search uses
                _, info = f.run_evolution_search()
            dt, dc = time.perf_counter() - t, time.process_time() - c
            base.append({"seed": seed, "accuracy": info[0], "latency_ms": info[2], "seconds": dt, "cpu_seconds": dc,
                         "latency_calls": f.n_lat_calls})
        ours = []
        for seed in range(args.seeds):
            t, c = time.perf_counter(), time.process_time()
            out = search(space, acc, lat, Constraints(latency_ms=budget), seed=seed, device="note10")
            dt, dc = time.perf_counter() - t, time.process_time() - c
            r = out.best
            ours.append({"seed": seed, "accuracy": r.accuracy, "latency_ms": r.latency_ms, "seconds": dt, "cpu_seconds": dc,
                         "generations": out.stats["generations"], "archs_scored": out.stats["archs_scored"],
                         "arch": r.arch.to_dict()})
        b_acc = float(np.mean([b["accuracy"] for b in base]))
        b_s = float(np.mean([b["seconds"] for b in base]))
        o_acc = float(np.mean([o["accuracy"] for o in ours]))
        o_min = float(np.min([o["accuracy"] for o in ours]))
        o_s = float(np.mean([o["seconds"] for o in ours]))
        b_c = float(np.mean([b["cpu_seconds"] for b in base]))
        o_c = float(np.mean([o["cpu_seconds"] for o in ours]))
        rows.append({"budget_ms": budget, "ofa_reported": OFA_REPORTED[budget], "baseline": base, "ours": ours,
                     "baseline_mean_acc": b_acc, "ours_mean_acc": o_acc, "ours_min_acc": o_min,
                     "baseline_mean_s": b_s, "ours_mean_s": o_s, "time_ratio": o_s / b_s,
                     "baseline_mean_cpu_s": b_c, "ours_mean_cpu_s": o_c, "cpu_time_ratio": o_c / b_c})
        print(f"{budget:>5.0f} ms  baseline acc {b_acc:.4f} (min {min(b['accuracy'] for b in base):.4f}) in {b_s:7.2f} s "
              f"(cpu {b_c:.2f} s) | ours acc {o_acc:.4f} (min {o_min:.4f}) in {o_s:6.3f} s (cpu {o_c:.3f} s) | "
              f"time ratio 1/{b_s / o_s:.0f} (cpu 1/{b_c / o_c:.0f}) | acc diff {100 * (o_acc - b_acc):+.2f} pts", flush=True)

    joint = []
    for seed in range(args.seeds):
        t, c = time.perf_counter(), time.process_time()
        out = search(space, acc, lat, [Constraints(latency_ms=b) for b in BUDGETS_MS], seed=seed, device="note10")
        joint.append({"seed": seed, "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                      "accuracy": [r.accuracy for r in out.results], "pareto_points": len(out.pareto)})
    j_s = float(np.mean([j["seconds"] for j in joint]))
    j_c = float(np.mean([j["cpu_seconds"] for j in joint]))
    all_base_c = sum(r["baseline_mean_cpu_s"] for r in rows)
    j_acc = np.mean([j["accuracy"] for j in joint], axis=0).tolist()
    all_base_s = sum(r["baseline_mean_s"] for r in rows)
    print(f"all 3 budgets in one call: accs {', '.join(f'{a:.4f}' for a in j_acc)} in {j_s:.3f} s (cpu {j_c:.3f} s) "
          f"(baseline total {all_base_s:.1f} s, cpu {all_base_c:.1f} s; ratio 1/{all_base_s / j_s:.0f}, cpu 1/{all_base_c / j_c:.0f})")
    res = {"machine": platform.platform(), "python": platform.python_version(), "budgets": rows,
           "joint": {"runs": joint, "mean_seconds": j_s, "mean_cpu_seconds": j_c, "baseline_total_cpu_s": all_base_c, "mean_accuracy": j_acc, "baseline_total_s": all_base_s}}
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "search_vs_ofa.json").write_text(json.dumps(res, indent=2))
    print(f"wrote {out_dir / 'search_vs_ofa.json'}")


if __name__ == "__main__":
    main()
