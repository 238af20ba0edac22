"""Device profiles: latency models stored as JSON data files, registered by name.

Shipped profiles live in `predictors/profiles/*.json` (built by `bench/build_profiles.py`); profiles a user
measures with `ofa profile` live in the user dir (`$OFA_HOME/profiles`, else `~/.cache/ofa/profiles`).
A device name resolves to a user profile first, then a shipped one; a path to a `.json` file also works.

File format (`"format": "ofa-latency-profile"`, version 1):
  name, kind ("lut" | "regression" | "measured" | "proxy"), unit ("ms", "MMACs", "Mparams"),
  description, provenance, families (space families whose layers it models), space (measured: the space
  it was fit on), lut (rows: Layer fields + latency), regression (feature -> coefficient), proxy
  ("macs" | "params"), error (the measured quality: summary line + numbers), batch (the batch size its
  latencies are for: 1 = latency of one image, else the time of one batch), domain (what it was fit on:
  families, input resolutions, spaces, basis; see `predictors.domain`; derived for older files).
Kinds added by `ofa profile fit`: "regression" fit on whole-network timings of any device, "transfer" (a prior
profile, embedded, times a correction learnt from a few timed networks; see `predictors.fewshot`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from elastic.errors import OFAError
from predictors.atomic_files import write_json_atomic
from predictors.domain import Domain
from predictors.layer_regression import LayerRegression
from predictors.layers import OPS
from predictors.lut import LayerTable

FORMAT = "ofa-latency-profile"
VERSION = 1
KINDS = ("lut", "regression", "measured", "proxy", "transfer")
PACKAGE_DIR = Path(__file__).resolve().parent / "profiles"


def user_profile_dir() -> Path:
    home = os.environ.get("OFA_HOME")
    return (Path(home) / "profiles") if home else Path.home() / ".cache" / "ofa" / "profiles"


@dataclass
class Profile:
    name: str
    kind: str
    unit: str = "ms"
    description: str = ""
    provenance: str = ""
    families: tuple[str, ...] = ("mbv3", "proxyless")
    space: str | None = None
    lut: LayerTable | None = None
    regression: LayerRegression | None = None
    proxy: str | None = None
    error: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    domain: Domain | None = None     # None: any network (proxies)
    batch: int = 1
    transfer: Any = None             # kind "transfer": a `predictors.fewshot.Transfer` (prior + correction)

    @property
    def meaning(self) -> str:
        """What its numbers are: 'batch-1 latency' or 'time per batch of 64'."""
        if self.kind == "proxy":
            return f"a count in {self.unit}, not a latency"
        return "batch-1 latency" if self.batch == 1 else f"time per batch of {self.batch}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "name": self.name, "kind": self.kind, "unit": self.unit,
            "description": self.description, "provenance": self.provenance, "families": list(self.families),
            "space": self.space, "proxy": self.proxy, "batch": self.batch,
            "domain": self.domain.to_dict() if self.domain is not None else None,
            "error": self.error, "extra": self.extra,
            "regression": self.regression.to_dict() if self.regression is not None else None,
            "lut": self.lut.to_rows() if self.lut is not None else None,
            "transfer": self.transfer.to_dict() if self.transfer is not None else None,
        }

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(Path(path), self.to_dict())


def profile_from_dict(data: Any, source: str) -> Profile:
    """Validate and build a profile; anything wrong is an OFAError naming the file and the problem."""
    def bad(why: str) -> OFAError:
        return OFAError(f"device profile {source} is not a valid latency profile: {why}")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad(f"expected a JSON object with \"format\": \"{FORMAT}\"")
    if data.get("version") != VERSION:
        raise bad(f"unsupported version {data.get('version')!r} (this ofa reads version {VERSION})")
    kind = data.get("kind")
    if kind not in KINDS:
        raise bad(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise bad("missing 'name'")
    try:
        lut = None
        if data.get("lut") is not None:
            rows = data["lut"]
            for row in rows:
                if len(row) != 11 or row[0] not in OPS or not all(isinstance(v, int) for v in row[1:10]) \
                        or not isinstance(row[10], (int, float)) or row[10] < 0:
                    raise bad(f"bad table row {row!r}")
            lut = LayerTable.from_rows(rows)
        regression = LayerRegression.from_dict(data["regression"]) if data.get("regression") is not None else None
    except (TypeError, ValueError, AttributeError) as exc:
        raise bad(str(exc)) from None
    proxy = data.get("proxy")
    if kind == "proxy" and proxy not in ("macs", "params"):
        raise bad("a proxy profile needs \"proxy\": \"macs\" or \"params\"")
    transfer = None
    if kind == "transfer":
        from predictors.fewshot import Transfer

        transfer = Transfer.from_dict(data.get("transfer"), source)
    elif kind != "proxy" and lut is None and regression is None:
        raise bad("it has neither a lookup table nor a regression model")
    families = data.get("families") or ["mbv3", "proxyless"]
    if not isinstance(families, list) or not all(isinstance(f, str) for f in families):
        raise bad("'families' must be a list of space families")
    batch = data.get("batch", 1)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise bad(f"'batch' must be a positive integer, got {batch!r}")
    for key in ("error", "extra"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise bad(f"'{key}' must be a JSON object, got {type(data[key]).__name__}")
    what = f"latency profile '{name}'"
    domain = Domain.from_dict(data["domain"], what).renamed(what) if data.get("domain") is not None else \
        _legacy_domain(kind, families, data, what)
    return Profile(name=name, kind=kind, unit=str(data.get("unit", "ms")), description=str(data.get("description", "")),
                   provenance=str(data.get("provenance", "")), families=tuple(families), space=data.get("space"),
                   lut=lut, regression=regression, proxy=proxy, error=dict(data.get("error") or {}),
                   extra=dict(data.get("extra") or {}), domain=domain, batch=batch, transfer=transfer)


def _legacy_domain(kind: str, families: list[str], data: dict, what: str) -> Domain | None:
    """Files written before profiles recorded their domain: the resolutions of the subnets a measured profile
    timed (stored in it), else of its space; a table or regression without one is marked as unrecorded."""
    if kind == "proxy":
        return None
    space_name = data.get("space")
    archs = (data.get("extra") or {}).get("archs")
    if kind == "measured" and archs:
        try:
            res = sorted({int(a["r"]) for a in archs})
        except (TypeError, KeyError, ValueError):
            res = []
        if res:
            return Domain(what, tuple(families), tuple(res), True, (space_name,) if space_name else (),
                          f"{len(archs)} timed subnets of {space_name}")
    if space_name:
        from elastic.spaces import SPACES, get_space

        if space_name in SPACES:
            return Domain(what, tuple(families), tuple(get_space(space_name).resolutions), True, (space_name,),
                          f"fit on space {space_name}")
    return Domain(what, tuple(families), None, True, (), "domain not recorded in the file")


def load_profile_file(path: str | Path) -> Profile:
    p = Path(path)
    if not p.is_file():
        raise OFAError(f"device profile file '{p}' does not exist")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OFAError(f"device profile '{p}' is corrupt (not valid JSON: {exc})") from None
    prof = profile_from_dict(data, f"'{p}'")
    prof.path = p
    return prof


def _profile_files() -> dict[str, Path]:
    """name -> file; user profiles shadow shipped ones of the same name."""
    found: dict[str, Path] = {}
    for directory in (PACKAGE_DIR, user_profile_dir()):
        if directory.is_dir():
            for f in sorted(directory.glob("*.json")):
                found[f.stem] = f
    return found


def known_devices() -> list[str]:
    return sorted(_profile_files())


def load_profile(device: str | Path, first: Sequence[str | Path] = ()) -> Profile:
    """A profile by device name or by path to a profile JSON file. A name is looked up in the folders of
    `first` (e.g. a run's own `profiles/`), then the user dir, then the shipped profiles."""
    text = str(device)
    if text.endswith(".json") or os.sep in text:
        return load_profile_file(text)
    if not text or text.startswith(".") or "/" in text or "\\" in text:
        raise OFAError(f"device name {text!r} is not allowed; give a name from `ofa devices` or a profile .json path")
    for folder in first:
        candidate = Path(folder) / f"{text}.json"
        if candidate.is_file():
            return load_profile_file(candidate)
    files = _profile_files()
    if text not in files:
        hint = f" (run `ofa profile --device {text}` to measure this machine)" if text in ("cpu", "cuda") else ""
        looked = "".join(f"{Path(f) / (text + '.json')}, " for f in first)
        raise OFAError(f"unknown device '{text}'{hint}: looked for {looked}{user_profile_dir() / (text + '.json')} "
                       f"and the shipped profiles; known devices: {', '.join(sorted(files)) or 'none'}; "
                       "a path to a profile .json file also works")
    return load_profile_file(files[text])


def profile_row(name: str, path: Path) -> dict[str, Any]:
    """What `ofa devices` shows of one profile file."""
    try:
        prof = load_profile_file(path)
    except OFAError as exc:
        return {"name": name, "kind": "broken", "unit": "", "provenance": str(exc), "error": "", "timed_nets": None,
                "meaning": "", "domain": "", "path": str(path)}
    return {"name": name, "kind": prof.kind, "unit": prof.unit, "provenance": prof.provenance,
            "error": prof.error.get("summary", "not measured"), "timed_nets": prof.error.get("timed_nets"),
            "meaning": prof.meaning, "domain": prof.domain.describe_resolutions() if prof.domain else "any",
            "path": str(path)}


def list_devices(first: Sequence[str | Path] = ()) -> list[dict[str, Any]]:
    """One row per registered device (and per profile in the folders of `first`): name, kind, unit,
    provenance, measured error, number of timed networks it was fit on, what its numbers mean, file."""
    files = _profile_files()
    for folder in first:
        for f in sorted(Path(folder).glob("*.json")):
            files[f.stem] = f
    return [profile_row(name, path) for name, path in sorted(files.items())]


def profile_exists(name: str) -> Path | None:
    """The file a profile of this name would shadow or replace (user or shipped), if any."""
    return _profile_files().get(name)


def check_profile_name(name: str | None) -> str:
    if not name or any(c in name for c in "/\\") or name.startswith(".") or not name.isprintable():
        raise OFAError(f"profile name {name!r} is not allowed; use letters, digits, '-', '_' or '.'")
    return name


def save_user_profile(profile: Profile, name: str | None = None, force: bool = True) -> Path:
    """Save into the user dir under `name`; with `force=False` an existing profile of that name (a user one, or
    a shipped one it would shadow) is an OFAError and nothing is written."""
    name = check_profile_name(name or profile.name)
    existing = profile_exists(name)
    if not force and existing is not None:
        raise OFAError(f"a device profile named '{name}' already exists ({existing}); choose another --name or "
                       "pass --force to replace it")
    profile.name = name
    return profile.save(user_profile_dir() / f"{name}.json")
