"""Arch encodings: turn a batch of archs into a numeric matrix for a regressor.

- `arch_arrays`: the archs as integer arrays (ks, e: N x blocks; d: N x stages; r: N), the common first step.
- `OneHotEncoding`: the encoding of Once-for-All's accuracy predictor: per elastic block a one-hot over the kernel
  choices and one over the expand choices (all zeros for blocks beyond the stage's active depth), then a one-hot
  for the resolution. The resolution slot is either the index in a list of values, or OFA's binning
  `(r - start) // step` (start 112, step 16, 8 slots for the published ImageNet predictor).
- `rich_features`: a short, dense description for tree/kernel/linear regressors: per stage the depth and the sums
  of kernel sizes and expand ratios over the active blocks, the resolution, log-MACs and log-params.
- `ordinal_features`: every choice as its value, block by block: per elastic block the kernel size and the expand
  ratio (0 beyond the stage's active depth), per stage the depth, then the resolution. As long as the one-hot but
  a tenth of its columns' count per choice, and ordered: a kernel regressor with one length scale per column (the
  `gp` predictor) learns how far each block's choice moves accuracy. `ordinal_macs_features` adds log MACs.

All functions work on whole batches (numpy, no per-arch Python beyond reading the fields).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from elastic import complexity
from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec


@dataclass(frozen=True)
class ArchArrays:
    ks: np.ndarray      # (N, n_blocks) kernel sizes
    e: np.ndarray       # (N, n_blocks) expand ratios
    d: np.ndarray       # (N, n_stages) depths
    r: np.ndarray       # (N,) resolutions
    active: np.ndarray  # (N, n_blocks) bool: block is within its stage's active depth

    def __len__(self) -> int:
        return int(self.r.shape[0])


def active_mask(space: SpaceSpec, d: np.ndarray) -> np.ndarray:
    """(N, n_blocks) bool: which blocks are active given per-stage depths `d` (N, n_stages)."""
    d = np.asarray(d)
    pos = np.concatenate([np.arange(m) for m in space.stage_max_depth])          # position inside the stage
    stage = np.asarray(space.stage_of_block())
    return pos[None, :] < d[:, stage]


def arch_arrays(space: SpaceSpec, archs: Sequence[Arch]) -> ArchArrays:
    """The archs as integer arrays; shape mismatches with the space are a clear OFAError."""
    archs = list(archs)
    nb, ns = space.n_blocks, space.n_stages
    if not archs:
        z = np.zeros((0, nb), dtype=np.int64)
        return ArchArrays(z, z.copy(), np.zeros((0, ns), dtype=np.int64), np.zeros(0, dtype=np.int64),
                          np.zeros((0, nb), dtype=bool))
    try:
        ks = np.array([a.ks for a in archs], dtype=np.int64)
        e = np.array([a.e for a in archs], dtype=np.int64)
        d = np.array([a.d for a in archs], dtype=np.int64)
        r = np.array([a.r for a in archs], dtype=np.int64)
    except (ValueError, AttributeError):
        raise OFAError(f"archs for space {space.name} must each have {nb} kernel/expand entries and {ns} depths") from None
    if ks.ndim != 2 or ks.shape[1] != nb or e.ndim != 2 or e.shape[1] != nb or d.ndim != 2 or d.shape[1] != ns:
        raise OFAError(f"archs for space {space.name} must each have {nb} kernel/expand entries and {ns} depths")
    return ArchArrays(ks, e, d, r, active_mask(space, d))


def _onehot(values: np.ndarray, choices: Sequence[int], what: str) -> np.ndarray:
    """(N, B) values -> (N, B, len(choices)) one-hot; a value outside the choices is an OFAError."""
    choices_arr = np.asarray(choices)
    hit = values[..., None] == choices_arr
    if not hit.any(-1).all():
        bad = sorted(set(values[~hit.any(-1)].tolist()))
        raise OFAError(f"{what} value(s) {bad} are not in the encoding's choices {list(choices)}")
    return hit.astype(np.float32)


@dataclass(frozen=True)
class OneHotEncoding:
    """OFA's one-hot arch encoding (see module docstring). `r_values` or (`r_start`, `r_step`, `r_slots`)."""

    ks_choices: tuple[int, ...]
    e_choices: tuple[int, ...]
    stage_max_depth: tuple[int, ...]
    r_values: tuple[int, ...] | None = None
    r_start: int = 112
    r_step: int = 16
    r_slots: int = 8

    @classmethod
    def for_space(cls, space: SpaceSpec) -> "OneHotEncoding":
        return cls(tuple(space.ks_choices), tuple(space.e_choices), tuple(space.stage_max_depth),
                   r_values=tuple(space.resolutions))

    @classmethod
    def ofa_imagenet(cls) -> "OneHotEncoding":
        """The exact 128-wide input of OFA's published mbv3-w1.2 ImageNet predictor."""
        return cls((3, 5, 7), (3, 4, 6), (4, 4, 4, 4, 4), r_values=None, r_start=112, r_step=16, r_slots=8)

    @property
    def n_features(self) -> int:
        nb = sum(self.stage_max_depth)
        nr = len(self.r_values) if self.r_values is not None else self.r_slots
        return nb * (len(self.ks_choices) + len(self.e_choices)) + nr

    def encode_arrays(self, a: ArchArrays) -> np.ndarray:
        n = len(a)
        if a.ks.shape[1] != sum(self.stage_max_depth):
            raise OFAError(f"this encoding expects {sum(self.stage_max_depth)} elastic blocks, the archs have {a.ks.shape[1]}")
        act = a.active[..., None]
        ks = (_onehot(a.ks, self.ks_choices, "kernel size") * act).reshape(n, -1)
        e = (_onehot(a.e, self.e_choices, "expand ratio") * act).reshape(n, -1)
        if self.r_values is not None:
            r = _onehot(a.r[:, None], self.r_values, "resolution")[:, 0, :]
        else:
            idx = (a.r - self.r_start) // self.r_step
            if ((idx < 0) | (idx >= self.r_slots)).any():
                lo, hi = self.r_start, self.r_start + self.r_step * self.r_slots - 1
                raise OFAError(f"resolution outside {lo}..{hi}, the range this accuracy predictor was trained for")
            r = np.zeros((n, self.r_slots), dtype=np.float32)
            r[np.arange(n), idx] = 1.0
        return np.concatenate([ks, e, r], axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "onehot", "ks_choices": list(self.ks_choices), "e_choices": list(self.e_choices),
                "stage_max_depth": list(self.stage_max_depth),
                "r_values": None if self.r_values is None else list(self.r_values),
                "r_start": self.r_start, "r_step": self.r_step, "r_slots": self.r_slots}

    @classmethod
    def from_dict(cls, data: Any) -> "OneHotEncoding":
        """Rebuild from `to_dict` output (a predictor file's "encoding"), checking every field: OFAError if damaged."""
        if not isinstance(data, dict):
            raise OFAError(f"encoding must be a JSON object, got {type(data).__name__}")

        def ints(key: str, least: int, optional: bool = False) -> tuple[int, ...] | None:
            v = data.get(key)
            if v is None and optional:
                return None
            if not isinstance(v, list) or not v or not all(_is_int(i) and i >= least for i in v):
                raise OFAError(f"encoding field {key} must be a non-empty list of integers >= {least}, got {v!r}")
            return tuple(int(i) for i in v)

        def one(key: str, default: int) -> int:
            v = data.get(key, default)
            if not _is_int(v) or v < 1:
                raise OFAError(f"encoding field {key} must be an integer >= 1, got {v!r}")
            return int(v)

        return cls(ints("ks_choices", 1), ints("e_choices", 1), ints("stage_max_depth", 1),
                   r_values=ints("r_values", 1, optional=True), r_start=one("r_start", 112),
                   r_step=one("r_step", 16), r_slots=one("r_slots", 8))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()


def arch_macs_params(space: SpaceSpec, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
    """MACs and params per arch (`elastic.complexity`, batched)."""
    return (np.asarray(complexity.macs(space, archs), dtype=np.float64),
            np.asarray(complexity.params(space, archs), dtype=np.float64))


RICH_NAMES_PER_STAGE = ("depth", "ks_sum", "e_sum", "ks2e_sum")


def rich_features(space: SpaceSpec, archs: Sequence[Arch], macs: np.ndarray | None = None,
                  params: np.ndarray | None = None) -> np.ndarray:
    """Dense features: per stage (depth, sum of k, sum of e, sum of k^2*e over active blocks), r, log MACs, log params."""
    a = arch_arrays(space, archs)
    if macs is None or params is None:
        m, p = arch_macs_params(space, archs)
        macs = m if macs is None else macs
        params = p if params is None else params
    stage = np.asarray(space.stage_of_block())
    act = a.active.astype(np.float64)
    cols = []
    for s in range(space.n_stages):
        sel = act[:, stage == s]
        ks_s, e_s = a.ks[:, stage == s], a.e[:, stage == s]
        cols += [a.d[:, s].astype(np.float64), (sel * ks_s).sum(1), (sel * e_s).sum(1), (sel * ks_s ** 2 * e_s).sum(1)]
    cols += [a.r.astype(np.float64), np.log(np.asarray(macs, dtype=np.float64)), np.log(np.asarray(params, dtype=np.float64))]
    return np.stack(cols, axis=1)


def ordinal_features(space: SpaceSpec, archs: Sequence[Arch]) -> np.ndarray:
    """(N, 2 * blocks + stages + 1): per block k and e (0 when inactive), per stage d, then r (float64)."""
    a = arch_arrays(space, archs)
    act = a.active
    return np.concatenate([a.ks * act, a.e * act, a.d, a.r[:, None]], axis=1).astype(np.float64)


def ordinal_feature_names(space: SpaceSpec) -> list[str]:
    nb = space.n_blocks
    return ([f"b{i}_kernel" for i in range(nb)] + [f"b{i}_expand" for i in range(nb)]
            + [f"s{s}_depth" for s in range(space.n_stages)] + ["resolution"])


def ordinal_macs_features(space: SpaceSpec, archs: Sequence[Arch]) -> np.ndarray:
    """`ordinal_features` and one more column, log MACs: the net's size in one number, which no single choice
    column carries."""
    macs, _ = arch_macs_params(space, archs)
    return np.concatenate([ordinal_features(space, archs), np.log(np.asarray(macs, dtype=np.float64))[:, None]], axis=1)


def ordinal_macs_feature_names(space: SpaceSpec) -> list[str]:
    return ordinal_feature_names(space) + ["log_macs"]


def rich_feature_names(space: SpaceSpec) -> list[str]:
    names = [f"s{s}_{n}" for s in range(space.n_stages) for n in RICH_NAMES_PER_STAGE]
    return names + ["resolution", "log_macs", "log_params"]
