"""`ofa latency`: predict the latency of one network on a device."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ofa.cli import app
from predictors.latency import get_latency_predictor
from predictors.net_config import load_net_config
from predictors.profiles import load_profile


@app.command("latency")
def latency(
    device: str = typer.Option(..., "--device", help="Device name (see `ofa devices`) or a profile .json path."),
    config: Path = typer.Option(..., "--config", help="arch.json ({space, n_classes, arch}), an OFA net_config file, or a folder holding either (a specialized net; OFA's net.config + run.config)."),
    image_size: int = typer.Option(None, "--image-size", help="Override the input resolution."),
    run: Optional[Path] = typer.Option(None, "--run", help="A run directory: its own profiles/DEVICE.json comes first."),
    as_json: bool = typer.Option(False, "--json", help="Print {\"latency_ms\": ...} instead of text."),
) -> None:
    """Predict the latency of one network (arch.json or OFA net_config) on a device.

    A network outside the domain the profile was fit on (another family, a resolution it never saw) is still
    priced, and marked extrapolated (a line on stderr; "extrapolated" in the JSON)."""
    profile = load_profile(device, first=[run / "profiles"] if run is not None else [])
    pred = get_latency_predictor(profile)
    net = load_net_config(config, image_size)
    value = pred.predict_net(net)
    outside = pred.outside_domain(net)
    if outside:
        print(f"note: extrapolated: {outside}", file=sys.stderr)
    if as_json:
        out = {"latency_ms": value} if pred.unit == "ms" else {"latency_ms": value, "unit": pred.unit}
        out.update({"device": pred.name, "image_size": net.resolution, "batch": profile.batch})
        if outside:
            out["extrapolated"] = outside
        print(json.dumps(out))
        return
    per = "" if profile.batch == 1 else f" per batch of {profile.batch}"
    print(f"{value:.2f} {pred.unit}{per} on {pred.name} ({net.family}, {net.resolution}px, {len(net.blocks)} blocks)"
          + (" [extrapolated]" if outside else ""))
