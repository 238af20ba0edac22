"""Is Fashion-MNIST's test split drawn like its training set? Models that have nothing to do with ours answer it.

    python bench/data_shift.py [--data fashion-mnist] [--seeds 5] [--val-from test]

For each split seed, the validation split `ofa` carves from the training set (`get_data(split_seed=s)`) is held out,
and two scikit-learn classifiers on 60 PCA components (logistic regression, histogram gradient boosting) are fit on
the rest; their accuracy on that validation split is compared with their accuracy on the official test split.
A consistent negative test - val gap means the test split is harder than held-out training images: an accuracy
predictor fit on such a validation split over-predicts test accuracy by about that much, whatever the network
(`ofa train --val-from test` carves the validation split from the test split instead; `--val-from test` here is
the control: the gap should then be noise around zero). Writes bench/results/data_shift_<data>[_val-from-test].json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ofa.data import get_data  # noqa: E402


def _arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return np.stack([x[0].numpy().ravel() for x in xs]), np.array([int(y) for y in ys])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--val-from", default="train", choices=("train", "test"))
    args = ap.parse_args()
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    rows = []
    t0 = time.time()
    for seed in range(args.seeds):
        b = get_data(args.data, split_seed=seed, val_from=args.val_from)
        (xtr, ytr), (xva, yva), (xte, yte) = _arrays(b.train), _arrays(b.val), _arrays(b.test)
        pca = PCA(60, random_state=0).fit(xtr)
        ztr, zva, zte = pca.transform(xtr), pca.transform(xva), pca.transform(xte)
        models = {"logistic_regression": LogisticRegression(max_iter=1000),
                  "hist_gradient_boosting": HistGradientBoostingClassifier(max_iter=100, random_state=0)}
        for name, model in models.items():
            model.fit(ztr, ytr)
            va, te = float(model.score(zva, yva)), float(model.score(zte, yte))
            rows.append({"split_seed": seed, "model": name, "val": va, "test": te, "gap_points": 100 * (te - va)})
            print(f"seed {seed} {name:24s} val {va:.2%} ({len(yva)} images, from {args.val_from})  "
                  f"test {te:.2%} ({len(yte)})  test - val {100 * (te - va):+.2f} points", flush=True)
    gaps = np.array([r["gap_points"] for r in rows])
    summary = {"data": args.data, "seeds": args.seeds, "val_from": args.val_from, "mean_gap_points": float(gaps.mean()),
               "min_gap_points": float(gaps.min()), "max_gap_points": float(gaps.max()),
               "by_model": {m: float(np.mean([r["gap_points"] for r in rows if r["model"] == m]))
                            for m in sorted({r["model"] for r in rows})},
               "rows": rows, "seconds": time.time() - t0}
    tag = "" if args.val_from == "train" else "_val-from-test"
    out = Path(__file__).resolve().parent / "results" / f"data_shift_{args.data}{tag}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"test - val over {len(rows)} fits: mean {gaps.mean():+.2f} points (range {gaps.min():+.2f} .. "
          f"{gaps.max():+.2f}) -> {out}")


if __name__ == "__main__":
    main()
