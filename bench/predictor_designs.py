"""Two ways to label the accuracy predictor's subnets, side by side on one supernet: time spent and held-out tau.

- `full`: the fixed-step main job's labels (1000 calibration images, every one of the validation images);
- `informative`: the budgeted main job's (500 calibration images; the first --pilot subnets on every validation
  image, the others only on the images those disagreed on: `ofa.informative_images`).

The same first --n subnets of the plan are measured both ways (each design its own CSV under
`<run>/predictors/designs/`, resumable), then `fit_accuracy_predictor` fits each as the main job does. Reported:
seconds of measuring, held-out and CV Kendall tau, and the tau between the two designs' labels. Validation
split only.

  python3 bench/predictor_designs.py --run checkpoints/budget-fqs --n 200 --json bench/results/predictor_designs_fqs.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--pilot", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    from ofa.accuracy_data import collect, plan_subnets
    from ofa.informative_images import informative_evaluator
    from ofa.run_dir import RunDir
    from ofa.training.evaluate import evaluate_arch
    from predictors.accuracy import fit_accuracy_predictor
    from predictors.metrics import kendall_tau

    torch.set_num_threads(args.threads)
    rd = RunDir(args.run)
    space, out = rd.load_space(), rd.path / "predictors" / "designs"
    out.mkdir(parents=True, exist_ok=True)
    state: dict = {}

    def full(arch):
        if "net" not in state:
            state["net"], state["data"], state["calib"] = rd.load_supernet(), rd.load_data(), {}
        return evaluate_arch(state["net"], arch, state["data"], "val", 1000, "cpu", None, state["calib"])

    informative, images = informative_evaluator(rd.path, plan_subnets(space, args.pilot, args.seed), calib_images=500,
                                                limit=None)
    report: dict = {"run": str(rd.path), "n": args.n, "pilot": args.pilot, "threads": args.threads, "designs": {}}
    labels = {}
    for name, evaluate in (("full", full), ("informative", informative)):
        t = time.perf_counter()
        data = collect(space, out / f"{name}.csv", args.n, evaluate, settings={"design": name}, seed=args.seed,
                       resume=True)
        seconds = time.perf_counter() - t
        fit = fit_accuracy_predictor(space, data.archs, data.accuracies, seed=args.seed)
        labels[name] = data.accuracies
        rows_s = sum(float(r["seconds"]) for r in data.rows)
        report["designs"][name] = {"collect_s_this_call": seconds, "measure_s": rows_s, "chosen": fit.report["chosen"],
                                   "cv_tau": fit.report["cv"][fit.report["chosen"]]["kendall_tau"],
                                   "holdout": fit.report["holdout"]}
        print(name, json.dumps(report["designs"][name]), flush=True)
    found = images()
    report["informative_fraction"] = found.fraction if found else None
    report["tau_between_designs"] = kendall_tau(labels["full"], labels["informative"])
    print(json.dumps({k: v for k, v in report.items() if k != "designs"}))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
