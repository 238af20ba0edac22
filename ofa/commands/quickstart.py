"""`ofa quickstart`: the whole pipeline on the embedded default, resumable, within a time budget."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ofa.cli import app
from ofa.training.time_budget import DEFAULT_BUDGET


@app.command("quickstart")
def quickstart_cmd(
    run: Path = typer.Option(Path("checkpoints/quickstart"), "--run", help="Run directory (resumes if present)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset (default: Fashion-MNIST where available, else digits)."),
    devices: str = typer.Option("cpu,pixel1,note10", "--devices", help="Devices to specialize for (comma-separated)."),
    time_budget: str = typer.Option(
        DEFAULT_BUDGET, "--time-budget", help="Time for the whole job (training, accuracy predictor, cpu profile, "
                                              "specialization; not the installation), e.g. 15m, 900s, 1h30m: the "
                                              "first steps measure this machine and the plan is sized to it (stored in "
                                              "RUN/time_budget.json, printed). 'off': the fixed-step quick schedule."),
    samples: Optional[int] = typer.Option(None, "--samples", min=20, help="Subnets measured for the accuracy "
                                          "predictor, at least 20 to fit one (default: what the time budget "
                                          "allows; 200 with --time-budget off)."),
    schedule: str = typer.Option("quick", "--schedule", help="quick | full"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train (quick schedule), fit predictors, specialize for several devices and budgets; print the table."""
    from elastic.errors import OFAError
    from ofa.quickstart import quickstart, render_summary
    from ofa.training.time_budget import parse_budget_option

    budget = parse_budget_option(time_budget)
    names = [d.strip() for d in devices.split(",") if d.strip()]
    if not names:
        raise OFAError("--devices needs at least one device name (see `ofa devices`)")
    from predictors.profiles import load_profile

    for name in names:  # an unknown device fails now, not after training ('cpu' is measured by the job itself)
        if name != "cpu":
            load_profile(name)
    summary = quickstart(run, data=data, devices=names, samples=samples, schedule=schedule, seed=seed,
                         time_budget=budget)
    print(render_summary(summary))
