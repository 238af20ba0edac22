"""`ofa latency`: predict the latency of one network on a device."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ofa.cli import app
from predictors.latency import get_latency_predictor
from predictors.net_config import load_net_config


@app.command("latency")
def latency(
    device: str = typer.Option(..., "--device", help="Device name (see `ofa devices`) or a profile .json path."),
    config: Path = typer.Option(..., "--config", help="arch.json ({space, n_classes, arch}) or an OFA net_config file."),
    image_size: int = typer.Option(None, "--image-size", help="Override the input resolution."),
    as_json: bool = typer.Option(False, "--json", help="Print {\"latency_ms\": ...} instead of text."),
) -> None:
    """Predict the latency of one network (arch.json or OFA net_config) on a device."""
    pred = get_latency_predictor(device)
    net = load_net_config(config, image_size)
    value = pred.predict_net(net)
    if as_json:
        out = {"latency_ms": value} if pred.unit == "ms" else {"latency_ms": value, "unit": pred.unit}
        out.update({"device": pred.name, "image_size": net.resolution})
        print(json.dumps(out))
        return
    print(f"{value:.2f} {pred.unit} on {pred.name} ({net.family}, {net.resolution}px, {len(net.blocks)} blocks)")
