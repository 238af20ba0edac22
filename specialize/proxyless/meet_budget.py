"""After a search, the argmax architecture must meet the latency budget (both searches: standalone.py and
supernet_search.py).

While the argmax misses the budget, the latency term is strengthened (`LossSettings.strengthen`) and the
architecture trained `steps` more steps, up to `rounds` times; if it still misses, the choices are moved greedily
to cheaper candidates (`feasible.greedy_to_budget`: least probability given up per latency saved). The caller
words the note saying so (`BudgetOutcome.missed`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from specialize.proxyless.arch_step import LossSettings
from specialize.proxyless.feasible import greedy_to_budget


@dataclass
class BudgetOutcome:
    indices: list[int]               # index per choice: the argmax, or where the greedy fallback moved it
    latency: float
    feasible_by: str                 # "search", "strengthened (...)" or "greedy fallback (N changes)"
    rounds: int                      # strengthening rounds run
    missed: float | None             # latency of the argmax when it still missed after the rounds, else None
    moves: int                       # choices the greedy fallback changed (0 when it did not run)


def meet_budget(budget: float, settings: LossSettings, rounds: int, steps: int, *,
                train_step: Callable[[str, int, int], None], argmax: Callable[[], list[int]],
                latency_of: Callable[[list[list[int]]], np.ndarray],
                logits: Callable[[], Sequence[torch.Tensor]]) -> BudgetOutcome:
    """Strengthening rounds, then the greedy fallback, until the chosen architecture meets `budget`.

    train_step(phase, step, total): one more training step of the search (phase "budget<round>");
    argmax(): the most probable index per choice; latency_of(rows): the latency of each index vector;
    logits(): the architecture logits, one 1-D tensor per choice (for the greedy fallback's probabilities).
    `settings` is strengthened in place."""
    lat = float(latency_of([argmax()])[0])
    done, changes, feasible_by = 0, [], "search"
    while lat > budget and done < rounds:
        done += 1
        changes.append(settings.strengthen())
        for step in range(steps):
            train_step(f"budget{done}", step, steps)
        lat = float(latency_of([argmax()])[0])
    if done and lat <= budget:
        feasible_by = f"strengthened ({', '.join(changes)})"
    idx = argmax()
    missed, moves = None, 0
    if lat > budget:
        missed = lat
        log_probs = [F.log_softmax(c.detach().double(), -1).cpu().numpy() for c in logits()]
        idx, lat, moves = greedy_to_budget(idx, log_probs, latency_of, budget)
        feasible_by = f"greedy fallback ({moves} changes)"
    return BudgetOutcome(indices=list(idx), latency=lat, feasible_by=feasible_by, rounds=done, missed=missed,
                         moves=moves)


__all__ = ["BudgetOutcome", "meet_budget"]
