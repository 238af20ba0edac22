"""How much of the main job's weak predictor is label noise? Per-image outcomes of many subnets, then designs offline.

Measures the plan's first --n subnets of a run (`ofa.accuracy_data.plan_subnets`, the main job's draw) image by
image on the *whole* validation split carved for the run (the quick schedule caps `val` at its `eval_size`; here the
cap is lifted, the images the cap kept come first), BN recalibrated on --calib training images. Stores the
outcomes (`<run>/predictors/label_noise/outcomes.npz`, resumable), then for each labelling design (the first V
validation images, V in --val-sizes) and each number of subnets (--subnets):
- split-half reliability: Kendall tau between accuracies on two disjoint halves of the V images (Spearman-Brown
  does not apply to tau; this is the ceiling of a held-out tau measured on half-size labels);
- the main job's fit (`fit_accuracy_predictor`, 20% held out): held-out tau against its own labels, and against the
  labels on every image (the least noisy truth we have).
Validation split only; nothing here reads the test split.

  python3 bench/predictor_label_noise.py --run checkpoints/quickstart --n 240 --json bench/results/predictor_label_noise.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def measure(run: str, n: int, calib: int, seed: int, threads: int):
    import numpy as np
    import torch

    from ofa.accuracy_data import plan_subnets
    from ofa.data import data_from_config
    from ofa.run_dir import RunDir
    from ofa.training.evaluate import correct_per_image, recalibrated

    torch.set_num_threads(threads)
    rd = RunDir(run)
    space = rd.load_space()
    cfg = dict(rd.data_config())
    cfg["eval_size"] = None                       # the whole validation split (its first images are the capped ones)
    data = data_from_config(cfg)
    capped = rd.load_data()
    if not torch.equal(data.val.labels[: len(capped.val)], capped.val.labels):
        raise SystemExit("the uncapped validation split does not start with the run's capped one")
    archs = plan_subnets(space, n, seed=seed)
    out = rd.path / "predictors" / "label_noise" / f"outcomes_calib{calib}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = list(np.load(out)["correct"])[:n] if out.exists() else []
    if rows and len(rows[0]) != len(data.val):
        raise SystemExit(f"{out} holds outcomes on {len(rows[0])} images, not {len(data.val)}: delete it to measure again")
    net, cache = rd.load_supernet(), {}
    for i in range(len(rows), n):
        sub = recalibrated(net, archs[i], data, calib, "cpu", cache)
        rows.append(correct_per_image(sub, data, "val", archs[i].r).numpy().astype(bool))
        if (i + 1) % 20 == 0 or i + 1 == n:
            np.savez(out, correct=np.stack(rows))
            print(f"measured {i + 1}/{n} subnets on {len(data.val)} validation images", flush=True)
    return space, archs, np.stack(rows), len(capped.val)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--calib", type=int, default=500)
    ap.add_argument("--val-sizes", default="1000,2000,5000")
    ap.add_argument("--subnets", default="100,200")
    ap.add_argument("--repeats", type=int, default=5, help="random subsets of subnets per size (seeds 0..)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()

    import numpy as np

    from predictors.accuracy import fit_accuracy_predictor
    from predictors.metrics import kendall_tau

    space, archs, correct, capped = measure(args.run, args.n, args.calib, args.seed, args.threads)
    n_sub, n_img = correct.shape
    truth = correct.mean(1)
    print(f"{n_sub} subnets x {n_img} validation images (the run's cap: {capped}); accuracy spread "
          f"sd {100 * truth.std():.2f} pts, range {100 * truth.min():.2f}-{100 * truth.max():.2f}")
    results: dict = {"run": args.run, "n_subnets": n_sub, "n_images": n_img, "capped_val": capped,
                     "calib_images": args.calib, "seed": args.seed, "acc_sd_pts": float(100 * truth.std()),
                     "designs": []}
    for v in [int(s) for s in args.val_sizes.split(",") if int(s) <= n_img]:
        rng = np.random.default_rng(0)
        halves = []
        for rep in range(args.repeats):
            idx = rng.permutation(v)
            a, b = correct[:, idx[: v // 2]].mean(1), correct[:, idx[v // 2:]].mean(1)
            halves.append(kendall_tau(a, b))
        labels = correct[:, :v].mean(1)
        row = {"val_images": v, "split_half_tau": float(np.mean(halves)),
               "tau_labels_vs_all_images": kendall_tau(truth, labels), "fits": []}
        for m in [int(s) for s in args.subnets.split(",") if int(s) <= n_sub]:
            own, true_ = [], []
            for rep in range(args.repeats):
                pick = np.sort(np.random.default_rng(100 + rep).choice(n_sub, m, replace=False))
                pred = fit_accuracy_predictor(space, [archs[i] for i in pick], labels[pick], seed=rep)
                h = pred.report["holdout"]["kendall_tau"]
                rest = np.setdiff1d(np.arange(n_sub), pick)
                own.append(h)
                if len(rest) >= 10:
                    p = pred.predict([archs[i] for i in rest])
                    true_.append(kendall_tau(truth[rest], p))
            row["fits"].append({"subnets": m, "holdout_tau_mean": float(np.mean(own)), "holdout_tau_min": float(np.min(own)),
                                "unseen_tau_vs_all_images": float(np.mean(true_)) if true_ else None})
            print(f"V={v:5d}  split-half tau {row['split_half_tau']:.3f}  labels vs all {row['tau_labels_vs_all_images']:.3f}"
                  f"  n={m}: held-out tau {np.mean(own):.3f} (min {np.min(own):.3f})"
                  + (f", unseen subnets vs all-image labels {np.mean(true_):.3f}" if true_ else ""), flush=True)
        results["designs"].append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
