"""`ofa fit-predictor` with the accuracy dataset shared out over 2 ranks (torchrun, gloo, CPU) against 1 process.

Each configuration measures the same planned subnets of one run directory from scratch (a copy each time) and
fits a ridge predictor (negligible next to the measuring); the wall time is the whole command, start-up
included. Configurations, in interleaved rounds (A B C, then C B A, ...):
- `1 proc x 1 thread`: `ofa fit-predictor --threads 1`
- `1 proc x 2 threads`: `ofa fit-predictor --threads 2` (what one process makes of both cores)
- `2 ranks x 1 thread`: `torchrun --nproc_per_node 2 -m ofa fit-predictor --threads 1`
Every 1-thread-per-process dataset must equal the first 1-process one (all columns but `seconds`), or the script
fails; the 2-thread process may differ in float rounding (another summation order), and how much is recorded.

The run is an untrained `mbv3-w1.0-small` supernet on Fashion-MNIST (28 px data, subnets at 24/28/32 px):
measuring a subnet costs the same for trained and untrained weights (extract, BN recalibration, evaluation).
Run it on an idle machine: `cpuslot -x python3 bench/fit_predictor_ranks.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_run(path: Path) -> None:
    import torch

    from elastic.spaces import get_space
    from elastic.supernet import Supernet
    from ofa.run_dir import RunDir

    torch.manual_seed(0)
    space = get_space("mbv3-w1.0-small", n_classes=10)
    rd = RunDir(path)
    rd.save_space(space)
    from ofa.data import get_data

    rd.save_data_config(get_data("fashion-mnist").config)
    rd.save_weights(Supernet(space), space)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(kind: str, src: Path, work: Path, samples: int, calib: int, limit: int) -> dict:
    run = work / kind.replace(" ", "_")
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(src, run)
    fit = ["fit-predictor", "--run-dir", str(run), "--samples", str(samples), "--kinds", "ridge", "--folds", "3",
           "--calib-images", str(calib), "--limit", str(limit), "--compute-device", "cpu", "--json"]
    if kind == "2 ranks x 1 thread":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "ofa", *fit, "--threads", "1"]
        threads = "1"
    else:
        threads = "2" if "2 threads" in kind else "1"
        cmd = [sys.executable, "-m", "ofa", *fit, "--threads", threads]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": threads})
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    from ofa.accuracy_data import dataset_paths, read_dataset

    rows = read_dataset(dataset_paths(run)[0]).rows
    return {"kind": kind, "wall_s": wall, "measure_s": sum(float(r["seconds"]) for r in rows),
            "rows": [{k: v for k, v in r.items() if k != "seconds"} for r in rows]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/fit_predictor_ranks.json"))
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--calib-images", type=int, default=500)
    ap.add_argument("--limit", type=int, default=2000, help="validation images per subnet")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    kinds = ["1 proc x 1 thread", "1 proc x 2 threads", "2 ranks x 1 thread"]
    work = Path(tempfile.mkdtemp(prefix="scale-ranks-"))
    src = work / "src"
    make_run(src)
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    reference: dict[str, list] = {}   # per thread count: 1 thread a process must give one dataset
    for r in range(a.rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            res = run_one(kind, src, work, a.samples, a.calib_images, a.limit)
            threads = "2" if "2 threads" in kind else "1"
            ref = reference.setdefault(threads, res["rows"])
            if res["rows"] != ref:
                raise SystemExit(f"{kind}: the dataset differs from the first one at {threads} thread(s)")
            results[kind].append({"wall_s": res["wall_s"], "measure_s": res["measure_s"]})
            print(f"round {r + 1} {kind}: {res['wall_s']:.1f} s wall, {res['measure_s']:.1f} s measuring", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    one, two = reference["1"], reference.get("2", reference["1"])
    acc = [(float(x["accuracy"]), float(y["accuracy"])) for x, y in zip(one, two)]
    threads_note = {"rows_differing": sum(x != y for x, y in acc), "max_abs_accuracy_diff": max(abs(x - y) for x, y in acc)}
    mean = {k: sum(x["wall_s"] for x in v) / len(v) for k, v in results.items()}
    doc = {"what": "ofa fit-predictor wall time: the accuracy dataset on 2 ranks vs 1 process (CPU, gloo)",
           "command": "cpuslot -x python3 bench/fit_predictor_ranks.py " + " ".join(argv or sys.argv[1:]),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d"), "samples": a.samples, "calib_images": a.calib_images,
           "val_images": a.limit, "space": "mbv3-w1.0-small (untrained), Fashion-MNIST val split",
           "datasets_equal": "2 ranks x 1 thread == 1 proc x 1 thread (all columns but seconds), every round",
           "one_vs_two_threads": threads_note, "runs": results, "mean_wall_s": mean,
           "ratio_1x1_over_2ranks": mean["1 proc x 1 thread"] / mean["2 ranks x 1 thread"],
           "ratio_1x2_over_2ranks": mean["1 proc x 2 threads"] / mean["2 ranks x 1 thread"]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2))
    print(json.dumps({k: v for k, v in doc.items() if k != "runs"}, indent=2))
    return doc


if __name__ == "__main__":
    main()
