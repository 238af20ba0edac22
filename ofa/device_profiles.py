"""A latency profile for a device ofa cannot run on: probe networks out, timings in (`ofa profile probes|fit`).

    import ofa
    ofa.write_probes("mbv3-w1.0", "probes/", n=40)                 # time them on the device (probes/README.md)
    prof = ofa.fit_profile("probes/timings.csv", "rpi4", prior="cpu")
    ofa.specialize("checkpoints/quickstart", device="rpi4", latency="30ms")
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from elastic.errors import OFAError


def write_probes(space: str, out: str | Path, n: int = 40, batch: int = 1, seed: int = 0, force: bool = False,
                 n_classes: int | None = None, precision: str = "fp32",
                 progress: Callable[[int, int], None] | None = None):
    """Probe networks of `space` with their timing kit in `out` (`precision` "int8": quantized probes);
    returns the `predictors.probes.Manifest`."""
    from elastic.spaces import get_space
    from predictors.probes import write_probes as _write
    from predictors.quantize import check_precision

    precision = check_precision(str(precision).strip().lower())
    sp = get_space(space) if n_classes is None else get_space(space, n_classes=n_classes)
    return _write(sp, out, n=n, batch=batch, seed=seed, force=force, progress=progress, precision=precision)


def fit_profile(timings: str | Path, name: str, prior: str | Path | None = None, probes: str | Path | None = None,
                model: str = "auto", force: bool = False, save: bool = True):
    """Fit a device profile from a timings CSV (see `predictors.timings`), with or without a prior profile, and
    save it as a user profile (an existing one of that name only with `force`). Returns the Profile; its
    `.error` holds the leave-one-out report, `.path` the file. Everything is checked before anything is saved."""
    from predictors.fewshot import fit_timings
    from predictors.profiles import check_profile_name, load_profile, profile_exists, save_user_profile
    from predictors.timings import read_timings

    check_profile_name(name)
    existing = profile_exists(name)
    if save and not force and existing is not None:
        raise OFAError(f"a device profile named '{name}' already exists ({existing}); choose another --name or "
                       "pass --force to replace it")
    prior_profile = load_profile(prior) if prior else None
    t = read_timings(timings, probes)
    prof = fit_timings(t.nets, t.ms, name, prior=prior_profile, model=model, batch=t.batch, source=str(timings),
                       names=t.names, spaces=[s for s in t.spaces if s])
    if t.skipped:
        prof.error["notes"].append(f"{len(t.skipped)} rows had no time and were left out")
    if save:
        prof.path = save_user_profile(prof, force=force)
    return prof
