"""`ofa fit-predictor`: measure subnets of a trained run, fit an accuracy predictor, print its quality report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from elastic.errors import OFAError
from ofa.cli import app
from ofa.compute_device_option import DEPRECATED_HELP, HELP, compute_device_from_options


@app.command("fit-predictor")
def fit_predictor_cmd(
    run: Path = typer.Option(..., "--run", "--run-dir", help="Run directory of a trained supernet (under torchrun "
                                                         "write --run-dir: torchrun reads --run as its own)."),
    samples: int = typer.Option(300, "--samples", min=1, help="Subnets to measure (the dataset grows to this many)."),
    resume: bool = typer.Option(False, "--resume", help="Continue / extend an existing acc_dataset.csv."),
    kinds: str = typer.Option("mlp,gbr,gp,ridge", "--kinds", help="Predictor kinds to choose from by K-fold CV."),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds."),
    holdout: float = typer.Option(0.2, "--holdout", help="Fraction of subnets held out for the report."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subnet plan and the splits."),
    calib_images: int = typer.Option(2000, "--calib-images", min=0, help="Training images for BN recalibration."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1,
                                        help="Evaluate on at most this many validation images."),
    compute_device: Optional[str] = typer.Option(None, "--compute-device", help=HELP + " Default: auto. Under "
                                                 "torchrun the subnets are shared out over the processes."),
    device: Optional[str] = typer.Option(None, "--device", hidden=True, help=DEPRECATED_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="CPU threads for evaluation (default: torch's)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Collect (resumable) an accuracy dataset from RUN, fit the best predictor, save it under RUN/predictors/."""
    from ofa.accuracy_data import collect_from_run, dataset_paths
    from ofa.run_dir import RunDir
    from predictors.accuracy import KINDS, check_dataset_size, fit_accuracy_predictor, format_report

    kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
    bad = [k for k in kind_list if k not in KINDS]
    if bad or not kind_list:
        raise OFAError(f"unknown predictor kind(s) {bad or kinds!r}; choose from {', '.join(KINDS)}")
    if not 0.0 <= holdout < 0.9:  # half-open: typer's min=/max= bound closed intervals only
        raise OFAError(f"--holdout must be in [0, 0.9), got {holdout}")
    compute = compute_device_from_options(compute_device, device, "fit-predictor")
    check_dataset_size(samples, folds, holdout)  # before any subnet is measured
    rd = RunDir(run)
    space = rd.load_space()
    from ofa.training.distributed import init_distributed, shutdown

    info = init_distributed(compute)   # under torchrun: this process's share of the subnets, on its device
    data = collect_from_run(rd.path, samples, seed=seed, resume=resume, calib_images=calib_images, limit=limit,
                            device=compute, threads=threads, progress=not (as_json or no_progress))
    shutdown(info)
    if not info.is_main:   # rank 0 fits and saves the predictor
        return
    pred = fit_accuracy_predictor(space, data.archs, data.accuracies, kinds=kind_list, folds=folds, holdout=holdout,
                                  seed=seed)
    pred.meta.update({"run": str(rd.path), "dataset": str(dataset_paths(rd.path)[0].name)})
    out = pred.save(rd.path / "predictors")
    if as_json:
        print(json.dumps({"predictor": str(out), **pred.report}, indent=2))
    else:
        print(format_report(pred.report))
        print(f"saved to {out}")
