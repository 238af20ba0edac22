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
WEAK_TAU = 0.5                        # a predictor ranking held-out subnets worse than this gets a warning


def auto_budgets(space, lat_pred, fractions: Sequence[float] = BUDGET_FRACTIONS) -> list[float]:
    """Budgets (ms) spread over the latency range the space spans on a device, rounded to 3 significant digits."""
    lo, hi = (float(v) for v in lat_pred.predict([space.smallest(), space.largest()]))
    return [float(f"{lo + f * (hi - lo):.3g}") for f in fractions]


def _cpu_profile(run_path: Path, space, say: Callable[[str], None], n_fit: int = 40, n_test: int = 12,
                 rounds: int = 5) -> Path:
    """This machine's measured profile for the run's space (measured once, kept in the run directory)."""
    from ofa.progress import Progress, callback
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
    say(f"measuring this CPU (ONNX Runtime, 1 thread) on {n_fit} + {n_test} sampled subnets ...")
    with Progress() as bar:
        prof = fit_measured_profile(space, name="cpu", device="cpu", runtime="onnxruntime", threads=1, n_fit=n_fit,
                                    n_test=n_test, rounds=rounds, progress=callback(bar, "cpu profile"))
    prof.save(path)
    say(f"cpu latency profile: {prof.error.get('summary', '')} -> {path}")
    return path


class _Clock:
    """Seconds this job has used: this process's plus what earlier attempts recorded in the budget plan."""

    def __init__(self, offset: float = 0.0):
        self.offset, self.t0 = offset, time.monotonic()

    def used(self) -> float:
        return self.offset + time.monotonic() - self.t0


def _milestone(rd, plan, clock: _Clock, name: str) -> None:
    from ofa.training.time_budget import save_plan

    if plan is not None:
        plan.spent_s[name] = clock.used()
        save_plan(rd.path, plan)


def _final_accuracy(rd, space, calib_images: int) -> dict[str, dict[str, float]]:
    """The supernet's largest and smallest subnet on the validation and the test split (BN recalibrated)."""
    from ofa.training.evaluate import evaluate_arch

    net, bundle, cache = rd.load_supernet(), rd.load_data(), {}
    return {name: {split: evaluate_arch(net, arch, bundle, split, calib_images, "cpu", _calib_cache=cache)
                   for split in ("val", "test")}
            for name, arch in (("largest", space.largest()), ("smallest", space.smallest()))}


def _budgeted_predictor_data(rd, space, plan, clock: "_Clock", samples: int | None, seed: int,
                              say: Callable[[str], None]):
    """The accuracy dataset of a budgeted job: labels on the informative images (`ofa.informative_images`), as many
    subnets as the time left pays for -- sized when training is over and again once the pilot has measured which
    share of the images is informative (each decision stored in the plan; a resume reuses it)."""
    from ofa.accuracy_data import collect, dataset_paths, plan_subnets, read_dataset
    from ofa.informative_images import informative_evaluator
    from ofa.training.time_budget import STEADY_SUBNETS, resize_predictor, save_plan

    p = plan.predictor
    if not p.get("sized") and not samples:
        p["subnets"], p["sized"] = resize_predictor(plan, clock.used()), 1
        save_plan(rd.path, plan)
        say(f"time budget: {format_duration(clock.used())} used; the accuracy predictor gets {p['subnets']} subnets "
            f"(the first {p['pilot']} on all {p['val_images']} validation images)")
    pilot = plan_subnets(space, p["pilot"], seed)
    evaluate, images = informative_evaluator(rd.path, pilot, calib_images=p["calib_images"], limit=p["val_images"],
                                             uncapped=True)
    settings = {"data": rd.data_config(), "split": "val", "calib_images": p["calib_images"],
                "limit": p["val_images"], "labels": "informative images", "pilot": p["pilot"]}
    csv_path = dataset_paths(rd.path)[0]

    def timed_collect(n: int) -> tuple[float, int]:
        """Collect up to `n` subnets: (seconds it took, subnets measured in this process)."""
        before, t0 = len(read_dataset(csv_path, space)), time.monotonic()
        done = collect(space, csv_path, n, evaluate, settings=settings, seed=seed, resume=True)
        return time.monotonic() - t0, len(done) - before

    pilot_s, measured_now = timed_collect(p["pilot"])
    found = images()
    if not p.get("sized_after_pilot") and not samples:
        p["informative"] = found.fraction
        timed = measured_now == p["pilot"]   # the whole pilot ran in this process: its time calibrates the rest
        p["subnets"] = resize_predictor(plan, clock.used(), p["pilot"], pilot_seconds=pilot_s if timed else None)
        p["sized_after_pilot"] = 1
        save_plan(rd.path, plan)
        say(f"time budget: the pilot disagreed on {100 * found.fraction:.0f}% of the validation images; the others "
            f"are evaluated on those alone: {p['subnets']} subnets in all")
    steady = p["pilot"] + STEADY_SUBNETS
    if not p.get("sized_steady") and not samples and p["subnets"] >= steady + 2 * STEADY_SUBNETS:
        seconds, measured_now = timed_collect(steady)
        if measured_now == STEADY_SUBNETS:   # all of them timed in this process, none resumed
            was = p["subnets"]
            p["subnets"] = resize_predictor(plan, clock.used(), steady, recent=(STEADY_SUBNETS, seconds))
            say(f"time budget: {STEADY_SUBNETS} subnets on the informative images took {seconds:.1f} s; "
                f"{p['subnets']} subnets in all (was {was})")
        p["sized_steady"] = 1
        save_plan(rd.path, plan)
    return collect(space, csv_path, max(p["subnets"], p["pilot"]), evaluate, settings=settings, seed=seed,
                   resume=True)


def quickstart(run: str | Path = "checkpoints/quickstart", *, data: str | dict[str, Any] | None = None,
               devices: Sequence[str] = DEFAULT_DEVICES, samples: int | None = None, schedule: str = "quick",
               seed: int = 0, say: Callable[[str], None] = print, train_overrides: dict[str, Any] | None = None,
               calib_images: int = 1000, time_budget: float | None = None) -> dict[str, Any]:
    """The main job. `time_budget` (seconds): size training, predictor and profile so that the whole job ends
    within it (`ofa.training.time_budget`); None: the fixed-step schedule, `samples` subnets (default 200)."""
    from ofa import atomic
    from ofa.accuracy_data import collect_from_run
    from ofa.run_dir import RunDir
    from ofa.specialization import specialize
    from ofa.training import TrainConfig, train
    from ofa.training.time_budget import load_plan
    from predictors.accuracy import AccuracyPredictor, fit_accuracy_predictor, format_report
    from predictors.latency import get_latency_predictor
    from predictors.profiles import load_profile

    rd = RunDir(run)
    plan = load_plan(rd.path) if time_budget is not None else None
    clock = _Clock(max(plan.spent_s.values(), default=0.0) if plan is not None else 0.0)
    timings: dict[str, float] = {}

    # 1) train (resumes from train_state.pt when a previous attempt stopped; a budgeted run follows its plan)
    t0 = time.monotonic()
    all_done = set(rd.trained_stages()) >= {"full", "kernel", "depth", "expand"} and rd.weights_file.exists()
    resume = rd.state_file.exists()
    if all_done and not resume:
        say(f"training: {rd.path} already holds every stage; skipping")
    else:
        budget = {} if time_budget is None else {"time_budget": time_budget, "time_budget_scope": "quickstart",
                                                 "stage_eval": False}   # the job evaluates its supernet at the end
        data_cfg = {"name": data} if isinstance(data, str) else dict(data or {})
        cfg = TrainConfig(run=str(rd.path), stage="all", schedule=schedule, data=data_cfg,
                          seed=seed, **budget, **(train_overrides or {}))
        train(cfg, resume=resume, log=say, plan_options={"predictor_subnets": samples} if samples else None)
    if time_budget is not None:
        plan = load_plan(rd.path)
        if plan is not None and plan.rates.threads and not (train_overrides or {}).get("threads"):
            import torch

            torch.set_num_threads(plan.rates.threads)   # what the measurement found fastest (as training used)
        if plan is None:
            raise OFAError(f"{rd.path} was trained without a time budget; rerun with --time-budget off, or use "
                           f"another --run")
        if "trained" not in plan.spent_s:
            _milestone(rd, plan, clock, "trained")
    timings["train_s"] = time.monotonic() - t0
    space = rd.load_space()

    # 2) accuracy predictor (collection resumes; fitting is cheap). A budget sizes it to the time left, once.
    t0 = time.monotonic()
    pred_dir = rd.path / "predictors"
    if plan is None:
        data_set = collect_from_run(rd.path, samples or 200, seed=seed, resume=True, calib_images=calib_images,
                                    progress=True)
    else:
        data_set = _budgeted_predictor_data(rd, space, plan, clock, samples, seed, say)
    t_fit = time.monotonic()
    acc_pred = fit_accuracy_predictor(space, data_set.archs, data_set.accuracies, seed=seed)
    acc_pred.meta.update({"run": str(rd.path)})
    acc_pred.save(pred_dir)
    timings["fit_s"] = time.monotonic() - t_fit
    say(format_report(acc_pred.report))
    tau = acc_pred.report.get("holdout", {}).get("kendall_tau")
    if tau is not None and tau < WEAK_TAU:
        say(f"note: the accuracy predictor ranks held-out subnets poorly (Kendall tau {tau:.3f} < {WEAK_TAU}): the "
            f"specialized nets' predicted accuracies below are rough; a longer --time-budget measures more subnets")
    timings["predictor_s"] = time.monotonic() - t0
    _milestone(rd, plan, clock, "predictor")

    # 3) devices: this CPU measured, the others from shipped profiles
    t0 = time.monotonic()
    prof_size = plan.profile if plan is not None and plan.profile else {}
    device_args = []
    for dev in devices:
        device_args.append(str(_cpu_profile(rd.path, space, say, **prof_size)) if dev == "cpu" else dev)
    timings["profile_s"] = time.monotonic() - t0
    _milestone(rd, plan, clock, "profile")

    # 4) specialize each device at budgets spread over its latency range
    t0 = time.monotonic()
    rows = []
    for dev in device_args:
        prof = load_profile(dev)
        budgets = auto_budgets(space, get_latency_predictor(prof, space))
        measured_here = dev != prof.name   # this run's own cpu profile (a path); the others are shipped tables
        say(f"specializing for {prof.name} at {', '.join(f'{b:g} ms' for b in budgets)}"
            + ("" if measured_here else " (a shipped profile: results at resolutions outside those it was fit on "
                                        "are marked extrapolated)") + " ...")
        for r in specialize(rd.path, device=dev, latency=budgets, pareto=True, seed=seed, calib_images=calib_images,
                            allow_extrapolation=not measured_here):
            rows.append(r.to_dict())
    accuracy = _final_accuracy(rd, space, calib_images)
    timings["specialize_s"] = time.monotonic() - t0
    timings["total_s"] = time.monotonic() - clock.t0
    _milestone(rd, plan, clock, "specialized")

    errs = [abs(r["test_accuracy"] - r["predicted_accuracy"]) for r in rows if r["test_accuracy"] is not None]
    summary = {
        "run": str(rd.path), "space": space.name, "data": rd.data_config(),
        "accuracy_predictor": AccuracyPredictor.load(pred_dir).report,
        "stage_evals": {s: rd.stage_eval(s) for s in rd.trained_stages() if rd.stage_eval_file(s).exists()},
        "results": rows, "mean_abs_accuracy_error": float(np.mean(errs)) if errs else None, "timings": timings,
        "accuracy": accuracy,
    }
    if plan is not None:
        summary["time_budget"] = {"budget_s": plan.budget_s, "used_s": clock.used(),
                                  "estimate_s": plan.estimate_s, "spent_s": plan.spent_s, "scale": plan.scale,
                                  "phase_steps": plan.phase_steps, "predictor_subnets": plan.predictor["subnets"],
                                  "floor": plan.floor, "full_images_per_s": plan.rates.full_images_per_s()}
    atomic.write_json(rd.path / "summary.json", summary)
    return summary


def format_duration(seconds: float) -> str:
    from ofa.progress import format_duration as fmt

    return fmt(seconds)


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
        console.print(f"time: train {t['train_s']:.0f} s, predictors {t['predictor_s']:.0f} s (fitting "
                      f"{t.get('fit_s', 0):.0f} s), profiling "
                      f"{t['profile_s']:.0f} s, specialization {t['specialize_s']:.0f} s, total {t['total_s']:.0f} s")
        b = summary.get("time_budget")
        if b:
            console.print(f"time budget {format_duration(b['budget_s'])}: used {format_duration(b['used_s'])} "
                          f"({100 * b['used_s'] / b['budget_s']:.0f}%), planned {format_duration(b['estimate_s']['total'])}"
                          f"; {b['scale']:.2f} x the quick schedule's steps at {b['full_images_per_s']:.0f} img/s, "
                          f"{b['predictor_subnets']} predictor subnets" + (" (the floor)" if b["floor"] else ""))
        acc = summary.get("accuracy")
        if acc:
            console.print("the supernet: " + ", ".join(
                f"{name} subnet {pct(a['val'])} validation / {pct(a['test'])} test" for name, a in acc.items()))
        if err is not None:
            console.print(f"mean |real - predicted| accuracy: {100 * err:.2f} points")
        console.print(f"summary: {summary['run']}/summary.json; Pareto plots: {summary['run']}/specialized/*_pareto.png")
    return cap.get()
