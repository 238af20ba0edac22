"""What bounds the main job's held-out Kendall tau: the held-out labels' noise, the labels' cost, or the subnets'
number? Three measurements on a finished main job's run (its validation labels only; the test split is not read).

  heldout  the job's held-out subnets (its seed-0 split) re-labelled on every validation image with BN recalibrated
           on the job's own 500-image draw, on another 500-image draw and on 4000 images; the GP fit on the other
           rows (the job's model) ranked against each, and against the job's draw on 25 / 50 / 75% of the images.
  skip     every subnet's outcome on the job's informative images (its calibration), then labels that also skip the
           images at most t of the 30 pilot subnets dissent on (estimated by the pilot's mean), at equal label cost:
           a label that costs 0.8x buys 1/0.8 the subnets. Held-out tau over --splits random 80/20 splits.
  curve    the job's labels: the first N subnets of its plan, held-out share h, over --splits random splits.

  python3 bench/predictor_label_limits.py heldout --run checkpoints/quickstart     # 16 minutes at 1 thread
  python3 bench/predictor_label_limits.py skip --run checkpoints/quickstart        # 12 minutes
  python3 bench/predictor_label_limits.py curve --run checkpoints/quickstart       # 5 minutes

Results: bench/results/predictor_label_limits_<mode>_<tag>.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.result_files import write_run_result  # noqa: E402


def _job(run: str):
    """The run's space, accuracy dataset (archs, labels in points) and GP features."""
    import numpy as np

    from ofa.accuracy_data import dataset_paths, read_dataset
    from ofa.run_dir import RunDir
    from predictors.accuracy_models import DEFAULT_HP, kind_features
    from predictors.encoding import OneHotEncoding

    rd = RunDir(run)
    space = rd.load_space()
    ds = read_dataset(dataset_paths(rd.path)[0], space)
    archs = list(ds.archs)
    x = kind_features("gp", space, archs, OneHotEncoding.for_space(space), DEFAULT_HP["gp"])
    return rd, space, archs, 100 * np.asarray(ds.accuracies, dtype=float), x


def _gp_predict(x, y, train, hold):
    """The main job's GP fit on the `train` rows, its predictions for the `hold` rows."""
    from predictors.accuracy_models import DEFAULT_HP, make_sklearn_model

    return make_sklearn_model("gp", DEFAULT_HP["gp"], x.shape[1]).fit(x[train], y[train]).predict(x[hold])


def _gp_tau(x, y, train, hold) -> float:
    """Held-out tau of the main job's GP fit on the `train` rows of `y`, against `y` on the `hold` rows."""
    from predictors.metrics import kendall_tau

    return kendall_tau(y[hold], _gp_predict(x, y, train, hold))


def _outcomes(rd, archs, draws: dict[str, tuple[int, int]], images=None, progress: str = "") -> dict:
    """Per draw (seed, calibration images): subnets x validation images (all, or `images`), 1 where correct."""
    import numpy as np

    from ofa.data import subset
    from ofa.training.evaluate import calibration_batches, correct_per_image, recalibrated

    data = rd.load_data(uncapped=True)
    supernet, space = rd.load_supernet(), rd.load_space()
    evald = data if images is None else dataclasses.replace(data, val=subset(data.split("val"), images))
    batches = {k: {r: calibration_batches(data, r, n, device="cpu", seed=s) for r in space.resolutions}
               for k, (s, n) in draws.items()}
    out, t0 = {k: [] for k in draws}, time.time()
    for i, arch in enumerate(archs):
        for k, (_, n) in draws.items():
            net = recalibrated(supernet, arch, data, n, "cpu", batches[k])
            out[k].append(correct_per_image(net, evald, "val", arch.r, device="cpu").numpy())
        print(f"\r{progress}{i + 1}/{len(archs)} subnets ({time.time() - t0:.0f} s)", end="", flush=True)
    print()
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def heldout(args) -> dict:
    import numpy as np

    from predictors.metrics import kendall_tau

    from predictors.accuracy import holdout_split

    rd, _, archs, y, x = _job(args.run)
    n = len(y)
    hold, train = holdout_split(n)                          # the split the job reported on (seed 0, 20%)
    n_hold = len(hold)
    pred = _gp_predict(x, y, train, hold)
    draws = {"job_500": (0, 500), "other_500": (1, 500), "large_4000": (2, 4000)}
    c = _outcomes(rd, [archs[i] for i in hold], draws)
    acc = {k: 100 * v.mean(1) for k, v in c.items()}
    rng = np.random.default_rng(5)
    sub = {}
    for frac in (0.25, 0.5, 0.75):
        taus = []
        for _ in range(30):
            idx = rng.permutation(c["job_500"].shape[1])[: int(frac * c["job_500"].shape[1])]
            taus.append(kendall_tau(c["job_500"][:, idx].mean(1), pred))
        sub[str(frac)] = float(np.mean(taus))
    halves = []
    for _ in range(20):
        p = rng.permutation(c["large_4000"].shape[1])
        a, b = (100 * c["large_4000"][:, h].mean(1) for h in (p[: len(p) // 2], p[len(p) // 2:]))
        halves.append(((a - a.mean()) - (b - b.mean())).std() / 2)   # per-label image noise at the full count
    return {"n_rows": n, "n_holdout": int(n_hold), "val_images": int(c["job_500"].shape[1]),
            "tau_vs_job_labels": kendall_tau(y[hold], pred),
            "tau_vs_all_images": {k: kendall_tau(v, pred) for k, v in acc.items()},
            "tau_job_draw_image_share": sub,
            "tau_between_draws": {"job_500~other_500": kendall_tau(acc["job_500"], acc["other_500"]),
                                  "job_500~large_4000": kendall_tau(acc["job_500"], acc["large_4000"])},
            "bn_noise_sd_500_pts": float((acc["job_500"] - acc["other_500"]).std() / np.sqrt(2)),
            "image_noise_sd_pts": float(np.mean(halves)), "spread_sd_pts": float(acc["large_4000"].std())}


def skip(args) -> dict:
    import numpy as np

    from ofa.informative_images import FILE_NAME, InformativeImages
    from predictors.metrics import kendall_tau

    rd, _, archs, y, x = _job(args.run)
    inf = InformativeImages.from_dict(json.loads((rd.path / "predictors" / FILE_NAME).read_text()))
    pilot = len(inf.pilot_accuracy)
    c = _outcomes(rd, archs, {"job": (0, args.calib)}, images=inf.indices)["job"]
    full = 100 * (inf.always_right + c.sum(1)) / inf.n_images
    drift = float(np.abs(full - y).max())    # 0 at the job's thread count; another one may flip an image or two
    print(f"re-measured labels vs the job's: max difference {drift:.3f} points")
    right = c[:pilot].sum(0)
    dissent = np.minimum(right, pilot - right)
    base = args.overhead + args.calib + c.shape[1]           # a label's cost in images evaluated
    rows = []
    for t in range(0, args.max_dissent + 1):
        keep = dissent > t
        lab = 100 * (inf.always_right + c[:, keep].sum(1) + (right[~keep] / pilot).sum()) / inf.n_images
        lab[:pilot] = full[:pilot]                           # the pilot is measured on every image
        cost = (args.overhead + args.calib + keep.sum()) / base
        for n0 in args.budgets:
            n = min(len(lab), int(n0 / cost))
            own, ref = [], []
            for s in range(args.splits):
                perm = np.random.default_rng(args.seed + s).permutation(n)
                nh = int(round(0.2 * n))
                pred = _gp_predict(x, lab, perm[nh:], perm[:nh])   # one fit, ranked against both label sets
                own.append(kendall_tau(lab[perm[:nh]], pred))
                ref.append(kendall_tau(full[perm[:nh]], pred))
            rows.append({"max_dissent_skipped": t, "images": int(keep.sum()), "cost": float(cost), "budget": n0,
                         "subnets": n, "tau_vs_own_labels": float(np.mean(own)),
                         "tau_vs_informative_labels": float(np.mean(ref))})
            print(json.dumps(rows[-1]), flush=True)
    return {"n_rows": len(y), "informative_images": int(c.shape[1]), "pilot": pilot, "max_label_drift_pts": drift,
            "dissent_counts": np.bincount(dissent.astype(int)).tolist(), "overhead_images": args.overhead,
            "splits": args.splits, "seed": args.seed, "rows": rows}


def curve(args) -> dict:
    import numpy as np

    _, _, _, y, x = _job(args.run)
    rows = []
    for n in [int(v) for v in args.sizes.split(",")] + [len(y)]:
        n = min(n, len(y))
        for share in (0.2, 0.3, 0.4):
            taus = []
            for s in range(args.splits):
                perm = np.random.default_rng(args.seed + s).permutation(n)
                nh = int(round(share * n))
                taus.append(_gp_tau(x, y, perm[nh:], perm[:nh]))
            rows.append({"subnets": n, "holdout_share": share, "tau_mean": float(np.mean(taus)),
                         "tau_sd": float(np.std(taus)), "tau_min": float(np.min(taus))})
            print(json.dumps(rows[-1]), flush=True)
    return {"n_rows": len(y), "splits": args.splits, "seed": args.seed, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("heldout", "skip", "curve"))
    ap.add_argument("--run", required=True)
    ap.add_argument("--tag", default="", help="results file suffix (default: the run directory's name)")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--seed", type=int, default=400, help="split seeds seed, seed+1, ...")
    ap.add_argument("--calib", type=int, default=500, help="the job's calibration images (skip)")
    ap.add_argument("--overhead", type=int, default=310,
                    help="a label's fixed cost (extraction) in evaluated images (skip; 15%% of the job's label)")
    ap.add_argument("--max-dissent", type=int, default=3, help="skip")
    ap.add_argument("--budgets", type=lambda s: [int(v) for v in s.split(",")], default=[200, 280],
                    help="subnets the job's labels would buy (skip)")
    ap.add_argument("--sizes", default="150,200,250,300", help="subnets (curve; all of them as well)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")   # the GP's bound warnings, one per fit
    t0 = time.time()
    res = {"mode": args.mode, "run": args.run, **{"heldout": heldout, "skip": skip, "curve": curve}[args.mode](args),
           "seconds": time.time() - t0, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))
    out = write_run_result(f"predictor_label_limits_{args.mode}", args.run, args.tag, res)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
