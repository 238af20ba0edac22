"""Do PyTorch-eager CPU timings repeat from one session (process) to the next, with and without freed memory
kept in the process (`predictors.allocator`)?

Each session is a fresh process that times the same N random subnets of mbv3-w1.0 with `measure_modules`
(PyTorch, 1 thread, interleaved rounds), as `ofa profile --runtime torch` does; `default` sessions replace
`keep_freed_memory` by a no-op (glibc's own malloc tuning), `kept` sessions run the product as it is. Sessions
of the two variants alternate (default, kept, default, kept, ...), so both see the same machine. For every pair
of sessions of one variant: the share of networks whose second timing is within 10% of the first, the spread
of the per-network ratio, its extremes and Kendall tau.

    python3 bench/torch_timing_repeat.py [--nets 60] [--sessions 3] [--rounds 10]
      -> bench/results/torch_timing_repeat.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predictors.atomic_files import write_json_atomic  # noqa: E402
from predictors.metrics import kendall_tau  # noqa: E402

VARIANTS = ("default", "kept")
SPACE = "mbv3-w1.0"


def session(variant: str, nets: int, rounds: int) -> list[float]:
    """One session's latencies (ms) of the N subnets, in this process."""
    import torch

    import predictors.measure as measure
    from elastic.spaces import get_space
    from predictors.measure import build_module

    if variant == "default":
        measure.keep_freed_memory = lambda: False
    space = get_space(SPACE)
    rng = random.Random(7)
    archs = [space.sample(rng) for _ in range(nets)]
    models = []
    for i, a in enumerate(archs):
        torch.manual_seed(i)
        models.append(build_module(space.net_spec(a)))
    ms = measure.measure_modules(models, [(3, a.r, a.r) for a in archs], runtime="torch", threads=1, rounds=rounds)
    return [float(v) for v in ms]


def compare(a: list[float], b: list[float]) -> dict:
    a_, b_ = np.asarray(a), np.asarray(b)
    r = b_ / a_
    return {"within_10pct": float(np.mean(np.abs(r - 1) < 0.10)), "ratio_mean": float(r.mean()),
            "ratio_sd": float(r.std()), "ratio_min": float(r.min()), "ratio_max": float(r.max()),
            "kendall_tau": kendall_tau(a_, b_)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", type=int, default=60)
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--session", choices=VARIANTS, help=argparse.SUPPRESS)   # internal: one session, JSON out
    args = ap.parse_args()
    if args.session:
        print(json.dumps(session(args.session, args.nets, args.rounds)))
        return
    ms: dict[str, list[list[float]]] = {v: [] for v in VARIANTS}
    t0 = time.perf_counter()
    for s in range(args.sessions):
        for v in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--session", v, "--nets", str(args.nets), "--rounds",
                                  str(args.rounds)], capture_output=True, text=True, check=True)
            ms[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"session {s + 1} {v}: {min(ms[v][-1]):.2f}-{max(ms[v][-1]):.2f} ms "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    res = {"space": SPACE, "nets": args.nets, "sessions": args.sessions, "rounds": args.rounds,
           "date": time.strftime("%Y-%m-%d %H:%M"), "machine": "2-core shared VM (AMD EPYC), no GPU",
           "command": "python3 bench/torch_timing_repeat.py " + " ".join(sys.argv[1:]), "ms": ms, "pairs": {}}
    for v in VARIANTS:
        res["pairs"][v] = {f"s{i + 1}-s{j + 1}": compare(ms[v][i], ms[v][j])
                           for i, j in itertools.combinations(range(args.sessions), 2)}
        for pair, q in res["pairs"][v].items():
            print(f"{v:8s} {pair}: within 10% {100 * q['within_10pct']:.0f}%, ratio mean {q['ratio_mean']:.3f} "
                  f"sd {q['ratio_sd']:.3f} [{q['ratio_min']:.2f}, {q['ratio_max']:.2f}], tau {q['kendall_tau']:.3f}")
    write_json_atomic(ROOT / "bench" / "results" / "torch_timing_repeat.json", res)


if __name__ == "__main__":
    main()
