"""`ofa profile`: latency profiles usable as `--device NAME`.

- `ofa profile [--device cpu|cuda] [--batch 64] ...`  measure this machine (subnets timed here, model fit, saved);
- `ofa profile probes --space S --n 40 --out DIR`  write probe networks and a timing kit for any other device;
- `ofa profile fit --timings CSV --name NAME [--prior P]`  fit a profile from the device's timings.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ofa.cli import app
from elastic.errors import OFAError
from elastic.spaces import get_space
from predictors.measure import RUNTIMES, fit_measured_profile
from predictors.profiles import save_user_profile

profile_app = typer.Typer(
    name="profile", invoke_without_command=True, no_args_is_help=False,
    help="Measure this machine into a latency profile (no subcommand), or make one for any device: "
         "`probes` writes networks to time there, `fit` fits a profile from their timings.")
app.add_typer(profile_app, name="profile")


@profile_app.callback()
def profile(
    ctx: typer.Context,
    device: str = typer.Option("cpu", "--device", help="What to measure: cpu or cuda."),
    runtime: str = typer.Option("auto", "--runtime", help=f"auto (onnxruntime on cpu, torch with CUDA events on "
                                                           f"cuda) or one of {', '.join(RUNTIMES)}."),
    threads: int = typer.Option(1, "--threads", help="Intra-op threads."),
    space: str = typer.Option("mbv3-w1.0", "--space", help="Search space whose subnets are timed (see `ofa spaces`)."),
    name: str = typer.Option(None, "--name", help="Profile name (default: the device name)."),
    n_fit: int = typer.Option(100, "--fit", help="Subnets measured to fit the model."),
    n_test: int = typer.Option(20, "--test", help="Fresh subnets measured to report the error."),
    batch: int = typer.Option(1, "--batch", min=1, help="Images per inference: 1 = latency of one image; e.g. 64 = "
                                                        "time of one batch (GPU throughput; OFA's 1080ti_gpu64 nets)."),
    repeats: int = typer.Option(2, "--repeats", min=1, help="Timed runs per network per round."),
    rounds: int = typer.Option(30, "--rounds", min=1, help="Interleaved rounds over all networks."),
    instances: int = typer.Option(1, "--instances", min=1, help="Runtime sessions per network, averaged (2 cut the "
                                                         "session-to-session noise of sub-ms networks by a third; 2x the time)."),
    seed: int = typer.Option(0, "--seed"),
    clock: str = typer.Option("auto", "--clock", help="auto | wall | thread (thread CPU time: 1 CPU thread only)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | int8: time the subnets as exported, or "
                                  "quantized to int8 (static QDQ, onnxruntime on the cpu); int8 names the profile "
                                  "DEVICE-int8 unless --name is given."),
    as_json: bool = typer.Option(False, "--json", help="Print the error report as JSON."),
) -> None:
    """Time sampled subnets on this machine, fit a latency profile, report its error on fresh subnets, save it.
    On cuda the runs are timed by CUDA events after a warm-up, and the GPU's clocks are noted in the profile."""
    if ctx.invoked_subcommand is not None:
        try:  # typer >= 0.20 vendors click
            from typer._click.core import ParameterSource
        except ImportError:  # pragma: no cover
            from click.core import ParameterSource

        given = [p for p in ctx.params if ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE]
        if given:
            raise OFAError(f"options {', '.join('--' + g.replace('_', '-') for g in given)} measure this machine; "
                           f"give the options of `ofa profile {ctx.invoked_subcommand}` after its name")
        return
    if device not in ("cpu", "cuda"):
        raise OFAError(f"can only profile 'cpu' or 'cuda' here, got '{device}'")
    if runtime == "auto":
        runtime = "onnxruntime" if device == "cpu" else "torch"
    from predictors.quantize import check_precision

    precision = check_precision(precision.strip().lower())
    sp = get_space(space)
    from ofa.profile_ranks import ranked_measure
    from ofa.progress import Progress, callback

    is_main, measure = ranked_measure(device)   # under torchrun: one GPU per process, its share of the subnets
    with Progress(is_main) as bar:   # a bar on a terminal, a line every 30 s in a log
        timing = callback(bar, f"timing {n_fit + n_test} subnets of {space}")
        default_name = device if precision == "fp32" else f"{device}-{precision}"
        prof = fit_measured_profile(sp, name=name or default_name, device=device, runtime=runtime, threads=threads,
                                    n_fit=n_fit, n_test=n_test, seed=seed, repeats=repeats, rounds=rounds, clock_name=clock,
                                    instances=instances, precision=precision, batch=batch, measure=measure,
                                    progress=timing)
    if not is_main:   # rank 0 saves and reports the profile
        return
    path = save_user_profile(prof)
    if as_json:
        print(json.dumps({"name": prof.name, "path": str(path), "batch": prof.batch, "meaning": prof.meaning,
                          "error": prof.error}, indent=2))
        return
    print(f"saved profile '{prof.name}' ({prof.meaning}) to {path}")
    print(f"error on fresh subnets: {prof.error['summary']}")


@profile_app.command("probes")
def probes(
    space: str = typer.Option("mbv3-w1.0", "--space", help="Search space the probes come from (see `ofa spaces`)."),
    n: int = typer.Option(40, "--n", help="Number of probe networks (the smallest and the largest included)."),
    out: Path = typer.Option(..., "--out", help="Folder to write (ONNX files, manifest.json, timings.csv, README, script)."),
    batch: int = typer.Option(1, "--batch", help="Batch size of the probes' input (64: throughput-style probes)."),
    n_classes: int = typer.Option(None, "--classes", help="Classifier outputs (default: the space's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the stratified choice and of the random weights."),
    force: bool = typer.Option(False, "--force", help="Replace probes already in --out."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | int8: probes as exported, or quantized to "
                                  "int8 (static QDQ) for a device that runs int8 ONNX models."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest summary as JSON."),
) -> None:
    """Write probe networks spanning a space, with a timing kit, to time on any device."""
    from ofa.device_profiles import write_probes

    from rich.progress import Progress

    with Progress(transient=True, disable=as_json) as bar:
        task = bar.add_task(f"exporting {n} probes of {space}", total=n)
        manifest = write_probes(space, out, n=n, batch=batch, seed=seed, force=force, n_classes=n_classes,
                                precision=precision, progress=lambda i, total: bar.update(task, completed=i))
    sp = manifest.space
    ms = sorted(p.macs for p in manifest.probes.values())
    if as_json:
        print(json.dumps({"folder": str(manifest.folder), "id": manifest.id, "space": sp.name, "n": len(manifest.probes),
                          "batch": manifest.batch, "macs_range": [ms[0], ms[-1]]}))
        return
    print(f"wrote {len(manifest.probes)} probes of {sp.name} (batch {manifest.batch}, {ms[0] / 1e6:.0f}-{ms[-1] / 1e6:.0f}M MACs) "
          f"to {manifest.folder}")
    print(f"time them on the device (see {manifest.folder / 'README.md'}), then: ofa profile fit --timings "
          f"{manifest.folder / 'timings.csv'} --name DEVICE [--prior cpu|note10|pixel1|flops]")


@profile_app.command("fit")
def fit(
    timings: Path = typer.Option(..., "--timings", help="CSV with columns network,latency_ms (a probe id or a network file per row)."),
    name: str = typer.Option(..., "--name", help="Name of the new device profile."),
    prior: Optional[str] = typer.Option(None, "--prior", help="A profile to correct: a device name (note10, pixel1, cpu, flops, ...) or a profile .json."),
    probes_dir: Optional[Path] = typer.Option(None, "--probes", help="The probe folder (default: the CSV's folder)."),
    model: str = typer.Option("auto", "--model", help="auto (chosen by leave-one-out) or a model name (see the table)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing profile of this name."),
    as_json: bool = typer.Option(False, "--json", help="Print the fit report as JSON."),
) -> None:
    """Fit a device profile from whole-network timings; with --prior, a few-shot correction of that profile."""
    from ofa.device_profiles import fit_profile
    from predictors.fewshot import format_fit

    prof = fit_profile(timings, name, prior=prior, probes=probes_dir, model=model, force=force)
    path = prof.path
    if as_json:
        print(json.dumps({"name": prof.name, "path": str(path), "kind": prof.kind, "batch": prof.batch,
                          "domain": prof.domain.to_dict(), "error": prof.error}, indent=2))
        return
    print(format_fit(prof))
    print(f"{prof.error['summary']}")
    print(f"saved profile '{prof.name}' ({prof.kind}, {prof.meaning}; domain {prof.domain.describe_resolutions()}) "
          f"to {path}")
    print(f"use it: ofa specialize --run RUN --device {prof.name} --latency ...; ofa latency --device {prof.name} --config NET.json")
