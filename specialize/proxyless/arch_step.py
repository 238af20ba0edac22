"""One update of the architecture parameters, and one of the weights, for any model built of `MixedOp`s.

`arch_update` is the estimator step itself, given the model's sampled forward as callables; it is shared by
`arch_step` (models of `MixedOp`s) and the search over a supernet (supernet_search.py).

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


def arch_update(optimizer: torch.optim.Optimizer, settings: LossSettings,
                choices: Callable[[], Sequence[torch.Tensor]], expected_latency: Callable[[], torch.Tensor],
                two_path_forward: Callable[[], tuple[torch.Tensor, Sequence[Sequence[int] | None]]],
                single_path_forward: Callable[[], tuple[torch.Tensor, float, Sequence[int]]],
                reinforce: ReinforceState | None = None) -> dict[str, Any]:
    """One architecture update with `settings.estimator`; returns the numbers of the step (ce, expected latency,
    loss; with REINFORCE also the sampled arch's latency).

    choices: the architecture logits, one 1-D tensor per choice (in the order of the forwards' subsets/indices);
    two_path_forward: CE of the batch with two paths sampled per choice (gates wired to the logits), and the
      sampled subset of every choice (None or one index where nothing was sampled);
    single_path_forward: CE of the batch (no autograd) with one path per choice sampled, the latency of that
      architecture and its index per choice."""
    s = settings
    optimizer.zero_grad(set_to_none=True)
    if s.estimator == "two_path":
        ce, subsets = two_path_forward()
        elat = expected_latency()
        loss = s.loss(ce, elat)
        loss.backward()
        before = [c.detach().clone() for c in choices()]
        optimizer.step()
        if s.rescale:
            # the two sampled candidates of every choice keep their total mass of before the step
            with torch.no_grad():
                for c, old, subset in zip(choices(), before, subsets):
                    if subset is not None and len(subset) == 2:
                        rescale_two_paths(c, subset, old)
        return {"ce": float(ce.detach()), "expected_latency": float(elat.detach()), "loss": float(loss.detach())}
    state = reinforce if reinforce is not None else ReinforceState()
    ce, lat, idx = single_path_forward()
    reward = -float(s.loss(ce, torch.tensor(lat)))
    if state.baseline is None:
        state.baseline = reward
    log_prob = sum(F.log_softmax(c, -1)[i] for c, i in zip(choices(), idx))
    reinforce_surrogate(log_prob, reward, state.baseline).backward()
    optimizer.step()
    state.baseline = state.decay * state.baseline + (1 - state.decay) * reward
    with torch.no_grad():
        elat = float(expected_latency())
    return {"ce": float(ce), "expected_latency": elat, "loss": -reward, "sampled_latency": lat}


def arch_step(model: nn.Module, mixed: Sequence[MixedOp], x: torch.Tensor, y: torch.Tensor,
              optimizer: torch.optim.Optimizer, settings: LossSettings,
              expected_latency: Callable[[], torch.Tensor], latency_of: Callable[[list[int]], float],
              generator: torch.Generator | None = None, reinforce: ReinforceState | None = None) -> dict[str, Any]:
    """One architecture update; returns the numbers of the step (ce, expected latency, loss)."""
    model.train()

    def two_path() -> tuple[torch.Tensor, list[list[int] | None]]:
        set_modes(mixed, "two_path", generator)
        ce = F.cross_entropy(model(x), y)
        # the weights of the fixed layers get input gradients through the active paths: they are not updated here
        return ce, [m.last_subset for m in mixed]

    def single_path() -> tuple[torch.Tensor, float, list[int]]:
        set_modes(mixed, "single", generator)
        with torch.no_grad():
            ce = F.cross_entropy(model(x), y)
        idx = [m.last_active for m in mixed]
        return ce, float(latency_of(idx)), idx

    return arch_update(optimizer, settings, lambda: [m.alpha for m in mixed], expected_latency, two_path,
                       single_path, reinforce)


def make_arch_optimizer(mixed: Sequence[MixedOp], lr: float = 6e-3) -> torch.optim.Optimizer:
    """Adam without first-moment averaging (betas (0, 0.999)), as ProxylessNAS trains its architecture parameters."""
    return torch.optim.Adam([m.alpha for m in mixed], lr=lr, betas=(0.0, 0.999), eps=1e-8)


__all__ = ["ESTIMATORS", "LossSettings", "ReinforceState", "arch_step", "arch_update", "make_arch_optimizer",
           "set_modes", "weight_step"]
