"""`ofa profile`: measure this machine and save a latency profile usable as `--device NAME`."""
from __future__ import annotations

import json

import typer

from ofa.cli import app
from elastic.errors import OFAError
from elastic.spaces import get_space
from predictors.measure import RUNTIMES, fit_measured_profile
from predictors.profiles import save_user_profile


@app.command("profile")
def profile(
    device: str = typer.Option("cpu", "--device", help="What to measure: cpu or cuda."),
    runtime: str = typer.Option("onnxruntime", "--runtime", help=f"One of {', '.join(RUNTIMES)}."),
    threads: int = typer.Option(1, "--threads", help="Intra-op threads."),
    space: str = typer.Option("mbv3-w1.0", "--space", help="Search space whose subnets are timed (see `ofa spaces`)."),
    name: str = typer.Option(None, "--name", help="Profile name (default: the device name)."),
    n_fit: int = typer.Option(100, "--fit", help="Subnets measured to fit the model."),
    n_test: int = typer.Option(20, "--test", help="Fresh subnets measured to report the error."),
    repeats: int = typer.Option(2, "--repeats", help="Timed runs per network per round."),
    rounds: int = typer.Option(30, "--rounds", help="Interleaved rounds over all networks."),
    instances: int = typer.Option(1, "--instances", help="Runtime sessions per network, averaged (2 cut the "
                                                         "session-to-session noise of sub-ms networks by a third; 2x the time)."),
    seed: int = typer.Option(0, "--seed"),
    clock: str = typer.Option("auto", "--clock", help="auto | wall | thread (thread CPU time: 1 CPU thread only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the error report as JSON."),
) -> None:
    """Time sampled subnets on this machine, fit a latency profile, report its error on fresh subnets, save it."""
    if device not in ("cpu", "cuda"):
        raise OFAError(f"can only profile 'cpu' or 'cuda' here, got '{device}'")
    for opt, value in (("--repeats", repeats), ("--rounds", rounds), ("--instances", instances)):
        if value < 1:
            raise OFAError(f"{opt} must be >= 1, got {value}")
    sp = get_space(space)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(f"timing {n_fit + n_test} subnets of {space}", total=1)
        prof = fit_measured_profile(sp, name=name or device, device=device, runtime=runtime, threads=threads,
                                    n_fit=n_fit, n_test=n_test, seed=seed, repeats=repeats, rounds=rounds, clock_name=clock,
                                    instances=instances,
                                    progress=lambda i, n: bar.update(task, completed=i / n))
    path = save_user_profile(prof)
    if as_json:
        print(json.dumps({"name": prof.name, "path": str(path), "error": prof.error}, indent=2))
        return
    print(f"saved profile '{prof.name}' to {path}")
    print(f"error on fresh subnets: {prof.error['summary']}")
