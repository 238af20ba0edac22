"""`ofa spaces`: list the registered search spaces."""
from __future__ import annotations

import json

import typer

from elastic.spaces import SPACES, get_space
from ofa.cli import app


@app.command("spaces")
def spaces(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the search spaces a supernet can be built on."""
    rows = []
    for name in sorted(SPACES):
        sp = get_space(name)
        rows.append({
            "name": name, "blocks": sp.n_blocks, "stages": sp.n_stages, "kernels": list(sp.ks_choices),
            "expands": list(sp.e_choices), "depths": list(sp.d_choices), "resolutions": list(sp.resolutions),
        })
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['name']:<22} blocks={r['blocks']:<3} k={r['kernels']} e={r['expands']} d={r['depths']} r={r['resolutions']}")
