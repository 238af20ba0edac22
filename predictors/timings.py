"""Read a timings CSV (`network,latency_ms`, ...) into networks and times, checking every row.

`network` is a probe id of a probe set (`manifest.json` written by `ofa profile probes`) or the path of a
network file (`arch.json`, an OFA `net_config`) or of a folder holding one (a folder `ofa specialize` wrote, an
original OFA specialized net's `net.config` + `run.config`), relative to the CSV's folder, else the working
directory, as `ofa latency --config` takes. Optional columns: `image_size` (for a network file), `batch` (for a network
file; probes have theirs), and `space` / `manifest` (written by the kit's timing script; checked against the
probe set). A row with an empty `latency_ms` is a network not timed and is skipped (and counted).
Anything wrong is an OFAError naming the file, the row and the problem.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from elastic.errors import OFAError
from elastic.netspec import NetSpec
from predictors.net_config import load_net_config
from predictors.probes import Manifest, load_manifest


@dataclass
class Timings:
    names: list[str]
    nets: list[NetSpec]
    ms: list[float]
    batch: int
    spaces: list[str]          # the probe set's space per row ("" for a network file)
    source: str
    skipped: list[str] = field(default_factory=list)   # rows without a time
    manifest: Manifest | None = None


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OFAError(f"{where}: latency_ms '{text}' is not a number") from None
    if math.isnan(value) or math.isinf(value):
        raise OFAError(f"{where}: latency_ms is {text}; give a positive time in milliseconds")
    if value <= 0:
        raise OFAError(f"{where}: latency_ms is {text}; a time must be positive (milliseconds)")
    return value


def read_timings(path: str | Path, probes: str | Path | None = None) -> Timings:
    """Networks and their times from the CSV at `path`; probe ids resolve against the probe set in `probes`
    (default: the CSV's own folder, when it holds a manifest.json)."""
    p = Path(path)
    if not p.is_file():
        raise OFAError(f"timings file '{p}' does not exist")
    manifest = None
    if probes is not None:
        manifest = load_manifest(probes)
    elif (p.parent / "manifest.json").is_file():
        manifest = load_manifest(p.parent)
    try:
        with open(p, newline="") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise OFAError(f"timings file '{p}' is not a readable CSV ({exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise OFAError(f"timings file '{p}' is empty; it needs a header with the columns network,latency_ms")
    header = [c.strip().lower() for c in rows[0]]
    missing = [c for c in ("network", "latency_ms") if c not in header]
    if missing:
        raise OFAError(f"timings file '{p}' has no column {' or '.join(missing)} (header: {','.join(header)}); "
                       "it needs at least network,latency_ms")
    col = {name: i for i, name in enumerate(header)}
    out = Timings([], [], [], 0, [], str(p), manifest=manifest)
    batches: set[int] = set()
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        where = f"{p} line {line}"
        cell = lambda name: row[col[name]].strip() if name in col and col[name] < len(row) else ""  # noqa: E731
        name = cell("network")
        if not name:
            raise OFAError(f"{where}: empty network (a probe id or a network file)")
        if name in seen:
            raise OFAError(f"{where}: network '{name}' is listed twice (also on line {seen[name]})")
        seen[name] = line
        if not cell("latency_ms"):
            out.skipped.append(name)
            continue
        ms = _number(cell("latency_ms"), where)
        if manifest is not None and name in manifest.probes:
            probe = manifest.probes[name]
            for key, expected in (("space", manifest.space.name), ("manifest", manifest.id),
                                  ("batch", str(manifest.batch))):
                if cell(key) and cell(key) != expected:
                    raise OFAError(f"{where}: probe '{name}' was timed from {key} {cell(key)}, but the probe set "
                                   f"{manifest.folder} is {key} {expected}; fit with the probes it was timed from")
            net = manifest.space.net_spec(probe.arch)
            batch, space = manifest.batch, manifest.space.name
        else:
            net, space = _network_file(name, p, cell("image_size"), where, manifest)
            batch = int(cell("batch")) if cell("batch").isdigit() and int(cell("batch")) > 0 else None
            if cell("batch") and batch is None:
                raise OFAError(f"{where}: batch '{cell('batch')}' is not a positive integer")
            batch = batch or 1
        batches.add(batch)
        out.names.append(name)
        out.nets.append(net)
        out.ms.append(ms)
        out.spaces.append(space)
    if len(batches) > 1:
        raise OFAError(f"timings file '{p}' mixes batch sizes {sorted(batches)}; a profile prices one batch size")
    if not out.nets:
        raise OFAError(f"timings file '{p}' holds no times ({len(out.skipped)} rows have an empty latency_ms)")
    out.batch = batches.pop()
    return out


def _network_file(name: str, csv_path: Path, image_size: str, where: str, manifest) -> tuple[NetSpec, str]:
    looks_like_file = name.endswith((".json", ".config")) or "/" in name or "\\" in name
    candidates = [csv_path.parent / name, Path(name)]
    found = next((c for c in candidates if c.is_file() or c.is_dir()), None)
    if found is None:
        if manifest is not None and not looks_like_file:
            ids = sorted(manifest.probes)
            raise OFAError(f"{where}: network '{name}' is neither a probe of {manifest.path} ({ids[0]}..{ids[-1]}) "
                           "nor a network file")
        if not looks_like_file:
            raise OFAError(f"{where}: network '{name}' is not a network file, and no probe set was given to look "
                           "it up in (--probes DIR, or put the CSV next to manifest.json)")
        raise OFAError(f"{where}: network file '{name}' does not exist (looked in {csv_path.parent} and here)")
    size = None
    if image_size:
        if not image_size.isdigit() or int(image_size) < 8:
            raise OFAError(f"{where}: image_size '{image_size}' is not a resolution in pixels")
        size = int(image_size)
    try:
        net = load_net_config(found, size)
    except OFAError as exc:
        raise OFAError(f"{where}: {exc}") from None
    return net, ""
