"""Two supernets on the same subnets: is one run's training recipe better than another's?

    python bench/compare_runs.py --run checkpoints/w05-d --against checkpoints/w05-c --n 300

The subnets are the first `--n` of RUN's accuracy-predictor dataset (`ofa fit-predictor --run RUN` measured them
on the validation split); the AGAINST supernet is evaluated on the same archs the same way (BN recalibrated on
`--calib-images` training images, validation split), so every difference is paired. Then the first twelve of
them (largest, smallest, ten random) are evaluated on the test split with both supernets. Both runs must share
their data and splits; every arch must be in AGAINST's space. Writes bench/results/compare_<run>_vs_<against>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elastic.complexity import macs  # noqa: E402
from ofa import atomic  # noqa: E402
from ofa.accuracy_data import dataset_paths, read_dataset  # noqa: E402
from ofa.run_dir import RunDir  # noqa: E402
from ofa.training.evaluate import evaluate_arch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run whose predictor dataset names the subnets")
    ap.add_argument("--against", required=True, help="run evaluated on the same subnets")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--calib-images", type=int, default=1000, help="as `ofa fit-predictor --calib-images`")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    run, other = RunDir(args.run), RunDir(args.against)
    if run.data_config() != other.data_config():
        raise SystemExit(f"the runs were trained on different data/splits: {run.data_config()} vs {other.data_config()}")
    ds = read_dataset(dataset_paths(run.path)[0])
    if len(ds) < args.n:
        raise SystemExit(f"{run.path} has {len(ds)} measured subnets; run `ofa fit-predictor --samples {args.n}` first")
    archs, acc_run = ds.archs[: args.n], np.array(ds.accuracies[: args.n])
    other_space = other.load_space()
    for a in archs:
        other_space.validate(a)
    data = other.load_data()
    net_other, calib = other.load_supernet(), {}
    acc_other = np.array([evaluate_arch(net_other, a, data, "val", args.calib_images, "cpu", None, calib)
                          for a in archs])
    diff = 100 * (acc_run - acc_other)
    thirds = np.array_split(np.argsort(macs(run.load_space(), archs)), 3)
    test = {}
    for name, net in ((str(run.path), run.load_supernet()), (str(other.path), net_other)):
        cal: dict = {}
        test[name] = [evaluate_arch(net, a, data, "test", 2000, "cpu", None, cal) for a in archs[:12]]
    t_run, t_other = np.array(test[str(run.path)]), np.array(test[str(other.path)])
    out = {"run": str(run.path), "against": str(other.path), "n": args.n,
           "val_mean_difference_points": float(diff.mean()), "val_share_higher": float((diff > 0).mean()),
           "val_thirds_by_macs_points": [float(diff[t].mean()) for t in thirds],
           "val_largest_points": float(diff[0]), "val_smallest_points": float(diff[1]),
           "test12_mean_difference_points": float(100 * (t_run - t_other).mean()),
           "test12_higher": int((t_run > t_other).sum()), "test12": test,
           "val_run": acc_run.tolist(), "val_against": acc_other.tolist(), "archs": [a.to_dict() for a in archs]}
    print(json.dumps({k: v for k, v in out.items() if k not in ("val_run", "val_against", "archs")}, indent=1))
    dest = RESULTS / f"compare_{run.path.name}_vs_{other.path.name}.json"
    atomic.write_json(dest, out)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
