"""`ofa specialize`: the best subnet per device and budget, extracted with its weights."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ofa.cli import app
from ofa.compute_device_option import HELP


@app.command("specialize")
def specialize_cmd(
    device: str = typer.Option(..., "--device", help="Device profile (see `ofa devices`), or a profile file."),
    latency: Optional[str] = typer.Option(None, "--latency", help="Latency budget(s): 40ms, 12.5ms, 800us; comma-separated for several."),
    macs: Optional[str] = typer.Option(None, "--macs", help="MACs budget, e.g. 300M."),
    params: Optional[str] = typer.Option(None, "--params", help="Parameter budget, e.g. 5M."),
    run: Optional[Path] = typer.Option(None, "--run", help="Trained run directory (weights + accuracy predictor)."),
    space: Optional[str] = typer.Option(None, "--space", help="Search space without a run (archs only)."),
    accuracy_predictor: Optional[Path] = typer.Option(None, "--accuracy-predictor", help="Accuracy predictor: a fitted predictor dir or OFA's published .pth."),
    backend: str = typer.Option("evolution", "--backend", help="evolution | proxyless"),
    export: Optional[str] = typer.Option(None, "--export", help="Also export: onnx, torchscript, onnx-int8 (int8 quantized, calibrated on training images; comma-separated)."),
    pareto: bool = typer.Option(False, "--pareto", help="Also write the Pareto front (PNG plot + JSON) next to the results."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN/specialized)."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="Input resolution(s) the search may pick, e.g. 32 or 28,32 (default: all of the space's); the results go to DEVICE@BUDGET-rRES/."),
    allow_extrapolation: bool = typer.Option(False, "--allow-extrapolation", help="Also search resolutions outside the domains the accuracy predictor and the device profile were fit on (default: only inside; results outside are marked extrapolated)."),
    data: Optional[str] = typer.Option(None, "--data", help="Images for BN recalibration and test accuracy: imagefolder:PATH (train/ + val/) or a dataset name (default: the run's own data; an imported supernet without it keeps its BN statistics)."),
    seed: int = typer.Option(0, "--seed", help="Search seed."),
    compute_device: Optional[str] = typer.Option(None, "--compute-device", help=HELP + " Runs the proxyless search, "
                                                 "extraction, BN recalibration and test accuracy (default: auto)."),
    no_measure: bool = typer.Option(False, "--no-measure", help="Do not time the result on this machine."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Find the most accurate subnet under each budget and write it to RUN/specialized/DEVICE@BUDGET/."""
    from ofa.specialization import specialize

    if latency is None and macs is None and params is None:
        from elastic.errors import OFAError

        raise OFAError("give a budget: --latency (e.g. 40ms or 20ms,30ms,40ms), --macs (e.g. 300M) and/or --params "
                       "(e.g. 5M); --pareto adds the front of everything scored while searching them")
    results = specialize(run, device=device, latency=latency, macs=macs, params=params, space=space,
                         accuracy_predictor=accuracy_predictor, backend=backend, export=export or (), pareto=pareto,
                         seed=seed, measure=not no_measure, out_dir=out, progress=not as_json,
                         resolution=resolution, allow_extrapolation=allow_extrapolation, data=data,
                         compute_device=compute_device)
    if as_json:
        docs = [r.to_dict() for r in results]
        print(json.dumps(docs[0] if len(docs) == 1 else {"results": docs, "search_seconds": docs[0]["search_seconds"]},
                         indent=2))
        return
    print(render_table(results))


def render_table(results) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"specialized in {results[0].search_seconds:.2f} s of search" if results else "")
    for col in ("device", "budget", "arch", "MACs", "pred. lat", "meas. lat", "pred. acc", "test acc", "path"):
        table.add_column(col)
    for r in results:
        fmt_ms = lambda v: "-" if v is None else f"{v:.2f} ms"  # noqa: E731
        fmt_pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        table.add_row(r.device, r.budget, r.arch.summary(), f"{r.macs / 1e6:.1f}M", fmt_ms(r.predicted_latency_ms),
                      fmt_ms(r.measured_latency_ms), fmt_pct(r.predicted_accuracy), fmt_pct(r.test_accuracy),
                      str(r.path or "-"))
    console = Console(width=200, record=True)
    with console.capture() as cap:
        console.print(table)
        for r in results:
            if r.note:
                console.print(f"note ({r.device}@{r.budget}): {r.note}")
    return cap.get()
