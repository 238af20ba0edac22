"""The over-parameterized network of the standalone ProxylessNAS search.

Every elastic block position of a space (at full depth) becomes a searchable block whose `MixedOp` holds one
MBConv per (kernel, expand) candidate, with its own weights, plus the zero op where the block has a residual
connection (a zero op makes the block the identity: that is how a stage gets shallower). The first block of
every stage changes the resolution or width and has no zero candidate. Stem, fixed first block and head are
those of the space.

`derive()` turns the most probable candidates into a `NetSpec` (zero blocks dropped), built into a plain
network by `elastic.static_net.StaticNet`; where every stage keeps a depth the space allows (and the candidates
are values of the space), the result is also an `Arch` of the space, so `ofa.load` can rebuild it.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
import torch.nn as nn

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.netspec import MBConvSpec, NetSpec, make_divisible
from elastic.spaces import SpaceSpec
from elastic.static_net import MBConv, StaticNet, init_weights
from specialize.proxyless.gates import MixedOp, mixed_ops

ZERO = None  # the zero candidate in a candidate list


class ZeroOp(nn.Module):
    """Outputs zeros (the block's residual connection then passes its input through unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(()).expand_as(x)


class SearchBlock(nn.Module):
    def __init__(self, mixed: MixedOp, residual: bool):
        super().__init__()
        self.mixed, self.residual = mixed, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mixed(x)
        return x + out if self.residual else out


def candidate_choices(space: SpaceSpec, kernels: Sequence[int], expands: Sequence[int],
                      zero: bool = True) -> list[list[tuple[int, int] | None]]:
    """Candidates per elastic block: (k, e) pairs, plus the zero op (None) on blocks with a residual."""
    out = []
    for s, n in enumerate(space.stage_max_depth):
        for j in range(n):
            cands: list[tuple[int, int] | None] = [(k, e) for k in kernels for e in expands]
            if zero and j > 0:
                cands.append(ZERO)
            out.append(cands)
    return out


class OverParamNet(nn.Module):
    def __init__(self, space: SpaceSpec, resolution: int | None = None, kernels: Sequence[int] = (3, 5, 7),
                 expands: Sequence[int] = (3, 6), zero: bool = True):
        super().__init__()
        if tuple(space.stage_max_depth) != tuple(max(space.depth_choices(s)) for s in range(space.n_stages)):
            raise OFAError(f"space {space.name}: the over-parameterized net needs every block at the largest depth")
        self.space = space
        self.resolution = int(resolution or max(space.resolutions))
        self.choices = candidate_choices(space, kernels, expands, zero)
        nb = space.n_blocks
        full = Arch((max(kernels),) * nb, (max(expands),) * nb, tuple(space.stage_max_depth), self.resolution)
        self.full_spec = _net_spec_any(space, full)
        spec = self.full_spec
        # stem, fixed first block and head are a StaticNet's; its elastic blocks become searchable blocks
        self.net = StaticNet(spec, init=False)
        for b, cands in enumerate(self.choices):
            base = spec.blocks[1 + b]
            ops, names = [], []
            for c in cands:
                if c is ZERO:
                    ops.append(ZeroOp())
                    names.append("zero")
                else:
                    k, e = c
                    ops.append(MBConv(replace(_block_spec(base, k, e), residual=False), spec.bn_eps, spec.bn_momentum))
                    names.append(f"k{k}e{e}")
            self.net.blocks[1 + b] = SearchBlock(MixedOp(ops, names), residual=base.residual)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def mixed(self) -> list[MixedOp]:
        return mixed_ops(self)

    def probs(self) -> list[torch.Tensor]:
        return [m.probs for m in self.mixed]

    def chosen(self) -> list[int]:
        return [m.chosen() for m in self.mixed]

    def derive(self, indices: Sequence[int] | None = None) -> tuple[NetSpec, Arch | None]:
        """The network of the given (default: most probable) candidate per block, and its Arch where it is one.

        A zero block is the identity, and the non-first blocks of a stage all have the same shape (stride 1, same
        width in and out), so dropping the zero blocks and keeping the others in order is the same network: it is
        an Arch of the space whenever every stage keeps an allowed depth and the candidates are allowed values.
        """
        idx = list(self.chosen() if indices is None else indices)
        if len(idx) != len(self.choices):
            raise OFAError(f"need one candidate index per searchable block ({len(self.choices)}), got {len(idx)}")
        spec = self.full_spec
        sp = self.space
        blocks = [spec.blocks[0]]
        ks, es, ds = [], [], []
        pos = 0
        for s, n in enumerate(sp.stage_max_depth):
            kept = [self.choices[pos + j][idx[pos + j]] for j in range(n)]
            kept = [c for c in kept if c is not ZERO]
            for j, (k, e) in enumerate(kept):
                blocks.append(_block_spec(spec.blocks[1 + pos + j], k, e))
            ks += [k for k, _ in kept] + [min(sp.ks_choices)] * (n - len(kept))
            es += [e for _, e in kept] + [min(sp.e_choices)] * (n - len(kept))
            ds.append(len(kept))
            pos += n
        net = replace(spec, blocks=tuple(blocks), meta={"search": "proxyless"})
        arch = Arch(tuple(ks), tuple(es), tuple(ds), self.resolution)
        try:
            sp.validate(arch)
        except OFAError:
            return net, None
        return net, arch

    def describe(self, indices: Sequence[int] | None = None) -> list[str]:
        idx = list(self.chosen() if indices is None else indices)
        return [m.names[i] for m, i in zip(self.mixed, idx)]


def _block_spec(base: MBConvSpec, k: int, e: int) -> MBConvSpec:
    return replace(base, kernel=k, mid_ch=make_divisible(base.in_ch * e, 8))


def _net_spec_any(space: SpaceSpec, arch: Arch) -> NetSpec:
    """`space.net_spec` for candidate values the space's own choice lists may not include (e.g. e=5)."""
    widened = replace(space, ks_choices=tuple(sorted(set(space.ks_choices) | set(arch.ks))),
                      e_choices=tuple(sorted(set(space.e_choices) | set(arch.e))),
                      resolutions=tuple(sorted(set(space.resolutions) | {arch.r})))
    return widened.net_spec(arch)


__all__ = ["OverParamNet", "SearchBlock", "ZeroOp", "candidate_choices"]
