"""Re-derive the quick schedule's choices on VALIDATION figures already stored (no training).

The quick schedule's defaults (ofa/training/schedule.py) were chosen from test-split accuracies. Every
`bench/results/train_quality_<run>.json` also keeps the run's stage-end evaluation on its validation split (history
records of kind `stage_eval`: the largest, the smallest and the same seeded random subnets of every run of a
space), so each paired comparison can be read again on validation:

    python3 bench/schedule_choices_on_validation.py      # -> bench/results/schedule_choices_validation.json

A pair's validation figures are the last stage's `stage_eval` (2000 validation images in the quick schedule, 5000
in `--val-from test` runs with that eval size); its test figures are the largest / smallest and the mean of the ten
random subnets (seed 123) of `bench/train_quality.py`, beside them for comparison. On 2000 images one accuracy has a
standard error of about 0.7 points, so single-subnet differences below ~1 point are noise; what counts is whether
the signs agree across subnets and pairs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ofa import atomic  # noqa: E402

RESULTS = ROOT / "bench" / "results"

# (default, the run without it, the run with it, what the pair differs in)
PAIRS = [
    ("phase split: 472 of 700 elastic steps in expand/2", "qs-eq", "qs-re",
     "same full stage; 140 steps per phase vs the split (Xeon)"),
    ("phase split (half-width space): 626 of 925 in expand/2", "qs7", "w05-alloc",
     "different full stages and machines; 185 per phase vs the split"),
    ("elastic lr scale 3x", "quickstart_random10", "qss3", "same full stage; 1x vs 3x, 140 per phase, 2 subnets"),
    ("elastic lr scale 3x", "qs5", "qs10", "same full stage; 1x vs 3x, 185 per phase, 3 subnets, --val-from test"),
    ("elastic lr scale 3x", "qs6", "qs7", "same full stage; w0.5, 1x vs 3x, 185 per phase, 3 subnets"),
    ("distillation teacher: full (not in-place)", "qs8", "qs7", "same full stage; in-place vs full teacher, 3x"),
    ("elastic lr scale 3x, not 6x (in-place teacher)", "qs9", "qs8", "same full stage; 6x vs 3x"),
    ("n-subnets (4 against 3 a step; the default is 2)", "w05-alloc", "w05-c", "same full stage; 3 vs 4 subnets"),
]


def read(run: str) -> dict:
    return json.loads((RESULTS / f"train_quality_{run}.json").read_text())


def val_figures(result: dict) -> dict[str, float]:
    evals = [h for h in result["history"] if h.get("kind") == "stage_eval" and h.get("split") == "val"]
    last = evals[-1]
    return {k: float(v) for k, v in last.items() if k in ("largest", "smallest") or k.startswith("random")}


def val_images(figures: dict[str, float]) -> str:
    """The evaluation size the accuracies are consistent with (every accuracy a multiple of 1/n)."""
    for n in (2000, 5000):
        if all(abs(v * n - round(v * n)) < 1e-6 for v in figures.values()):
            return str(n)
    return "unknown"


def test_figures(result: dict) -> dict[str, float]:
    acc = result["test_acc"]
    rnd = [v for k, v in acc.items() if k.startswith("random")]
    return {"largest": acc["largest"], "smallest": acc["smallest"], "random_mean": sum(rnd) / len(rnd)}


def main() -> None:
    rows = []
    for choice, without, with_, what in PAIRS:
        a, b = read(without), read(with_)
        va, vb = val_figures(a), val_figures(b)
        ta, tb = test_figures(a), test_figures(b)
        common = [k for k in va if k in vb]
        val_diff = {k: 100 * (vb[k] - va[k]) for k in common}
        test_diff = {k: 100 * (tb[k] - ta[k]) for k in ta}
        higher = sum(d > 0 for d in val_diff.values())
        rows.append({"choice": choice, "without": without, "with": with_, "pair": what,
                     "val_images": [val_images(va), val_images(vb)], "val_without": va, "val_with": vb,
                     "val_difference_points": val_diff,
                     "val_higher": f"{higher} of {len(common)}",
                     "val_mean_difference_points": sum(val_diff.values()) / len(val_diff),
                     "test_difference_points": test_diff})
    print(f"{'choice':52s} {'pair':22s} | validation: largest smallest random0 random1 (mean) | test: L S random")
    for r in rows:
        v = r["val_difference_points"]
        t = r["test_difference_points"]
        rnd = [f"{v[k]:+5.2f}" for k in sorted(v) if k.startswith("random")]
        print(f"{r['choice'][:52]:52s} {r['without'] + ' -> ' + r['with']:22s} | {v['largest']:+5.2f} "
              f"{v['smallest']:+5.2f} {' '.join(rnd)} ({r['val_mean_difference_points']:+5.2f}; {r['val_higher']} "
              f"higher) | {t['largest']:+5.2f} {t['smallest']:+5.2f} {t['random_mean']:+5.2f}")
    dest = RESULTS / "schedule_choices_validation.json"
    atomic.write_json(dest, {"source": "stage-end validation evaluations in bench/results/train_quality_*.json",
                             "pairs": rows})
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
