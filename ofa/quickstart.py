"""The main job: train a supernet with the quick schedule, fit its predictors, and specialize it for several
devices and budgets. Every step resumes: running it again continues where it stopped and redoes nothing done.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from elastic.errors import OFAError

DEFAULT_DEVICES = ("cpu", "pixel1", "note10")
BUDGET_FRACTIONS = (0.3, 0.55, 0.8)   # where budgets sit between a device's fastest and slowest subnet


def auto_budgets(space, lat_pred, fractions: Sequence[float] = BUDGET_FRACTIONS) -> list[float]:
    """Budgets (ms) spread over the latency range the space spans on a device, rounded to 3 significant digits."""
    lo, hi = (float(v) for v in lat_pred.predict([space.smallest(), space.largest()]))
    return [float(f"{lo + f * (hi - lo):.3g}") for f in fractions]


def _cpu_profile(run_path: Path, space, say: Callable[[str], None]) -> Path:
    """This machine's measured profile for the run's space (measured once, kept in the run directory)."""
    from predictors.measure import fit_measured_profile
    from predictors.profiles import load_profile_file

    path = run_path / "profiles" / "cpu.json"
    if path.exists():
        try:
            load_profile_file(path)
            say(f"cpu latency profile: reusing {path}")
            return path
        except OFAError:
            say(f"cpu latency profile at {path} is unreadable; measuring again")
    say("measuring this CPU (ONNX Runtime, 1 thread) on sampled subnets ...")
    prof = fit_measured_profile(space, name="cpu", device="cpu", runtime="onnxruntime", threads=1, n_fit=40,
                                n_test=12, rounds=5)
    prof.save(path)
    say(f"cpu latency profile: {prof.error.get('summary', '')} -> {path}")
    return path


def quickstart(run: str | Path = "checkpoints/quickstart", *, data: str | None = None,
               devices: Sequence[str] = DEFAULT_DEVICES, samples: int = 200, schedule: str = "quick",
               seed: int = 0, say: Callable[[str], None] = print, train_overrides: dict[str, Any] | None = None,
               calib_images: int = 1000) -> dict[str, Any]:
    from ofa import atomic
    from ofa.accuracy_data import collect_from_run
    from ofa.run_dir import RunDir
    from ofa.specialization import specialize
    from ofa.training import TrainConfig, train
    from predictors.accuracy import AccuracyPredictor, fit_accuracy_predictor, format_report
    from predictors.latency import get_latency_predictor
    from predictors.profiles import load_profile

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    rd = RunDir(run)

    # 1) train (resumes from train_state.pt when a previous attempt stopped)
    t0 = time.perf_counter()
    all_done = set(rd.trained_stages()) >= {"full", "kernel", "depth", "expand"} and rd.weights_file.exists()
    resume = rd.state_file.exists()
    if all_done and not resume:
        say(f"training: {rd.path} already holds every stage; skipping")
    else:
        cfg = TrainConfig(run=str(rd.path), stage="all", schedule=schedule, data={"name": data} if data else {},
                          seed=seed, **(train_overrides or {}))
        train(cfg, resume=resume, log=say)
    timings["train_s"] = time.perf_counter() - t0
    space = rd.load_space()

    # 2) accuracy predictor (collection resumes; fitting is cheap)
    t0 = time.perf_counter()
    pred_dir = rd.path / "predictors"
    data_set = collect_from_run(rd.path, samples, seed=seed, resume=True, calib_images=calib_images,
                                progress=True)
    acc_pred = fit_accuracy_predictor(space, data_set.archs, data_set.accuracies, seed=seed)
    acc_pred.meta.update({"run": str(rd.path)})
    acc_pred.save(pred_dir)
    say(format_report(acc_pred.report))
    timings["predictor_s"] = time.perf_counter() - t0

    # 3) devices: this CPU measured, the others from shipped profiles
    t0 = time.perf_counter()
    device_args = []
    for dev in devices:
        device_args.append(str(_cpu_profile(rd.path, space, say)) if dev == "cpu" else dev)
    timings["profile_s"] = time.perf_counter() - t0

    # 4) specialize each device at budgets spread over its latency range
    t0 = time.perf_counter()
    rows = []
    for dev in device_args:
        prof = load_profile(dev)
        budgets = auto_budgets(space, get_latency_predictor(prof, space))
        say(f"specializing for {prof.name} at {', '.join(f'{b:g} ms' for b in budgets)} ...")
        # a published mobile profile was fit on 152-240 px networks: on a small-input space it can only
        # extrapolate, and does so explicitly (each result is marked extrapolated in its note and arch.json)
        outside = prof.domain is not None and not any(prof.domain.holds(space.family, r) for r in space.resolutions)
        if outside:
            say(f"{prof.name}: extrapolating, outside {prof.domain.describe()}")
        for r in specialize(rd.path, device=dev, latency=budgets, pareto=True, seed=seed, calib_images=calib_images,
                            allow_extrapolation=outside):
            rows.append(r.to_dict())
    timings["specialize_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    errs = [abs(r["test_accuracy"] - r["predicted_accuracy"]) for r in rows if r["test_accuracy"] is not None]
    summary = {
        "run": str(rd.path), "space": space.name, "data": rd.data_config(),
        "accuracy_predictor": AccuracyPredictor.load(pred_dir).report,
        "stage_evals": {s: rd.stage_eval(s) for s in rd.trained_stages()},
        "results": rows, "mean_abs_accuracy_error": float(np.mean(errs)) if errs else None, "timings": timings,
    }
    atomic.write_json(rd.path / "summary.json", summary)
    return summary


def render_summary(summary: dict[str, Any]) -> str:
    from rich.console import Console
    from rich.table import Table

    from elastic.arch import Arch

    table = Table(title=f"{summary['space']} specialized ({summary['run']})")
    for col in ("device", "budget", "arch", "MACs", "pred. lat", "meas. lat", "pred. acc", "real acc"):
        table.add_column(col)
    ms = lambda v: "-" if v is None else f"{v:.2f} ms"  # noqa: E731
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    for r in summary["results"]:
        table.add_row(r["device"], r["budget"], Arch.from_dict(r["arch"]).summary(), f"{r['macs'] / 1e6:.1f}M",
                      ms(r["predicted_latency_ms"]), ms(r["measured_latency_ms"]), pct(r["predicted_accuracy"]),
                      pct(r["test_accuracy"]))
    console = Console(width=160, record=True)
    with console.capture() as cap:
        console.print(table)
        t = summary["timings"]
        err = summary.get("mean_abs_accuracy_error")
        console.print(f"time: train {t['train_s']:.0f} s, predictors {t['predictor_s']:.0f} s, profiling "
                      f"{t['profile_s']:.0f} s, specialization {t['specialize_s']:.0f} s, total {t['total_s']:.0f} s")
        if err is not None:
            console.print(f"mean |real - predicted| accuracy: {100 * err:.2f} points")
        console.print(f"summary: {summary['run']}/summary.json; Pareto plots: {summary['run']}/specialized/*_pareto.png")
    return cap.get()
