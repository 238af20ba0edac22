"""Binarized architecture gates (ProxylessNAS path binarization) and the mixed operation built on them.

A choice with candidates `c_1..c_n` has logits `alpha` (one set per choice). Its probabilities are
`p = softmax(alpha)`. In a binarized forward pass exactly one candidate is active: the gates `g` are a one-hot
vector sampled from `p`, and the output is `sum_j g_j o_j = o_active`, so only the active candidate runs and
only its activations are kept for backward: memory stays that of one sub-network.

The gradient with respect to alpha goes through the gates (ProxylessNAS, eq. 4):

    dL/dalpha_i = sum_j dL/dg_j * p_j * (delta_ij - p_i),      dL/dg_j = <dL/d out, o_j>

restricted, in the architecture update, to two paths sampled from `p` (without replacement) with the
softmax renormalized over those two (`two_path` mode). `dL/dg_j` for the inactive sampled path is computed
in backward by running that candidate without autograd on the saved input, so it costs compute, not memory.
After an optimizer step on alpha, `rescale_two_paths` shifts the two updated logits by a common offset so the
probabilities of the paths that were not sampled stay unchanged (as the original implementation does).

Modes of `MixedOp`:
- `single`   one path sampled from softmax(alpha) over all candidates (weight updates; ordinary autograd);
- `two_path` two paths sampled, one active; gradient reaches alpha through the gates (architecture updates);
- `weighted` DARTS-style `sum_j p_j o_j` over all candidates (for comparison: memory grows with candidates);
- `argmax`   the most probable candidate (evaluation / deriving the final architecture);
- `fixed`    the candidate set by `fix(index)` (training a chosen path, e.g. the REINFORCE samples).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from elastic.errors import OFAError

MODES = ("single", "two_path", "weighted", "argmax", "fixed")


def sample_paths(alpha: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of `n` distinct candidates drawn from softmax(alpha) without replacement."""
    probs = F.softmax(alpha.detach().float(), dim=-1)
    n = min(n, probs.numel())
    if generator is not None and generator.device != probs.device:
        probs = probs.cpu()   # sampling with a CPU generator: indices come back on the CPU
    return torch.multinomial(probs, n, replacement=False, generator=generator)


def gate_gradient_to_alpha(grad_g: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i) = p_i (dL/dg_i - sum_j p_j dL/dg_j)."""
    return probs * (grad_g - (grad_g * probs).sum(dim=-1, keepdim=True))


class _BinaryGates(torch.autograd.Function):
    """One-hot gates over a subset of paths; backward maps dL/dg to the subset's logits by the formula above."""

    @staticmethod
    def forward(ctx, alpha_subset: torch.Tensor, active: int) -> torch.Tensor:  # type: ignore[override]
        probs = F.softmax(alpha_subset, dim=-1)
        ctx.save_for_backward(probs)
        gates = torch.zeros_like(alpha_subset)
        gates[active] = 1.0
        return gates

    @staticmethod
    def backward(ctx, grad_g: torch.Tensor):  # type: ignore[override]
        (probs,) = ctx.saved_tensors
        return gate_gradient_to_alpha(grad_g, probs), None


def binary_gates(alpha: torch.Tensor, subset: torch.Tensor, active: int) -> torch.Tensor:
    """Differentiable one-hot gates over `alpha[subset]` with `subset[active]` switched on."""
    return _BinaryGates.apply(alpha[subset], int(active))


class _GatedPaths(torch.autograd.Function):
    """Output of the active path; backward gives the input gradient through the active path only and
    dL/dg_j = <grad_out, o_j> for every gated path (inactive ones recomputed without autograd)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gates: torch.Tensor, op: "MixedOp", subset: list[int],  # type: ignore[override]
                active: int) -> torch.Tensor:
        detached = x.detach()
        detached.requires_grad_(x.requires_grad)
        with torch.enable_grad():
            out = op.candidates[subset[active]](detached)
        ctx.op, ctx.subset, ctx.active = op, subset, active
        ctx.save_for_backward(detached, out)
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        detached, out = ctx.saved_tensors
        grad_x = None
        if detached.requires_grad and out.requires_grad:
            (grad_x,) = torch.autograd.grad(out, detached, grad_out)
        grad_g = torch.zeros(len(ctx.subset), dtype=grad_out.dtype, device=grad_out.device)
        with torch.no_grad():
            for pos, j in enumerate(ctx.subset):
                o = out if pos == ctx.active else ctx.op.candidates[j](detached.detach())
                grad_g[pos] = (o * grad_out).sum()
        return grad_x, grad_g, None, None, None


class MixedOp(nn.Module):
    """Candidates of one searchable choice with their logits `alpha` (see the module doc for the modes).

    `alpha` is registered under the name `alpha`, so `arch_parameters(model)` / `weight_parameters(model)`
    tell architecture logits from weights by name.
    """

    def __init__(self, candidates: Sequence[nn.Module], names: Sequence[str] | None = None):
        super().__init__()
        if len(candidates) < 1:
            raise OFAError("a mixed operation needs at least one candidate")
        self.candidates = nn.ModuleList(candidates)
        self.names = list(names) if names is not None else [str(i) for i in range(len(candidates))]
        self.alpha = nn.Parameter(torch.zeros(len(candidates)))
        self.mode = "argmax"
        self.generator: torch.Generator | None = None
        self._fixed = 0
        self.last_active: int | None = None   # candidate used by the last forward (single/two_path/fixed/argmax)
        self.last_subset: list[int] | None = None

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def probs(self) -> torch.Tensor:
        return F.softmax(self.alpha, dim=-1)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise OFAError(f"unknown mixed-op mode '{mode}'; allowed: {', '.join(MODES)}")
        self.mode = mode

    def fix(self, index: int) -> None:
        self._fixed = int(index)
        self.mode = "fixed"

    def chosen(self) -> int:
        return int(torch.argmax(self.alpha.detach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if len(self.candidates) == 1:
            self.last_active, self.last_subset = 0, [0]
            return self.candidates[0](x)
        if mode == "weighted":
            p = self.probs
            self.last_active, self.last_subset = None, list(range(len(self.candidates)))
            return sum(p[j] * c(x) for j, c in enumerate(self.candidates))
        if mode == "two_path":
            subset = sample_paths(self.alpha, 2, self.generator)
            sub_p = F.softmax(self.alpha.detach()[subset], dim=-1)
            active = int(torch.multinomial(sub_p.cpu(), 1, generator=self.generator))
            gates = binary_gates(self.alpha, subset, active)
            self.last_subset, self.last_active = subset.tolist(), int(subset[active])
            return _GatedPaths.apply(x, gates, self, subset.tolist(), active)
        if mode == "single":
            idx = int(sample_paths(self.alpha, 1, self.generator)[0])
        elif mode == "fixed":
            idx = self._fixed
        else:
            idx = self.chosen()
        self.last_active, self.last_subset = idx, [idx]
        return self.candidates[idx](x)


def rescale_two_paths(alpha: torch.Tensor, subset: Sequence[int], before: torch.Tensor) -> None:
    """Shift the updated logits `alpha[subset]` so their total probability mass is what it was `before` the step
    (the logits of the other paths did not move, so their probabilities are preserved)."""
    idx = torch.as_tensor(list(subset), dtype=torch.long, device=alpha.device)
    with torch.no_grad():
        offset = torch.logsumexp(alpha[idx], 0) - torch.logsumexp(before[idx], 0)
        alpha[idx] -= offset


def mixed_ops(model: nn.Module) -> list[MixedOp]:
    return [m for m in model.modules() if isinstance(m, MixedOp)]


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.split(".")[-1] == "alpha"]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.split(".")[-1] != "alpha"]


def set_mode(model: nn.Module, mode: str, generator: torch.Generator | None = None) -> None:
    for m in mixed_ops(model):
        m.set_mode(mode)
        m.generator = generator


__all__ = [
    "MODES", "MixedOp", "arch_parameters", "binary_gates", "gate_gradient_to_alpha", "mixed_ops",
    "rescale_two_paths", "sample_paths", "set_mode", "weight_parameters",
]
