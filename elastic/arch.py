"""`Arch`: the one currency every layer passes around.

An arch is per-block kernel sizes `ks` and expand ratios `e` (one entry per elastic block, in the block
order of the original Once-for-All implementation: stage by stage, up to `max_depth` blocks per stage),
per-stage depths `d`, and the input resolution `r`. Entries for blocks beyond a stage's active depth are
kept (they matter for nothing but keep every arch of a space the same shape, as in OFA).
It is immutable, hashable and JSON round-trippable; validity is checked against a space
(`SpaceSpec.validate`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from elastic.errors import OFAError


@dataclass(frozen=True)
class Arch:
    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int

    def __post_init__(self) -> None:
        # Accept lists (from JSON) but store tuples so the value stays hashable.
        for name in ("ks", "e", "d"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):
                raise OFAError(f"arch field '{name}' must be a list of integers, got {value!r}")
            try:
                object.__setattr__(self, name, tuple(_as_int(v, name) for v in value))
            except (TypeError, ValueError):
                raise OFAError(f"arch field '{name}' must be a list of integers, got {value!r}") from None
        object.__setattr__(self, "r", _as_int(self.r, "r"))

    # ---- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": self.r}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> "Arch":
        if not isinstance(data, dict):
            raise OFAError(f"an arch must be a JSON object with fields ks, e, d, r; got {type(data).__name__}")
        missing = [k for k in ("ks", "e", "d", "r") if k not in data]
        if missing:
            raise OFAError(f"arch is missing field(s) {', '.join(missing)}; an arch needs ks, e, d and r")
        return cls(ks=data["ks"], e=data["e"], d=data["d"], r=data["r"])

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OFAError(f"arch is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def active_blocks(self, max_depth: int | tuple[int, ...]) -> list[int]:
        """Indices (into ks/e) of the blocks that are active, given each stage's maximum depth."""
        depths = (max_depth,) * len(self.d) if isinstance(max_depth, int) else tuple(max_depth)
        out, start = [], 0
        for stage_depth, stage_max in zip(self.d, depths):
            out.extend(range(start, start + stage_depth))
            start += stage_max
        return out

    def summary(self, max_depth: int | tuple[int, ...] | None = None) -> str:
        """A short human summary of the active blocks, stage by stage, e.g. 'r32 d2.3 k35.577 e46.436'.

        `max_depth`: blocks per stage in the supernet. Left out, it is inferred for the OFA layouts (4 per stage,
        or 4 per stage and a last stage of 1 as in ProxylessNAS); any other layout lists every entry.
        """
        n, nb = len(self.d), len(self.ks)
        if max_depth is None:
            max_depth = (4,) * n if nb == 4 * n else (4,) * (n - 1) + (1,) if nb == 4 * n - 3 else None
        if max_depth is None or len(self.e) != nb:
            return f"r{self.r} d{'.'.join(map(str, self.d))} k{''.join(map(str, self.ks))} e{''.join(map(str, self.e))}"
        depths = (max_depth,) * n if isinstance(max_depth, int) else tuple(max_depth)
        ks, es, start = [], [], 0
        for d, cap in zip(self.d, depths):
            ks.append("".join(map(str, self.ks[start:start + d])))
            es.append("".join(map(str, self.e[start:start + d])))
            start += cap
        return f"r{self.r} d{'.'.join(map(str, self.d))} k{'.'.join(ks)} e{'.'.join(es)}"


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise OFAError(f"arch field '{name}' must hold integers, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise OFAError(f"arch field '{name}' must hold integers, got {value!r}")
        return int(value)
    if isinstance(value, int):
        return value
    raise OFAError(f"arch field '{name}' must hold integers, got {value!r}")
