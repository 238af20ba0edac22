"""Plot a search's Pareto front: predicted accuracy vs. latency (or MACs), MACs as colour and marker size."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

from elastic.errors import OFAError
from predictors.atomic_files import write_bytes


def plot_pareto(points: Sequence[dict[str, Any]], path: str | os.PathLike, *, chosen: Sequence[Any] = (),
                title: str | None = None, device: str | None = None) -> Path:
    """Write a PNG of `points` (dicts with accuracy, latency_ms or None, macs) to `path` (atomically).

    `chosen`: SearchResults (or dicts with the same fields) to highlight, e.g. one per budget.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pts = list(points)
    if not pts:
        raise OFAError("nothing to plot: the Pareto front is empty")
    use_lat = all(p.get("latency_ms") is not None for p in pts)
    xs = [p["latency_ms"] if use_lat else p["macs"] / 1e6 for p in pts]
    ys = [100 * p["accuracy"] for p in pts]
    macs = [p["macs"] / 1e6 for p in pts]
    lo, hi = min(macs), max(macs)
    sizes = [20 + 120 * ((m - lo) / (hi - lo) if hi > lo else 0.5) for m in macs]

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(xs, ys, color="0.7", lw=1, zorder=1)
    sc = ax.scatter(xs, ys, c=macs, s=sizes, cmap="viridis", zorder=2, edgecolors="k", linewidths=0.3)
    fig.colorbar(sc, ax=ax, label="MMACs")
    for r in chosen:
        get = (lambda k: r[k]) if isinstance(r, dict) else (lambda k: getattr(r, k))
        x = get("latency_ms") if use_lat else get("macs") / 1e6
        ax.scatter([x], [100 * get("accuracy")], marker="*", s=220, color="crimson", zorder=3, edgecolors="k", linewidths=0.5)
    ax.set_xlabel(f"predicted latency (ms){' on ' + device if device else ''}" if use_lat else "MMACs")
    ax.set_ylabel("predicted top-1 accuracy (%)")
    ax.set_title(title or "Pareto front of the search")
    ax.grid(alpha=0.3)
    fig.tight_layout()

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return write_bytes(path, buf.getvalue())


__all__ = ["plot_pareto"]
