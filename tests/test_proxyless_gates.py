"""Binary gates: sampling, the two-path alpha gradient, the rescaling after an alpha step."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from specialize.proxyless.gates import (MixedOp, binary_gates, gate_gradient_to_alpha, rescale_two_paths,
                                        sample_paths)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine is shared: one intra-op thread avoids oversubscription stalls (10x slower otherwise)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ops(n: int, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh()) for _ in range(n)]


class _Scale(nn.Module):
    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x):
        return x * self.c


def test_single_path_gates_are_one_hot_and_follow_softmax():
    op = MixedOp([_Scale(float(j + 1)) for j in range(4)])
    with torch.no_grad():
        op.alpha.copy_(torch.tensor([1.0, 0.0, -1.0, 0.5]))
    op.set_mode("single")
    op.generator = torch.Generator().manual_seed(1)
    x = torch.randn(3)
    counts = torch.zeros(4)
    n = 3000
    with torch.no_grad():
        for _ in range(n):
            out = op(x)
            counts[op.last_active] += 1
            # one path ran: the output is exactly that candidate's output
            assert torch.equal(out, x * (op.last_active + 1))
    freq = counts / n
    p = F.softmax(op.alpha.detach(), 0)
    assert (freq - p).abs().max() < 0.03, (freq, p)


def test_binary_gates_are_one_hot_over_two_sampled_paths():
    alpha = torch.tensor([0.3, -0.2, 1.0, 0.0], requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        subset = sample_paths(alpha, 2, gen)
        assert len(set(subset.tolist())) == 2
        seen.update(subset.tolist())
        g = binary_gates(alpha, subset, 1)
        assert g.tolist() == [0.0, 1.0]
    assert seen == {0, 1, 2, 3}


def test_gate_gradient_formula_matches_softmax_jacobian():
    torch.manual_seed(0)
    alpha = torch.randn(5, dtype=torch.float64, requires_grad=True)
    grad_g = torch.randn(5, dtype=torch.float64)
    p = F.softmax(alpha, 0)
    (expected,) = torch.autograd.grad(p, alpha, grad_g)   # J_softmax^T dL/dg
    got = gate_gradient_to_alpha(grad_g, p.detach())
    # explicit double sum: sum_j dL/dg_j p_j (delta_ij - p_i)
    pd = p.detach()
    explicit = torch.stack([sum(grad_g[j] * pd[j] * (float(i == j) - pd[i]) for j in range(5)) for i in range(5)])
    assert torch.allclose(got, expected) and torch.allclose(got, explicit)


def test_two_path_alpha_gradient_is_exact_gradient_of_expected_loss_for_linear_loss():
    # For a loss linear in the op's output, dL/dg_j = L(path j) exactly, so the estimator with the two sampled
    # paths must equal the gradient of E_{j ~ softmax(alpha[S])}[L(path j)] w.r.t. alpha (finite differences).
    torch.manual_seed(0)
    op = MixedOp(_ops(4)).double()
    with torch.no_grad():
        op.alpha.copy_(torch.tensor([0.2, -0.5, 0.7, 0.1], dtype=torch.float64))
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    op.set_mode("two_path")
    op.generator = torch.Generator().manual_seed(3)
    loss = (op(x) * w).sum()
    op.alpha.grad = None
    loss.backward()
    subset = op.last_subset
    with torch.no_grad():
        losses = torch.stack([(op.candidates[j](x) * w).sum() for j in subset])

    def expected_loss(a: torch.Tensor) -> torch.Tensor:
        return (F.softmax(a[subset], 0) * losses).sum()

    eps = 1e-6
    fd = torch.zeros(4, dtype=torch.float64)
    for i in range(4):
        a_plus, a_minus = op.alpha.detach().clone(), op.alpha.detach().clone()
        a_plus[i] += eps
        a_minus[i] -= eps
        fd[i] = (expected_loss(a_plus) - expected_loss(a_minus)) / (2 * eps)
    assert torch.allclose(op.alpha.grad, fd, atol=1e-5), (op.alpha.grad, fd)
    # only the two sampled paths get a gradient
    others = [i for i in range(4) if i not in subset]
    assert torch.all(op.alpha.grad[others] == 0) and op.alpha.grad[subset].abs().sum() > 0
    # the input gradient flows through the active path only; weights get no gradient in this mode
    x2 = x.detach().clone().requires_grad_(True)
    (op.candidates[op.last_active](x2) * w).sum().backward()
    assert torch.allclose(x.grad, x2.grad)
    assert all(p.grad is None for c in op.candidates for p in c.parameters() if c is not op.candidates[op.last_active])


def test_two_path_gradient_matches_autograd_through_explicit_gates_for_nonlinear_loss():
    # dL/dg_j = <dL/dout, o_j> at the binary gates: compare with autograd through out = sum_j g_j o_j.
    torch.manual_seed(1)
    op = MixedOp(_ops(3)).double()
    with torch.no_grad():
        op.alpha.copy_(torch.tensor([0.4, -0.1, 0.3], dtype=torch.float64))
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    op.set_mode("two_path")
    op.generator = torch.Generator().manual_seed(5)
    loss = (op(x) ** 2).mean().sin()
    loss.backward()
    subset, active = op.last_subset, op.last_active
    g = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        outs = [op.candidates[j](x) for j in subset]
    g_val = g + torch.tensor([float(j == active) for j in subset], dtype=torch.float64)
    ref_loss = ((g_val[0] * outs[0] + g_val[1] * outs[1]) ** 2).mean().sin()
    (grad_g,) = torch.autograd.grad(ref_loss, g)
    p = F.softmax(op.alpha.detach()[subset], 0)
    expected = torch.zeros(3, dtype=torch.float64)
    expected[subset] = gate_gradient_to_alpha(grad_g, p)
    assert torch.allclose(op.alpha.grad, expected, atol=1e-10)


def test_rescale_keeps_unsampled_probabilities():
    alpha = torch.tensor([0.5, -0.3, 1.2, 0.0])
    before = alpha.clone()
    p_before = F.softmax(before, 0)
    alpha[[1, 2]] += torch.tensor([0.7, -0.4])   # an optimizer step on the two sampled paths
    rescale_two_paths(alpha, [1, 2], before)
    p_after = F.softmax(alpha, 0)
    assert torch.allclose(p_after[[0, 3]], p_before[[0, 3]], atol=1e-6)
    assert not torch.allclose(p_after[[1, 2]], p_before[[1, 2]])
    assert torch.isclose(p_after[[1, 2]].sum(), p_before[[1, 2]].sum(), atol=1e-6)
