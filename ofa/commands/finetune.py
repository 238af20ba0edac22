"""`ofa finetune`: train a specialized network further (distillation from the run's teacher; new data)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from ofa.cli import app
from ofa.compute_device_option import HELP


@app.command("finetune")
def finetune_cmd(
    path: Path = typer.Argument(..., help="A folder written by `ofa specialize` (e.g. RUN/specialized/pixel1@40ms)."),
    epochs: int = typer.Option(..., "--epochs", help="Epochs of fine-tuning (1-1000)."),
    run: Optional[Path] = typer.Option(None, "--run", "--run-dir",
                                       help="The run PATH came from (default: the one its arch.json names). Under "
                                            "torchrun write --run-dir."),
    data: Optional[str] = typer.Option(None, "--data", help="Train on other data than the run's: fashion-mnist | "
                                       "digits | cifar10 | cifar100 | an ImageFolder path. New classes rebuild the "
                                       "classifier (the body keeps its weights) and turn distillation off."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset cache directory."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Size ImageFolder images are loaded at."),
    subset: Optional[int] = typer.Option(None, "--subset", help="Train on this many (seeded) training images."),
    eval_size: Optional[int] = typer.Option(None, "--eval-size", help="Cap val/test images."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 0.02 x batch/256; 0.1 x "
                                       "batch/256 with a rebuilt classifier)."),
    kd_ratio: Optional[float] = typer.Option(None, "--kd-ratio", help="Distillation weight (default 1 with a teacher)."),
    teacher: str = typer.Option("full", "--teacher", help="full | largest | none: distil from the full stage's net, "
                                "the supernet's largest subnet, or not at all."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch (default 128, halved until an "
                                             "epoch has 10 steps)."),
    warmup_epochs: float = typer.Option(0.1, "--warmup-epochs"),
    weight_decay: float = typer.Option(5e-5, "--weight-decay"),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing"),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="Random shifts/flips."),
    bn_mode: str = typer.Option("train", "--bn-mode", help="train | frozen (BN statistics fixed while training)."),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="Override the net's dropout."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Baseline: the same arch and recipe from random "
                                      "weights."),
    seed: int = typer.Option(0, "--seed", help="Fixes all randomness (data order, dropout, augmentation)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="At most this many steps per epoch."),
    save_every: int = typer.Option(50, "--save-every", help="Checkpoint every K steps (and at every epoch end)."),
    eval_every: int = typer.Option(1, "--eval-every", help="Validation accuracy every N epochs into the history "
                                   "(0: only before and after)."),
    calib_images: int = typer.Option(1000, "--calib-images", help="Training images for BN recalibration."),
    export: Optional[str] = typer.Option(None, "--export", help="Also export: onnx, torchscript (comma-separated)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: PATH-ft beside PATH)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted fine-tuning (its settings win)."),
    compute_device: Optional[str] = typer.Option(None, "--compute-device", help=HELP + " Default: auto."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
) -> None:
    """Fine-tune a specialized net with distillation; writes PATH-ft/ in the same format (resumable, DDP)."""
    from rich.console import Console

    from ofa.export import parse_exports
    from ofa.training.finetune import FinetuneConfig, finetune

    data_cfg = {k: v for k, v in (("name", data), ("root", str(data_root) if data_root else None),
                                  ("image_size", image_size), ("subset_size", subset), ("eval_size", eval_size))
                if v is not None}
    cfg = FinetuneConfig(path=str(path), epochs=epochs, run=str(run) if run else None, data=data_cfg,
                         out=str(out) if out else None, teacher=teacher, kd_ratio=kd_ratio, lr=lr,
                         batch_size=batch_size, warmup_epochs=warmup_epochs, weight_decay=weight_decay,
                         label_smoothing=label_smoothing, augment=augment, bn_mode=bn_mode, dropout=dropout,
                         from_scratch=from_scratch, seed=seed, max_steps=max_steps, save_every=save_every, eval_every=eval_every,
                         calib_images=calib_images, exports=parse_exports(export), force=force, device=compute_device or "auto",
                         threads=threads, progress=not no_progress and not as_json)
    console = Console(stderr=True)
    summary = finetune(cfg, resume=resume, log=lambda m: console.print(m, highlight=False, markup=False),
                       console=console)
    if os.environ.get("RANK", "0") != "0":    # under torchrun, rank 0 reports
        return
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{summary['path']}: test accuracy {summary['accuracy_before']:.2%} -> {summary['accuracy_after']:.2%} "
          f"after {summary['epochs']} epoch(s), {summary['train_seconds']:.0f} s of training")
