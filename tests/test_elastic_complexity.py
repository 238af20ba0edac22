"""Batched MACs/params: equal to the NetSpec counts, to a hook count on the real network, fast, strict."""
from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from elastic import Arch, OFAError, get_space, net_macs, net_params
from elastic.complexity import macs, params
from elastic.static_net import StaticNet

SPACES = ["mbv3-w1.0", "mbv3-w1.2", "proxyless-w1.3", "mbv3-w1.0-small", "mbv3-w0.5-small", "proxyless-w1.3-small"]


@pytest.mark.parametrize("name", SPACES)
def test_batched_counts_equal_netspec_counts(name):
    space = get_space(name)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(200)] + [space.largest(), space.smallest()]
    m, p = macs(space, archs), params(space, archs)
    assert m.dtype == np.int64 and m.shape == (len(archs),)
    assert m.tolist() == [net_macs(space.net_spec(a)) for a in archs]
    assert p.tolist() == [net_params(space.net_spec(a)) for a in archs]
    assert len(set(m.tolist())) > 100   # the archs really differ


def hook_count(net: nn.Module, r: int) -> tuple[int, int]:
    """MACs of every conv and linear layer, measured from their real output shapes during a forward pass."""
    total = [0]

    def conv_hook(m: nn.Conv2d, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += out.numel() // out.shape[0] * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Linear, inp, out):
        total[0] += m.in_features * m.out_features

    hooks = [m.register_forward_hook(conv_hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in net.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, r, r))
    for h in hooks:
        h.remove()
    return total[0], sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", ["mbv3-w1.0-small", "proxyless-w1.3-small", "mbv3-w1.2"])
def test_macs_match_a_hook_count_on_the_static_net(name):
    torch.set_num_threads(1)
    space = get_space(name)
    rng = random.Random(1)
    archs = [space.sample(rng, r=[min(space.resolutions)]) for _ in range(2)]
    for arch in archs:
        counted, n_params = hook_count(StaticNet(space.net_spec(arch)), arch.r)
        assert macs(space, [arch])[0] == counted
        assert params(space, [arch])[0] == n_params


def test_a_batch_of_ten_thousand_equals_one_arch_at_a_time():
    """Batched counting is exact per arch, whatever else is in the batch (its speed: bench/batch_speed.py)."""
    space = get_space("mbv3-w1.2")
    rng = random.Random(2)
    archs = [space.sample(rng) for _ in range(10_000)]
    m = macs(space, archs)
    p = params(space, archs)
    assert m.shape == p.shape == (10_000,)
    for i in rng.sample(range(10_000), 40):
        assert macs(space, [archs[i]])[0] == m[i] and params(space, [archs[i]])[0] == p[i]
    assert len(np.unique(m)) > 9_000   # not a constant or a broadcast of one row


def test_invalid_archs_are_clear_errors():
    space = get_space("proxyless-w1.3")
    good = space.largest()
    assert macs(space, []).shape == (0,)
    with pytest.raises(OFAError, match=r"'ks'\[3\] = 4"):
        macs(space, [good, replace(good, ks=good.ks[:3] + (4,) + good.ks[4:])])
    with pytest.raises(OFAError, match="'e' has 20 entries"):
        params(space, [replace(good, e=good.e[:-1])])
    with pytest.raises(OFAError, match=r"'d'\[5\] = 2"):
        macs(space, [replace(good, d=good.d[:-1] + (2,))])
    with pytest.raises(OFAError, match="'r' = 100"):
        macs(space, [replace(good, r=100)])
    with pytest.raises(OFAError, match="expected an Arch"):
        macs(space, [good.to_dict()])
    assert macs(space, good).shape == (1,)   # a single Arch is a batch of one
    assert isinstance(good, Arch)
