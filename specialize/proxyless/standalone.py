"""The original ProxylessNAS search from scratch, on an over-parameterized net (see overparam.py).

Weights and architecture parameters are trained alternately: after `warmup_steps` weight-only steps (uniform
path sampling, alpha untouched), every step trains the weights on one sampled path per block (a training batch)
and, every `arch_every` steps, the architecture parameters with the two-path gate gradient (a validation batch).
Afterwards the argmax architecture must meet the latency budget: if it does not, the latency term is strengthened
and the architecture trained `budget_steps` more steps, up to `budget_rounds` times; if it still misses, the
choices are moved greedily to cheaper candidates (least probability given up per latency saved) and the
result says so in `note` (meet_budget.py, shared with the search over a supernet).

Data reach this module as iterators of (images, labels) batches; building data sets and training the found
network from scratch are the caller's (the `ofa proxyless-search` command's) business.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.netspec import NetSpec
from specialize.proxyless.arch_step import (LossSettings, ReinforceState, arch_step, make_arch_optimizer,
                                            weight_step)
from specialize.proxyless.expected_latency import OpLatencyTable
from specialize.proxyless.gates import weight_parameters
from specialize.proxyless.meet_budget import meet_budget
from specialize.proxyless.overparam import OverParamNet

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class StandaloneConfig:
    target: float                    # latency budget (the predictor's unit, ms for device profiles)
    warmup_steps: int = 100
    search_steps: int = 300
    arch_every: int = 1
    weight_lr: float = 0.05
    weight_decay: float = 4e-5
    arch_lr: float = 0.02             # Adam, betas (0, 0.999); higher than the paper (searches here are short)
    form: str = "mul"
    beta: float = 0.6
    lam: float = 0.1
    estimator: str = "two_path"
    one_sided: bool = True           # latency term only above the target (see loss.py)
    budget_rounds: int = 3
    budget_steps: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.search_steps < 0 or self.arch_every < 1 or self.budget_rounds < 0 \
                or self.budget_steps < 0:
            raise OFAError("proxyless search steps must be >= 0 and arch_every >= 1")


@dataclass
class StandaloneResult:
    net_spec: NetSpec
    arch: Arch | None
    ops: list[str]
    latency: float
    expected_latency: float
    target: float
    feasible_by: str                 # "search", "strengthened (...)" or "greedy fallback (...)"
    note: str | None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    probs: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict() if self.arch is not None else None, "ops": self.ops,
                "latency": self.latency, "expected_latency": self.expected_latency, "target": self.target,
                "feasible_by": self.feasible_by, "note": self.note, "seconds": self.seconds, "probs": self.probs,
                "blocks": [{"kernel": b.kernel, "mid_ch": b.mid_ch, "out_ch": b.out_ch, "stride": b.stride}
                           for b in self.net_spec.blocks]}


def search_standalone(net: OverParamNet, table: OpLatencyTable, train_batches: Batches, val_batches: Batches,
                      cfg: StandaloneConfig, progress: Callable[[str, int, int, dict], None] | None = None
                      ) -> StandaloneResult:
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    mixed = net.mixed
    w_opt = torch.optim.SGD(weight_parameters(net), lr=cfg.weight_lr, momentum=0.9, nesterov=True,
                            weight_decay=cfg.weight_decay)
    a_opt = make_arch_optimizer(mixed, cfg.arch_lr)
    settings = LossSettings(cfg.target, cfg.form, cfg.beta, cfg.lam, cfg.estimator, cfg.one_sided)
    rl = ReinforceState()
    expected = lambda: table.expected([m.probs for m in mixed])  # noqa: E731
    history: list[dict[str, Any]] = []

    def one(step: int, phase: str, do_arch: bool, total: int) -> None:
        x, y = next(train_batches)
        row: dict[str, Any] = {"phase": phase, "step": step, "weight_ce": weight_step(net, mixed, x, y, w_opt, gen)}
        if do_arch:
            xv, yv = next(val_batches)
            row.update(arch_step(net, mixed, xv, yv, a_opt, settings, expected, table.of_choice, gen, rl))
        history.append(row)
        if progress is not None:
            progress(phase, step, total, row)

    for step in range(cfg.warmup_steps):
        one(step, "warmup", False, cfg.warmup_steps)
    for step in range(cfg.search_steps):
        one(step, "search", step % cfg.arch_every == 0, cfg.search_steps)

    met = meet_budget(cfg.target, settings, cfg.budget_rounds, cfg.budget_steps,
                      train_step=lambda phase, step, total: one(step, phase, step % cfg.arch_every == 0, total),
                      argmax=net.chosen, logits=lambda: [m.alpha for m in mixed],
                      latency_of=lambda rows: np.array([table.of_choice(r) for r in rows]))
    note = None
    if met.missed is not None:
        note = (f"the most probable architecture ({met.missed:.4g}) missed the budget {cfg.target:g} after "
                f"{met.rounds} strengthening round(s); moved {met.moves} choice(s) to cheaper candidates to meet it")
    idx = met.indices
    net_spec, arch = net.derive(idx)
    with torch.no_grad():
        elat = float(expected())
    return StandaloneResult(net_spec=net_spec, arch=arch, ops=net.describe(idx), latency=float(met.latency),
                            expected_latency=elat, target=cfg.target, feasible_by=met.feasible_by, note=note,
                            history=history, seconds=time.time() - t0,
                            probs=[[round(float(p), 4) for p in m.probs.detach()] for m in mixed])


__all__ = ["StandaloneConfig", "StandaloneResult", "search_standalone"]
