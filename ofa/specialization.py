"""`ofa specialize` / `ofa.specialize`: from a trained run to deployable networks for a device and budgets.

search (evolution or ProxylessNAS) -> extract with weights -> BN recalibration -> test accuracy ->
latency measured here when the device is this machine -> `<run>/specialized/<device>@<budget>/`.
Without a run, only archs are searched (e.g. the ImageNet space with OFA's published predictor).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec, get_space

BACKENDS = ("evolution", "proxyless")


@dataclass
class Specialized:
    """One specialized network: the search's figures beside the real ones measured after extraction."""

    device: str
    budget: str
    arch: Arch
    predicted_accuracy: float
    predicted_latency_ms: float | None
    macs: float
    params: float
    search_seconds: float
    path: Path | None = None
    test_accuracy: float | None = None
    measured_latency_ms: float | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folder_name(self) -> str:
        """`<device>@<budget>`, with `-r<resolutions>` when the search was limited to some resolutions."""
        res = self.extra.get("resolutions")
        return f"{self.device}@{self.budget}" + (f"-r{'-'.join(map(str, res))}" if res else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "budget": self.budget, "arch": self.arch.to_dict(),
            "predicted_accuracy": self.predicted_accuracy, "predicted_latency_ms": self.predicted_latency_ms,
            "macs": self.macs, "params": self.params, "path": str(self.path) if self.path else None,
            "search_seconds": self.search_seconds, "test_accuracy": self.test_accuracy,
            "measured_latency_ms": self.measured_latency_ms, "note": self.note, **self.extra,
        }


def _as_text(value: Any, unit: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value}{unit}"
    if isinstance(value, (list, tuple)):
        return ",".join(_as_text(v, unit) or "" for v in value)
    return str(value)


def build_constraints(latency: Any = None, macs: Any = None, params: Any = None):
    """Budgets from strings ('40ms', '20ms,30ms', '300M', '5M') or numbers (ms, MACs, params).

    One `Constraints` per value of the (single) kind given several values, ascending; single values apply to all.
    """
    from specialize.budget import Constraints, parse_latencies, parse_macs_list, parse_params_list

    lat = parse_latencies(_as_text(latency, "ms")) if latency is not None else [None]
    mac = parse_macs_list(_as_text(macs, "")) if macs is not None else [None]
    par = parse_params_list(_as_text(params, "")) if params is not None else [None]
    lists = [x for x in (lat, mac, par) if len(x) > 1]
    if len(lists) > 1:
        raise OFAError("give several values for one kind of budget at a time (e.g. --latency 20ms,30ms), not for two")
    n = max(len(lat), len(mac), len(par))
    pick = lambda xs, i: xs[i] if len(xs) > 1 else xs[0]  # noqa: E731
    return [Constraints(pick(lat, i), pick(mac, i), pick(par, i)) for i in range(n)]


def parse_resolutions(value: Any, space: SpaceSpec) -> tuple[int, ...] | None:
    """'32' / '28,32' / 32 / [28, 32] -> sorted resolutions of `space`; None (all of them) stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else (list(value) if isinstance(value, (list, tuple)) else [value])
    out = []
    for item in items:
        text = str(item).strip().lower().removesuffix("px")
        try:
            out.append(int(text))
        except ValueError:
            raise OFAError(f"bad resolution '{item}': give pixels as whole numbers, e.g. 32 or 28,32 "
                           f"(space {space.name} has {', '.join(map(str, space.resolutions))})") from None
    return space.pick_resolutions(out)


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _measurable_here(profile) -> bool:
    return profile.kind == "measured" and profile.extra.get("device", "cpu") in ("cpu", "cuda")


def measure_latency_here(profile, net_spec) -> float | None:
    """Median batch-1 latency of `net_spec` on this machine, with the profile's runtime, threads and precision
    (an int8 profile, `ofa profile --precision int8`, times the net quantized to int8)."""
    import torch

    from predictors.measure import measure_nets

    dev = profile.extra.get("device", "cpu")
    if dev == "cuda" and not torch.cuda.is_available():
        return None
    return float(measure_nets([net_spec], runtime=profile.extra.get("runtime", "onnxruntime"),
                              threads=int(profile.extra.get("threads", 1)), device=dev, rounds=7,
                              precision=profile.extra.get("precision", "fp32"), batch=profile.batch)[0])


def resolve_device(device: str, run_path: Path | None, say=None):
    """The profile for `device`: with a run, the run's own `profiles/<device>.json` first (the quickstart
    measures this machine there), then the user's and the shipped profiles; says which run file it used."""
    from predictors.profiles import load_profile

    first = [run_path / "profiles"] if run_path is not None else []
    profile = load_profile(device, first=first)
    if say is not None and profile.path is not None and run_path is not None and \
            Path(profile.path).parent == run_path / "profiles":
        say(f"device '{device}': using the run's own profile {profile.path}")
    return profile


def domain_resolutions(sp: SpaceSpec, acc_pred, lat_pred, resolution: Any, allow_extrapolation: bool):
    """The resolutions the search uses: the space's (or the requested ones) inside the accuracy and latency
    predictors' domains (`predictors.domain.search_domain`)."""
    from predictors.domain import predictor_domain, search_domain

    requested = parse_resolutions(resolution, sp)
    domains = [predictor_domain(acc_pred)]
    if lat_pred is not None:
        domains.append(lat_pred.domain)
    return search_domain(sp, domains, requested, allow_extrapolation)


def specialize(run: str | Path | None = None, *, device: str, latency: Any = None, macs: Any = None,
               params: Any = None, space: str | None = None, accuracy_predictor: str | Path | None = None,
               backend: str = "evolution", export: Sequence[str] | str = (), pareto: bool = False, seed: int = 0,
               calib_images: int = 2000, measure: bool = True, evaluate: bool = True,
               out_dir: str | Path | None = None, progress: bool = False, resolution: Any = None,
               data: Any = None, allow_extrapolation: bool = False, compute_device: str | None = None,
               **search_overrides: Any) -> list[Specialized]:
    """Search the best arch per budget and (with a run) write each extracted network to disk.

    `latency` takes '40ms' / '20ms,30ms,40ms' / 40.0 / [20, 30]; `macs` '300M'; `params` '5M'. `resolution`
    ('32', '28,32', 32 or [28, 32]) limits the input resolutions searched -- e.g. to the size the deployed
    camera or pipeline delivers, where any other resolution costs a resize; default: all of the space's that
    lie inside the domains the accuracy predictor and the device profile were fit on (said in the output and
    in `extra["search_domain"]`). A resolution outside them is an OFAError unless `allow_extrapolation`,
    which searches it and marks each result outside a domain as extrapolated (`extra["extrapolated"]`,
    arch.json). With a run, a device name resolves to the run's own `profiles/<name>.json` first.
    Returns one `Specialized` per budget, tightest first. `search_overrides` go to the search (evolution:
    population=, generations=, patience=, ...; proxyless: steps=, budget_rounds=, ...). Re-specializing a budget
    replaces its folder atomically. `data` (a `DataBundle` or a `--data` value such as 'imagefolder:PATH')
    replaces the run's own data for BN recalibration and test accuracy; a run whose data.json only describes its
    data (an imported supernet) keeps the supernet's BN statistics without it, and says so. `compute_device`
    (auto, cpu, cuda, cuda:N; default auto) runs the proxyless search, the extraction, BN recalibration and test
    evaluation; the networks are saved, exported and timed from the CPU either way.
    """
    from ofa.export import parse_exports
    from ofa.training.distributed import pick_device
    from predictors.latency import get_latency_predictor
    from specialize import evolution

    if backend not in BACKENDS:
        raise OFAError(f"unknown backend '{backend}'; allowed: {', '.join(BACKENDS)}")
    compute = pick_device(compute_device)
    exports = parse_exports(export) if isinstance(export, str) else parse_exports(",".join(export))
    cons = build_constraints(latency, macs, params)
    say = print if progress else None
    rd = None
    if run is not None:
        from ofa.run_dir import RunDir

        rd = RunDir(run)
    # an unknown device fails before any predictor is loaded or fitted
    profile = resolve_device(device, rd.path if rd is not None else None, say)
    if rd is not None:
        from predictors.accuracy import AccuracyPredictor

        sp = rd.load_space()
        if space is not None and space != sp.name:
            raise OFAError(f"--space {space} differs from the run's space {sp.name}; leave --space out with --run")
        if data is not None:
            from ofa.imagefolder import load_data_arg

            data = load_data_arg(data, n_classes=sp.n_classes, progress=progress)  # class count checked first
        pred_dir = rd.path / "predictors"
        if accuracy_predictor is not None:
            acc_pred = _load_accuracy_predictor(accuracy_predictor, sp)
        elif not (pred_dir / "accuracy_predictor.json").exists():
            raise OFAError(f"run {rd.path} has no accuracy predictor yet; run `ofa fit-predictor --run {rd.path}` first")
        else:
            acc_pred = AccuracyPredictor.load(pred_dir)
    else:
        if space is None:
            raise OFAError("give --run DIR (a trained run) or --space NAME with --accuracy-predictor PATH")
        sp = get_space(space)
        if accuracy_predictor is None and sp.name != "mbv3-w1.2":
            raise OFAError(f"searching space {sp.name} without a run needs --accuracy-predictor PATH "
                           f"(only mbv3-w1.2 has a built-in one: OFA's published ImageNet predictor)")
        acc_pred = _load_accuracy_predictor(accuracy_predictor, sp)

    device = profile.name  # a profile given as a file path is labelled by its name
    if profile.unit == "ms":
        lat_pred = get_latency_predictor(profile, sp)
    elif any(c.latency_ms is not None for c in cons):
        raise OFAError(f"device '{device}' is a {profile.unit} proxy, not a latency model; "
                       f"use --macs/--params budgets with it, or a latency device (see `ofa devices`)")
    else:
        lat_pred = None  # a MACs/params proxy: its "latency" is the count itself, searched via --macs/--params
    base = Path(out_dir) if out_dir is not None else (rd.path / "specialized" if rd is not None else None)
    if pareto and base is None:
        raise OFAError("--pareto without --run needs --out DIR for the plot and its JSON")
    if pareto and backend != "evolution":
        raise OFAError("--pareto plots the archs scored by the evolutionary search; use it with --backend evolution")

    dom = domain_resolutions(sp, acc_pred, lat_pred, resolution, allow_extrapolation)
    if say is not None and dom.message:
        say(dom.message)
    res = None if dom.resolutions == tuple(sp.resolutions) else dom.resolutions
    t0 = time.perf_counter()
    if backend == "evolution":
        outcome = evolution.search(sp, acc_pred, lat_pred, cons, device=device, seed=seed, resolutions=res,
                                   **search_overrides)
        found = outcome.results
        front = outcome.pareto
    else:
        if res is not None:
            search_overrides = {**search_overrides, "resolutions": res}
        found, front = _proxyless_results(rd, sp, acc_pred, lat_pred, cons, seed, search_overrides, compute)
    search_seconds = time.perf_counter() - t0

    extra: dict[str, Any] = {"search_domain": dom.to_dict()}
    if resolution is not None:
        extra["resolutions"] = list(dom.resolutions)   # asked for: names the folder (DEVICE@BUDGET-rRES)
    if profile.batch != 1:
        extra["latency_meaning"] = profile.meaning
    results = [Specialized(device=device, budget=r.constraints.label(), arch=r.arch,
                           predicted_accuracy=float(r.accuracy),
                           predicted_latency_ms=None if r.latency_ms is None else float(r.latency_ms),
                           macs=float(r.macs), params=float(r.params), search_seconds=search_seconds, note=r.note,
                           extra=dict(extra))
               for r in found]
    for r in results:
        outside = dom.outside(sp.family, r.arch.r)
        if outside:
            r.extra["extrapolated"] = {"resolution": r.arch.r, "outside": outside}
            r.note = (r.note + "; " if r.note else "") + f"extrapolated: {r.arch.r} px is outside {'; '.join(outside)}"

    if rd is not None:
        _materialize(rd, sp, results, profile, exports, calib_images, measure, evaluate, base, backend, seed,
                     progress, data, compute)
    elif base is not None:
        _write_arch_only(base, sp, results, device, backend)
    if pareto and base is not None:
        from ofa import atomic
        from specialize.pareto_plot import plot_pareto

        plot_pareto(front, base / f"{device}_pareto.png", chosen=found, device=device,
                    title=f"{sp.name} on {device}")
        points = [{**p, "arch": p["arch"].to_dict()} for p in front]
        atomic.write_json(base / f"{device}_pareto.json",
                          {"device": device, "space": sp.name, "front": points,
                           "chosen": [{"budget": r.budget, "arch": r.arch.to_dict()} for r in results]})
    return results


def _load_accuracy_predictor(path, space: SpaceSpec):
    from predictors.accuracy import AccuracyPredictor
    from predictors.ofa_predictor import load_ofa_predictor

    if path is None:
        return load_ofa_predictor()
    p = Path(path)
    if p.suffix == ".pth" or p.suffix == ".safetensors":
        return load_ofa_predictor(p)
    return AccuracyPredictor.load(p)


def _proxyless_results(rd, sp, acc_pred, lat_pred, cons, seed, overrides, compute="cpu"):
    if rd is None:
        raise OFAError("--backend proxyless needs --run DIR: it trains architecture parameters on the run's supernet")
    from specialize.evolution import SearchResult
    from specialize.proxyless import search_over_supernet
    from elastic.complexity import macs as macs_of, params as params_of

    supernet = rd.load_supernet().to(compute)
    bundle = rd.load_data()
    out = []
    for c in cons:
        if c.latency_ms is None:
            raise OFAError("--backend proxyless needs a latency budget (--latency); MACs/params-only budgets use evolution")
        arch, info = search_over_supernet(supernet, lat_pred, c.latency_ms, bundle, seed=seed, **overrides)
        arch = sp.validate(arch)
        out.append(SearchResult(constraints=c, arch=arch, accuracy=float(acc_pred.predict([arch])[0]),
                                latency_ms=float(lat_pred.predict([arch])[0]), macs=float(macs_of(sp, [arch])[0]),
                                params=float(params_of(sp, [arch])[0]), note=info.get("note") if isinstance(info, dict) else None))
    return out, []


def _meta(sp: SpaceSpec, r: Specialized, backend: str, provenance: dict[str, Any]) -> dict[str, Any]:
    from ofa import __version__

    return {
        "space": sp.to_dict(), "arch": r.arch.to_dict(), "n_classes": sp.n_classes, "device": r.device,
        "budget": r.budget,
        "predicted": {"accuracy": r.predicted_accuracy, "latency_ms": r.predicted_latency_ms, "macs": r.macs,
                      "params": r.params},
        "measured": {"test_accuracy": r.test_accuracy, "latency_ms": r.measured_latency_ms},
        "note": r.note,
        "extrapolated": r.extra.get("extrapolated"),
        "provenance": {"backend": backend,
                       "resolutions_searched": r.extra.get("search_domain", {}).get("resolutions",
                                                                                    list(sp.resolutions)),
                       "search_domain": r.extra.get("search_domain"),
                       "ofa_version": __version__,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **provenance},
    }


def _write_arch_only(base: Path, sp: SpaceSpec, results: list[Specialized], device: str, backend: str) -> None:
    from ofa import atomic
    from ofa.specialized import ARCH_ONLY_FORMAT

    for r in results:
        folder = base / r.folder_name
        atomic.write_json(folder / "arch.json", {"format": ARCH_ONLY_FORMAT, **_meta(sp, r, backend, {})})
        r.path = folder


def run_data(rd, needed: bool = True):
    """The run's own data bundle; None when not `needed`, or when its data.json only describes the data (an
    imported supernet: no images here)."""
    from ofa.imagefolder import has_images

    return rd.load_data() if needed and has_images(rd.data_config()) else None


def _materialize(rd, sp, results, profile, exports, calib_images, measure, evaluate, base, backend, seed, progress,
                 data=None, compute="cpu"):
    supernet = rd.load_supernet().to(compute)
    bundle = data if data is not None else run_data(rd, bool(evaluate or calib_images))
    provenance = {"run": str(rd.path), "supernet_sha256": file_digest(rd.weights_file),
                  "data": bundle.config if bundle is not None else rd.data_config(), "seed": seed}
    calib: dict[int, list] = {}
    for r in results:
        write_subnet(supernet, sp, r, base / r.folder_name, bundle=bundle, calib_images=calib_images,
                     evaluate=evaluate, profile=profile if measure else None, exports=exports, backend=backend,
                     provenance=provenance, seed=seed, calib_cache=calib, progress=progress,
                     described=rd.data_config())


def write_subnet(supernet, sp: SpaceSpec, r: Specialized, folder: Path, *, bundle=None, calib_images: int = 2000,
                 evaluate: bool = True, profile=None, exports: tuple[str, ...] = (), backend: str = "evolution",
                 provenance: dict[str, Any] | None = None, seed: int = 0, calib_cache: dict | None = None,
                 progress: bool = False, described: dict[str, Any] | None = None) -> Path:
    """Extract `r.arch` from `supernet`, recalibrate its BN on `calib_images` training images of `bundle`,
    measure its test accuracy (and its latency here when `profile` is measurable), write it into `folder`.
    Extraction, recalibration and evaluation run on the supernet's device; the net is saved from the CPU.

    Without `bundle` the BN statistics are the supernet's own, and `r.note` says so; `described` (a run's data
    description) then supplies the class names and input normalization. `r` is updated in place.
    """
    from elastic.bn_calibration import recalibrate_bn
    from ofa.specialized import save_specialized
    from ofa.training.evaluate import accuracy, calibration_batches

    calib = {} if calib_cache is None else calib_cache
    net = supernet.extract(r.arch)   # on the supernet's device
    dev = next(net.parameters()).device
    cost: dict[str, Any] = {}
    if bundle is not None and calib_images:
        t0 = time.perf_counter()
        if r.arch.r not in calib:
            calib.clear()  # one resolution's images at a time (2,000 ImageNet crops at 224 px are 1.2 GB)
            calib[r.arch.r] = calibration_batches(bundle, r.arch.r, calib_images, seed=seed, device=dev)
        recalibrate_bn(net, calib[r.arch.r])
        cost.update(calib_images=sum(len(b) for b in calib[r.arch.r]), calib_seconds=time.perf_counter() - t0)
        bn_stats = f"recalibrated on {cost['calib_images']} training images of {bundle.name} at {r.arch.r} px"
    else:
        bn_stats = "the supernet's own (not recalibrated)"
        if bundle is None and (calib_images or evaluate):
            own = "BN statistics are the supernet's own: give --data imagefolder:PATH to recalibrate and evaluate"
            r.note = f"{r.note}; {own}" if r.note else own
    net.eval()
    if evaluate and bundle is not None:
        t0 = time.perf_counter()
        r.test_accuracy = accuracy(net, bundle, "test", r.arch.r, device=dev)
        cost.update(eval_images=len(bundle.test), eval_seconds=time.perf_counter() - t0)
    net = net.cpu()   # timed, saved and exported from the CPU
    if profile is not None and _measurable_here(profile):
        r.measured_latency_ms = measure_latency_here(profile, net.net_spec)
    prov = dict(provenance or {})
    if isinstance(prov.get("data"), dict):   # the class names are stored once, in meta["classes"]
        prov["data"] = {k: v for k, v in prov["data"].items() if k != "classes"}
    meta = _meta(sp, r, backend, prov)
    source = described or {}
    if bundle is not None:
        source = {"classes": bundle.classes, "mean": bundle.mean, "std": bundle.std}
    meta["classes"] = list(source.get("classes") or [])
    meta["input"] = {"resolution": r.arch.r, "channels": sp.in_channels, "mean": list(source.get("mean") or []),
                     "std": list(source.get("std") or [])}
    meta["bn_statistics"] = bn_stats
    meta["cost"] = cost
    r.extra["cost"] = cost
    example = calib[r.arch.r][0][:4].cpu() if calib.get(r.arch.r) else None  # real images: exports checked in range
    r.path = save_specialized(folder, net, meta, exports=exports, example=example)
    if "onnx-int8" in exports:  # quantized after the folder is in place: a failure leaves the fp32 files as written
        from ofa.int8_export import export_int8

        r.extra["int8"] = export_int8(r.path, bundle=bundle, seed=seed, profile=profile, progress=progress)
    if progress:
        acc = f"{100 * r.test_accuracy:.2f}%" if r.test_accuracy is not None else "n/a"
        spent = "".join(f", {k.split('_')[0]} {v:.1f} s" for k, v in cost.items() if k.endswith("seconds"))
        print(f"  {r.folder_name if r.device else folder.name}: test accuracy {acc}{spent} -> {r.path}")
    return r.path
