"""How much label noise does BN recalibration add? The same subnets labelled on every validation image of a run,
their BN statistics re-estimated on two seeded draws of --calib training images and on one of --calib-large.

Reported: Kendall tau between the two small-calibration label sets and against the large one, and the sd of
their differences (points). The calibration images are the same for every subnet within a draw, so what differs
between draws is each subnet's own response: noise the accuracy predictor cannot learn. Validation split only.

  python3 bench/predictor_bn_noise.py --run checkpoints/quickstart --n 40
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=40, help="subnets: the plan's after its first --skip")
    ap.add_argument("--skip", type=int, default=30, help="plan subnets to skip (the main job's pilot)")
    ap.add_argument("--calib", type=int, default=500)
    ap.add_argument("--calib-large", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()

    import numpy as np
    import torch

    from ofa.accuracy_data import plan_subnets
    from ofa.run_dir import RunDir
    from ofa.training.evaluate import calibration_batches, correct_per_image, recalibrated
    from predictors.metrics import kendall_tau

    torch.set_num_threads(args.threads)
    rd = RunDir(args.run)
    space, supernet, data = rd.load_space(), rd.load_supernet(), rd.load_data(uncapped=True)
    archs = plan_subnets(space, args.skip + args.n, 0)[args.skip:]
    draws = {"a": (0, args.calib), "b": (1, args.calib), "large": (2, args.calib_large)}
    # per draw, its calibration batches by resolution: the cache `recalibrated` reads them from
    batches = {k: {r: calibration_batches(data, r, n, device="cpu", seed=seed) for r in space.resolutions}
               for k, (seed, n) in draws.items()}
    acc: dict[str, list[float]] = {k: [] for k in draws}
    t0 = time.time()
    for i, arch in enumerate(archs):
        for k in draws:
            net = recalibrated(supernet, arch, data, draws[k][1], "cpu", batches[k])
            acc[k].append(float(correct_per_image(net, data, "val", arch.r, device="cpu").float().mean()))
        print(f"\r{i + 1}/{len(archs)} subnets ({time.time() - t0:.0f} s)", end="", flush=True)
    print()
    a, b, c = (np.array(acc[k]) for k in ("a", "b", "large"))
    res = {"run": args.run, "n": len(archs), "val_images": len(data.val), "calib": args.calib,
           "calib_large": args.calib_large, "spread_sd_pts": float(100 * c.std()),
           "tau_a_b": kendall_tau(a, b), "tau_a_large": kendall_tau(a, c), "tau_b_large": kendall_tau(b, c),
           "sd_a_minus_b_pts": float(100 * (a - b).std()), "labels": acc}
    print(json.dumps({k: v for k, v in res.items() if k != "labels"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
