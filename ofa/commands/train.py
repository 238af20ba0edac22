"""`ofa train`: train a supernet by progressive shrinking (one process, or many under torchrun)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ofa.cli import app
from ofa.compute_device_option import DEPRECATED_HELP, HELP, compute_device_from_options


@app.command("train")
def train_cmd(
    run: Path = typer.Option(Path("checkpoints/default"), "--run", "--run-dir",
                             help="Run directory (checkpoints, history). Under torchrun write --run-dir: torchrun "
                                  "reads --run as its own --run-path."),
    stage: str = typer.Option("all", "--stage", help="full | kernel | depth | expand | all."),
    data: Optional[str] = typer.Option(None, "--data", help="fashion-mnist | digits | cifar10 | cifar100 | an "
                                       "ImageFolder path (default: Fashion-MNIST where available, else digits)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset cache directory."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download the dataset."),
    space: Optional[str] = typer.Option(None, "--space", help="Search space (default: mbv3-w1.0-small for <=64px data)."),
    resolutions: Optional[str] = typer.Option(None, "--resolutions", help="Comma-separated input resolutions "
                                              "replacing the space's (e.g. 24,28,32)."),
    schedule: str = typer.Option("full", "--schedule", help="full | quick (the under-10-minute CPU schedule)."),
    time_budget: Optional[str] = typer.Option(
        None, "--time-budget", help="Fit the training into this time, e.g. 15m, 900s, 1h30m: measures this machine "
                                    "in a few steps, then scales the schedule's steps (its phase split kept); the "
                                    "plan is stored in RUN/time_budget.json. Default: the schedule's fixed steps."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs of each stage (phase 1 of depth/expand: a quarter)."),
    full_epochs: Optional[int] = typer.Option(None, "--full-epochs", help="Epochs of the full stage (default: --epochs)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of the full stage (later stages scale it)."),
    opt: str = typer.Option("sgd", "--opt", help="timm optimizer name."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
    warmup_epochs: Optional[float] = typer.Option(None, "--warmup-epochs"),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing"),
    seed: int = typer.Option(0, "--seed", help="Fixes all randomness (data order, subnets, resolutions)."),
    n_subnets: int = typer.Option(2, "--n-subnets", help="Subnets sampled per step (elastic stages)."),
    sandwich: Optional[bool] = typer.Option(None, "--sandwich/--no-sandwich",
                                            help="Largest + smallest + random subnets each step (default: quick schedule only)."),
    kd_ratio: float = typer.Option(1.0, "--kd-ratio", help="Distillation weight (teacher: the full stage)."),
    subset: Optional[int] = typer.Option(None, "--subset", help="Train on this many (seeded) training images."),
    eval_size: Optional[int] = typer.Option(None, "--eval-size", help="Cap val/test images."),
    val_from: str = typer.Option("train", "--val-from",
                                 help="train | test: carve the validation split from the training set, or from the "
                                      "test set (a dev set drawn like the test images; test keeps the disjoint rest)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="At most this many steps per epoch."),
    elastic_max_steps: Optional[int] = typer.Option(
        None, "--elastic-max-steps", help="At most this many steps per epoch of the elastic stages, the same for "
                                          "every phase (replaces the quick schedule's split of its 700 steps)."),
    phase_steps: Optional[str] = typer.Option(
        None, "--phase-steps", help="Total steps of named phases, e.g. kernel=100,expand/2=626 (phases: full, "
                                    "kernel, depth/1, depth/2, expand/1, expand/2); wins over the step caps. "
                                    "quick: kernel=76,depth/1=38,depth/2=76,expand/1=38,expand/2=472."),
    kd_teacher: str = typer.Option(
        "full", "--kd-teacher", help="full | inplace: distil from the full stage's net (OFA) or from each step's "
                                     "largest subnet (in-place, needs the sandwich rule)."),
    elastic_lr_scale: Optional[float] = typer.Option(
        None, "--elastic-lr-scale", help="Multiply OFA's learning-rate factors of the elastic phases (0.08-0.3 x the "
                                         "full stage's rate; default: 3 in the quick schedule, 1 in the full one)."),
    save_every: int = typer.Option(100, "--save-every", help="Checkpoint every K steps."),
    eval_subnets: Optional[int] = typer.Option(None, "--eval-subnets", help="Random subnets evaluated at stage ends."),
    eval_split: str = typer.Option("val", "--eval-split", help="val | test for stage-end evaluations."),
    no_stage_eval: bool = typer.Option(False, "--no-stage-eval", help="Skip the stage-end subnet evaluations."),
    bn_mode: str = typer.Option("train", "--bn-mode", help="train | frozen (BN statistics frozen while training)."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment",
                                           help="Random shifts/flips (default: on, off in the quick schedule)."),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="Override the space's dropout."),
    compute_device: Optional[str] = typer.Option(None, "--compute-device", help=HELP + " Default: auto."),
    device: Optional[str] = typer.Option(None, "--device", hidden=True, help=DEPRECATED_HELP),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16: mixed precision (autocast; fp16 "
                                                              "with a gradient scaler). GPU; bf16 also runs on CPU."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last",
                                       help="Channels-last (NHWC) layout of activations and weights (default: on, "
                                            "measured faster on CPU; bench/gpu_check.sh measures both on a GPU)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue from train_state.pt (its config wins)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Re-train a stage the run already has."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON at the end."),
) -> None:
    """Train a once-for-all supernet by progressive shrinking; resumable; DDP under torchrun."""
    from rich.console import Console

    from ofa.training import TrainConfig, train
    from ofa.training.schedule import parse_phase_steps
    from ofa.training.time_budget import parse_budget_option

    data_cfg = {"name": data}
    if data_root is not None:
        data_cfg["root"] = str(data_root)
    if download:
        data_cfg["download"] = True
    if subset is not None:
        data_cfg["subset_size"] = subset
    if eval_size is not None:
        data_cfg["eval_size"] = eval_size
    if val_from != "train":
        data_cfg["val_from"] = val_from
    if data is None and len(data_cfg) == 1:
        data_cfg = {}
    res_list = None
    if resolutions:
        try:
            res_list = [int(r) for r in resolutions.split(",") if r.strip()]
        except ValueError:
            from elastic.errors import OFAError

            raise OFAError(f"--resolutions must be comma-separated integers, got {resolutions!r}") from None
    cfg = TrainConfig(
        run=str(run), stage=stage, space=space, resolutions=res_list, data=data_cfg, schedule=schedule, epochs=epochs,
        full_epochs=full_epochs, batch_size=batch_size, lr=lr, opt=opt, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, seed=seed, n_subnets=n_subnets,
        sandwich=sandwich, kd_ratio=kd_ratio, max_steps=max_steps, elastic_max_steps=elastic_max_steps,
        elastic_lr_scale=elastic_lr_scale, phase_steps=parse_phase_steps(phase_steps) if phase_steps else None,
        time_budget=parse_budget_option(time_budget),
        kd_teacher=kd_teacher, save_every=save_every,
        eval_subnets=eval_subnets, eval_split=eval_split, stage_eval=not no_stage_eval, augment=augment,
        bn_mode=bn_mode, dropout=dropout,
        device=compute_device_from_options(compute_device, device, "train"), precision=precision,
        channels_last=channels_last, threads=threads, workers=workers, overwrite=overwrite, progress=not no_progress,
    )
    console = Console(stderr=True)
    summary = train(cfg, resume=resume, log=lambda m: console.print(m, highlight=False, markup=False),
                    console=console)
    if as_json:
        print(json.dumps(summary, indent=2))
