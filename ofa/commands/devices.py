"""`ofa devices`: list the device profiles latency can be predicted for."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ofa.cli import app
from predictors.profiles import list_devices, user_profile_dir


@app.command("devices")
def devices(
    run: Optional[Path] = typer.Option(None, "--run", help="Also list a run's own profiles (RUN/profiles/*.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List device profiles: name, kind, what the numbers mean, the domain fit on, error, timed networks."""
    rows = list_devices(first=[run / "profiles"] if run is not None else [])
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"device profiles (user profiles in {user_profile_dir()})")
    for col in ("name", "kind", "measures", "domain", "provenance", "measured error", "timed nets"):
        table.add_column(col, overflow="fold")
    for r in rows:
        timed = "-" if r.get("timed_nets") is None else str(r["timed_nets"])
        table.add_row(r["name"], r["kind"], r["meaning"] if r["unit"] == "ms" else f"{r['unit']} (a count)",
                      r["domain"], r["provenance"], r["error"], timed)
    Console(width=180).print(table)
