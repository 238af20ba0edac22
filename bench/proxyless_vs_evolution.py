"""ProxylessNAS backend against the evolution backend on a trained run, same budgets, real test accuracy.

For each latency budget both backends search the run's supernet for the device:
- evolution: `specialize.evolution.search` with the run's accuracy predictor and the device's latency predictor;
- proxyless: `specialize.proxyless.search_over_supernet` (architecture parameters trained on the run's val split
  with binarized paths and the expected-latency loss; weights frozen).
Each found arch is then extracted from the supernet, its BN recalibrated on training images, and evaluated on the
test split (`ofa.training.evaluate.evaluate_arch`), so the two are compared on real accuracy, side by side.
Target (issue): proxyless within 0.5 percentage points of evolution at the same budget, and within the budget.

Usage: python bench/proxyless_vs_evolution.py --run checkpoints/<run> --device pixel1 --latency 6ms,8ms
       [--steps 300] [--calib-images 2000] [--test-limit N]     (writes bench/results/proxyless_vs_evolution_<run name>_<device>.json)
Needs a trained run with an accuracy predictor (`ofa train`, `ofa fit-predictor`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--device", default="pixel1")
    ap.add_argument("--latency", required=True, help="budgets, e.g. 6ms,8ms")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--form", default="mul")
    ap.add_argument("--finetune", action="store_true", help="fine-tune weights between architecture steps")
    ap.add_argument("--two-sided", action="store_true", help="latency term below the target too")
    ap.add_argument("--calib-images", type=int, default=2000)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ofa.run_dir import RunDir
    from ofa.training.evaluate import evaluate_arch
    from predictors.accuracy import AccuracyPredictor
    from predictors.latency import get_latency_predictor
    from specialize.budget import Constraints, parse_latencies
    from specialize.evolution import search as evolution_search
    from specialize.proxyless import search_over_supernet

    rd = RunDir(args.run)
    space = rd.load_space()
    supernet = rd.load_supernet()
    bundle = rd.load_data()
    acc_pred = AccuracyPredictor.load(rd.path / "predictors")
    lat_pred = get_latency_predictor(args.device, space)
    budgets = parse_latencies(args.latency)
    rows, calib = [], {}
    for b in budgets:
        t0 = time.time()
        evo = evolution_search(space, acc_pred, lat_pred, [Constraints(latency_ms=b)], seed=args.seed).best
        t_evo = time.time() - t0
        t0 = time.time()
        px_arch, info = search_over_supernet(supernet, lat_pred, b, bundle, steps=args.steps, batch_size=args.batch_size,
                                             form=args.form, finetune_weights=args.finetune, seed=args.seed,
                                             one_sided=not args.two_sided)
        t_px = time.time() - t0
        row = {"budget_ms": b}
        for name, arch, secs in (("evolution", evo.arch, t_evo), ("proxyless", px_arch, t_px)):
            acc = evaluate_arch(supernet, arch, bundle, "test", args.calib_images, limit=args.test_limit,
                                _calib_cache=calib)
            lat = float(lat_pred.predict([arch])[0])
            row[name] = {"arch": arch.to_dict(), "summary": arch.summary(), "test_accuracy": acc,
                         "predicted_accuracy": float(acc_pred.predict([arch])[0]), "latency_ms": lat,
                         "meets_budget": lat <= b + 1e-9, "search_seconds": round(secs, 2)}
        row["proxyless"].update(feasible_by=info["feasible_by"], note=info["note"],
                                expected_latency=info["expected_latency"])
        row["gap_pp"] = round(100 * (row["evolution"]["test_accuracy"] - row["proxyless"]["test_accuracy"]), 3)
        row["within_0.5pp"] = row["gap_pp"] <= 0.5
        rows.append(row)
        e, p = row["evolution"], row["proxyless"]
        print(f"{b:g} ms  evolution {e['test_accuracy'] * 100:6.2f}% @ {e['latency_ms']:.3f} ms ({e['search_seconds']:.1f}s) | "
              f"proxyless {p['test_accuracy'] * 100:6.2f}% @ {p['latency_ms']:.3f} ms ({p['search_seconds']:.1f}s, "
              f"{p['feasible_by']}) | gap {row['gap_pp']:+.2f} pp {'OK' if row['within_0.5pp'] and p['meets_budget'] else 'MISS'}")
    out = Path(__file__).resolve().parent / "results" / f"proxyless_vs_evolution_{rd.path.name}_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"run": str(rd.path), "space": space.name, "device": args.device, "steps": args.steps,
                               "rows": rows}, indent=2) + "\n")
    tmp.replace(out)
    print(f"written {out}")


if __name__ == "__main__":
    main()
