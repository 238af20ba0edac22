"""How good is `ofa specialize` on a trained run? Predictor honesty, and specialized nets vs. timm MobileNetV3s.

    python bench/specialize_quality.py --run checkpoints/fmnist          # the real comparison (slow: trains timm nets)
    python bench/specialize_quality.py --run checkpoints/fmnist --quick  # tiny settings, a few minutes, end to end

(a) Accuracy predictor vs. reality: ~30 random subnets (size-spread) plus every specialized net are extracted from the
    supernet, BN-recalibrated on training images, and evaluated on the TEST split; reported: mean |real - predicted|
    (target <= 0.5 points on average) and Kendall tau. The predictor is fit on validation-split accuracies, so the
    same figures against the validation split and the mean test - validation gap are reported beside them.
(b) timm `mobilenetv3_small_050/075/100` and `mobilenetv3_large_075/100` (random init, never downloaded weights,
    num_classes = the run's, 3 input channels) are trained from scratch on the same data and resolution, for as
    many passes over the training set as the run's whole schedule made (from history.jsonl, rounded up;
    `--epochs` overrides), with the run's optimizer settings and augmentation where stored (train_state.pt),
    `--timm-seeds` times each (default 2: one from-scratch training is a noisy baseline), and BN-recalibrated on
    the same training images as our subnets (the accuracy with the BN statistics training left is kept beside it).
    Their batch-1 latency on this CPU is measured the way the `cpu` profile measures (ONNX Runtime, one intra-op
    thread, thread-CPU clock, interleaved rounds, same robust statistic) -- side by side with the specialized nets,
    in the same measurement session, every net fed the data's own images (ours resize them to their resolution
    inside the timed module, as evaluation does). The supernet is specialized for the `cpu` device at a grid of
    budgets over the timm nets' latency range, rescaled to the session (the space's smallest and largest subnets
    are timed beside the timm nets) and starting no lower than the space's floor -- once over all resolutions and
    once at the data's own (`--resolution`: no resize, which the profile does not count); each timm net is compared with
    the specialized net of best VALIDATION accuracy among those measured at or below its latency in that session
    (beside it, the best by predicted accuracy; never chosen on the test split), whose test accuracy is reported
    with a 95% Wilson interval over the test images: gain against the mean over seeds and against the best seed.
    `--from-results JSON...` recomputes that comparison from stored results (they hold every candidate's measured
    latency and its validation, predicted and test accuracy) without training or timing anything.
    A run trained with `--val-from test` makes (a) a like-for-like check (validation and test split drawn alike).

Without a `cpu` profile (`ofa profile --space <run space>`), one is fitted here for the run's space and saved to
bench/results/cpu_profile_<space>.json (`--quick`: RUN/bench/, a rough one), reused on later runs. Results:
bench/results/specialize_quality_<run directory name>.json (`--quick`: RUN/bench/specialize_quality_quick.json).
`--timm-only --epochs N` trains and caches the timm baselines and stops: started after the run's first save, it
runs beside the supernet's training on the other core (1 thread each), and the full bench then reads them.
The specialized nets go to RUN/specialized/; finished timm trainings and subnet evaluations are cached in RUN/bench/specialize_quality_cache.json
(keyed by the supernet's hash and the settings), so a re-run only does what changed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elastic.arch import Arch  # noqa: E402
from ofa import atomic  # noqa: E402
from ofa.run_dir import RunDir  # noqa: E402
from ofa.specialization import file_digest  # noqa: E402
from predictors.metrics import kendall_tau  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GRID_BUDGETS = 24   # latency budgets, geometric, over 0.7x the fastest (or the floor) to 1.2x the slowest timm net
TIMM_MODELS = ("mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_small_100",
               "mobilenetv3_large_075", "mobilenetv3_large_100")


# ------------------------------------------------------------------------------------------------ helpers
class Cache:
    """A JSON dict on disk, saved atomically after every new entry (an interrupted run keeps what it finished)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled
        self.data: dict[str, Any] = json.loads(path.read_text()) if enabled and path.exists() else {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        if self.enabled:
            atomic.write_json(self.path, self.data)


def run_epochs(rd: RunDir, n_train: int) -> int:
    """Passes over the training set the whole schedule made (images stepped on, every stage and phase, counted
    once across resumes; an elastic step counts its batch once although it trains several subnets on it),
    rounded up -- so the timm nets see at least as many images as the supernet did."""
    images = {}
    for h in rd.history():
        if h.get("kind") == "epoch":
            images[(h.get("stage"), h.get("phase"), h.get("epoch"))] = h["images_per_s"] * h["seconds"]
    return max(1, math.ceil(round(sum(images.values())) / n_train - 1e-6))


def train_settings(rd: RunDir) -> dict[str, Any]:
    """Batch size, learning rate, weight decay, label smoothing of the run (defaults where not stored)."""
    out = {"batch_size": 128, "lr": 0.05, "weight_decay": 4e-5, "label_smoothing": 0.1, "opt": "sgd",
           "momentum": 0.9, "warmup_epochs": 1.0, "augment": True, "source": "defaults"}
    try:
        from ofa.training import TrainConfig

        state = rd.load_train_state()
        if state and "config" in state:
            cfg = TrainConfig.from_dict(state["config"])
            out.update(batch_size=int(cfg.resolved("batch_size")), lr=float(cfg.base_lr()),
                       weight_decay=float(cfg.resolved("weight_decay")),
                       label_smoothing=float(cfg.resolved("label_smoothing")), opt=cfg.opt, momentum=cfg.momentum,
                       warmup_epochs=float(cfg.resolved("warmup_epochs")), augment=bool(cfg.resolved("augment")),
                       source="train_state.pt")
    except Exception as exc:  # noqa: BLE001 - an old/odd state file: fall back to defaults, say so
        out["source"] = f"defaults ({type(exc).__name__}: {exc})"
    return out


# ------------------------------------------------------------------------------------------------ latency
def measure_modules(models: dict[str, torch.nn.Module], channels: int, resolution: int, threads: int = 1,
                    rounds: int = 30, instances: int = 1) -> dict[str, float]:
    """Batch-1 latency (ms) of each module on the data's `resolution`-px images, measured exactly as a `cpu`
    profile measures its subnets (`instances` runtime sessions each, averaged)."""
    from predictors.measure import measure_modules as measure

    lat = measure(list(models.values()), [(channels, resolution, resolution)] * len(models), threads=threads,
                  rounds=rounds, instances=instances)
    return {k: float(v) for k, v in zip(models, lat)}


class ResizedInput(torch.nn.Module):
    """A net specialized for r x r input, fed the data's own images: it resizes them first, as evaluation does
    (bilinear), inside the timed module -- so ours and timm's nets are timed on the same input, resize included."""

    def __init__(self, net: torch.nn.Module, r: int, input_resolution: int):
        super().__init__()
        self.net, self.r, self.resize = net, int(r), int(r) != int(input_resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize:
            x = torch.nn.functional.interpolate(x, size=(self.r, self.r), mode="bilinear", align_corners=False)
        return self.net(x)


def anchor_subnets(space) -> dict[str, Any]:
    """Subnets that pin the device profile's scale to a measurement session: the smallest at every resolution
    (the space's floor) and the largest."""
    out = {f"anchor:smallest@{r}": space.smallest(r) for r in space.resolutions}
    out[f"anchor:largest@{max(space.resolutions)}"] = space.largest(max(space.resolutions))
    return out


def session_scale(measured: dict[str, float], predicted: dict[str, float]) -> float:
    """Milliseconds measured in this session per millisecond the profile predicts (median over the anchors).

    On a shared 2-core VM the clock rate moves: the same nets read 1.5x apart in two sessions minutes apart. A
    budget grid in profile milliseconds placed over the timm nets' latencies of *this* session must be rescaled,
    or its lower end falls below (or far above) the space's floor."""
    return float(np.median([measured[k] / predicted[k] for k in predicted]))


def cpu_profile(space, device: str, quick: bool, threads: int, run_path: Path) -> str:
    """The device to specialize for: a known profile name, else a profile fitted here for the run's space."""
    from predictors.profiles import known_devices

    if device in known_devices() or Path(device).is_file():
        return device
    path = (run_path / "bench" if quick else RESULTS) / f"{device}_profile_{space.name}.json"
    if path.is_file():
        return str(path)
    from predictors.measure import fit_measured_profile

    n_fit, n_test, rounds = (20, 3, 5) if quick else (80, 20, 20)
    print(f"no '{device}' profile: fitting one for {space.name} ({n_fit} + {n_test} subnets timed) ...", flush=True)
    prof = fit_measured_profile(space, name=device, device="cpu", runtime="onnxruntime", threads=threads,
                                n_fit=n_fit, n_test=n_test, rounds=rounds)
    prof.save(path)
    print(f"  saved {path}: {prof.error.get('summary', '')}", flush=True)
    return str(path)


# ------------------------------------------------------------------------------------------------ selection
# Which of our specialized nets is compared with a timm net. Latency is measured side by side (not test data), so
# "at or below the timm net's latency" is a fair filter; among those the pick must not look at the test split: by
# validation accuracy (what a user holding a validation split would choose), or by the accuracy predictor (what the
# search ranks by: the best-predicted net under the latency is what a search at that latency would return). The
# test accuracy of the pick is then reported once, with a binomial confidence interval over the test images.
PICKS = {"validation": "val", "predicted": "predicted"}


def wilson_interval(acc: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy measured on n images."""
    if n <= 0:
        return float("nan"), float("nan")
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def candidate_label(c: dict[str, Any]) -> str:
    """The grid label of a stored candidate (older results keep only its budget in ms)."""
    return c["budget"] if "budget" in c else f"{c['budget_ms']:g}ms"


def pick(candidates: list[dict[str, Any]], latency_ms: float, by: str) -> tuple[dict[str, Any], bool]:
    """Among `candidates` (dicts with latency_ms, val, predicted, test) the best by `by` ('val' / 'predicted' /
    'test') of those measured at or below `latency_ms` (ties: the faster); none there: the fastest, flagged False."""
    within = [c for c in candidates if c["latency_ms"] <= latency_ms]
    if not within:
        return min(candidates, key=lambda c: c["latency_ms"]), False
    return max(within, key=lambda c: (c[by], -c["latency_ms"])), True


def compare_row(timm: dict[str, Any], timm_latency_ms: float, candidates: list[dict[str, Any]],
                n_test: int) -> dict[str, Any]:
    """One timm net against the picks (by validation, by prediction; the test-split pick only as the optimistic
    figure earlier results used). Gains in points against the timm seeds' mean and best; `gain_interval_points`
    spreads the binomial standard error of our test accuracy and the standard error of the timm seeds' mean."""
    seeds = [float(r["test_accuracy"]) for r in timm["seeds"]]
    t_mean, t_best = float(np.mean(seeds)), max(seeds)
    t_se = float(np.std(seeds, ddof=1) / math.sqrt(len(seeds))) if len(seeds) > 1 else None   # one seed: unknown
    row: dict[str, Any] = {"timm": timm["model"], "timm_latency_ms": timm_latency_ms, "timm_seed_accuracies": seeds,
                           "timm_test_accuracy": t_mean, "timm_test_accuracy_best_seed": t_best,
                           "timm_mean_standard_error": t_se, "n_test_images": n_test}
    for name, by in (*PICKS.items(), ("optimistic_best_by_test", "test")):
        c, within = pick(candidates, timm_latency_ms, by)
        lo, hi = wilson_interval(c["test"], n_test)
        se = math.sqrt(c["test"] * (1 - c["test"]) / n_test) if n_test else float("nan")
        half = 1.96 * math.sqrt(se * se + (t_se or 0.0) ** 2)
        gain = 100 * (c["test"] - t_mean)
        row[name] = {"label": c["label"], "r": c.get("r"), "latency_ms": c["latency_ms"],
                     "latency_ratio": c["latency_ms"] / timm_latency_ms, "at_or_below_timm_latency": within,
                     "val_accuracy": c["val"], "predicted_accuracy": c["predicted"], "test_accuracy": c["test"],
                     "test_accuracy_ci95": [lo, hi], "gain_points": gain,
                     "gain_interval_points": [gain - 100 * half, gain + 100 * half],
                     "gain_vs_best_seed_points": 100 * (c["test"] - t_best)}
    return row


def candidates_from_points(points: list[dict[str, Any]], latencies: dict[str, float]) -> list[dict[str, Any]]:
    """Our specialized nets as candidates: grid label -> measured latency, with the validation, predicted and test
    accuracy of the same extraction (the bench's own points)."""
    by_label = {p["kind"].split("@", 1)[1]: p for p in points if p["kind"].startswith("specialized@")}
    return [{"label": label, "latency_ms": float(ms), "val": by_label[label]["val"],
             "predicted": by_label[label]["predicted"], "test": by_label[label]["real"],
             "r": by_label[label]["arch"]["r"]} for label, ms in latencies.items() if label in by_label]


def n_test_images(result: dict[str, Any]) -> int:
    """Test images the accuracies were measured on: stored by newer results, else rebuilt from the data config."""
    if result.get("n_test_images"):
        return int(result["n_test_images"])
    from ofa.data import data_from_config

    return len(data_from_config(result["data"]).test)


def print_corrected(rows: list[dict[str, Any]]) -> None:
    print(f"{'timm (mean of seeds)':30s} {'lat ms':>7s} | pick by  {'lat ms':>7s} {'ratio':>6s} {'test acc [95% CI]':>22s} "
          f"{'gain vs mean [interval]':>25s} {'vs best':>7s}")
    for r in rows:
        head = f"{r['timm']:20s} {100 * r['timm_test_accuracy']:6.2f}%   {r['timm_latency_ms']:7.3f}"
        for name in (*PICKS, "optimistic_best_by_test"):
            c = r[name]
            lo, hi = c["test_accuracy_ci95"]
            g_lo, g_hi = c["gain_interval_points"]
            tag = {"validation": "val", "predicted": "pred", "optimistic_best_by_test": "TEST*"}[name]
            print(f"{head:30s} | {tag:6s} {c['latency_ms']:8.3f} {c['latency_ratio']:5.2f}x "
                  f"{100 * c['test_accuracy']:6.2f}% [{100 * lo:5.2f}-{100 * hi:5.2f}] {c['gain_points']:+6.2f} "
                  f"[{g_lo:+5.2f}, {g_hi:+5.2f}] {c['gain_vs_best_seed_points']:+7.2f}"
                  f"{'' if c['at_or_below_timm_latency'] else '  (none at or below: fastest)'}")
            head = ""
    print("  TEST*: best by test accuracy, a selection on the test split (optimistic; how earlier results picked)")


def corrected_from_results(path: Path) -> dict[str, Any]:
    """Recompute the timm comparison of a stored result with the honest picks (no retraining, no measuring)."""
    result = json.loads(path.read_text())
    n_test = n_test_images(result)
    rows, skipped = [], []
    for r in result["comparison"]:
        if "all_candidates" not in r:
            skipped.append({"timm": r["timm"], "why": r.get("ofa_error", "no candidates stored")})
            continue
        latencies = {candidate_label(c): c["latency_ms"] for c in r["all_candidates"]}
        cands = candidates_from_points(result["points"], latencies)
        if len(cands) != len(latencies):
            skipped.append({"timm": r["timm"], "why": "a candidate has no stored validation / predicted accuracy"})
            continue
        timm = {"model": r["timm"], "seeds": r.get("timm_seeds") or [{"test_accuracy": r["timm_test_accuracy"]}]}
        rows.append(compare_row(timm, r["timm_latency_ms"], cands, n_test))
    return {"source": str(path), "run": result.get("run"), "n_test_images": n_test, "comparison": rows,
            "skipped": skipped}


# ------------------------------------------------------------------------------------------------ timm
def train_timm(name: str, bundle, resolution: int, epochs: int, settings: dict[str, Any], seed: int,
               max_steps: int | None, calib_batches: list) -> tuple[torch.nn.Module, dict[str, float], float]:
    """Train from scratch (no pretrained weights, nothing downloaded); returns (model, test accuracies, seconds).

    Accuracies: `running` with the BN statistics training left, `recalibrated` after re-estimating them on the
    same training images our subnets are recalibrated on (the figure compared: both sides get the same treatment).
    """
    import timm
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    from ofa.data import augment_batch
    from ofa.training.evaluate import accuracy

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=bundle.n_classes, in_chans=3)
    model = model.to(memory_format=torch.channels_last)   # as fast on this CPU as our nets (same layout)
    bs = settings["batch_size"]
    steps = math.ceil(len(bundle.train) / bs) if max_steps is None else min(max_steps, math.ceil(len(bundle.train) / bs))
    opt = create_optimizer_v2(model, settings["opt"], lr=settings["lr"], weight_decay=settings["weight_decay"],
                              momentum=settings["momentum"])
    sched = CosineLRScheduler(opt, t_initial=epochs * steps, lr_min=settings["lr"] * 0.01,
                              warmup_t=int(settings["warmup_epochs"] * steps), warmup_lr_init=settings["lr"] * 0.01,
                              t_in_epochs=False)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=settings["label_smoothing"])
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        for step, (x, y) in enumerate(bundle.loader("train", batch_size=bs, resolution=resolution, shuffle=True,
                                                    seed=seed + epoch)):
            if step >= steps:
                break
            if settings.get("augment", True):
                x = augment_batch(x, gen, bundle.flip).contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step_update(num_updates=epoch * steps + step + 1)
        print(f"    {name} epoch {epoch + 1}/{epochs} ({time.time() - t0:.0f} s)", flush=True)
    from elastic.bn_calibration import recalibrate_bn

    secs = time.time() - t0
    running = accuracy(model.eval(), bundle, "test", resolution)
    recalibrate_bn(model, calib_batches)
    return model.eval(), {"running": running, "recalibrated": accuracy(model, bundle, "test", resolution)}, secs


# ------------------------------------------------------------------------------------------------ main
class BenchSetup(NamedTuple):
    """The run under test and the bench's settings (`--quick` applied)."""
    args: argparse.Namespace
    rd: RunDir
    space: Any
    pred: Any                  # the run's accuracy predictor (None with --timm-only)
    bundle: Any                # the run's data
    quick: bool
    n_archs: int               # random subnets for the predictor check
    calib: int                 # BN calibration images
    models: list[str]          # timm models
    epochs: int                # timm training epochs
    max_steps: int | None      # timm training steps per epoch (None: the whole training set)
    resolution: int            # the data's own resolution (the space's largest)
    rounds: int                # latency measurement rounds
    cache: Cache
    sn_hash: str               # the supernet's digest ("-" with --timm-only)
    t_start: float


class DeviceSession(NamedTuple):
    """The device specialized for, and the first measurement session: the timm nets beside the space's anchors."""
    device: str                          # profile name or file
    device_name: str
    anchors: dict[str, Arch]
    anchor_pred: dict[str, float]        # profile milliseconds
    anchor_nets: dict[str, torch.nn.Module]
    first: dict[str, float]              # measured milliseconds (timm nets and anchors)
    scale: float                         # measured / profile milliseconds in this session


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="trained run directory with a fitted accuracy predictor")
    ap.add_argument("--from-results", nargs="+", type=Path, metavar="JSON",
                    help="recompute the timm comparison of stored results (bench/results/specialize_quality_*.json) "
                         "with the picks by validation and by predicted accuracy, and stop: no training or timing; "
                         "writes <name>_corrected.json beside each")
    ap.add_argument("--device", default="cpu", help="profile to specialize for (default cpu; fitted here if missing)")
    ap.add_argument("--archs", type=int, default=30, help="random subnets for the predictor check")
    ap.add_argument("--epochs", type=int, default=None, help="timm training epochs (default: the run's total)")
    ap.add_argument("--subset", type=int, default=None, help="train the timm nets on this many training images")
    ap.add_argument("--models", default=",".join(TIMM_MODELS), help="timm models (comma-separated)")
    ap.add_argument("--calib-images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training/evaluation")
    ap.add_argument("--rounds", type=int, default=30, help="latency measurement rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timm-seeds", type=int, default=2,
                    help="from-scratch trainings per timm net (seeds SEED, SEED+1, ...): compared by their mean")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--timm-only", action="store_true",
                    help="train (and cache) the timm baselines, then stop: e.g. beside the supernet's training "
                         "(needs --epochs while the run is unfinished); the full bench later reads them from the cache")
    ap.add_argument("--quick", action="store_true",
                    help="tiny settings (6 archs, 2 timm models, 1 epoch of <= 20 steps, 256 calibration images)")
    args = ap.parse_args()
    if not args.from_results:
        if args.run is None:
            ap.error("--run is required (or --from-results)")
        if args.timm_only and args.epochs is None:
            raise SystemExit("--timm-only needs --epochs (the run may still be training: its epoch count is not final)")
    return args


def recompute_from_results(paths: list[Path]) -> None:
    """`--from-results`: each stored result's timm comparison recomputed and printed, written beside it."""
    for path in paths:
        out = corrected_from_results(path)
        print(f"{path} ({out['n_test_images']} test images):")
        print_corrected(out["comparison"])
        for row in out["skipped"]:
            print(f"  {row['timm']}: not recomputed ({row['why'][:120]})")
        dest = path.with_name(f"{path.stem}_corrected.json")
        atomic.write_json(dest, out)
        print(f"wrote {dest}\n")


def load_setup(args: argparse.Namespace) -> BenchSetup:
    """The run (space, predictor, data, supernet digest) and the settings, with `--quick`'s applied."""
    torch.set_num_threads(args.threads)
    rd = RunDir(args.run)
    space = rd.load_space()
    from predictors.accuracy import AccuracyPredictor

    pred = None if args.timm_only else AccuracyPredictor.load(rd.path / "predictors")
    bundle = rd.load_data()
    quick = args.quick
    n_archs = 6 if quick else args.archs
    calib = 256 if quick else args.calib_images
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if quick and args.models == ",".join(TIMM_MODELS):
        models = ["mobilenetv3_small_050", "mobilenetv3_large_100"]
    epochs = args.epochs or (1 if quick else run_epochs(rd, len(bundle.train)))
    max_steps = 20 if quick else None
    resolution = max(space.resolutions)
    rounds = 5 if quick else args.rounds
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = Cache(rd.path / "bench" / "specialize_quality_cache.json", enabled=not args.no_cache)
    sn_hash = "-" if args.timm_only else file_digest(rd.weights_file)[:16]
    t_start = time.time()
    print(f"run {rd.path}: space {space.name}, data {bundle.name}, supernet {sn_hash}, "
          f"predictor {pred.kind if pred else '-'}")
    return BenchSetup(args, rd, space, pred, bundle, quick, n_archs, calib, models, epochs, max_steps, resolution,
                      rounds, cache, sn_hash, t_start)


def train_timm_baselines(setup: BenchSetup) -> tuple[dict[str, Any], dict[str, dict[str, Any]],
                                                     dict[str, torch.nn.Module], list]:
    """(b1) The timm baselines trained from scratch (cached), every seed: (training settings, a row per model, an
    untrained module per model for timing, the calibration batches at the data's resolution)."""
    args, rd, bundle, cache = setup.args, setup.rd, setup.bundle, setup.cache
    models, epochs, max_steps = setup.models, setup.epochs, setup.max_steps
    quick, calib, resolution = setup.quick, setup.calib, setup.resolution
    settings = train_settings(rd)
    if settings["source"] != "train_state.pt":   # the timm nets would not train like the supernet did
        if args.timm_only:   # and the full bench, reading the run's settings later, would not find them
            raise SystemExit(f"--timm-only: {rd.path} has no readable train_state.pt yet (start it after the run's "
                             f"first save); the timm nets would train with bench defaults ({settings['source']})")
        print(f"WARNING: {rd.path} has no readable train_state.pt; timm nets train with bench defaults "
              f"({settings['source']})", flush=True)
    print(f"  timm training settings: {settings}", flush=True)
    if args.subset:
        from ofa.data import subset

        bundle.train = subset(bundle.train, range(min(args.subset, len(bundle.train))))
    import timm

    from ofa.training.evaluate import calibration_batches

    timm_rows: dict[str, dict[str, Any]] = {}
    timm_models: dict[str, torch.nn.Module] = {}
    timm_calib = calibration_batches(bundle, resolution, calib, seed=args.seed)   # the images ours recalibrate on
    seeds = [args.seed + i for i in range(1 if quick else args.timm_seeds)]
    for name in models:
        runs = []
        for seed in seeds:
            key = json.dumps(["timm", name, bundle.config, args.subset, epochs, max_steps, resolution, settings, seed,
                              "bn-recalibrated", calib], sort_keys=True, default=str)
            row = cache.get(key)
            if row is None:
                print(f"  training {name} from scratch (seed {seed}): {epochs} epoch(s) at {resolution} px ...",
                      flush=True)
                model, accs, secs = train_timm(name, bundle, resolution, epochs, settings, seed, max_steps, timm_calib)
                row = {"model": name, "seed": seed, "test_accuracy": accs["recalibrated"],
                       "test_accuracy_running_bn": accs["running"], "train_seconds": secs, "epochs": epochs,
                       "params": sum(p.numel() for p in model.parameters())}
                cache.put(key, row)
            print(f"    {name} seed {seed}: test {row['test_accuracy']:.2%} (BN recalibrated), "
                  f"{row['test_accuracy_running_bn']:.2%} (as trained)", flush=True)
            runs.append(row)
        accs = [r["test_accuracy"] for r in runs]
        timm_rows[name] = {"model": name, "test_accuracy": float(np.mean(accs)), "test_accuracy_min": min(accs),
                           "test_accuracy_max": max(accs), "seeds": runs, "epochs": epochs}
        timm_models[name] = timm.create_model(name, pretrained=False, num_classes=bundle.n_classes, in_chans=3)
    return settings, timm_rows, timm_models, timm_calib


def measure_timm_latency(setup: BenchSetup, timm_rows: dict[str, dict[str, Any]],
                         timm_models: dict[str, torch.nn.Module]) -> DeviceSession:
    """(b2) The device profile, and the timm nets' latency on this CPU measured beside the space's anchor subnets
    (each timm row gets its `latency_ms`)."""
    space, resolution, rounds = setup.space, setup.resolution, setup.rounds
    device = cpu_profile(space, setup.args.device, setup.quick, 1, setup.rd.path)
    from predictors.profiles import load_profile

    device_name = load_profile(device).name
    from predictors.latency import get_latency_predictor
    from predictors.measure import build_module

    lat_pred = get_latency_predictor(device, space)
    anchors = anchor_subnets(space)
    anchor_pred = dict(zip(anchors, map(float, lat_pred.predict(list(anchors.values())))))
    anchor_nets = {k: ResizedInput(build_module(space.net_spec(a)), a.r, resolution).eval()
                   for k, a in anchors.items()}
    first = measure_modules({**timm_models, **anchor_nets}, space.in_channels, resolution, threads=1, rounds=rounds)
    scale = session_scale(first, anchor_pred)
    for name in setup.models:
        timm_rows[name]["latency_ms"] = first[name]
    return DeviceSession(device, device_name, anchors, anchor_pred, anchor_nets, first, scale)


def budget_grid(setup: BenchSetup, session: DeviceSession, timm_rows: dict[str, dict[str, Any]]
                ) -> tuple[list[tuple[str, float, int | None]], float, float]:
    """(label, budget in profile ms, resolution or None) of every search, the space's floor and ceiling (profile ms).

    A grid of budgets over the timm nets' latency range: the profile's error (a few %) and the spread between two
    measurement sessions would otherwise leave "equal latency" to chance. The grid is in the profile's
    milliseconds, so the timm latencies of this session are divided by the session's scale (anchors measured
    beside them); it starts at the space's floor when a timm net is faster than that and ends at the space's
    largest subnet when a timm net is slower than that. Every net is then measured side by side with the timm
    nets, and each timm net is matched with the most accurate of ours measured at or below it in that session."""
    space, resolution, models = setup.space, setup.resolution, setup.models
    anchors, anchor_pred, scale, device_name = session.anchors, session.anchor_pred, session.scale, session.device_name
    lats = [timm_rows[n]["latency_ms"] / scale for n in models]
    floor = min(v for k, v in anchor_pred.items() if "smallest" in k)
    ceiling = max(v for k, v in anchor_pred.items() if "largest" in k)   # above it every budget gives the largest
    lo, hi = max(0.7 * min(lats), 1.002 * floor), min(max(1.2 * max(lats), 1.01 * floor), 1.002 * ceiling)
    at_floor = lambda v: math.ceil(v * 1e4) / 1e4   # noqa: E731  (a budget only the smallest subnet meets)
    budgets = sorted({round(float(b), 3) for b in np.geomspace(lo, hi, GRID_BUDGETS)})
    if lo <= 1.002 * floor:
        budgets = sorted(set(budgets) | {at_floor(floor)})
    print(f"  session scale {scale:.3f} (measured / {device_name} profile, median over {len(anchors)} anchor "
          f"subnets); the space's floor is {floor:.3f} profile ms", flush=True)
    print(f"  specializing {space.name} for {device_name} at {', '.join(f'{b:g} ms' for b in budgets)} ...", flush=True)
    # A second grid searched at the data's own resolution only (`ofa specialize --resolution`): such a net needs no
    # resize, which the profile (each net timed at its own input size) does not count, while on 32-px data a lower
    # resolution pays a resize that eats most of what it saves on these tiny nets.
    grid = [(f"{b:g}ms", b, None) for b in budgets]
    if resolution in space.resolutions and len(space.resolutions) > 1:
        native_floor = anchor_pred[f"anchor:smallest@{resolution}"]
        native = sorted({at_floor(native_floor)} | {b for b in budgets if b >= 1.002 * native_floor})
        grid += [(f"{b:g}ms-r{resolution}", b, resolution) for b in native]
    return grid, floor, ceiling


def specialize_grid(setup: BenchSetup, device: str, grid: list[tuple[str, float, int | None]]) -> dict[str, Any]:
    """`ofa specialize` at every budget of the grid: label -> Specialized, or the exception an infeasible budget
    raised (a result too)."""
    from ofa.specialization import specialize

    specs: dict[str, Any] = {}
    for label, b, res in grid:
        try:
            (s,) = specialize(setup.rd.path, device=device, latency=b, calib_images=setup.calib, measure=False,
                              seed=setup.args.seed, resolution=res)
            specs[label] = s
        except Exception as exc:  # an infeasible budget (timm net faster than any subnet) is a result too
            specs[label] = exc
            print(f"    {label}: {exc}")
    return specs


def measure_side_by_side(setup: BenchSetup, session: DeviceSession, specs: dict[str, Any],
                         timm_models: dict[str, torch.nn.Module], floor: float, ceiling: float
                         ) -> tuple[dict[str, float], dict[str, Any]]:
    """Our specialized nets measured side by side with the timm nets that set the budgets (same session, same
    procedure, same input: each of ours resizes it to its own resolution inside the timed module), two runtime
    sessions each: (latency per net, the session's record: scales, floor, ceiling, anchors)."""
    from ofa import load

    space, resolution, rounds, quick = setup.space, setup.resolution, setup.rounds, setup.quick
    anchors, anchor_pred, first = session.anchors, session.anchor_pred, session.first
    ours = {f"ofa@{label}": ResizedInput(load(s.path), s.arch.r, resolution).eval() for label, s in specs.items()
            if not isinstance(s, Exception)}
    both = measure_modules({**ours, **timm_models, **session.anchor_nets}, space.in_channels, resolution, threads=1,
                           rounds=rounds, instances=1 if quick else 2)
    latency_session = {"scale_first": session.scale, "scale_side_by_side": session_scale(both, anchor_pred),
                       "floor_profile_ms": floor, "ceiling_profile_ms": ceiling,
                       "anchors": {k: {"arch": anchors[k].to_dict(), "predicted_ms": anchor_pred[k],
                                       "first_ms": first[k], "side_by_side_ms": both[k]} for k in anchors}}
    return both, latency_session


def evaluate_subnets(setup: BenchSetup, specs: dict[str, Any], timm_calib: list) -> list[dict[str, Any]]:
    """(a) Random held-out subnets (size-spread, none the predictor was fitted on) and every specialized net,
    extracted, BN-recalibrated and evaluated (cached): points with their test (`real`) and validation accuracy."""
    from elastic.bn_calibration import recalibrate_bn
    from ofa.training.evaluate import accuracy, calibration_batches

    from ofa.accuracy_data import dataset_paths, plan_subnets, read_dataset

    args, rd, space, bundle, cache = setup.args, setup.rd, setup.space, setup.bundle, setup.cache
    n_archs, calib, resolution, sn_hash = setup.n_archs, setup.calib, setup.resolution, setup.sn_hash
    csv_path = dataset_paths(rd.path)[0]
    fitted_on = set(read_dataset(csv_path).archs) if csv_path.exists() else set()
    plan = plan_subnets(space, 4 * n_archs + len(fitted_on) + 8, seed=args.seed + 7919)   # size-spread draws
    archs = [a for a in plan if a not in fitted_on][:n_archs]    # held out: none the predictor was fitted on
    supernet = rd.load_supernet()
    calib_cache: dict[int, list] = {resolution: timm_calib}   # same images, drawn once per resolution
    points = [{"arch": a.to_dict(), "kind": "random"} for a in archs]
    points += [{"arch": s.arch.to_dict(), "kind": f"specialized@{label}"} for label, s in specs.items()
               if not isinstance(s, Exception)]
    for i, p in enumerate(points):
        a = Arch.from_dict(p["arch"])
        key = json.dumps(["arch+val", sn_hash, a.to_dict(), calib, args.seed, bundle.config], sort_keys=True,
                         default=str)
        got = cache.get(key)
        if got is None:
            net = supernet.extract(a)
            if a.r not in calib_cache:
                calib_cache[a.r] = calibration_batches(bundle, a.r, calib, seed=args.seed)
            recalibrate_bn(net, calib_cache[a.r])
            got = {"test": accuracy(net, bundle, "test", a.r), "val": accuracy(net, bundle, "val", a.r)}
            cache.put(key, got)
        p["real"], p["val"] = got["test"], got["val"]
        print(f"    subnet {i + 1}/{len(points)} ({p['kind']}): test {p['real']:.2%}, val {p['val']:.2%}", flush=True)
    return points


def predictor_check(pred: Any, points: list[dict[str, Any]]) -> dict[str, Any]:
    """The accuracy predictor against the measured test and validation accuracies of `points` (each point gets
    its `predicted` accuracy)."""
    predicted = pred.predict([Arch.from_dict(p["arch"]) for p in points])
    for p, q in zip(points, predicted):
        p["predicted"] = float(q)
    real = np.array([p["real"] for p in points])
    val = np.array([p["val"] for p in points])
    err = np.abs(real - predicted)
    return {"n": len(points), "mean_abs_error_points": 100 * float(err.mean()),
            "max_abs_error_points": 100 * float(err.max()), "kendall_tau": kendall_tau(real, predicted),
            "mean_signed_error_points": 100 * float((real - predicted).mean()),
            "val_mean_abs_error_points": 100 * float(np.abs(val - predicted).mean()),
            "val_kendall_tau": kendall_tau(val, predicted),
            "val_to_test_gap_points": 100 * float((real - val).mean()),
            "target_mean_abs_error_points": 0.5, "meets_target": bool(100 * err.mean() <= 0.5),
            "predictor_report": {k: pred.report.get(k) for k in ("chosen", "n_rows", "holdout")}}


def compare_with_timm(setup: BenchSetup, session: DeviceSession, grid: list[tuple[str, float, int | None]],
                      specs: dict[str, Any], both: dict[str, float], timm_rows: dict[str, dict[str, Any]],
                      points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per timm net against the net picked by validation accuracy among ours measured at or below its
    latency (and, beside it, by predicted accuracy); the test accuracy of the pick, with a 95% interval."""
    space, anchor_nets = setup.space, session.anchor_nets
    budget_of = {label: b for label, b, _ in grid}
    n_test = len(setup.bundle.test)
    rows = []
    feasible = [(label, s) for label, s in specs.items() if not isinstance(s, Exception)]
    cands = candidates_from_points(points, {label: both[f"ofa@{label}"] for label, _ in feasible})
    for name in setup.models:
        t = timm_rows[name]
        row = {"timm": name, "timm_latency_ms": both[name], "timm_test_accuracy": t["test_accuracy"],
               "timm_test_accuracy_range": [t["test_accuracy_min"], t["test_accuracy_max"]], "timm_seeds": t["seeds"]}
        if not feasible:
            row["ofa_error"] = str(specs[grid[0][0]])
        elif all(both[f"ofa@{label}"] > 1.1 * both[name] for label, _ in feasible):
            fastest = min(both[f"ofa@{label}"] for label, _ in feasible)
            row["ofa_error"] = (f"the fastest specialized net measures {fastest:.3f} ms, more than 10% slower "
                                f"(the space's fastest subnet measures {min(both[k] for k in anchor_nets):.3f} ms)")
        else:
            picked = compare_row(t, both[name], cands, n_test)
            chosen = picked["validation"]
            label = chosen["label"]
            s = specs[label]
            row.update(picked, budget=label, budget_ms=budget_of[label],
                       resolutions_searched=s.extra.get("resolutions", list(space.resolutions)),
                       ofa_arch=s.arch.to_dict(), ofa_predicted_latency_ms=s.predicted_latency_ms,
                       ofa_latency_ms=chosen["latency_ms"], ofa_test_accuracy=chosen["test_accuracy"],
                       ofa_test_accuracy_ci95=chosen["test_accuracy_ci95"], ofa_val_accuracy=chosen["val_accuracy"],
                       ofa_predicted_accuracy=chosen["predicted_accuracy"], latency_ratio=chosen["latency_ratio"],
                       accuracy_gain_points=chosen["gain_points"],
                       accuracy_gain_vs_best_seed_points=chosen["gain_vs_best_seed_points"],
                       at_or_below_timm_latency=chosen["at_or_below_timm_latency"], picked_by="validation accuracy",
                       all_candidates=[{"budget": c["label"], "latency_ms": c["latency_ms"], "r": c["r"],
                                        "val_accuracy": c["val"], "predicted_accuracy": c["predicted"],
                                        "test_accuracy": c["test"]} for c in cands])
        rows.append(row)
    return rows


def print_report(rows: list[dict[str, Any]], predictor: dict[str, Any]) -> None:
    """The comparison table, every pick, and the predictor's errors."""
    print()
    print(f"{'timm model':24s} {'lat ms':>8s} {'acc: mean (range over seeds)':>29s} | ours, picked by validation: "
          f"{'lat ms':>7s} {'(pred)':>7s} {'test acc [95% CI]':>21s} {'gain':>6s}")
    for r in rows:
        lo, hi = r["timm_test_accuracy_range"]
        line = (f"{r['timm']:24s} {r['timm_latency_ms']:8.3f} {100 * r['timm_test_accuracy']:6.2f}% "
                f"({100 * lo:.2f}-{100 * hi:.2f}) | ")
        if "ofa_error" in r:
            line += "infeasible: " + r["ofa_error"]
        else:
            c_lo, c_hi = r["ofa_test_accuracy_ci95"]
            line += (f"{r['ofa_latency_ms']:7.3f} {r['ofa_predicted_latency_ms']:7.3f} "
                     f"{100 * r['ofa_test_accuracy']:6.2f}% [{100 * c_lo:.2f}-{100 * c_hi:.2f}] "
                     f"{r['accuracy_gain_points']:+6.2f}  r={r['ofa_arch']['r']} (searched {r['budget']})"
                     f"{'' if r['at_or_below_timm_latency'] else '  (none of ours measured at or below; closest)'}")
        print(line)
    comparable = [r for r in rows if "ofa_error" not in r]
    if comparable:
        print("\nall picks (validation / predicted accuracy; TEST* = best by test, optimistic):")
        print_corrected(comparable)
    print(f"\npredictor on {predictor['n']} subnets (test split): mean |real - predicted| "
          f"{predictor['mean_abs_error_points']:.2f} points (target <= 0.5), max {predictor['max_abs_error_points']:.2f}, "
          f"Kendall tau {predictor['kendall_tau']:.3f}; on the validation split it predicts: mean |val - predicted| "
          f"{predictor['val_mean_abs_error_points']:.2f} points, tau {predictor['val_kendall_tau']:.3f}; "
          f"test - val {predictor['val_to_test_gap_points']:+.2f} points on average")


def write_results(setup: BenchSetup, session: DeviceSession, settings: dict[str, Any],
                  latency_session: dict[str, Any], rows: list[dict[str, Any]], predictor: dict[str, Any],
                  points: list[dict[str, Any]]) -> None:
    """bench/results/specialize_quality_<run>.json (`--quick`: RUN/bench/specialize_quality_quick.json)."""
    rd, bundle, quick = setup.rd, setup.bundle, setup.quick
    out = {"run": str(rd.path), "space": setup.space.name, "data": bundle.config, "supernet_sha256_16": setup.sn_hash,
           "device": session.device_name, "device_profile": session.device, "quick": quick, "epochs": setup.epochs,
           "subset": setup.args.subset, "train_settings": settings,
           "resolution": setup.resolution, "n_test_images": len(bundle.test), "latency_session": latency_session,
           "comparison": rows, "predictor": predictor, "points": points,
           "seconds": time.time() - setup.t_start}
    dest = (rd.path / "bench" / "specialize_quality_quick.json" if quick
            else RESULTS / f"specialize_quality_{rd.path.name}.json")
    atomic.write_json(dest, out)
    print(f"wrote {dest} ({out['seconds']:.0f} s)")


def main() -> None:
    args = parse_args()
    if args.from_results:
        recompute_from_results(args.from_results)
        return
    setup = load_setup(args)
    # ---- (b1) timm baselines: train (cached), then measure side by side later
    settings, timm_rows, timm_models, timm_calib = train_timm_baselines(setup)
    if args.timm_only:
        print(f"timm baselines trained and cached in {setup.cache.path} ({time.time() - setup.t_start:.0f} s)",
              flush=True)
        return
    # ---- (b2) timm latency on this CPU, then specialize for the device at each timm latency
    session = measure_timm_latency(setup, timm_rows, timm_models)
    grid, floor, ceiling = budget_grid(setup, session, timm_rows)
    specs = specialize_grid(setup, session.device, grid)
    both, latency_session = measure_side_by_side(setup, session, specs, timm_models, floor, ceiling)
    # ---- (a) predictor vs. reality on random subnets (+ the specialized ones)
    points = evaluate_subnets(setup, specs, timm_calib)
    predictor = predictor_check(setup.pred, points)
    # ---- report: each timm net against the pick among ours; the test accuracy of the pick, with a 95% interval
    rows = compare_with_timm(setup, session, grid, specs, both, timm_rows, points)
    print_report(rows, predictor)
    write_results(setup, session, settings, latency_session, rows, predictor, points)


if __name__ == "__main__":
    main()
