"""The domain a predictor was fit on, and the resolutions a search may use given several predictors' domains.

A latency profile or an accuracy predictor is only known to be right on networks like the ones it was fit on:
the same space family, input resolutions inside what it saw. `Domain` records that (families, resolutions,
the spaces and a one-line basis), and `search_domain` intersects a space with the domains of the predictors a
search uses. Outside the intersection a search needs `allow_extrapolation`, and its results say so.

`continuous` domains (regressions, tables interpolated across input size) hold every resolution between the
smallest and the largest they saw; discrete ones (accuracy predictors on a one-hot of the resolution) only the
resolutions they saw.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from elastic.errors import OFAError


@dataclass(frozen=True)
class Domain:
    what: str                                   # "latency profile 'note10'", "accuracy predictor (gbr)"
    families: tuple[str, ...] | None = None     # None: any family
    resolutions: tuple[int, ...] | None = None  # input sizes it was fit on; None: any
    continuous: bool = True
    spaces: tuple[str, ...] = ()
    basis: str = ""                             # what it was fit on, in words

    def holds_resolution(self, r: int) -> bool:
        if self.resolutions is None:
            return True
        if self.continuous:
            return min(self.resolutions) <= r <= max(self.resolutions)
        return r in self.resolutions

    def holds_family(self, family: str) -> bool:
        return self.families is None or family in self.families

    def holds(self, family: str, r: int) -> bool:
        return self.holds_family(family) and self.holds_resolution(r)

    def describe_resolutions(self) -> str:
        if self.resolutions is None:
            return "any resolution"
        rs = sorted(self.resolutions)
        if len(rs) == 1:
            return f"{rs[0]} px"
        if self.continuous:
            return f"{rs[0]}-{rs[-1]} px"
        return f"{', '.join(map(str, rs))} px"

    def describe(self) -> str:
        """'latency profile 'note10': mbv3 nets at 160-224 px (5 published Note10 tables)'."""
        fam = "/".join(self.families) + " nets" if self.families else "networks"
        basis = f" ({self.basis})" if self.basis else ""
        return f"{self.what}: {fam} at {self.describe_resolutions()}{basis}"

    def short(self) -> str:
        """'latency profile 'note10' (160-224 px)'."""
        return f"{self.what} ({self.describe_resolutions()})"

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "families": list(self.families) if self.families is not None else None,
                "resolutions": list(self.resolutions) if self.resolutions is not None else None,
                "continuous": self.continuous, "spaces": list(self.spaces), "basis": self.basis}

    @classmethod
    def from_dict(cls, data: Any, what: str) -> "Domain":
        if not isinstance(data, dict):
            raise OFAError(f"{what}: 'domain' must be a JSON object with 'families' and 'resolutions'")
        try:
            fams = data.get("families")
            res = data.get("resolutions")
            return cls(what=str(data.get("what") or what), families=tuple(str(f) for f in fams) if fams is not None else None,
                       resolutions=tuple(sorted(int(r) for r in res)) if res is not None else None,
                       continuous=bool(data.get("continuous", True)),
                       spaces=tuple(str(s) for s in data.get("spaces") or ()), basis=str(data.get("basis", "")))
        except (TypeError, ValueError) as exc:
            raise OFAError(f"{what}: malformed 'domain' ({exc})") from None

    def renamed(self, what: str) -> "Domain":
        return Domain(what, self.families, self.resolutions, self.continuous, self.spaces, self.basis)


def domain_of_nets(what: str, families: Iterable[str], resolutions: Iterable[int], spaces: Iterable[str] = (),
                   basis: str = "", continuous: bool = True) -> Domain:
    """The domain of a model fit on networks of these families and input resolutions."""
    fams = tuple(sorted(set(families)))
    res = tuple(sorted({int(r) for r in resolutions}))
    if not fams or not res:
        raise OFAError(f"{what}: a domain needs at least one network")
    return Domain(what, fams, res, continuous, tuple(sorted(set(spaces))), basis)


@dataclass
class SearchDomain:
    """The resolutions a search uses, why, and which of them lie outside some predictor's domain."""

    resolutions: tuple[int, ...]
    restricted: bool                       # fewer than the space's resolutions because of the domains
    extrapolated: tuple[int, ...] = ()     # searched although outside some domain (allow_extrapolation)
    message: str = ""
    domains: list[Domain] = field(default_factory=list)

    def outside(self, family: str, r: int) -> list[str]:
        """Descriptions of the domains a network of `family` at `r` px lies outside (empty: inside all)."""
        return [d.describe() for d in self.domains if not d.holds(family, r)]

    def to_dict(self) -> dict[str, Any]:
        return {"resolutions": list(self.resolutions), "restricted": self.restricted,
                "extrapolated": list(self.extrapolated), "message": self.message,
                "domains": [d.describe() for d in self.domains]}


def search_domain(space, domains: Sequence[Domain], requested: Sequence[int] | None = None,
                  allow_extrapolation: bool = False) -> SearchDomain:
    """Resolutions of `space` a search may use inside every domain of `domains`.

    `requested` (already checked to be the space's resolutions) outside a domain is an OFAError naming it,
    unless `allow_extrapolation`; then the requested (or, with none requested, all of the space's) resolutions
    are searched and the ones outside some domain are listed in `extrapolated`.
    """
    domains = [d for d in domains if d is not None]
    wrong_family = [d for d in domains if not d.holds_family(space.family)]
    if wrong_family:
        raise OFAError(f"space {space.name} is a {space.family} space, outside the domain of "
                       f"{'; '.join(d.describe() for d in wrong_family)}")
    candidates = tuple(requested) if requested is not None else tuple(space.resolutions)
    inside = tuple(r for r in candidates if all(d.holds_resolution(r) for d in domains))
    outside = tuple(r for r in candidates if r not in inside)
    limits = " and ".join(d.short() for d in domains if d.resolutions is not None)
    if not outside:
        return SearchDomain(candidates, False, (), "", list(domains))
    blame = [d.describe() for d in domains if any(not d.holds_resolution(r) for r in outside)]
    if allow_extrapolation:
        return SearchDomain(candidates, False, outside,
                            f"extrapolating at {', '.join(map(str, outside))} px, outside {'; '.join(blame)}",
                            list(domains))
    flag = "--allow-extrapolation (Python: allow_extrapolation=True) searches it anyway and marks the results extrapolated"
    if requested is not None:
        ok = [r for r in space.resolutions if all(d.holds_resolution(r) for d in domains)]
        ok_text = f"resolutions inside: {', '.join(map(str, ok))}" if ok else "no resolution of the space is inside"
        raise OFAError(f"resolution {', '.join(map(str, outside))} is outside the domain of {'; '.join(blame)} "
                       f"({ok_text}); {flag}")
    if not inside:
        raise OFAError(f"no resolution of space {space.name} ({', '.join(map(str, space.resolutions))} px) lies in "
                       f"the domain of {'; '.join(blame)}; use a device profile fit on this space (`ofa profile "
                       f"--space {space.name}`, `ofa profile fit`), or {flag}")
    msg = (f"searching {', '.join(map(str, inside))} px of space {space.name} (not {', '.join(map(str, outside))}): "
           f"inside the domains of {limits}; --allow-extrapolation searches the rest too")
    return SearchDomain(inside, True, (), msg, list(domains))


def fit_domain_record(space, archs, what: str = "accuracy predictor") -> dict[str, Any]:
    """The domain record (`Domain.to_dict`) of a predictor fit on `archs` of `space`: the space's family and
    name and the resolutions the archs have (discrete: a resolution no arch had was never learnt)."""
    res = sorted({int(a.r) for a in archs})
    return Domain(what, (space.family,), tuple(res), False, (space.name,),
                  f"{len(archs)} subnets of {space.name}").to_dict()


def predictor_domain(pred, what: str = "accuracy predictor") -> Domain | None:
    """The domain an accuracy predictor records in `meta['domain']`; older files: its space's resolutions."""
    meta = getattr(pred, "meta", None) or {}
    if meta.get("domain") is not None:
        return Domain.from_dict(meta["domain"], what)
    space = getattr(pred, "space", None)
    if space is None:
        return None
    return Domain(what, (space.family,), tuple(space.resolutions), False, (space.name,),
                  "domain not recorded: assumed to be its space's resolutions")
