"""Latency-aware search losses and the REINFORCE estimator.

- `mul`: CE x (E[lat] / target) ** beta (multiplicative, as MnasNet / ProxylessNAS-mobile): the latency term
  scales the task loss, so its pull is relative to how far the expected latency is from the target;
- `add`: CE + lambda x E[lat] / target (additive; lambda per unit of the target, so one setting works across
  devices and budgets).
`one_sided=True` applies the latency term only above the target (ratio max(E[lat]/target, 1) in `mul`,
lambda x max(E[lat]/target - 1, 0) in `add`): below the budget nothing pulls the architecture smaller than it needs
to be, so the search spends the budget on accuracy (the two-sided forms keep shrinking a net that already fits).
The expected latency is a differentiable function of the architecture probabilities (see expected_latency), so
its gradient reaches alpha directly, while the task loss reaches alpha through the binary gates.
"""
from __future__ import annotations

import torch

from elastic.errors import OFAError

FORMS = ("mul", "add")


def latency_loss(ce: torch.Tensor, expected_latency: torch.Tensor, target: float, form: str = "mul",
                 beta: float = 0.6, lam: float = 0.1, one_sided: bool = False) -> torch.Tensor:
    if form not in FORMS:
        raise OFAError(f"unknown latency loss form '{form}'; allowed: {', '.join(FORMS)}")
    if not target > 0:
        raise OFAError(f"latency target must be positive, got {target!r}")
    ratio = expected_latency / float(target)
    if form == "mul":
        return ce * (ratio.clamp_min(1.0) if one_sided else ratio.clamp_min(1e-6)) ** beta
    return ce + lam * ((ratio - 1.0).clamp_min(0.0) if one_sided else ratio)


def reinforce_surrogate(log_prob: torch.Tensor, reward: float, baseline: float) -> torch.Tensor:
    """A loss whose gradient is the REINFORCE estimate -(R - b) d log p(arch) / d alpha."""
    return -(float(reward) - float(baseline)) * log_prob


__all__ = ["FORMS", "latency_loss", "reinforce_surrogate"]
