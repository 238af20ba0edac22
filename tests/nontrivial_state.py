"""Give a freshly built network non-trivial state, so that tests comparing outputs exercise every piece of it
(fresh nets have BN at identity statistics, kernel transforms at the identity and zero-scaled residual BNs)."""
from __future__ import annotations

import torch
import torch.nn as nn

from elastic.ops import DynamicDepthwiseConv


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN stats/affine and kernel transforms, so that every piece of state matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(1 + torch.randn(m.num_features, generator=g) * 0.1)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            if isinstance(m, DynamicDepthwiseConv):
                for name, p in m.named_parameters(recurse=False):
                    if name.startswith("transform_"):
                        p.add_(torch.randn(p.shape, generator=g) * 0.1)
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net
