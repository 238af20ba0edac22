"""`ofa quickstart`: the whole pipeline on the embedded default, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ofa.cli import app


@app.command("quickstart")
def quickstart_cmd(
    run: Path = typer.Option(Path("checkpoints/quickstart"), "--run", help="Run directory (resumes if present)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset (default: Fashion-MNIST where available, else digits)."),
    devices: str = typer.Option("cpu,pixel1,note10", "--devices", help="Devices to specialize for (comma-separated)."),
    samples: int = typer.Option(200, "--samples", help="Subnets measured for the accuracy predictor (Kendall tau on held-out subnets: about 0.56 at 100, 0.75 at 200, 0.83 at 800)."),
    schedule: str = typer.Option("quick", "--schedule", help="quick | full"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train (quick schedule), fit predictors, specialize for several devices and budgets; print the table."""
    from elastic.errors import OFAError
    from ofa.quickstart import quickstart, render_summary

    names = [d.strip() for d in devices.split(",") if d.strip()]
    if not names:
        raise OFAError("--devices needs at least one device name (see `ofa devices`)")
    if samples < 20:
        raise OFAError(f"--samples must be at least 20 to fit a predictor, got {samples}")
    from predictors.profiles import load_profile

    for name in names:  # an unknown device fails now, not after training ('cpu' is measured by the job itself)
        if name != "cpu":
            load_profile(name)
    summary = quickstart(run, data=data, devices=names, samples=samples, schedule=schedule, seed=seed)
    print(render_summary(summary))
