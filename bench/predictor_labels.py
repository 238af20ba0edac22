"""How noisy are accuracy-predictor labels, and which labelling design ranks subnets best for its cost?

`collect`: for the first N subnets of the accuracy-data plan (`ofa.accuracy_data.plan_subnets`) of a trained run,
recalibrate BN on training images and keep every validation image's outcome (correct or not, and the
cross-entropy) on the whole validation split, so that any smaller design (fewer validation images, another
label) can be replayed from the same measurements. The first `--extra` subnets are also recalibrated on other
image sets (independent seeds, several sizes) to measure what the calibration contributes.

`analyse`: replays designs (subnets x validation images x calibration images) at equal cost, fits the
predictor as `ofa fit-predictor` does, and reports held-out Kendall tau against the design's own labels (what
the main job's report shows) and against the cleanest labels measured (all validation images).

  python3 bench/predictor_labels.py collect --run checkpoints/budget-qs --n 480 --extra 120 --out /tmp/budget/labels
  python3 bench/predictor_labels.py analyse --run checkpoints/budget-qs --out /tmp/budget/labels \
      --json bench/results/predictor_labels.json
Validation split only: the test split is never read.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CALIB_MAIN = (0, 1000)                          # (seed, images) of every subnet's label
CALIB_EXTRA = ((1, 1000), (2, 250))    # the first --extra subnets also get these (other seeds, sizes)


def _bundle(run):
    from ofa.data import data_from_config
    from ofa.run_dir import RunDir

    cfg = {**RunDir(run).data_config(), "eval_size": None}   # the whole validation split (prefix of the capped one)
    return data_from_config(cfg)


@torch.no_grad()
def _outcomes(net, bundle, r: int) -> tuple[np.ndarray, np.ndarray]:
    net.eval()
    correct, loss = [], []
    for x, y in bundle.loader("val", batch_size=500, resolution=r):
        out = net(x)
        correct.append((out.argmax(1) == y).numpy())
        loss.append(F.cross_entropy(out, y, reduction="none").numpy())
    return np.concatenate(correct), np.concatenate(loss).astype(np.float16)


def collect(args) -> None:
    from elastic.bn_calibration import recalibrate_bn
    from ofa.accuracy_data import plan_subnets
    from ofa.run_dir import RunDir
    from ofa.training.evaluate import calibration_batches

    torch.set_num_threads(args.threads)
    rd = RunDir(args.run)
    space, sup, bundle = rd.load_space(), rd.load_supernet(), _bundle(args.run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    archs = plan_subnets(space, args.n, seed=0)
    cache: dict = {}

    def calib(seed: int, n: int, r: int):
        if (seed, n, r) not in cache:
            cache[(seed, n, r)] = calibration_batches(bundle, r, n, seed=seed)
        return cache[(seed, n, r)]

    t0 = time.time()
    for i, arch in enumerate(archs):
        path = out / f"subnet_{i:04d}.npz"
        if path.exists():
            continue
        designs = [CALIB_MAIN] + (list(CALIB_EXTRA) if i < args.extra else [])
        rec = {"arch": np.array(arch.to_json())}
        for seed, n in designs:
            net = sup.extract(arch)
            recalibrate_bn(net, calib(seed, n, arch.r))
            c, l = _outcomes(net, bundle, arch.r)
            rec[f"correct_s{seed}_n{n}"], rec[f"loss_s{seed}_n{n}"] = np.packbits(c), l
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **rec)
        tmp.replace(path)
        if i % 20 == 0:
            print(f"{i + 1}/{len(archs)} subnets, {time.time() - t0:.0f} s", flush=True)


def _load(out: Path, n_val: int):
    rows = []
    for p in sorted(out.glob("subnet_*.npz")):
        if ".tmp" in p.name:
            continue
        z = np.load(p)
        rec = {"arch": str(z["arch"])}
        for k in z.files:
            if k.startswith("correct_"):
                rec[k] = np.unpackbits(z[k])[:n_val].astype(bool)
            elif k.startswith("loss_"):
                rec[k] = z[k].astype(np.float64)
        rows.append(rec)
    return rows


def analyse(args) -> None:
    from elastic.arch import Arch
    from ofa.run_dir import RunDir
    from predictors.accuracy import fit_accuracy_predictor
    from predictors.metrics import kendall_tau

    space = RunDir(args.run).load_space()
    n_val = len(_bundle(args.run).val)
    rows = _load(Path(args.out), n_val)
    archs = [Arch.from_json(r["arch"]) for r in rows]
    main = "s0_n1000"
    C = np.stack([r[f"correct_{main}"] for r in rows])          # subnets x images
    L = np.stack([r[f"loss_{main}"] for r in rows])
    acc_all = C.mean(1)
    report: dict = {"subnets": len(rows), "val_images": n_val, "spread_pts": float(100 * acc_all.std())}

    # noise: a label on v images vs the same subnets on the other (disjoint) images; calibration re-draws
    half = n_val // 2
    noise = {}
    for v in (500, 1000, 2000, half):
        a, b = C[:, :v].mean(1), C[:, half:half + v].mean(1)
        noise[f"val{v}"] = {"tau_between_disjoint_sets": kendall_tau(a, b),
                            "sd_of_difference_pts": float(100 * np.std(a - b) / np.sqrt(2))}
    extra = [r for r in rows if f"correct_s1_n1000" in r]
    if extra:
        base = np.array([r[f"correct_{main}"].mean() for r in extra])
        for key in ("s1_n1000", "s2_n250"):
            other = np.array([r[f"correct_{key}"].mean() for r in extra])
            noise[f"calib_{key}_vs_{main}"] = {"n": len(extra), "tau": kendall_tau(base, other),
                                                "sd_of_difference_pts": float(100 * np.std(base - other) / np.sqrt(2))}
    report["noise"] = noise

    # designs: the first n subnets of the plan (as the main job measures them), labels on v images of half A of the
    # validation split, the predictor fit and chosen as `fit_accuracy_predictor` does; scored on the subnets after
    # the first --test-from (never fit on) against clean labels on the disjoint half B, and by the report's own
    # held-out tau. "informative": the images of half A on which the first --pilot subnets disagree, the others
    # counted as the pilot found them (a label then costs calib + |informative| images). Models: "+"-joined kinds
    # (chosen by CV, as the product does) or "ens:" + kinds (the mean of their standardized predictions).
    rng = np.random.default_rng(args.seed)
    results = []
    A, B = np.arange(half), np.arange(half, n_val)
    clean = C[:, B].mean(1)
    pilot = C[:args.pilot][:, A]
    agree_right = pilot.all(0)
    informative = A[~agree_right & pilot.any(0)]
    const = int(agree_right.sum())
    full_a = C[:, A].mean(1)
    est_a = (const + C[:, informative].sum(1)) / len(A)
    later = np.arange(args.pilot, len(rows))
    report["informative"] = {"pilot": args.pilot, "images": int(len(informative)), "of": int(len(A)),
                             "always_right": const,
                             "tau_vs_all_of_half_a": kendall_tau(full_a[later], est_a[later]),
                             "mean_error_pts": float(100 * np.mean(est_a[later] - full_a[later])),
                             "sd_error_pts": float(100 * np.std(est_a[later] - full_a[later]))}
    test = np.arange(args.test_from, len(rows))
    from predictors.accuracy import AccuracyPredictor
    for design in args.designs.split(","):
        n, v, label, models = design.split(":", 3) if design.count(":") >= 3 else (*design.split(":"), args.kinds)
        n, v = int(n), int(v)
        ensemble = models.startswith("ens/")
        kinds = models.removeprefix("ens/").split("+")
        for rep in range(args.repeats):
            idx = np.arange(min(n, args.test_from))
            if label == "informative":
                imgs, cost = informative, int(len(informative))
                y_all = (const + C[:, imgs].sum(1)) / len(A)
            else:
                imgs, cost = rng.choice(A, size=min(v, len(A)), replace=False), v
                y_all = C[:, imgs].mean(1) if label == "acc" else -L[:, imgs].mean(1)
            y = y_all[idx]
            t = time.time()
            fit_archs = [archs[i] for i in idx]
            if ensemble:
                preds = []
                for k in kinds:
                    m = AccuracyPredictor.fit(space, fit_archs, y, kind=k)
                    p = m.predict([archs[i] for i in test])
                    preds.append((p - p.mean()) / (p.std() or 1.0))
                pt, chosen, own, cv = np.mean(preds, 0), "ensemble", float("nan"), float("nan")
            else:
                pred = fit_accuracy_predictor(space, fit_archs, y, seed=rep, kinds=kinds)
                pt = pred.predict([archs[i] for i in test])
                chosen, own = pred.report["chosen"], pred.report["holdout"]["kendall_tau"]
                cv = pred.report["cv"][chosen]["kendall_tau"]
            results.append({"n": n, "val_images": cost, "label": label, "models": models, "repeat": rep,
                            "chosen": chosen, "cv_tau": cv, "report_holdout_tau": own,
                            "test_tau_clean": kendall_tau(clean[test], pt),
                            "test_tau_own_labels": kendall_tau(y_all[test], pt), "n_test": int(len(test)),
                            "fit_s": time.time() - t})
            print(json.dumps(results[-1]), flush=True)
    report["designs"] = results
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "designs"}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--run", required=True)
    c.add_argument("--n", type=int, default=480)
    c.add_argument("--extra", type=int, default=120)
    c.add_argument("--out", required=True)
    c.add_argument("--threads", type=int, default=1)
    a = sub.add_parser("analyse")
    a.add_argument("--run", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--designs", default="200:2000:acc,300:1000:acc,200:2000:loss,200:0:informative")
    a.add_argument("--pilot", type=int, default=30)
    a.add_argument("--test-from", type=int, default=200, help="Subnets from this plan index on score the designs.")
    a.add_argument("--kinds", default="mlp+gbr+gp+ridge", help="Models of a design that names none.")
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--json")
    args = ap.parse_args()
    (collect if args.cmd == "collect" else analyse)(args)


if __name__ == "__main__":
    main()
