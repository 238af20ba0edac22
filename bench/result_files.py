"""Where a bench script that reads one run writes its results: bench/results/<name>_<tag>.json, the tag by default
the run directory's name (so results from several runs sit side by side)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_run_result(name: str, run: str, tag: str, result: dict[str, Any]) -> Path:
    """Write `result` to bench/results/<name>_<tag or the run directory's name>.json; returns the path."""
    out = RESULTS / f"{name}_{tag or Path(run).resolve().name}.json"
    out.write_text(json.dumps(result, indent=1))
    return out
