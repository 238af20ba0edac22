"""The main job's GP on other feature sets or kernels, on a run's own accuracy dataset (validation labels only):
held-out Kendall tau over repeated random 80/20 splits, every variant on the same splits.

Variants: `ordinal` (the ordinal features), `ordinal+macs` (and log MACs: the main job's since 7ed5c3d),
`ordinal+macs+params`, `matern` (ordinal+macs, Matern 5/2 kernel), `linear` (ordinal, plus a linear kernel term).

  python3 bench/predictor_gp_features.py --run checkpoints/quickstart --splits 12 --seed 200
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("ordinal", "ordinal+macs", "ordinal+macs+params", "matern", "linear")


def model(variant: str, d: int):
    import numpy as np
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct, Matern, WhiteKernel
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from predictors.accuracy_models import GP_MAX_EVALS, GP_NOISE_FLOOR, _lbfgs

    shape = Matern(np.full(d, 3.0), (1e-2, 1e3), nu=2.5) if variant == "matern" else RBF(np.full(d, 3.0), (1e-2, 1e3))
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * shape
    if variant == "linear":
        kernel = kernel + ConstantKernel(0.1, (1e-4, 1e2)) * DotProduct(1.0, "fixed")
    kernel = kernel + WhiteKernel(0.1, (GP_NOISE_FLOOR, 1.0))
    gp = GaussianProcessRegressor(kernel, optimizer=partial(_lbfgs, max_evals=GP_MAX_EVALS), normalize_y=True,
                                  random_state=0)
    return make_pipeline(StandardScaler(), gp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--splits", type=int, default=12)
    ap.add_argument("--seed", type=int, default=200, help="split seeds seed, seed+1, ...")
    ap.add_argument("--json")
    args = ap.parse_args()

    import numpy as np
    import torch

    from ofa.accuracy_data import dataset_paths, read_dataset
    from ofa.run_dir import RunDir
    from predictors.encoding import arch_macs_params, ordinal_features
    from predictors.metrics import kendall_tau

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")   # the GP's bound warnings, one per fit
    rd = RunDir(args.run)
    space = rd.load_space()
    ds = read_dataset(dataset_paths(rd.path)[0], space)
    archs, y = list(ds.archs), np.asarray(ds.accuracies, dtype=float)
    macs, params = arch_macs_params(space, archs)
    base = ordinal_features(space, archs)
    feats = {"ordinal": base, "linear": base,
             "ordinal+macs": np.c_[base, np.log(macs)], "matern": np.c_[base, np.log(macs)],
             "ordinal+macs+params": np.c_[base, np.log(macs), np.log(params)]}
    out = {"run": args.run, "subnets": len(y), "splits": args.splits, "seed": args.seed, "tau": {}}
    for v in args.variants.split(","):
        x, taus = feats[v], []
        for s in range(args.splits):
            perm = np.random.default_rng(args.seed + s).permutation(len(y))
            hold = int(round(0.2 * len(y)))
            te, tr = perm[:hold], perm[hold:]
            taus.append(kendall_tau(y[te], model(v, x.shape[1]).fit(x[tr], y[tr]).predict(x[te])))
        out["tau"][v] = taus
        print(f"{v:22s} held-out tau mean {np.mean(taus):.3f} (sd {np.std(taus):.3f})  " + " ".join(f"{t:.3f}" for t in taus),
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
