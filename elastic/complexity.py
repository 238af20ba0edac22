"""MACs and parameter counts of many archs at once (vectorized over a batch of archs).

Per space, tables hold the cost of every elastic block for every (resolution, kernel, expand ratio) choice,
plus the fixed part (stem, first block, head) per resolution; an arch's cost is the fixed part plus the sum of
its active blocks' entries, computed with numpy indexing over the whole batch. The numbers equal
`net_macs(space.net_spec(arch))` / `net_params(...)` exactly (the tables are built from those functions).
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Sequence

import numpy as np

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.netspec import make_divisible, mbconv_macs, net_macs, net_params
from elastic.spaces import SpaceSpec


class _Tables:
    def __init__(self, space: SpaceSpec):
        self.space = space
        ks, es, rs = space.ks_choices, space.e_choices, space.resolutions
        nb = space.n_blocks
        self.k_lut = _lut(ks)
        self.e_lut = _lut(es)
        self.r_lut = _lut(rs)
        self.macs = np.zeros((nb, len(rs), len(ks), len(es)), dtype=np.int64)
        self.params = np.zeros((nb, len(ks), len(es)), dtype=np.int64)
        self.fixed_macs = np.zeros(len(rs), dtype=np.int64)
        self.fixed_params = 0
        # Block b of stage s sees the same input size whatever the depths (only a stage's first block strides),
        # so the largest arch at each resolution gives every block's shape; vary kernel and ratio per block.
        first_of_stage = np.cumsum((0,) + tuple(space.stage_max_depth[:-1]))
        self.stage_start = first_of_stage
        for ri, r in enumerate(rs):
            spec = space.net_spec(space.largest(r))
            elastic = spec.blocks[1:]
            self.fixed_macs[ri] = net_macs(spec) - sum(mbconv_macs(b) for b in elastic)
            for b, block in enumerate(elastic):
                for ki, k in enumerate(ks):
                    for ei, e in enumerate(es):
                        mid = _mid(block.in_ch, e)
                        self.macs[b, ri, ki, ei] = mbconv_macs(replace(block, kernel=k, mid_ch=mid))
        spec = space.net_spec(space.largest())
        empty = replace(spec, blocks=spec.blocks[:1])
        self.fixed_params = net_params(empty)
        base = net_params(empty)
        for b, block in enumerate(spec.blocks[1:]):
            for ki, k in enumerate(ks):
                for ei, e in enumerate(es):
                    one = replace(block, kernel=k, mid_ch=_mid(block.in_ch, e))
                    self.params[b, ki, ei] = net_params(replace(empty, blocks=spec.blocks[:1] + (one,))) - base
        # block -> stage and position within its stage, for the depth mask
        self.block_stage = np.array(space.stage_of_block())
        self.block_pos = np.arange(nb) - first_of_stage[self.block_stage]

    def arrays(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        space = self.space
        if isinstance(archs, Arch):
            archs = [archs]
        archs = list(archs)
        if not archs:
            return (np.zeros((0, space.n_blocks), np.int64),) * 2 + (np.zeros((0, space.n_stages), np.int64),
                                                                     np.zeros(0, np.int64))
        try:
            ks = np.array([a.ks for a in archs], dtype=np.int64)
            es = np.array([a.e for a in archs], dtype=np.int64)
            ds = np.array([a.d for a in archs], dtype=np.int64)
            rs = np.array([a.r for a in archs], dtype=np.int64)
        except (AttributeError, ValueError):
            ks = None
        nb, ns = space.n_blocks, space.n_stages
        if ks is None or ks.shape != (len(archs), nb) or es.shape != (len(archs), nb) or ds.shape != (len(archs), ns):
            _raise_first_invalid(space, archs)
        ki, ei, ri = _look(self.k_lut, ks), _look(self.e_lut, es), _look(self.r_lut, rs)
        d_ok = np.ones(ds.shape, dtype=bool)
        for s in range(ns):
            d_ok[:, s] = np.isin(ds[:, s], space.depth_choices(s))
        bad = (ki < 0).any(1) | (ei < 0).any(1) | (ri < 0) | ~d_ok.all(1)
        if bad.any():
            space.validate(archs[int(np.argmax(bad))])
        return ki, ei, ds, ri

    def active(self, ds: np.ndarray) -> np.ndarray:
        return self.block_pos[None, :] < ds[:, self.block_stage]


def _mid(in_ch: int, e: int) -> int:
    return make_divisible(in_ch * e, 8)


def _lut(choices: Sequence[int]) -> np.ndarray:
    lut = np.full(max(choices) + 1, -1, dtype=np.int64)
    for i, c in enumerate(choices):
        lut[c] = i
    return lut


def _look(lut: np.ndarray, values: np.ndarray) -> np.ndarray:
    inside = (values >= 0) & (values < len(lut))
    return np.where(inside, lut[np.clip(values, 0, len(lut) - 1)], -1)


def _raise_first_invalid(space: SpaceSpec, archs: list) -> None:
    for a in archs:
        space.validate(a)
    raise OFAError(f"archs must all belong to space {space.name}")


@lru_cache(maxsize=32)
def _tables(space: SpaceSpec) -> _Tables:
    return _Tables(space)


def macs(space: SpaceSpec, archs: Sequence[Arch]) -> np.ndarray:
    """MACs (int64) of each arch, equal to `net_macs(space.net_spec(arch))`; OFAError for an invalid arch."""
    t = _tables(space)
    ki, ei, ds, ri = t.arrays(archs)
    if len(ri) == 0:
        return np.zeros(0, dtype=np.int64)
    nb = space.n_blocks
    per_block = t.macs[np.arange(nb)[None, :], ri[:, None], ki, ei]
    return t.fixed_macs[ri] + (per_block * t.active(ds)).sum(1)


def params(space: SpaceSpec, archs: Sequence[Arch]) -> np.ndarray:
    """Parameter counts (int64) of each arch, equal to `net_params(space.net_spec(arch))`."""
    t = _tables(space)
    ki, ei, ds, ri = t.arrays(archs)
    if len(ri) == 0:
        return np.zeros(0, dtype=np.int64)
    per_block = t.params[np.arange(space.n_blocks)[None, :], ki, ei]
    return t.fixed_params + (per_block * t.active(ds)).sum(1)


__all__ = ["macs", "params"]
