"""One update of the architecture parameters, and one of the weights, for any model built of `MixedOp`s.

Architecture update (`estimator`):
- `two_path`: two paths per choice sampled, one active; CE reaches alpha through the binary gates, the expected
  latency directly; Adam step; the two updated logits of each choice are then rescaled so the paths that were
  not sampled keep their probability mass (ProxylessNAS);
- `reinforce`: one path per choice sampled (no gradient through the net); reward = -loss of the sampled
  architecture at its exact latency; alpha follows (R - baseline) d log p(arch) / d alpha, with a moving-average
  baseline.
Weight update: one path per choice sampled from softmax(alpha) (binarized), plain SGD on the weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from elastic.errors import OFAError
from specialize.proxyless.gates import MixedOp, rescale_two_paths
from specialize.proxyless.loss import latency_loss, reinforce_surrogate

ESTIMATORS = ("two_path", "reinforce")


@dataclass
class LossSettings:
    target: float
    form: str = "mul"
    beta: float = 0.6
    lam: float = 0.1
    estimator: str = "two_path"
    one_sided: bool = True
    rescale: bool = True

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise OFAError(f"unknown estimator '{self.estimator}'; allowed: {', '.join(ESTIMATORS)}")
        if not self.target > 0:
            raise OFAError(f"latency target must be positive, got {self.target!r}")

    def strengthen(self, factor: float = 2.0, target_step: float = 0.95) -> str:
        """Make the latency term pull harder (used when the argmax misses the budget): a larger beta / lambda and
        a target 5% lower (the argmax can miss while the expectation fits); says what it changed."""
        self.target *= target_step
        if self.form == "mul":
            self.beta *= factor
            return f"beta -> {self.beta:g}, target -> {self.target:.4g}"
        self.lam *= factor
        return f"lambda -> {self.lam:g}, target -> {self.target:.4g}"

    def loss(self, ce: torch.Tensor, expected_latency: torch.Tensor) -> torch.Tensor:
        return latency_loss(ce, expected_latency, self.target, self.form, self.beta, self.lam, self.one_sided)


@dataclass
class ReinforceState:
    baseline: float | None = None
    decay: float = 0.9


def set_modes(mixed: Sequence[MixedOp], mode: str, generator: torch.Generator | None) -> None:
    for m in mixed:
        m.set_mode(mode)
        m.generator = generator


def weight_step(model: nn.Module, mixed: Sequence[MixedOp], x: torch.Tensor, y: torch.Tensor,
                optimizer: torch.optim.Optimizer, generator: torch.Generator | None = None,
                clip_norm: float | None = 5.0) -> float:
    """One SGD step on one path per block sampled from softmax(alpha); gradient norm clipped (a freshly
    initialized over-parameterized net sees a different path every step and diverges easily without it)."""
    model.train()
    set_modes(mixed, "single", generator)
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    if clip_norm is not None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    return float(loss.detach())


def arch_step(model: nn.Module, mixed: Sequence[MixedOp], x: torch.Tensor, y: torch.Tensor,
              optimizer: torch.optim.Optimizer, settings: LossSettings,
              expected_latency: Callable[[], torch.Tensor], latency_of: Callable[[list[int]], float],
              generator: torch.Generator | None = None, reinforce: ReinforceState | None = None) -> dict[str, Any]:
    """One architecture update; returns the numbers of the step (ce, expected latency, loss)."""
    model.train()
    s = settings
    alphas = [m.alpha for m in mixed]
    optimizer.zero_grad(set_to_none=True)
    if s.estimator == "two_path":
        set_modes(mixed, "two_path", generator)
        ce = F.cross_entropy(model(x), y)
        elat = expected_latency()
        loss = s.loss(ce, elat)
        loss.backward()
        before = [a.detach().clone() for a in alphas]
        optimizer.step()
        if s.rescale:
            for m, b in zip(mixed, before):
                if m.last_subset is not None and len(m.last_subset) == 2:
                    rescale_two_paths(m.alpha, m.last_subset, b)
        # the weights of the fixed layers got input gradients through the active paths: they are not updated here
        return {"ce": float(ce.detach()), "expected_latency": float(elat.detach()), "loss": float(loss.detach())}
    state = reinforce if reinforce is not None else ReinforceState()
    set_modes(mixed, "single", generator)
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y)
    idx = [m.last_active for m in mixed]
    lat = float(latency_of(idx))
    reward = -float(s.loss(ce, torch.tensor(lat)))
    if state.baseline is None:
        state.baseline = reward
    log_prob = sum(F.log_softmax(m.alpha, 0)[i] for m, i in zip(mixed, idx))
    reinforce_surrogate(log_prob, reward, state.baseline).backward()
    optimizer.step()
    state.baseline = state.decay * state.baseline + (1 - state.decay) * reward
    with torch.no_grad():
        elat = float(expected_latency())
    return {"ce": float(ce), "expected_latency": elat, "loss": -reward, "sampled_latency": lat}


def make_arch_optimizer(mixed: Sequence[MixedOp], lr: float = 6e-3) -> torch.optim.Optimizer:
    """Adam without first-moment averaging (betas (0, 0.999)), as ProxylessNAS trains its architecture parameters."""
    return torch.optim.Adam([m.alpha for m in mixed], lr=lr, betas=(0.0, 0.999), eps=1e-8)


__all__ = ["ESTIMATORS", "LossSettings", "ReinforceState", "arch_step", "make_arch_optimizer", "set_modes",
           "weight_step"]
