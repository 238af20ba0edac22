"""Train a supernet by progressive shrinking and report test accuracy of its largest, smallest and random subnets.

    python bench/train_quality.py --schedule quick            # the under-10-minute CPU schedule (2 threads)
    python bench/train_quality.py --schedule full --device cuda   # the whole schedule (GPU recommended)

Targets (Fashion-MNIST, mbv3-w1.0-small): quick: largest >= 89% test accuracy in < 10 min on a 2-core CPU;
full: largest >= 94.5%, smallest >= 91%. Every subnet's BN statistics are recalibrated on 2000 training images
before it is evaluated on the held-out TEST split (never seen during training or model selection).
Writes bench/results/train_quality_<schedule>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ofa.run_dir import RunDir  # noqa: E402
from ofa.training import TrainConfig, evaluate_subnets, subnets_to_report, train  # noqa: E402

TARGETS = {"quick": {"largest": 0.89}, "full": {"largest": 0.945, "smallest": 0.91}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedule", choices=("quick", "full"), default="quick")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--space", default="mbv3-w1.0-small")
    ap.add_argument("--run", default=None, help="run directory (default: checkpoints/bench-<schedule>)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--random", type=int, default=4, help="random subnets evaluated besides largest/smallest")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--full-epochs", type=int, default=None)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--eval-only", action="store_true", help="skip training; evaluate the run's latest weights")
    ap.add_argument("--out", default=None, help="result file name in bench/results (default: train_quality_<schedule>.json)")
    args = ap.parse_args()

    run = Path(args.run or f"checkpoints/bench-{args.schedule}")
    t0 = time.time()
    if not args.eval_only:
        cfg = TrainConfig(run=str(run), stage="all", space=args.space, data={"name": args.data},
                          schedule=args.schedule, epochs=args.epochs, full_epochs=args.full_epochs,
                          device=args.device, threads=args.threads, progress=args.progress, overwrite=True)
        train(cfg)
    train_s = time.time() - t0
    if args.eval_only:  # the run's own record: seconds of every epoch (stage-end evaluations not included)
        train_s = sum(h.get("seconds", 0.0) for h in RunDir(run).history() if h.get("kind") == "epoch")

    rd = RunDir(run)
    space = rd.load_space()
    from ofa.data import get_data

    cfg = rd.data_config()
    bundle = get_data(**{**cfg, "eval_size": None})  # the whole test split
    net = rd.load_supernet()
    device = torch.device("cuda") if args.device in ("auto", "cuda") and torch.cuda.is_available() else torch.device("cpu")
    net.to(device)
    t1 = time.time()
    rows = evaluate_subnets(net, space, bundle, subnets_to_report(space, args.random, seed=123), split="test",
                            calib_images=2000, device=device)
    eval_s = time.time() - t1
    accs = {r["name"]: r["acc"] for r in rows}
    targets = TARGETS[args.schedule]
    result = {
        "schedule": args.schedule, "data": bundle.config, "space": space.name, "device": str(device),
        "threads": args.threads, "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
        "test_images": len(bundle.test), "test_acc": accs, "subnets": rows,
        "targets": targets, "meets_targets": all(accs[k] >= v for k, v in targets.items()),
        "history": rd.history(),
    }
    out = Path(__file__).resolve().parent / "results" / (args.out or f"train_quality_{args.schedule}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.schedule}: trained in {train_s / 60:.1f} min; test accuracy " +
          ", ".join(f"{k} {v:.2%}" for k, v in accs.items()) +
          f"; targets {targets} {'met' if result['meets_targets'] else 'NOT met'} -> {out}")


if __name__ == "__main__":
    main()
