"""Does fine-tuning a specialized net pay, and does it beat training the same arch from scratch?

    cpuslot python3 bench/finetune_quality.py --run checkpoints/finetune-qs            # the measurement (hours)
    python3 bench/finetune_quality.py --run RUN --quick                               # tiny settings, end to end

On a trained run: an accuracy predictor (fit on `--samples` subnets' validation accuracies, unless the run has one),
three MACs budgets (30 / 55 / 80% of the way from the space's smallest to its largest subnet, as the quickstart
places its latency budgets), the nets `ofa specialize --device flops` extracts for them, and then per budget:
  * no retraining: the specialized net as `ofa specialize` wrote it;
  * fine-tuned for each of `--epochs` (default 1, 3, 10) with `ofa.finetune` (KD from the full stage's net);
  * the same arch trained from scratch with the same recipe and epochs (`from_scratch=True`: random weights, the same
    teacher, learning rate, schedule, data order).
An "epoch" is a pass over a fixed seeded subset of the training split (`--subset`, default 2,500 of 55,000 images:
full epochs do not fit this machine's time), said so in the results. Every choice is made on the VALIDATION split
(the run's, 2,000 images carved from the training set): the learning rate from `--lrs` and the distillation ratio
from {0, 1}, by fine-tuning the middle budget's net for `--select-epochs` epochs. The TEST split (all 10,000
Fashion-MNIST test images) is evaluated once per net at the end: accuracy with a 95% Wilson interval, and for
differences on the same images (fine-tuned - no retraining, fine-tuned - from scratch) a 95% paired bootstrap
interval (2,000 resamples). Costs are the training seconds `ofa.finetune` records (this machine, 1 thread, loaded
by other work: ratios between rows of one run are the comparable figure).

Transfer (`--transfer digits`): the middle budget's net fine-tuned on scikit-learn digits (classifier rebuilt,
distillation off) against the same arch from scratch on digits, each with its learning rate chosen on digits'
validation split from `--transfer-lrs`, for `--transfer-epochs` full epochs; digits' test split reported once.

Finished fine-tunings are read back from their folders (RUN/bench/finetune/...), so an interrupted bench resumes
where it stopped. Results: bench/results/finetune_quality_<run directory name>.json (`--quick`: RUN/bench/).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ofa  # noqa: E402
from ofa import atomic  # noqa: E402
from ofa.run_dir import RunDir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEVICE = "flops"
FRACTIONS = (0.3, 0.55, 0.8)      # where the budgets sit in the space's MACs range (as the quickstart's latencies)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def paired_interval(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b (per-image correctness) and its 95% percentile bootstrap interval over the images."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@torch.no_grad()
def correct_per_image(net: torch.nn.Module, bundle, split: str) -> np.ndarray:
    net.eval()
    r = net.arch.r
    out = [(net(x).argmax(1) == y).numpy() for x, y in bundle.loader(split, batch_size=500, resolution=r)]
    return np.concatenate(out)


def ensure_predictor(rd: RunDir, samples: int, calib: int, limit: int | None, seed: int) -> None:
    from ofa.accuracy_data import collect_from_run
    from predictors.accuracy import fit_accuracy_predictor, format_report

    if (rd.path / "predictors" / "accuracy_predictor.json").exists():
        return
    ds = collect_from_run(rd.path, samples, seed=seed, resume=True, calib_images=calib, limit=limit, progress=True)
    pred = fit_accuracy_predictor(rd.load_space(), ds.archs, ds.accuracies, seed=seed)
    pred.meta.update({"run": str(rd.path)})
    pred.save(rd.path / "predictors")
    print(format_report(pred.report), flush=True)


def specialized_nets(rd: RunDir, seed: int) -> list[Path]:
    """The nets `ofa specialize` picks under three MACs budgets (the `flops` proxy: latency profiles of phones
    cover 152-240 px nets, not this 24-32 px space), at 30 / 55 / 80% of the space's MACs range."""
    from elastic.complexity import macs

    space = rd.load_space()
    lo, hi = (float(v) for v in macs(space, [space.smallest(), space.largest()]))
    budgets = [f"{(lo + f * (hi - lo)) / 1e6:.1f}M" for f in FRACTIONS]
    folders = [rd.path / "specialized" / f"{DEVICE}@{b}-macs" for b in budgets]
    if not all(f.is_dir() for f in folders):
        results = ofa.specialize(rd.path, device=DEVICE, macs=",".join(budgets), seed=seed, measure=False)
        folders = [r.path for r in results]
    return folders


def finetuned(src: Path, out: Path, epochs: int, log, **options) -> dict[str, Any]:
    """`ofa.finetune` into `out`, or the figures of an earlier run of this bench read back from it."""
    if not (out / "arch.json").exists():
        ofa.finetune(src, epochs=epochs, out=out, force=True, log=log, progress=False, **options)
    ft = json.loads((out / "arch.json").read_text())["finetune"]
    return {"path": str(out), "epochs": epochs, "lr": ft["recipe"]["lr"], "kd_ratio": ft["recipe"]["kd_ratio"],
            "from_scratch": ft["recipe"]["from_scratch"], "steps": epochs * ft["recipe"]["steps_per_epoch"],
            "val_before": ft["accuracy_before"]["val"], "val_after": ft["accuracy_after"]["val"],
            "train_minutes": ft["train_seconds"] / 60, "seed": ft["recipe"]["seed"]}


def _tag(x: float) -> str:
    return f"{x:g}".replace(".", "p")


def select_recipe(src: Path, work: Path, lrs: list[float], epochs: int, common: dict, log) -> dict[str, Any]:
    """Learning rate (with KD), then KD on/off at that rate: the best fine-tuned VALIDATION accuracy."""
    rows = [{**finetuned(src, work / f"lr{_tag(lr)}-kd1", epochs, log, lr=lr, **common), "teacher": "full"}
            for lr in lrs]
    best = max(rows, key=lambda r: r["val_after"])
    no_kd = {**finetuned(src, work / f"lr{_tag(best['lr'])}-kd0", epochs, log, lr=best["lr"], teacher="none",
                         **common), "teacher": "none"}
    rows.append(no_kd)
    chosen = max([best, no_kd], key=lambda r: r["val_after"])
    return {"rows": rows, "lr": chosen["lr"], "teacher": chosen["teacher"], "epochs": epochs,
            "split": "val (the run's)", "net": str(src)}


def test_report(nets: dict[str, Path], bundle) -> dict[str, dict[str, Any]]:
    correct = {name: correct_per_image(ofa.load(p), bundle, "test") for name, p in nets.items()}
    out = {}
    for name, c in correct.items():
        lo, hi = wilson(int(c.sum()), len(c))
        out[name] = {"test_acc": float(c.mean()), "ci95": [lo, hi], "n_test": len(c)}
    return {"acc": out, "correct": correct}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--epochs", default="1,3,10")
    ap.add_argument("--subset", type=int, default=2500, help="training images an epoch passes over")
    ap.add_argument("--lrs", default="0.005,0.01,0.02,0.04")
    ap.add_argument("--select-epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=60, help="subnets the accuracy predictor is fit on (if missing)")
    ap.add_argument("--predictor-calib", type=int, default=500)
    ap.add_argument("--predictor-limit", type=int, default=1000)
    ap.add_argument("--transfer", default="digits")
    ap.add_argument("--transfer-epochs", default="10")
    ap.add_argument("--transfer-lrs", default="0.01,0.03,0.1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny settings (a smoke test of the bench)")
    ap.add_argument("--only", choices=("all", "select", "grid", "transfer"), default="all")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs, args.subset, args.lrs, args.select_epochs = "1,2", 128, "0.01,0.04", 1
        args.samples, args.predictor_calib, args.predictor_limit = 12, 64, 64
        args.transfer_epochs, args.transfer_lrs = "2", "0.05"
    epochs_list = [int(e) for e in args.epochs.split(",")]
    rd = RunDir(args.run)
    work = rd.path / "bench" / ("finetune-quick" if args.quick else "finetune")
    log = lambda m: print(f"  {m}", flush=True)  # noqa: E731
    common = dict(data_subset_size=args.subset, seed=args.seed, threads=args.threads, eval_every=0)
    if args.quick:
        common["calib_images"] = 64
    t0 = time.time()

    ensure_predictor(rd, args.samples, args.predictor_calib, args.predictor_limit, args.seed)
    nets = specialized_nets(rd, args.seed)
    print("specialized:", ", ".join(str(p) for p in nets), flush=True)
    result_file = (work / "finetune_quality.json") if args.quick else RESULTS / f"finetune_quality_{rd.path.name}.json"
    results: dict[str, Any] = {"run": str(rd.path), "device": DEVICE, "subset": args.subset,
                               "epochs": epochs_list, "seed": args.seed, "threads": args.threads,
                               "date": time.strftime("%Y-%m-%d"), "nets": [str(p) for p in nets]}

    print("selecting the recipe on the validation split ...", flush=True)
    sel = select_recipe(nets[1], work / "select", [float(x) for x in args.lrs.split(",")], args.select_epochs,
                        common, log)
    results["selection"] = sel
    recipe = dict(lr=sel["lr"], teacher="full" if sel["teacher"] == "full" else "none", **common)
    print(f"chosen on validation: lr {sel['lr']}, teacher {sel['teacher']}", flush=True)
    if args.only == "select":
        atomic.write_json(result_file, results)
        return

    grid: dict[str, dict[str, Any]] = {}
    if args.only in ("all", "grid"):
        for src in nets:
            rows = {}
            for e in epochs_list:
                print(f"{src.name}: {e} epoch(s) fine-tuned, then from scratch ...", flush=True)
                rows[f"ft{e}"] = finetuned(src, work / src.name / f"ft-e{e}", e, log, **recipe)
                rows[f"scratch{e}"] = finetuned(src, work / src.name / f"scratch-e{e}", e, log, from_scratch=True,
                                                **recipe)
            grid[src.name] = rows
        # ---- the test split, once: every net of the grid and the specialized nets as written ----
        from ofa.data import get_data

        full = get_data(**{**rd.data_config(), "eval_size": None})
        results["test_split"] = f"{full.name} test, {len(full.test)} images"
        for src in nets:
            rows = grid[src.name]
            named = {"none": src, **{k: Path(v["path"]) for k, v in rows.items()}}
            rep = test_report(named, full)
            c = rep["correct"]
            for k, v in rep["acc"].items():
                rows.setdefault(k, {}).update(v)
            for e in epochs_list:
                rows[f"ft{e}"]["gain_vs_none"] = paired_interval(c[f"ft{e}"], c["none"])
                rows[f"ft{e}"]["gain_vs_scratch"] = paired_interval(c[f"ft{e}"], c[f"scratch{e}"])
            rows["none"]["arch"] = json.loads((src / "arch.json").read_text())["arch"]
            rows["none"]["predicted_latency_ms"] = json.loads((src / "arch.json").read_text())["predicted"]["latency_ms"]
        results["grid"] = grid

    if args.only in ("all", "transfer") and args.transfer:
        results["transfer"] = transfer(nets[1], work / "transfer", args, log)
    results["bench_minutes"] = (time.time() - t0) / 60
    atomic.write_json(result_file, results)
    print(render(results), flush=True)
    print(f"-> {result_file}", flush=True)


def transfer(src: Path, work: Path, args, log) -> dict[str, Any]:
    from ofa.data import get_data

    lrs = [float(x) for x in args.transfer_lrs.split(",")]
    out: dict[str, Any] = {"data": args.transfer, "net": str(src), "lrs": lrs}
    bundle = get_data(args.transfer)
    common = dict(data=args.transfer, seed=args.seed, threads=args.threads, eval_every=0)
    if args.quick:
        common["calib_images"] = 64
    for e in (int(x) for x in args.transfer_epochs.split(",")):
        rows = {}
        for kind, extra in (("ft", {}), ("scratch", {"from_scratch": True})):
            cands = [finetuned(src, work / f"{kind}-e{e}-lr{_tag(lr)}", e, log, lr=lr, **extra, **common)
                     for lr in lrs]
            best = max(cands, key=lambda r: r["val_after"])       # chosen on digits' validation split
            rows[kind] = {**best, "candidates": [{"lr": c["lr"], "val_after": c["val_after"]} for c in cands]}
        rep = test_report({k: Path(v["path"]) for k, v in rows.items()}, bundle)
        for k, v in rep["acc"].items():
            rows[k].update(v)
        rows["ft"]["gain_vs_scratch"] = paired_interval(rep["correct"]["ft"], rep["correct"]["scratch"])
        out[f"e{e}"] = rows
    return out


def render(res: dict[str, Any]) -> str:
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    ci = lambda t: f"{100 * t[0]:+.2f} [{100 * t[1]:+.2f}, {100 * t[2]:+.2f}]"  # noqa: E731
    lines = []
    for name, rows in (res.get("grid") or {}).items():
        lines.append(f"\n{name} (no retraining: {pct(rows['none']['test_acc'])}%)")
        lines.append("| epochs | fine-tuned | from scratch | gain vs none | gain vs scratch | minutes ft / scratch |")
        lines.append("|---|---|---|---|---|---|")
        for e in res["epochs"]:
            f, s = rows[f"ft{e}"], rows[f"scratch{e}"]
            lines.append(f"| {e} | {pct(f['test_acc'])} | {pct(s['test_acc'])} | {ci(f['gain_vs_none'])} | "
                         f"{ci(f['gain_vs_scratch'])} | {f['train_minutes']:.1f} / {s['train_minutes']:.1f} |")
    for key, rows in (res.get("transfer") or {}).items():
        if key.startswith("e"):
            lines.append(f"\ntransfer to {res['transfer']['data']}, {key[1:]} epochs: fine-tuned "
                         f"{pct(rows['ft']['test_acc'])} (lr {rows['ft']['lr']}) vs scratch "
                         f"{pct(rows['scratch']['test_acc'])} (lr {rows['scratch']['lr']}); gain "
                         f"{ci(rows['ft']['gain_vs_scratch'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
