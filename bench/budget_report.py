"""Budgeted main jobs side by side: the plan, the real time of each part, the machine's speed, what it bought.

For each run directory of a finished `ofa quickstart --time-budget ...` (its `time_budget.json`, `summary.json`
and `history.jsonl`): the budget, the planned and the real total, each part planned vs real, the full stage's
measured img/s (the probe) against what the training's epochs ran at, and the accuracy bought (largest and
smallest subnet on the validation and the test split, the accuracy predictor's held-out Kendall tau).

  python3 bench/budget_report.py checkpoints/budget-loaded1 ... --label loaded ... --json bench/results/time_budget_runs.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _part_times(summary: dict) -> dict[str, float]:
    t = summary["timings"]
    return {"train": t["train_s"], "predictor": t["predictor_s"], "profile": t["profile_s"],
            "specialize": t["specialize_s"], "total": t["total_s"]}


def run_row(path: Path, label: str | None = None) -> dict:
    plan = json.loads((path / "time_budget.json").read_text())
    summary = json.loads((path / "summary.json").read_text())
    hist = [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines() if line.strip()]
    est = plan["estimate_s"]
    planned = {"train": est["startup"] + est["measuring"] + est["train"] + est.get("stage_evals", 0.0),
               "predictor": est.get("predictor", 0.0), "profile": est.get("profile", 0.0),
               "specialize": est.get("specialize", 0.0), "total": est["total"]}
    full = [h for h in hist if h.get("kind") == "epoch" and h.get("stage") == "full"]
    elastic = [h for h in hist if h.get("kind") == "epoch" and h.get("stage") != "full"]
    rates = plan["rates"]
    measured_el = {k: rates["batch"] / v for k, v in rates["elastic_step_s"].items()}
    real_el = {}
    for h in elastic:
        name = h["stage"] if h["stage"] == "kernel" else f"{h['stage']}/{h['phase']}"
        real_el[name] = h["images_per_s"]
    acc = summary.get("accuracy", {})
    hold = summary["accuracy_predictor"].get("holdout", {})
    tb = summary.get("time_budget", {})
    return {
        "run": str(path), "label": label, "budget_s": plan["budget_s"], "floor": plan["floor"], "scale": plan["scale"],
        "used_s": tb.get("used_s"), "used_fraction": tb.get("used_s", 0) / plan["budget_s"],
        "planned_s": planned, "real_s": _part_times(summary),
        "full_img_s": {"measured": rates["batch"] / rates["full_step_s"],
                       "ran": sum(h["images_per_s"] for h in full) / max(len(full), 1)},
        "elastic_img_s": {"measured": measured_el, "ran": real_el},
        "eval_img_s_measured": 1 / rates["eval_image_s"],
        "phase_steps": plan["phase_steps"], "predictor": plan.get("predictor"), "profile": plan.get("profile"),
        "accuracy": acc, "predictor_holdout": hold,
        "predictor_cv_tau": summary["accuracy_predictor"]["cv"][summary["accuracy_predictor"]["chosen"]]["kendall_tau"],
        "specialized": [{k: r.get(k) for k in ("device", "budget", "predicted_accuracy", "test_accuracy", "macs")}
                        for r in summary.get("results", [])],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--label", action="append", default=[], help="One label per run, in order.")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = [run_row(p, args.label[i] if i < len(args.label) else None) for i, p in enumerate(args.runs)]
    for r in rows:
        p, q = r["planned_s"], r["real_s"]
        print(f"{r['label'] or r['run']}: budget {r['budget_s']:.0f} s, used {r['used_s']:.0f} s "
              f"({100 * r['used_fraction']:.0f}%), full stage measured {r['full_img_s']['measured']:.0f} img/s, "
              f"ran {r['full_img_s']['ran']:.0f}; scale {r['scale']:.3f}{' (floor)' if r['floor'] else ''}")
        print("  part        planned    real")
        for k in ("train", "predictor", "profile", "specialize", "total"):
            print(f"  {k:<10} {p[k]:8.0f} {q[k]:7.0f}")
        a = r["accuracy"]
        if a:
            print("  largest val/test {:.2%} / {:.2%}, smallest {:.2%} / {:.2%}".format(
                a["largest"]["val"], a["largest"]["test"], a["smallest"]["val"], a["smallest"]["test"]))
        print(f"  predictor: {r['predictor']['subnets']} subnets, CV tau {r['predictor_cv_tau']:.3f}, held-out tau "
              f"{r['predictor_holdout'].get('kendall_tau', float('nan')):.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
