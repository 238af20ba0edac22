"""Expected latency as a differentiable function of the choice probabilities.

Two tables, both read from the device's latency predictor (never re-implemented here):

`SupernetLatencyTable` for the elastic choices of a supernet space (kernel and expand per block, depth per
stage, resolution). It is built from `predictor.predict(archs)` alone, by querying archs that differ from a base
arch in one place: for each resolution `r`, base `A_r` = smallest kernel/expand everywhere at the minimal depth
of every stage;
- `delta[b, k, e, r]`  = lat(A_r at full depth, block b set to (k, e)) - lat(A_r at full depth): the price of
  block b's choice over the base choice;
- `seg[s, i, r]`       = lat(A_r with stage s at its i-th depth choice) - lat(A_r with the (i-1)-th): the price
  of the blocks a deeper stage adds, at the base choice;
- `base[r]`            = lat(A_r).
For an additive (per-layer) predictor this decomposition is exact:

    E[lat] = sum_r p_r ( base[r] + sum_s sum_i P(d_s >= d_i) seg[s, i, r]
                          + sum_b P(block b present) sum_{k, e} p_k(b) p_e(b) delta[b, k, e, r] )

with P(block b present) = P(d_s > position of b in its stage); with one-hot probabilities it equals
`predictor.predict([arch])`. (A predictor that is not additive is linearized around the base archs.)

`OpLatencyTable` for the over-parameterized net of the standalone search: per searchable block the latency of
every candidate op (MBConv k x e priced by `predictor.layer_costs` of the net spec with that block choice, the
zero op costs 0), plus the fixed layers (stem, first block, head).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from elastic.arch import Arch
from elastic.choice_indices import arch_choice_indices
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec


class SupernetLatencyTable:
    def __init__(self, space: SpaceSpec, predictor: Any, resolutions: Sequence[int] | None = None):
        self.space = sp = space
        self.resolutions = sp.pick_resolutions(resolutions or None)
        k0, e0 = min(sp.ks_choices), min(sp.e_choices)
        dmin = tuple(min(sp.depth_choices(s)) for s in range(sp.n_stages))
        dmax = tuple(max(sp.depth_choices(s)) for s in range(sp.n_stages))
        nb, nk, ne, nr = sp.n_blocks, len(sp.ks_choices), len(sp.e_choices), len(self.resolutions)
        archs: list[Arch] = []
        for r in self.resolutions:
            archs.append(Arch((k0,) * nb, (e0,) * nb, dmin, r))
            archs.append(Arch((k0,) * nb, (e0,) * nb, dmax, r))
            for b in range(nb):
                for k in sp.ks_choices:
                    for e in sp.e_choices:
                        ks, es = list((k0,) * nb), list((e0,) * nb)
                        ks[b], es[b] = k, e
                        archs.append(Arch(tuple(ks), tuple(es), dmax, r))
            for s in range(sp.n_stages):
                for d in sp.depth_choices(s):
                    ds = list(dmin)
                    ds[s] = d
                    archs.append(Arch((k0,) * nb, (e0,) * nb, tuple(ds), r))
        lat = np.asarray(predictor.predict(archs), dtype=np.float64)
        per_r = len(archs) // nr
        self.base = np.zeros(nr)
        self.delta = np.zeros((nb, nk, ne, nr))
        self.max_depths = max(len(sp.depth_choices(s)) for s in range(sp.n_stages))
        self.seg = np.zeros((sp.n_stages, self.max_depths, nr))
        for ri in range(nr):
            row = lat[ri * per_r:(ri + 1) * per_r]
            self.base[ri], full = row[0], row[1]
            self.delta[:, :, :, ri] = row[2:2 + nb * nk * ne].reshape(nb, nk, ne) - full
            pos = 2 + nb * nk * ne
            for s in range(sp.n_stages):
                ch = sp.depth_choices(s)
                vals = row[pos:pos + len(ch)]
                pos += len(ch)
                self.seg[s, 1:len(ch), ri] = np.diff(vals)
        # which blocks each depth option keeps: present[s][i] = blocks of stage s active when d_s = i-th choice
        self.block_stage = np.array(sp.stage_of_block())
        self.block_pos = np.concatenate([np.arange(n) for n in sp.stage_max_depth])
        self.unit = getattr(predictor, "unit", "ms")

    # ---- torch evaluation -----------------------------------------------------------------------------
    def expected(self, p_k: torch.Tensor, p_e: torch.Tensor, p_d: Sequence[torch.Tensor],
                 p_r: torch.Tensor | None = None) -> torch.Tensor:
        """E[latency]. p_k: (n_blocks, n_kernels), p_e: (n_blocks, n_expands), p_d: per stage (n_depth_choices,),
        p_r: (n_resolutions,) over `self.resolutions` (None = uniform over a single resolution table)."""
        sp = self.space
        dt, dev = p_k.dtype, p_k.device
        nr = len(self.resolutions)
        if p_r is None:
            if nr != 1:
                raise OFAError("expected latency over several resolutions needs their probabilities")
            p_r = torch.ones(1, dtype=dt, device=dev)
        delta = torch.as_tensor(self.delta, dtype=dt, device=dev)        # (b, k, e, r)
        choice = torch.einsum("bk,be,bker->br", p_k, p_e, delta)         # (b, r)
        present = []
        seg_total = torch.zeros(nr, dtype=dt, device=dev)
        for s in range(sp.n_stages):
            ch = sp.depth_choices(s)
            pd = p_d[s]
            # P(d_s >= ch[i]) for each option i
            at_least = torch.flip(torch.cumsum(torch.flip(pd, [0]), 0), [0])
            seg_total = seg_total + (at_least[:, None] * torch.as_tensor(self.seg[s, :len(ch)], dtype=dt, device=dev)).sum(0)
            for j in range(sp.stage_max_depth[s]):
                keep = [i for i, d in enumerate(ch) if d > j]
                present.append(pd[keep].sum() if keep else pd.sum() * 0)
        present_t = torch.stack(present)                                 # (b,)
        per_r = torch.as_tensor(self.base, dtype=dt, device=dev) + seg_total + (present_t[:, None] * choice).sum(0)
        return (p_r * per_r).sum()

    def of_arch(self, arch: Arch) -> float:
        """The table's latency of one arch (one-hot probabilities), for checks."""
        sp = self.space
        ki, ei, di, ri = arch_choice_indices(sp, arch, self.resolutions)
        p_k = torch.zeros(sp.n_blocks, len(sp.ks_choices), dtype=torch.float64)
        p_e = torch.zeros(sp.n_blocks, len(sp.e_choices), dtype=torch.float64)
        for b in range(sp.n_blocks):
            p_k[b, ki[b]] = 1
            p_e[b, ei[b]] = 1
        p_d = []
        for s in range(sp.n_stages):
            v = torch.zeros(len(sp.depth_choices(s)), dtype=torch.float64)
            v[di[s]] = 1
            p_d.append(v)
        p_r = torch.zeros(len(self.resolutions), dtype=torch.float64)
        p_r[ri] = 1
        return float(self.expected(p_k, p_e, p_d, p_r))


class OpLatencyTable:
    """Latency of every candidate of every searchable block of an over-parameterized net (see module doc).

    `choices[b]` lists the candidates of block b as (kernel, expand) pairs or None for the zero op; block b is an
    elastic block of `space` at full depth, at resolution `r`.
    """

    def __init__(self, space: SpaceSpec, predictor: Any, r: int, choices: Sequence[Sequence[tuple[int, int] | None]]):
        sp = space
        if len(choices) != sp.n_blocks:
            raise OFAError(f"need candidates for all {sp.n_blocks} blocks of space {sp.name}")
        dmax = tuple(max(sp.depth_choices(s)) for s in range(sp.n_stages))
        if tuple(sp.stage_max_depth) != dmax:
            raise OFAError(f"space {sp.name}: every block must be reachable at the largest depth")
        pairs = sorted({c for cs in choices for c in cs if c is not None})
        costs: dict[tuple[int, int], np.ndarray] = {}
        for k, e in pairs:
            arch = Arch((k,) * sp.n_blocks, (e,) * sp.n_blocks, dmax, r)
            c = np.asarray(predictor.layer_costs(sp.net_spec(arch)), dtype=np.float64)
            costs[(k, e)] = c
        any_costs = next(iter(costs.values()))
        # layers: stem, fixed first block, the elastic blocks, then the head
        self.fixed = float(any_costs[:2].sum() + any_costs[2 + sp.n_blocks:].sum())
        self.op_latency = [np.array([0.0 if c is None else costs[c][2 + b] for c in cs]) for b, cs in enumerate(choices)]
        self.unit = getattr(predictor, "unit", "ms")

    def expected(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        total = torch.tensor(self.fixed, dtype=probs[0].dtype, device=probs[0].device)
        for p, lat in zip(probs, self.op_latency):
            total = total + (p * torch.as_tensor(lat, dtype=p.dtype, device=p.device)).sum()
        return total

    def of_choice(self, indices: Sequence[int]) -> float:
        return self.fixed + float(sum(lat[i] for lat, i in zip(self.op_latency, indices)))


__all__ = ["OpLatencyTable", "SupernetLatencyTable"]
