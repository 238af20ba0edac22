"""`ofa devices`: list the device profiles latency can be predicted for."""
from __future__ import annotations

import json

import typer

from ofa.cli import app
from predictors.profiles import list_devices, user_profile_dir


@app.command("devices")
def devices(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List device profiles: name, kind (lut / regression / measured / proxy), provenance, measured error."""
    rows = list_devices()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"device profiles (user profiles in {user_profile_dir()})")
    for col in ("name", "kind", "unit", "provenance", "measured error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["unit"], r["provenance"], r["error"])
    Console(width=160).print(table)
