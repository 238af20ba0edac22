"""Probe networks: a set of subnets spanning a space, written as ONNX files to time on any device.

`write_probes(space, out, n)` writes into `out/`:
- `pNNN.onnx`      one file per probe (random weights: latency depends on shapes, not values), input "x" of a
                   static shape (batch, channels, r, r), output "y";
- `manifest.json`  format "ofa-probes" version 1: the space (its `space.json` record), the batch, and per probe
                   its id, file, arch, input shape, MACs, parameters and SHA-256; `id` names this probe set;
- `timings.csv`    the template to fill: `network,latency_ms`, one row per probe;
- `time_probes.py` a standalone timing script (Python, numpy, onnxruntime; nothing of ofa);
- `README.md`      how to time the files on the device and what the CSV must hold.
`load_manifest(dir)` reads and checks a manifest. Probes are stratified (`stratified_archs`): each probe draws
a level in [0, 1] for resolution, depth, width and kernel from a Latin hypercube and every block's choice
scatters around its level, so the set spans the space's latency range (always its smallest and largest
subnets) with mixed kernels and widths inside each network; uniform sampling would bunch around the middle.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec, space_from_dict

FORMAT = "ofa-probes"
VERSION = 1
KIT = Path(__file__).resolve().parent / "probe_kit"
MAX_PROBES = 1000


def _pick(choices, level: float, rng: np.random.Generator, spread: float = 0.6):
    """A choice near `level` (0 = smallest, 1 = largest), scattered by `spread` choice steps."""
    i = int(np.clip(np.rint(level * (len(choices) - 1) + rng.normal(0.0, spread)), 0, len(choices) - 1))
    return choices[i]


def stratified_archs(space: SpaceSpec, n: int, seed: int = 0) -> list[Arch]:
    """`n` distinct archs: the smallest, the largest, then a Latin hypercube over (resolution, depth, width,
    kernel) levels, each block's choice scattered around its network's level."""
    if n < 2:
        raise OFAError(f"--n must be at least 2 (the smallest and the largest subnet), got {n}")
    rng = np.random.default_rng(seed)
    m = n - 2
    # row j: the four levels of stratified probe j, each column a random permutation of m strata
    levels = np.stack([(rng.permutation(m) + rng.random(m)) / max(m, 1) for _ in range(4)], axis=1)
    res = sorted(space.resolutions)

    def draw(u_r: float, u_d: float, u_w: float, u_k: float) -> Arch:
        return Arch(ks=tuple(_pick(sorted(space.ks_choices), u_k, rng) for _ in range(space.n_blocks)),
                    e=tuple(_pick(sorted(space.e_choices), u_w, rng) for _ in range(space.n_blocks)),
                    d=tuple(_pick(space.depth_choices(s), u_d, rng) for s in range(space.n_stages)),
                    r=res[min(int(u_r * len(res)), len(res) - 1)])

    chosen = {space.canonical(a): a for a in (space.smallest(), space.largest())}
    for row in levels:
        for attempt in range(50):   # a duplicate: draw the scatter again (then, rarely, fresh levels)
            arch = draw(*(row if attempt < 25 else rng.random(4)))
            if space.canonical(arch) not in chosen:
                chosen[space.canonical(arch)] = arch
                break
        else:
            raise OFAError(f"space {space.name} has too few distinct subnets for {n} probes")
    return list(chosen.values())


@dataclass
class Probe:
    id: str
    file: str
    arch: Arch
    input_shape: tuple[int, int, int, int]
    macs: int
    params: int
    sha256: str


@dataclass
class Manifest:
    path: Path
    id: str
    space: SpaceSpec
    batch: int
    probes: dict[str, Probe]
    data: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.path.parent


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_probes(space: SpaceSpec, out: str | Path, n: int = 40, batch: int = 1, seed: int = 0,
                 force: bool = False, progress: Callable[[int, int], None] | None = None,
                 precision: str = "fp32") -> Manifest:
    """Write `n` probe networks of `space` at `batch` with the timing kit into `out` (see the module doc).
    `precision` "int8": each probe is quantized to int8 (`predictors.quantize`, static QDQ) before it is written."""
    import torch

    from elastic.netspec import net_macs, net_params
    from predictors.measure import ONNX_OPSET, build_module, export_onnx

    if not isinstance(n, int) or not 2 <= n <= MAX_PROBES:
        raise OFAError(f"--n must be between 2 and {MAX_PROBES}, got {n}")
    if not isinstance(batch, int) or batch < 1:
        raise OFAError(f"--batch must be a positive integer, got {batch}")
    if precision != "fp32":
        from predictors.quantize import check_precision, quantize_for_timing, require_int8_runtime

        check_precision(precision)
        require_int8_runtime()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OFAError(f"--out {out} exists and is not a folder")
    if (out / "manifest.json").exists() and not force:
        raise OFAError(f"{out} already holds probes (manifest.json); choose another --out or pass --force to replace them")
    archs = stratified_archs(space, n, seed)
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    probes = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tracing small graphs: extra threads only spin (3x slower on a busy 2-core machine)
    try:
        for i, arch in enumerate(archs):
            net = space.net_spec(arch)
            torch.manual_seed(seed * 100_003 + i)
            shape = (batch, net.in_channels, net.resolution, net.resolution)
            x = torch.randn(*shape)
            data = export_onnx(build_module(net), x)
            if precision == "int8":
                data = quantize_for_timing(data, x.numpy())
            pid = f"p{i:03d}"
            (tmp / f"{pid}.onnx").write_bytes(data)
            probes.append({"id": pid, "file": f"{pid}.onnx", "arch": arch.to_dict(), "input_shape": list(shape),
                           "macs": int(net_macs(net)), "params": int(net_params(net)), "sha256": _digest(data),
                           "role": "smallest" if i == 0 else "largest" if i == 1 else "stratified"})
            if progress:
                progress(i + 1, n)
        set_id = _digest(json.dumps([space.to_dict(), batch, [p["sha256"] for p in probes]]).encode())[:12]
        manifest = {"format": FORMAT, "version": VERSION, "id": set_id, "space": space.to_dict(),
                    "family": space.family, "batch": batch, "seed": seed, "n": n, "opset": ONNX_OPSET,
                    "precision": precision,
                    "input": {"name": "x", "layout": "NCHW", "dtype": "float32"}, "output": {"name": "y"},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "probes": probes}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        (tmp / "timings.csv").write_text("network,latency_ms\n" + "".join(f"{p['id']},\n" for p in probes))
        shutil.copy(KIT / "time_probes.py", tmp / "time_probes.py")
        (tmp / "README.md").write_text(_readme(manifest))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return load_manifest(out)


def _readme(manifest: dict[str, Any]) -> str:
    shapes = sorted({tuple(p["input_shape"]) for p in manifest["probes"]}, key=lambda s: s[2])
    meaning = ("the latency of one inference (batch 1)" if manifest["batch"] == 1
               else f"the time of one inference of a whole batch of {manifest['batch']}")
    return (KIT / "README.md").read_text().format(
        n=len(manifest["probes"]), space=manifest["space"]["name"], family=manifest["family"],
        batch=manifest["batch"], id=manifest["id"], meaning=meaning,
        shapes=", ".join("x".join(map(str, s)) for s in shapes))


def load_manifest(path: str | Path) -> Manifest:
    """Read and check `manifest.json` (a probe folder or the file itself)."""
    p = Path(path)
    f = p / "manifest.json" if p.is_dir() else p
    if not f.is_file():
        raise OFAError(f"no probe manifest at {p} (expected {f}; written by `ofa profile probes`)")
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OFAError(f"probe manifest {f} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OFAError(f"{f} is not a probe manifest (expected \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise OFAError(f"probe manifest {f} has version {data.get('version')!r}; this ofa reads version {VERSION} "
                       "(write the probes again with `ofa profile probes`)")
    try:
        space = space_from_dict(data["space"])
        batch = int(data["batch"])
        probes = {}
        for row in data["probes"]:
            arch = space.arch_from_dict(row["arch"])
            probe = Probe(str(row["id"]), str(row["file"]), arch, tuple(int(v) for v in row["input_shape"]),
                          int(row["macs"]), int(row["params"]), str(row["sha256"]))
            if probe.id in probes:
                raise OFAError(f"probe manifest {f} lists probe '{probe.id}' twice")
            if probe.input_shape != (batch, space.in_channels, arch.r, arch.r):
                raise OFAError(f"probe manifest {f}: probe '{probe.id}' has input shape {probe.input_shape}, its "
                               f"arch and batch give {(batch, space.in_channels, arch.r, arch.r)}")
            probes[probe.id] = probe
        set_id = str(data["id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OFAError(f"probe manifest {f} is malformed ({type(exc).__name__}: {exc})") from None
    if not probes:
        raise OFAError(f"probe manifest {f} lists no probes")
    return Manifest(f, set_id, space, batch, probes, data)


__all__ = ["Manifest", "Probe", "load_manifest", "stratified_archs", "write_probes"]
