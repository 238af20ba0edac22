"""What one accuracy label costs at each evaluation batch size, side by side in one process.

A label of the main job is: the subnet extracted, its BN recalibrated on 500 training images, then evaluated on
the run's informative validation images (`ofa.informative_images`). This times whole labels of the plan's
subnets (after the pilot) at each batch size, in turn for every subnet, and checks that the outcomes agree.

  python3 bench/label_batch_size.py --run checkpoints/quickstart            # about 2 minutes

Results: bench/results/label_batch_size_<tag>.json. What chose `ofa.training.evaluate.EVAL_BATCH`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.result_files import write_run_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--subnets", type=int, default=40, help="the plan's subnets after the pilot to label")
    ap.add_argument("--sizes", default="500,250,128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import numpy as np
    import torch

    from elastic.bn_calibration import recalibrate_bn
    from ofa.accuracy_data import dataset_paths, read_dataset
    from ofa.data import subset
    from ofa.informative_images import FILE_NAME, InformativeImages
    from ofa.run_dir import RunDir
    from ofa.training.evaluate import calibration_batches, correct_per_image

    torch.set_num_threads(args.threads)
    rd = RunDir(args.run)
    space, net, data = rd.load_space(), rd.load_supernet(), rd.load_data(uncapped=True)
    ds = read_dataset(dataset_paths(rd.path)[0], space)
    inf = InformativeImages.from_dict(json.loads((rd.path / "predictors" / FILE_NAME).read_text()))
    sub = dataclasses.replace(data, val=subset(data.split("val"), inf.indices))
    pilot = len(inf.pilot_accuracy)
    archs = ds.archs[pilot:pilot + args.subnets]
    calib = {r: calibration_batches(data, r, 500) for r in space.resolutions}
    sizes = [int(v) for v in args.sizes.split(",")]
    seconds = {b: [] for b in sizes}
    flips = 0
    for arch in archs:
        first = None
        for b in sizes:
            t0 = time.perf_counter()
            n = net.extract(arch)
            recalibrate_bn(n, calib[arch.r])
            c = correct_per_image(n, sub, "val", arch.r, batch_size=b)
            seconds[b].append(time.perf_counter() - t0)
            first = c if first is None else first
            flips += int((c != first).sum())
    rows = [{"batch": b, "label_s_mean": float(np.mean(v)), "label_s_median": float(np.median(v))}
            for b, v in seconds.items()]
    for r in rows:
        print(json.dumps(r))
    res = {"run": args.run, "subnets": len(archs), "images": int(len(inf.indices)), "threads": args.threads,
           "outcomes_that_differ": flips, "rows": rows, "date": time.strftime("%Y-%m-%d")}
    out = write_run_result("label_batch_size", args.run, args.tag, res)
    print(f"outcomes that differ between batch sizes: {flips}\n-> {out}")


if __name__ == "__main__":
    main()
