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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("ordinal", "ordinal+macs", "ordinal+macs+params", "matern", "linear")


def model(variant: str, d: int):
    """The main job's GP (`make_sklearn_model`), its RBF swapped for a Matern or a linear term added."""
    import numpy as np
    from sklearn.base import clone
    from sklearn.gaussian_process.kernels import ConstantKernel, DotProduct, Matern

    from predictors.accuracy_models import DEFAULT_HP, make_sklearn_model

    pipe = make_sklearn_model("gp", DEFAULT_HP["gp"], d)
    gp = pipe[-1]
    shape_term, white = gp.kernel.k1, gp.kernel.k2          # ConstantKernel * RBF, WhiteKernel
    if variant == "matern":
        shape_term = shape_term.k1 * Matern(np.full(d, 3.0), (1e-2, 1e3), nu=2.5)
    if variant == "linear":
        shape_term = shape_term + ConstantKernel(0.1, (1e-4, 1e2)) * DotProduct(1.0, "fixed")
    gp.set_params(kernel=clone(shape_term + white))
    return pipe


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
    from predictors.accuracy_models import DEFAULT_HP, kind_features
    from predictors.encoding import OneHotEncoding, arch_macs_params
    from predictors.metrics import kendall_tau

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")   # the GP's bound warnings, one per fit
    rd = RunDir(args.run)
    space = rd.load_space()
    ds = read_dataset(dataset_paths(rd.path)[0], space)
    archs, y = list(ds.archs), np.asarray(ds.accuracies, dtype=float)
    enc = OneHotEncoding.for_space(space)
    base, with_macs = (kind_features("gp", space, archs, enc, {**DEFAULT_HP["gp"], "features": f})
                       for f in ("ordinal", "ordinal+macs"))
    _, params = arch_macs_params(space, archs)
    feats = {"ordinal": base, "linear": base, "ordinal+macs": with_macs, "matern": with_macs,
             "ordinal+macs+params": np.c_[with_macs, np.log(params)]}
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
