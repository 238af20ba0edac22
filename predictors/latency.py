"""Latency predictors for a device profile: per-layer table, per-layer regression, measured, or MACs/params proxy.

`get_latency_predictor(device, space)` returns a `LatencyPredictor`:
- `predict_net(net_spec) -> float`: the sum of the per-layer costs of any static network (any size);
- `predict(archs) -> np.ndarray`: the same numbers for a batch of archs of `space`, computed from per-block
  tables precomputed over (block index, kernel, expand, resolution) -- a block's input channels and stride
  are fixed by its index (first block of a stage or not), so the batch is numpy indexing plus a sum.
Costs are milliseconds, except for the `flops`/`params` proxy profiles (MMACs / millions of parameters).
Per layer a profile answers with its table entry (exact key), else a table interpolation across input
size, else its regression model (a `transfer` profile: its prior's cost corrected, see `predictors.fewshot`);
a layer none of these can price is an OFAError. `domain` is what the profile was fit on (None: anything);
`outside_domain(net)` says in words when a network lies outside it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from elastic.arch import Arch
from elastic.choice_indices import index_in_choices
from elastic.errors import OFAError
from elastic.netspec import NetSpec
from elastic.spaces import SpaceSpec
from predictors.layers import Layer, layer_macs, net_layer_params, net_layers
from predictors.profiles import Profile, load_profile


class LatencyPredictor:
    def __init__(self, profile: Profile, space: SpaceSpec | None = None):
        self.profile = profile
        self.space = space
        self.unit = profile.unit
        self._cache: dict[Layer, float] = {}
        self._tables = None
        if space is not None:
            if space.family not in profile.families:
                raise OFAError(f"device profile '{profile.name}' models {'/'.join(profile.families)} spaces, "
                               f"not space '{space.name}' ({space.family})")
            self._build_tables()

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def domain(self):
        return self.profile.domain

    def outside_domain(self, net: NetSpec) -> str | None:
        """None when `net` lies inside the profile's domain, else why not (one line)."""
        d = self.profile.domain
        if d is None or d.holds(net.family, net.resolution):
            return None
        return f"a {net.family} network at {net.resolution} px is outside the domain of {d.describe()}"

    # ---- per layer -------------------------------------------------------------------------------
    def layer_cost(self, layer: Layer) -> float:
        hit = self._cache.get(layer)
        if hit is not None:
            return hit
        prof = self.profile
        value = None
        if prof.kind == "proxy":
            if prof.proxy != "macs":
                raise OFAError("the params proxy prices whole networks (BN depends on context); use predict_net")
            value = layer_macs(layer) / 1e6
        if prof.kind == "transfer":
            value = prof.transfer.layer_cost(layer)
        if value is None and prof.lut is not None:
            value = prof.lut.lookup(layer)
        if value is None and prof.regression is not None:
            value = float(prof.regression.predict_layers([layer])[0])
        if value is None:
            where = f" (fit on space {prof.space})" if prof.space else ""
            raise OFAError(f"device '{prof.name}'{where} cannot model layer {layer.describe()}: its table has no such "
                           f"layer at a nearby input size and it has no regression model")
        self._cache[layer] = value
        return value

    def layer_costs(self, net: NetSpec) -> np.ndarray:
        if self.profile.kind == "proxy" and self.profile.proxy == "params":
            return np.asarray(net_layer_params(net), float) / 1e6
        return np.array([self.layer_cost(layer) for layer in net_layers(net)])

    def predict_net(self, net: NetSpec) -> float:
        """Latency (profile unit) of one static network: the sum over its layers."""
        if net.family not in self.profile.families:
            raise OFAError(f"device profile '{self.profile.name}' models {'/'.join(self.profile.families)} networks, "
                           f"not a {net.family} network")
        return float(self.layer_costs(net).sum())

    # ---- batched over archs of a space -----------------------------------------------------------------
    def _build_tables(self) -> None:
        sp = self.space
        nk, ne, nr = len(sp.ks_choices), len(sp.e_choices), len(sp.resolutions)
        block = np.zeros((sp.n_blocks, nk, ne, nr))
        fixed = np.zeros(nr)
        depth = tuple(max(sp.depth_choices(s)) for s in range(sp.n_stages))
        for ri, r in enumerate(sp.resolutions):
            for ki, k in enumerate(sp.ks_choices):
                for ei, e in enumerate(sp.e_choices):
                    arch = Arch((k,) * sp.n_blocks, (e,) * sp.n_blocks, depth, r)
                    costs = self.layer_costs(sp.net_spec(arch))
                    # layers: stem, fixed first block, the elastic blocks in order, then the head
                    block[:, ki, ei, ri] = costs[2:2 + sp.n_blocks]
                    if ki == 0 and ei == 0:
                        fixed[ri] = costs[:2].sum() + costs[2 + sp.n_blocks:].sum()
        stage = np.array(sp.stage_of_block())
        pos = np.concatenate([np.arange(n) for n in sp.stage_max_depth])
        self._tables = (block, fixed, stage, pos)

    def _indices(self, archs: Sequence[Arch]):
        """The archs' kernel, expand and resolution indices into the space's choices, and their depths; an arch
        that is not of the space is its `SpaceSpec.validate` error."""
        sp = self.space
        try:
            ks = np.array([a.ks for a in archs], dtype=np.int64).reshape(len(archs), -1)
            es = np.array([a.e for a in archs], dtype=np.int64).reshape(len(archs), -1)
            ds = np.array([a.d for a in archs], dtype=np.int64).reshape(len(archs), -1)
            rs = np.array([a.r for a in archs], dtype=np.int64)
        except (AttributeError, ValueError):
            raise OFAError(f"predict expects a list of Arch values of space {sp.name}") from None
        if ks.shape[1] != sp.n_blocks or es.shape[1] != sp.n_blocks or ds.shape[1] != sp.n_stages:
            bad = next(a for a in archs if len(a.ks) != sp.n_blocks or len(a.e) != sp.n_blocks or len(a.d) != sp.n_stages)
            sp.validate(bad)
        ki = index_in_choices(sp.ks_choices, ks)
        ei = index_in_choices(sp.e_choices, es)
        ri = index_in_choices(sp.resolutions, rs)
        if (ki < 0).any() or (ei < 0).any() or (ri < 0).any():
            for row in np.unique(np.concatenate([np.where((ki < 0).any(1))[0], np.where((ei < 0).any(1))[0],
                                                 np.where(ri < 0)[0]]))[:1]:
                sp.validate(archs[int(row)])
        return ki, ei, ri, ds

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Latency (profile unit) of each arch of the predictor's space, batched."""
        if self.space is None:
            raise OFAError("this latency predictor was built without a space; use predict_net(net_spec)")
        archs = list(archs)
        if not archs:
            return np.zeros(0)
        block, fixed, stage, pos = self._tables
        ki, ei, ri, ds = self._indices(archs)
        sp = self.space
        allowed_d = [set(sp.depth_choices(s)) for s in range(sp.n_stages)]
        for s in range(sp.n_stages):
            ok = np.isin(ds[:, s], list(allowed_d[s]))
            if not ok.all():
                sp.validate(archs[int(np.argmin(ok))])
        active = pos[None, :] < ds[:, stage]
        b = np.arange(sp.n_blocks)[None, :]
        per_block = block[b, ki, ei, ri[:, None]]
        return fixed[ri] + (per_block * active).sum(axis=1)


def get_latency_predictor(device: str | Profile, space: SpaceSpec | None = None) -> LatencyPredictor:
    """The predictor for a device name (see `ofa devices`), a profile file path, or a loaded Profile."""
    profile = device if isinstance(device, Profile) else load_profile(device)
    return LatencyPredictor(profile, space)


__all__ = ["LatencyPredictor", "get_latency_predictor"]
