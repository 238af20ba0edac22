"""Greedy local search: the evolution's best archs polished by single-gene moves, every neighbourhood of a round
scored in one batch."""
from __future__ import annotations

import numpy as np

from specialize.budget import Constraints
from specialize.genome import Genome
from specialize.scoring import Scorer, feasible


def local_search(cons: list[Constraints], genome: Genome, scorer: Scorer, starts: list[np.ndarray],
                 max_rounds: int = 30) -> list[np.ndarray]:
    """Greedy polish: for each budget, move each start (rows of starts[j]) to its best feasible single-gene
    neighbour while that improves accuracy; all neighbourhoods of a round are scored in one batch."""
    cur = [np.array(s, dtype=np.int64).reshape(-1, genome.length) for s in starts]
    cur_acc = [scorer(c)[1]["accuracy"].copy() for c in cur]
    active = [(j, k) for j in range(len(cur)) for k in range(len(cur[j]))]
    for _ in range(max_rounds):
        if not active:
            break
        blocks = [genome.neighbours(cur[j][k]) for j, k in active]
        g, m = scorer(np.concatenate(blocks))
        nxt, start = [], 0
        for (j, k), blk in zip(active, blocks):
            sl = slice(start, start + len(blk))
            start += len(blk)
            sub = {key: v[sl] for key, v in m.items()}
            acc = np.where(feasible(cons[j], sub), sub["accuracy"], -np.inf)
            i = int(np.argmax(acc))
            if acc[i] > cur_acc[j][k] + 1e-9:
                cur[j][k], cur_acc[j][k] = g[sl][i], float(acc[i])
                nxt.append((j, k))
        active = nxt
    return [c[int(np.argmax(a))] for c, a in zip(cur, cur_acc)]


__all__ = ["local_search"]
