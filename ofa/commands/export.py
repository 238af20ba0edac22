"""`ofa export`: export a specialized (or fine-tuned) network folder again, or quantize it to int8."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ofa.cli import app


@app.command("export")
def export_cmd(
    path: Path = typer.Argument(..., help="A folder written by `ofa specialize` or `ofa finetune`."),
    fmt: str = typer.Option("onnx-int8", "--format", help="onnx, torchscript, onnx-int8 (comma-separated): onnx and "
                            "torchscript are re-written from model.safetensors; onnx-int8 quantizes the folder's "
                            "model.onnx (give onnx,onnx-int8 to re-export it first)."),
    data: Optional[str] = typer.Option(None, "--data", help="Images to calibrate and evaluate with (default: the data "
                                       "arch.json says the net was trained on)."),
    calib_images: int = typer.Option(300, "--calib-images",
                                     help="Training images int8 is calibrated on (at least 100)."),
    float_parts: str = typer.Option("auto", "--float-parts", help="Parts left in float: auto (chosen on validation "
                                    "images where all-int8 loses more than --tolerance), none, or names: stem, "
                                    "block<N>, head, hswish, se (comma-separated)."),
    tolerance: float = typer.Option(0.5, "--tolerance", help="Validation points all-int8 may lose before "
                                    "--float-parts auto leaves parts in float."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="Intra-op threads for the latency measurement (default 1)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration images' draw."),
    no_evaluate: bool = typer.Option(False, "--no-evaluate", help="Do not measure test accuracy."),
    no_measure: bool = typer.Option(False, "--no-measure", help="Do not time fp32 and int8 here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Re-export a network folder (onnx, torchscript) or quantize it to int8 (model.int8.onnx, figures in arch.json)."""
    from ofa.export import export_folder

    out = export_folder(path, fmt, data=data, progress=not as_json, calib_images=calib_images, seed=seed,
                        float_parts=float_parts, tolerance=tolerance, threads=threads, evaluate=not no_evaluate,
                        measure=not no_measure)
    if as_json:
        print(json.dumps(out, indent=2))
        return
    print(f"wrote {', '.join(out['written'])} in {out['path']}")
