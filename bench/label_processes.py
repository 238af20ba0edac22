"""Accuracy labels on one process with two threads against two processes with one thread each, side by side.

A label of the main job (`ofa.informative_images`): the subnet extracted, BN recalibrated on the run's
calibration images, evaluated on its informative validation images. This labels the same subnets of the plan
(beyond those the job measured) in turn with: 1 process x `--threads` threads, 2 processes x 1 thread (the subnets
dealt out between them), 1 process x 1 thread; each worker loads the supernet and the data before the clock starts.

  python3 bench/label_processes.py --run checkpoints/quickstart      # about 3 minutes

Results: bench/results/label_processes_<tag>.json (seconds per label for each setting, every repeat).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.result_files import write_run_result  # noqa: E402


def plan_archs(run: str, first: int, n: int):
    """The plan's subnets first..first+n, and the job's pilot (for the informative images)."""
    from ofa.accuracy_data import plan_subnets
    from ofa.run_dir import RunDir
    from ofa.training.time_budget import load_plan

    rd = RunDir(run)
    p = load_plan(rd.path).predictor
    plan = plan_subnets(rd.load_space(), first + n, 0)
    return plan[first:first + n], plan[:p["pilot"]], p


def worker(run: str, threads: int, first: int, n: int, mine: list[int], queue, start) -> None:
    import torch

    from ofa.informative_images import informative_evaluator

    torch.set_num_threads(threads)
    archs, pilot, p = plan_archs(run, first, n)
    evaluate, _ = informative_evaluator(run, pilot, calib_images=p["calib_images"], limit=p["val_images"],
                                        uncapped=True)
    evaluate(archs[mine[0]])   # loads the supernet and the data; not timed
    queue.put("ready")
    start.wait()
    t0 = time.perf_counter()
    accs = [evaluate(archs[i]) for i in mine[1:]]
    queue.put((time.perf_counter() - t0, accs))


def timed(run: str, procs: int, threads: int, first: int, n: int) -> dict:
    ctx = mp.get_context("spawn")
    queue, start = ctx.Queue(), ctx.Event()
    shares = [list(range(n))[i::procs] for i in range(procs)]
    ps = [ctx.Process(target=worker, args=(run, threads, first, n, s, queue, start)) for s in shares]
    for p in ps:
        p.start()
    for _ in ps:
        if queue.get() != "ready":
            raise RuntimeError("a worker failed to start")
    t0 = time.perf_counter()
    start.set()
    done = [queue.get() for _ in ps]
    wall = time.perf_counter() - t0
    for p in ps:
        p.join()
    labels = sum(len(s) - 1 for s in shares)
    return {"processes": procs, "threads": threads, "labels": labels, "wall_s": wall, "s_per_label": wall / labels,
            "mean_accuracy": sum(sum(a) for _, a in done) / labels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--subnets", type=int, default=40)
    ap.add_argument("--first", type=int, default=1000, help="the plan's index of the first subnet labelled")
    ap.add_argument("--threads", type=int, default=2, help="threads of the one-process setting")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    rows = []
    for _ in range(args.repeats):
        for procs, threads in ((1, args.threads), (2, 1), (1, 1)):
            rows.append(timed(args.run, procs, threads, args.first, args.subnets))
            print(rows[-1], flush=True)
    res = {"run": args.run, "subnets": args.subnets, "first": args.first, "rows": rows,
           "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"-> {write_run_result('label_processes', args.run, args.tag, res)}")


if __name__ == "__main__":
    main()
