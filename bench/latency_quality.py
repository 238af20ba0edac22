"""Latency predictor quality and speed, measured side by side in one run.

1. Published networks: note10 / pixel1 predictions vs the latency in their names (needs /work/shared).
2. Speed: predicting 10,000 archs with each predictor kind (batched tables) vs per-net `predict_net`.
3. Measured CPU (ONNX Runtime): fit a profile on N random subnets, then 100 fresh subnets: share of predictions
   within 10% of the measured median, Kendall tau, MAPE.  (Noisy on a shared machine; medians, interleaved.)
   `--repeatability`: the fresh subnets are timed again in a second session and the two measurements are scored
   against each other with the same metrics: the ceiling any predictor can reach against one noisy measurement.
Writes bench/results/latency_quality.json (latency_quality_<space>.json for another --space).

    python3 bench/latency_quality.py [--space mbv3-w1.0] [--fit 60] [--test 100] [--threads 1] [--skip-measure]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elastic.spaces import get_space  # noqa: E402
from predictors.latency import get_latency_predictor  # noqa: E402
from predictors.layers import net_features  # noqa: E402
from predictors.measure import fit_measured_profile, measure_nets  # noqa: E402
from predictors.metrics import latency_quality  # noqa: E402
from predictors.net_config import netspec_from_json  # noqa: E402
from predictors.atomic_files import write_json_atomic  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "latency" / "published_nets"


def published() -> list[dict]:
    rows = []
    if not SHARED.is_dir():
        return rows
    for f in sorted(SHARED.glob("*_lat-*.json")):
        cfg = json.loads(f.read_text())
        device = cfg["name"].split("_")[0]
        target = float(re.search(r"lat-(\d+)ms", cfg["name"]).group(1))
        pred = get_latency_predictor(device).predict_net(netspec_from_json(cfg))
        rows.append({"name": cfg["name"], "device": device, "target_ms": target, "pred_ms": pred,
                     "err_pct": 100 * (pred - target) / target})
    return rows


def speed() -> list[dict]:
    rows = []
    for device, space_name in (("note10", "mbv3-w1.2"), ("pixel1", "mbv3-w1.0"), ("pixel1", "proxyless-w1.3"),
                               ("flops", "mbv3-w1.0"), ("params", "mbv3-w1.0")):
        space = get_space(space_name)
        rng = random.Random(0)
        archs = [space.sample(rng) for _ in range(10_000)]
        t0 = time.perf_counter()
        pred = get_latency_predictor(device, space)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        y = pred.predict(archs)
        batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = np.array([pred.predict_net(space.net_spec(a)) for a in archs[:500]])
        per_net = (time.perf_counter() - t0) * 20  # scaled to 10,000
        rows.append({"device": device, "space": space_name, "table_build_s": build, "predict_10k_s": batched,
                     "predict_net_10k_s_est": per_net, "speedup": per_net / batched,
                     "max_abs_diff": float(np.abs(ref - y[:500]).max())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="mbv3-w1.0")
    ap.add_argument("--fit", type=int, default=100)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--instances", type=int, default=1, help="runtime sessions per network, averaged")
    ap.add_argument("--skip-measure", action="store_true")
    ap.add_argument("--repeatability", action="store_true",
                    help="time the fresh subnets again in a second session and score measurement against measurement")
    args = ap.parse_args()
    out: dict = {"published": published(), "speed": speed()}
    for r in out["published"]:
        print(f"{r['name']:42s} target {r['target_ms']:6.1f}  pred {r['pred_ms']:7.2f}  ({r['err_pct']:+.1f}%)")
    for r in out["speed"]:
        print(f"{r['device']:7s} {r['space']:15s} 10k archs: {r['predict_10k_s'] * 1e3:6.1f} ms batched vs "
              f"{r['predict_net_10k_s_est']:.2f} s per-net ({r['speedup']:.0f}x), table build {r['table_build_s'] * 1e3:.0f} ms, "
              f"max diff {r['max_abs_diff']:.1e}")
    if not args.skip_measure:
        space = get_space(args.space)
        t0 = time.perf_counter()
        # fit and fresh subnets are timed in one interleaved session (a shared machine drifts between sessions);
        # the fresh ones are never used for fitting
        prof = fit_measured_profile(space, runtime=args.runtime, threads=args.threads, n_fit=args.fit,
                                    n_test=args.test, repeats=args.repeats, rounds=args.rounds, seed=1,
                                    instances=args.instances)
        q = prof.error["test"]
        out["measured"] = {"space": args.space, "runtime": args.runtime, "threads": args.threads, "n_fit": args.fit,
                           "rounds": args.rounds, "repeats": args.repeats, "instances": args.instances,
                           "profile_error": prof.error, "fresh": q, "seconds": time.perf_counter() - t0,
                           "coef": prof.regression.to_dict(), "measured_ms": prof.extra["measured_ms"],
                           "archs": prof.extra["archs"]}
        print(f"measured {args.space} ({args.runtime}, {args.threads} thread): {args.test} fresh subnets: "
              f"{100 * q['within_10pct']:.0f}% within 10%, tau {q['kendall_tau']:.3f}, MAPE {q['mape_pct']:.1f}% "
              f"(fit on {args.fit}; {out['measured']['seconds']:.0f} s)")
        if args.repeatability:
            from elastic.arch import Arch

            fresh = [space.net_spec(Arch.from_dict(a)) for a in prof.extra["archs"][args.fit:]]
            first = np.asarray(prof.extra["measured_ms"][args.fit:])
            second = measure_nets(fresh, runtime=args.runtime, threads=args.threads, repeats=args.repeats,
                                  rounds=args.rounds, instances=args.instances)
            r = latency_quality(first, second)
            pred = np.stack([net_features(n) for n in fresh]) @ prof.regression.coef
            pr = latency_quality(second, pred)
            out["measured"]["repeatability"] = {"second_session_vs_first": r, "predictor_vs_second": pr,
                                                "second_ms": second.tolist()}
            print(f"  the same {args.test} subnets timed again: {100 * r['within_10pct']:.0f}% within 10% of the first "
                  f"session, tau {r['kendall_tau']:.3f}, MAPE {r['mape_pct']:.1f}% (the noise ceiling); the predictor against the second session: "
                  f"{100 * pr['within_10pct']:.0f}% within 10%, tau {pr['kendall_tau']:.3f}")
    name = "latency_quality.json" if args.space == "mbv3-w1.0" else f"latency_quality_{args.space}.json"
    write_json_atomic(ROOT / "bench" / "results" / name, out)


if __name__ == "__main__":
    main()
