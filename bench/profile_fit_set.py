"""Which networks should a measured profile be fit on: random samples (what `ofa profile` and the main job time)
or stratified probes (`ofa profile probes`)? Scored on random nets and on the nets a search actually considers.

One interleaved ONNX Runtime session (1 thread, batch 1) per repeat holds: 40 random samples (the largest and the
smallest among them, as `fit_measured_profile` draws them), 40 stratified probes (seed 0), 100 fresh random nets
and up to 100 nets of the given Pareto fronts (`RUN/specialized/<device>_pareto.json` of a main job: the nets the
search weighs against each other). Each fitting set fits the per-layer regression, scored on both test sets.

  python3 bench/profile_fit_set.py --front RUN/specialized/cpu_pareto.json [--front ...]     # about 2 minutes a session

Results: bench/results/profile_fit_set_<tag>.json.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.result_files import RESULTS  # noqa: E402
from elastic.arch import Arch  # noqa: E402
from elastic.spaces import get_space  # noqa: E402
from predictors.layer_regression import fit_relative  # noqa: E402
from predictors.layers import net_features  # noqa: E402
from predictors.measure import measure_nets  # noqa: E402
from predictors.metrics import latency_quality  # noqa: E402
from predictors.probes import stratified_archs  # noqa: E402


def arch_sets(space, fronts: list[Path]) -> dict[str, list[Arch]]:
    rng = random.Random(0)
    sampled = [space.sample(rng) for _ in range(40)]
    sampled[0], sampled[1] = space.largest(), space.smallest()
    fresh_rng = random.Random(7)
    seen, front = set(), []
    for f in fronts:
        for p in json.loads(f.read_text())["front"]:
            a = Arch.from_dict(p["arch"])
            if space.canonical(a) not in seen:
                seen.add(space.canonical(a))
                front.append(a)
    random.Random(1).shuffle(front)
    return {"fit_random": sampled, "fit_stratified": stratified_archs(space, 40, seed=0),
            "test_random": [space.sample(fresh_rng) for _ in range(100)], "test_front": front[:100]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--front", type=Path, action="append", required=True)
    ap.add_argument("--space", default="", help="default: the first front's space")
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tag", default=time.strftime("%Y-%m-%d"))
    args = ap.parse_args()
    space = get_space(args.space or json.loads(args.front[0].read_text())["space"])
    sets = arch_sets(space, args.front)
    order = [(g, i) for g, v in sets.items() for i in range(len(v))]
    random.Random(3).shuffle(order)   # the sets interleaved within each round
    specs = [space.net_spec(sets[g][i]) for g, i in order]
    feats = {g: np.stack([net_features(space.net_spec(a)) for a in v]) for g, v in sets.items()}
    sessions = []
    for s in range(args.sessions):
        t0 = time.perf_counter()
        ms = measure_nets(specs, runtime="onnxruntime", threads=1, device="cpu", rounds=args.rounds)
        got = {g: np.zeros(len(v)) for g, v in sets.items()}
        for (g, i), m in zip(order, ms):
            got[g][i] = m
        row = {"seconds": time.perf_counter() - t0, "range_ms": {g: [float(v.min()), float(v.max())] for g, v in got.items()}}
        for fit in ("fit_random", "fit_stratified"):
            coef = fit_relative(feats[fit], got[fit])
            for test in ("test_random", "test_front"):
                q = latency_quality(got[test], feats[test] @ coef)
                row[f"{fit} -> {test}"] = {k: float(q[k]) for k in ("mape_pct", "within_10pct", "kendall_tau")}
                print(s, fit, "->", test, {k: round(v, 3) for k, v in row[f"{fit} -> {test}"].items()}, flush=True)
        sessions.append(row)
    out = RESULTS / f"profile_fit_set_{args.tag}.json"
    out.write_text(json.dumps({"space": space.name, "fronts": [str(f) for f in args.front],
                               "sizes": {g: len(v) for g, v in sets.items()}, "rounds": args.rounds,
                               "sessions": sessions, "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
