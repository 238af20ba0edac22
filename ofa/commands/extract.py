"""`ofa extract`: the network of one given arch of a run's supernet, with its weights."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ofa.cli import app
from ofa.compute_device_option import HELP


@app.command("extract")
def extract_cmd(
    run: Path = typer.Option(..., "--run", "--run-dir", help="Run directory (trained or imported supernet)."),
    arch: str = typer.Option(..., "--arch", help="The arch: JSON {ks, e, d, r} or an OFA net_config, or a file "
                             "holding one."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN/extracted/r<R>-<hash>)."),
    recalibrate: Optional[bool] = typer.Option(None, "--recalibrate/--no-recalibrate",
                                               help="Re-estimate BN statistics on training images (default: when "
                                                    "images are at hand)."),
    data: Optional[str] = typer.Option(None, "--data", help="Images for BN recalibration and test accuracy: "
                                       "imagefolder:PATH (train/ + val/), or a dataset name (default: the run's)."),
    calib_images: int = typer.Option(2000, "--calib-images", help="Training images for BN recalibration."),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate", help="Measure test accuracy (with images)."),
    eval_images: Optional[int] = typer.Option(None, "--eval-images", help="Evaluate on this many test images of "
                                              "--data (a seeded subset; default: all)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                          help="Image decoding processes (default: cores - 1)."),
    export: Optional[str] = typer.Option(None, "--export", help="Also export: onnx, torchscript (comma-separated)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration images."),
    compute_device: Optional[str] = typer.Option(None, "--compute-device", help=HELP + " Runs the extraction, BN "
                                                 "recalibration and test accuracy (default: auto)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Extract one arch of RUN's supernet (set_active_subnet + get_active_subnet) as a loadable network."""
    from ofa.extraction import extract

    r = extract(run, arch, out=out, recalibrate=recalibrate, data=data, calib_images=calib_images, evaluate=evaluate,
                export=export or (), seed=seed, workers=workers, eval_images=eval_images, progress=not as_json,
                compute_device=compute_device)
    if as_json:
        print(json.dumps(r.to_dict(), indent=2))
        return
    acc = "-" if r.test_accuracy is None else f"{100 * r.test_accuracy:.2f}%"
    print(f"{r.arch.summary()}: {r.macs / 1e6:.1f}M MACs, {r.params / 1e6:.2f}M params, test accuracy {acc} -> {r.path}")
    if r.note:
        print(f"note: {r.note}")
