"""The integer genome of a space that the evolutionary search works on: encoding archs as rows of option indexes,
vectorized random sampling, mutation, crossover, shrinking, canonicalization and single-gene neighbourhoods."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from elastic.arch import Arch
from elastic.choice_indices import arch_choice_indices
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec


class Genome:
    """Integer genome of a space: [kernel index per block | expand index per block | depth index per stage | r index]."""

    def __init__(self, space: SpaceSpec, resolutions: Sequence[int] | None = None):
        self.space = space
        nb, ns = space.n_blocks, space.n_stages
        self.nb, self.ns = nb, ns
        self.ks = np.asarray(space.ks_choices)
        self.e = np.asarray(space.e_choices)
        self.r = np.asarray(space.pick_resolutions(resolutions))   # the resolution gene indexes these only
        dch = [space.depth_choices(s) for s in range(ns)]
        self.d_table = np.array([list(c) + [c[-1]] * (max(map(len, dch)) - len(c)) for c in dch])
        self.n_opts = np.array([len(self.ks)] * nb + [len(self.e)] * nb + [len(c) for c in dch] + [len(self.r)])
        self.length = len(self.n_opts)
        self.stage = np.asarray(space.stage_of_block())
        self.pos = np.concatenate([np.arange(m) for m in space.stage_max_depth])
        self.k_min, self.e_min = int(np.argmin(self.ks)), int(np.argmin(self.e))
        # rank of each option by size (0 = smallest) so "small/large" biased sampling works for any choice order
        self._order = [np.argsort(np.argsort(ch)) for ch in
                       [self.ks] * nb + [self.e] * nb + [self.d_table[s, :len(dch[s])] for s in range(ns)] + [self.r]]

    def shrink(self, g: np.ndarray, rng: np.random.Generator, n_genes: int = 1) -> np.ndarray:
        """Each row with `n_genes` random genes (of active blocks, depths or resolution) moved one size step down."""
        if not hasattr(self, "_down"):
            width = int(self.n_opts.max())
            self._down = np.tile(np.arange(width), (self.length, 1))
            for pos, order in enumerate(self._order):        # option index -> index of the next smaller option
                inv = np.argsort(order)
                for rank in range(1, len(order)):
                    self._down[pos, inv[rank]] = inv[rank - 1]
        g = g.copy()
        active = self.pos[None, :] < self.depths(g)[:, self.stage]
        live = np.concatenate([active, active, np.ones((len(g), self.ns + 1), dtype=bool)], axis=1)
        rows = np.arange(len(g))
        for _ in range(n_genes):
            score = np.where(live & (self._down[np.arange(self.length)[None, :], g] != g), rng.random(g.shape), -1.0)
            pick = np.argmax(score, axis=1)
            can = score[rows, pick] >= 0
            g[rows[can], pick[can]] = self._down[pick[can], g[rows[can], pick[can]]]
        return g

    def random(self, rng: np.random.Generator, n: int, size_bias: bool = False) -> np.ndarray:
        """n random genomes; with size_bias each genome gets its own skew from mostly-small to mostly-large."""
        u = rng.random((n, self.length))
        if size_bias:
            gamma = 4.0 ** (2 * rng.random((n, 1)) - 1)          # exponent in [1/4, 4] per genome
            u = u ** gamma                                        # large gamma -> near 0 -> small choices
        rank = np.minimum((u * self.n_opts).astype(np.int64), self.n_opts - 1)
        if not size_bias:
            return rank
        out = np.empty_like(rank)
        for g, order in enumerate(self._order):                 # map size rank -> option index
            inv = np.argsort(order)
            out[:, g] = inv[rank[:, g]]
        return out

    def smallest(self) -> np.ndarray:
        return self.from_archs([self.space.smallest(int(self.r.min()))])[0]

    def largest(self) -> np.ndarray:
        return self.from_archs([self.space.largest(int(self.r.max()))])[0]

    def depths(self, g: np.ndarray) -> np.ndarray:
        di = g[:, 2 * self.nb: 2 * self.nb + self.ns]
        return self.d_table[np.arange(self.ns)[None, :], di]

    def canonical(self, g: np.ndarray) -> np.ndarray:
        """Inactive blocks' kernel/expand set to the smallest choice (same network, one genome)."""
        g = g.copy()
        inactive = ~(self.pos[None, :] < self.depths(g)[:, self.stage])
        g[:, : self.nb][inactive] = self.k_min
        g[:, self.nb: 2 * self.nb][inactive] = self.e_min
        return g

    def to_archs(self, g: np.ndarray) -> list[Arch]:
        """Archs of genome rows, validated in bulk against the space (a genome outside it is a bug: ValueError)."""
        g = np.asarray(g)
        if g.ndim != 2 or g.shape[1] != self.length or ((g < 0) | (g >= self.n_opts)).any():
            raise ValueError(f"genome rows outside space {self.space.name}'s choices: {g.shape} array, "
                             f"genes must lie in [0, {self.n_opts.tolist()})")
        ks = self.ks[g[:, : self.nb]]
        es = self.e[g[:, self.nb: 2 * self.nb]]
        ds = self.depths(g)
        rs = self.r[g[:, -1]]
        sp = self.space
        bad = [name for name, ok in (
            ("ks", np.isin(ks, sp.ks_choices).all()), ("e", np.isin(es, sp.e_choices).all()),
            ("d", all(np.isin(ds[:, s], sp.depth_choices(s)).all() for s in range(self.ns))),
            ("r", np.isin(rs, sp.resolutions).all())) if not ok]
        if bad:
            raise ValueError(f"genome decodes to {', '.join(bad)} values outside space {sp.name}")
        return [_checked_arch(k, e, d, r) for k, e, d, r in zip(ks.tolist(), es.tolist(), ds.tolist(), rs.tolist())]

    def from_archs(self, archs: Sequence[Arch]) -> np.ndarray:
        sp = self.space
        rs = self.r.tolist()
        rows = []
        for a in archs:
            sp.validate(a)
            if a.r not in rs:
                raise OFAError(f"arch at resolution {a.r} is outside this search's resolutions {rs}")
            ki, ei, di, ri = arch_choice_indices(sp, a, rs)
            rows.append([*ki, *ei, *di, ri])
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), self.length)

    def mutate(self, parents: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
        mask = rng.random(parents.shape) < prob
        fresh = np.minimum((rng.random(parents.shape) * self.n_opts).astype(np.int64), self.n_opts - 1)
        return np.where(mask, fresh, parents)

    def crossover(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.where(rng.random(a.shape) < 0.5, a, b)

    def _moves(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(gene, new value) of every single-gene change that alters the network (inactive blocks skipped)."""
        active = self.pos < self.depths(g[None, :])[0, self.stage]
        live = np.concatenate([active, active, np.ones(self.ns + 1, dtype=bool)])
        genes, vals = [], []
        for pos in np.flatnonzero(live):
            for v in range(self.n_opts[pos]):
                if v != g[pos]:
                    genes.append(pos)
                    vals.append(v)
        return np.asarray(genes, dtype=np.int64), np.asarray(vals, dtype=np.int64)

    def neighbours(self, g: np.ndarray) -> np.ndarray:
        """All genomes differing from `g` (one genome) in exactly one gene that matters."""
        genes, vals = self._moves(g)
        out = np.repeat(g[None, :], len(genes), axis=0)
        out[np.arange(len(genes)), genes] = vals
        return out


def _checked_arch(ks: list[int], e: list[int], d: list[int], r: int) -> Arch:
    """An Arch of plain ints that `Genome.to_archs` has just validated in bulk against the space: the per-field
    conversion of `Arch.__post_init__` would only repeat that check, one value at a time (20x slower)."""
    a = object.__new__(Arch)
    object.__setattr__(a, "ks", tuple(ks))
    object.__setattr__(a, "e", tuple(e))
    object.__setattr__(a, "d", tuple(d))
    object.__setattr__(a, "r", int(r))
    return a


__all__ = ["Genome"]
