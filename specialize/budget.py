"""Budgets and constraints: parse what users type (`40ms`, `800us`, `300M`, `5M`) into numbers, clearly or not at all.

- `parse_latency("40ms" | "12.5ms" | "800us" | "0.04s")` -> milliseconds (a bare number means ms).
- `parse_macs("300M" | "1.2G" | "450000000")` and `parse_params("5M" | "800K")` -> plain counts.
- `parse_latencies("15ms,25ms,40ms")` (and `parse_macs_list`, `parse_params_list`) -> sorted unique values.
- `Constraints(latency_ms=, macs=, params=)`: any combination; `None` means unconstrained.
A string that is none of these raises OFAError naming the accepted forms.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from elastic.errors import OFAError

_NUM = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_LAT_UNITS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3, "": 1.0}
_COUNT_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}

LATENCY_FORMS = "a latency like 40ms, 12.5ms, 800us or 0.04s (a bare number is milliseconds)"
MACS_FORMS = "a MAC count like 300M, 1.2G, 450K or 450000000"
PARAMS_FORMS = "a parameter count like 5M, 800K or 5000000"


def _split(text: object, what: str, forms: str) -> tuple[float, str]:
    if not isinstance(text, str):
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            text = repr(text)
        else:
            raise OFAError(f"{what} must be {forms}; got {text!r}")
    s = text.strip().replace("_", "")
    m = re.fullmatch(r"(" + _NUM + r")\s*([a-zA-Zµ]*)", s)
    if not m:
        raise OFAError(f"cannot read {what} {text!r}; expected {forms}")
    return float(m.group(1)), m.group(3)


def _positive(value: float, text: object, what: str, forms: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise OFAError(f"{what} must be positive: got {text!r}; expected {forms}")
    return value


def parse_latency(text: object) -> float:
    """'40ms' -> 40.0; '800us' -> 0.8; '0.04s' -> 40.0; '25' -> 25.0 (milliseconds)."""
    value, unit = _split(text, "latency budget", LATENCY_FORMS)
    unit = unit.lower() if unit != "µs" else unit
    if unit not in _LAT_UNITS:
        raise OFAError(f"unknown latency unit {unit!r} in {text!r}; expected {LATENCY_FORMS}")
    return _positive(value * _LAT_UNITS[unit], text, "latency budget", LATENCY_FORMS)


def _parse_count(text: object, what: str, forms: str) -> float:
    value, unit = _split(text, what, forms)
    key = unit.lower()
    if key not in _COUNT_UNITS:
        raise OFAError(f"unknown suffix {unit!r} in {what} {text!r}; expected {forms}")
    return _positive(value * _COUNT_UNITS[key], text, what, forms)


def parse_macs(text: object) -> float:
    """'300M' -> 3e8 multiply-accumulates."""
    return _parse_count(text, "MACs budget", MACS_FORMS)


def parse_params(text: object) -> float:
    """'5M' -> 5e6 parameters."""
    return _parse_count(text, "params budget", PARAMS_FORMS)


def _parse_list(text: object, one: Callable[[object], float], what: str) -> list[float]:
    if isinstance(text, (list, tuple)):
        parts = list(text)
    elif isinstance(text, str):
        parts = [p for p in text.split(",")]
    else:
        parts = [text]
    if not parts or any(isinstance(p, str) and not p.strip() for p in parts):
        raise OFAError(f"empty entry in {what} list {text!r}; give comma-separated values like 15ms,25ms,40ms")
    return sorted(set(one(p) for p in parts))


def parse_latencies(text: object) -> list[float]:
    """'15ms,25ms,40ms' -> [15.0, 25.0, 40.0] (sorted, duplicates dropped)."""
    return _parse_list(text, parse_latency, "latency")


def parse_macs_list(text: object) -> list[float]:
    return _parse_list(text, parse_macs, "MACs")


def parse_params_list(text: object) -> list[float]:
    return _parse_list(text, parse_params, "params")


@dataclass(frozen=True)
class Constraints:
    """Upper bounds an arch must meet; `None` = no bound. Latency in the latency predictor's unit (ms)."""

    latency_ms: float | None = None
    macs: float | None = None
    params: float | None = None

    def __post_init__(self) -> None:
        for name in ("latency_ms", "macs", "params"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0):
                raise OFAError(f"constraint {name} must be a positive number or None, got {v!r}")

    @classmethod
    def parse(cls, latency: str | None = None, macs: str | None = None, params: str | None = None) -> "Constraints":
        return cls(None if latency is None else parse_latency(latency), None if macs is None else parse_macs(macs),
                   None if params is None else parse_params(params))

    @property
    def empty(self) -> bool:
        return self.latency_ms is None and self.macs is None and self.params is None

    def describe(self) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency <= {self.latency_ms:g} ms")
        if self.macs is not None:
            parts.append(f"MACs <= {self.macs / 1e6:g}M")
        if self.params is not None:
            parts.append(f"params <= {self.params / 1e6:g}M")
        return ", ".join(parts) or "no constraint"

    def label(self) -> str:
        """A short filesystem-friendly label, e.g. '25ms' or '25ms_300M-macs'."""
        parts = []
        if self.latency_ms is not None:
            parts.append(f"{self.latency_ms:g}ms")
        if self.macs is not None:
            parts.append(f"{self.macs / 1e6:g}M-macs")
        if self.params is not None:
            parts.append(f"{self.params / 1e6:g}M-params")
        return "_".join(parts) or "unconstrained"


__all__ = ["Constraints", "parse_latency", "parse_macs", "parse_params", "parse_latencies", "parse_macs_list",
           "parse_params_list", "LATENCY_FORMS", "MACS_FORMS", "PARAMS_FORMS"]
