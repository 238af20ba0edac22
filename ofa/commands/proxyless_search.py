"""`ofa proxyless-search`: the original ProxylessNAS search from scratch on a dataset, then train the found net.

The command parses the options, runs `ofa.proxyless_pipeline.proxyless_search` (the search, the training and
what is written to `--out`) with a progress bar, and prints the summary.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ofa.cli import app
from ofa.compute_device_option import HELP


@app.command("proxyless-search")
def proxyless_search_cmd(
    space: str = typer.Option("proxyless-w1.3-small", "--space", help="proxyless-w1.3 | proxyless-w1.3-small."),
    data: Optional[str] = typer.Option(None, "--data", help="fashion-mnist | digits | cifar10 | ... (default: "
                                       "Fashion-MNIST where available, else digits)."),
    device: str = typer.Option("pixel1", "--device", help="Latency profile (see `ofa devices`)."),
    budget: str = typer.Option("8ms", "--latency", "--budget", help="Latency budget, e.g. 8ms, 800us."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Input size (default: the space's largest)."),
    kernels: str = typer.Option("3,5,7", "--kernels", help="Candidate kernel sizes."),
    expands: str = typer.Option("3,6", "--expands", help="Candidate expand ratios."),
    no_zero: bool = typer.Option(False, "--no-zero", help="No zero (skip) candidates: every block kept."),
    batch_size: int = typer.Option(64, "--batch-size"),
    warmup_steps: int = typer.Option(100, "--warmup-steps", help="Weight-only steps before alpha is trained."),
    search_steps: int = typer.Option(300, "--search-steps", help="Alternating weight / architecture steps."),
    arch_every: int = typer.Option(1, "--arch-every", help="An architecture step every K weight steps."),
    weight_lr: float = typer.Option(0.05, "--weight-lr"),
    arch_lr: float = typer.Option(0.02, "--arch-lr"),
    form: str = typer.Option("mul", "--loss", help="mul: CE x (lat/target)^beta | add: CE + lambda x lat/target."),
    beta: float = typer.Option(0.6, "--beta"),
    lam: float = typer.Option(0.1, "--lambda"),
    estimator: str = typer.Option("two_path", "--estimator", help="two_path | reinforce."),
    two_sided: bool = typer.Option(False, "--two-sided", help="Latency term below the target too (ProxylessNAS' "
                                   "original; default: only above it)."),
    budget_rounds: int = typer.Option(3, "--budget-rounds", help="Strengthening rounds when the argmax misses."),
    budget_steps: int = typer.Option(50, "--budget-steps", help="Steps per strengthening round."),
    train_steps: int = typer.Option(500, "--train-steps", help="Steps training the found net from scratch."),
    train_lr: float = typer.Option(0.1, "--train-lr"),
    subset: Optional[int] = typer.Option(None, "--subset", help="Use this many (seeded) training images."),
    eval_size: Optional[int] = typer.Option(None, "--eval-size", help="Cap val/test images."),
    out: Path = typer.Option(Path("checkpoints/proxyless-search"), "--out", help="Output directory."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
    compute_device: Optional[str] = typer.Option(None, "--compute-device", help=HELP + " Default: auto."),
    no_progress: bool = typer.Option(False, "--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run ProxylessNAS from scratch (over-parameterized net, binarized paths, latency loss); train the found net."""
    from rich.console import Console

    from ofa.progress import Progress
    from ofa.proxyless_pipeline import proxyless_search

    console = Console(stderr=True)
    with Progress(not no_progress, console) as bar:   # a bar on a terminal, a line every 30 s in a log
        tasks: dict[str, Any] = {}

        def progress(phase: str, step: int, total: int, row: dict) -> None:
            if phase not in tasks:
                tasks[phase] = bar.task(phase, total)
            bar.update(tasks[phase], completed=step + 1, **{k: v for k, v in row.items() if isinstance(v, float)})

        summary = proxyless_search(
            space=space, data=data, device=device, budget=budget, resolution=resolution, kernels=kernels,
            expands=expands, zero=not no_zero, batch_size=batch_size, warmup_steps=warmup_steps,
            search_steps=search_steps, arch_every=arch_every, weight_lr=weight_lr, arch_lr=arch_lr, form=form,
            beta=beta, lam=lam, estimator=estimator, one_sided=not two_sided, budget_rounds=budget_rounds,
            budget_steps=budget_steps,
            train_steps=train_steps, train_lr=train_lr, subset=subset, eval_size=eval_size, out=out, seed=seed,
            threads=threads, compute_device=compute_device, progress=progress)
    if as_json:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
        return
    s = summary["search"]
    acc = summary["test_accuracy"]
    print(f"found: {' '.join(s['ops'])}")
    if s["arch"] is not None:
        print(f"arch: {json.dumps(s['arch'])}")
    print(f"latency on {summary['device']}: {summary['predicted_latency']:.3f} {summary['unit']} "
          f"(budget {summary['target']:g}; met by {s['feasible_by']})")
    if s["note"]:
        print(f"note: {s['note']}")
    print(f"test accuracy after {summary['train']['steps']} training steps: "
          f"{'n/a' if acc is None else f'{acc * 100:.2f}%'}")
    print(f"written to {out}")
