"""What using a published OFA supernet costs on this CPU: import, extract, BN recalibration and evaluation.

A random-weight OFA-MobileNetV3 w1.2 supernet (1000 classes) is saved in the original's layout (a dict with
`state_dict`, original key names, torch.save), then, for each setting (model threads, decoding workers):
- `import`: `ofa.import_ofa` (torch.load with weights_only, key/shape checks, write the run directory);
- `extract`: `ofa.extract` of the subnet a note10@25ms search picks at 224 px with OFA's predictor (277M MACs;
  deterministic), no recalibration;
- `calibrate` / `evaluate`: `ofa.extract` with `--data imagefolder:` -- BN recalibration on 2,000 training
  images (the original's calibration transform) and test accuracy on 10,000 images (resize 256, crop 224),
  streamed from JPEGs on disk;
- `data path`: images/s of the loader alone (decode + transform + batch), evaluation and calibration transforms;
- `model`: images/s of that subnet alone (and of the largest subnet, 843M MACs, for scale), batches of 100
  already in memory.
The data is a generated ImageFolder of JPEGs of ImageNet-like size (500x375, smooth random fields with noise,
quality 90) under /tmp/import/imagefolder (1000 classes; train/ 3 per class, val/ 10 per class), written once.
Writes bench/results/ofa_import_speed.json. Run it alone: `cpuslot -x python3 bench/ofa_import_speed.py`.

    python3 bench/ofa_import_speed.py [--settings 1:1,2:1] [--eval-images 10000] [--calib-images 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path("/tmp/import")
FOLDER = ROOT / "imagefolder"
CHECKPOINT = ROOT / "ofa_mbv3_d234_e346_k357_w1.2_random.pth"
RESULTS = Path(__file__).resolve().parent / "results" / "ofa_import_speed.json"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_folder(folder: Path, n_classes: int = 1000, train: int = 3, val: int = 10, seed: int = 0) -> dict:
    """JPEGs of 500x375 px: low-frequency colour fields (bicubic from 8x6) plus pixel noise, quality 90."""
    from PIL import Image

    done = folder / ".complete"
    if not done.exists():
        if folder.exists():
            shutil.rmtree(folder)
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        for split, per in (("train", train), ("val", val)):
            for c in range(n_classes):
                d = folder / split / f"n{c:08d}"
                d.mkdir(parents=True)
                for i in range(per):
                    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
                    img = np.asarray(small.resize((500, 375), Image.BICUBIC), dtype=np.float32)
                    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
                    Image.fromarray(img).save(d / f"{i}.jpg", quality=90)
            say(f"wrote {split}/ ({time.perf_counter() - t0:.0f} s)")
        done.write_text("ok")
    files = list(folder.rglob("*.jpg"))
    sizes = [f.stat().st_size for f in files]
    return {"path": str(folder), "images": len(files), "size_px": [500, 375], "mean_kb": statistics.mean(sizes) / 1e3,
            "classes": n_classes, "train_per_class": train, "val_per_class": val}


def write_checkpoint(path: Path) -> None:
    from elastic import get_space
    from elastic.ofa_compat import ofa_key
    from elastic.supernet import Supernet

    if path.exists():
        return
    torch.manual_seed(0)
    net = Supernet(get_space("mbv3-w1.2", n_classes=1000))
    sd = {ofa_key(k): v.contiguous() for k, v in net.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 0}, path)


def loader_rate(bundle, split: str, n: int, r: int = 224, batch: int = 100) -> float:
    seen, t0 = 0, time.perf_counter()
    for x, _ in bundle.loader(split, batch_size=batch, resolution=r, shuffle=split == "train", seed=0):
        seen += len(x)
        if seen >= n:
            break
    return seen / (time.perf_counter() - t0)


@torch.no_grad()
def model_rate(net: torch.nn.Module, n: int, r: int = 224, batch: int = 100) -> float:
    x = torch.randn(batch, 3, r, r).contiguous(memory_format=torch.channels_last)
    net(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(max(1, n // batch)):
        net(x)
    return max(1, n // batch) * batch / (time.perf_counter() - t0)


def bench_arch():
    """The subnet a note10@25ms search at 224 px picks with OFA's predictor (seed 0)."""
    import ofa

    return ofa.specialize(space="mbv3-w1.2", device="note10", latency="25ms", resolution=224)[0].arch


def one_setting(threads: int, workers: int, args, tag: str) -> dict:
    import ofa
    from elastic import get_space
    from ofa.imagefolder import get_imagefolder

    torch.set_num_threads(threads)
    arch = bench_arch()
    run = ROOT / f"run-{tag}"
    t0 = time.perf_counter()
    ofa.import_ofa(str(CHECKPOINT), str(run), overwrite=True)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    ofa.extract(str(run), arch, out=str(run / "plain"), recalibrate=False, evaluate=False)
    t_extract = time.perf_counter() - t0
    say(f"[{tag}] import {t_import:.1f} s, extract {t_extract:.1f} s")
    bundle = get_imagefolder(FOLDER, workers=workers, eval_size=args.eval_images, progress=True)
    t0 = time.perf_counter()
    res = ofa.extract(str(run), arch, out=str(run / "recalibrated"), data=bundle, calib_images=args.calib_images,
                      evaluate=True)
    t_total = time.perf_counter() - t0
    cost = res.extra["cost"]
    say(f"[{tag}] calibrate {cost['calib_seconds']:.1f} s, evaluate {cost['eval_seconds']:.1f} s")
    data_eval = loader_rate(bundle, "test", args.rate_images)
    data_calib = loader_rate(bundle, "train", args.rate_images)
    model = model_rate(ofa.load(run / "plain"), args.rate_images)
    ofa.extract(str(run), get_space("mbv3-w1.2").largest(r=224), out=str(run / "largest"), recalibrate=False,
                evaluate=False)
    model_largest = model_rate(ofa.load(run / "largest"), args.rate_images // 2)
    say(f"[{tag}] data path {data_eval:.0f} img/s (eval) / {data_calib:.0f} (calib), model {model:.0f} img/s "
        f"(largest {model_largest:.1f})")
    shutil.rmtree(run, ignore_errors=True)
    return {"threads": threads, "workers": workers, "import_s": t_import, "extract_s": t_extract,
            "calibrate_s": cost["calib_seconds"], "calib_images": cost["calib_images"],
            "evaluate_s": cost["eval_seconds"], "eval_images": cost["eval_images"], "extract_with_data_s": t_total,
            "data_eval_img_s": data_eval, "data_calib_img_s": data_calib, "model_img_s": model,
            "model_largest_img_s": model_largest, "data_eval_over_model": data_eval / model,
            "data_calib_over_model": data_calib / model, "test_accuracy": res.test_accuracy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="1:1,2:1", help="threads:workers pairs, comma-separated")
    ap.add_argument("--eval-images", type=int, default=10000)
    ap.add_argument("--calib-images", type=int, default=2000)
    ap.add_argument("--rate-images", type=int, default=1000, help="images for the data-path / model rates")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    folder = write_folder(FOLDER)
    write_checkpoint(CHECKPOINT)
    settings = [tuple(int(v) for v in s.split(":")) for s in args.settings.split(",")]
    rows = [one_setting(t, w, args, f"t{t}w{w}") for t, w in settings]
    doc = {"bench": "ofa_import_speed", "date": time.strftime("%Y-%m-%d"), "machine": {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version()},
        "supernet": "mbv3-w1.2, 1000 classes, random weights, original layout (torch.save dict with state_dict)",
        "checkpoint_bytes": CHECKPOINT.stat().st_size, "data": folder,
        "subnet": {"arch": bench_arch().to_dict(), "why": "note10@25ms pick at 224 px, OFA's predictor, seed 0"},
        "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
