"""A shape-faithful stand-in network built from a NetSpec, used for timing only until
`elastic.static_net.StaticNet` exists (same layers, shapes and ops; weights random)."""
from __future__ import annotations

from torch import nn

from elastic.netspec import ConvSpec, MBConvSpec, NetSpec, se_mid_channels

_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "h_swish": nn.Hardswish, "none": nn.Identity}


def _conv(cin, cout, k, s, act, bn=True, groups=1, bias=False):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=bias)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(_ACTS.get(act, nn.Identity)())
    return nn.Sequential(*layers)


class _SE(nn.Module):
    def __init__(self, ch):
        super().__init__()
        mid = se_mid_channels(ch)
        self.body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, mid, 1), nn.ReLU(), nn.Conv2d(mid, ch, 1),
                                  nn.Hardsigmoid())

    def forward(self, x):
        return x * self.body(x)


class _MB(nn.Module):
    def __init__(self, b: MBConvSpec):
        super().__init__()
        dw = b.dw_ch
        layers = [_conv(b.in_ch, dw, 1, 1, b.act)] if b.mid_ch is not None else []
        layers.append(_conv(dw, dw, b.kernel, b.stride, b.act, groups=dw))
        if b.se:
            layers.append(_SE(dw))
        layers.append(_conv(dw, b.out_ch, 1, 1, "none"))
        self.body = nn.Sequential(*layers)
        self.residual = b.residual

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


def _from(c: ConvSpec):
    return _conv(c.in_ch, c.out_ch, c.kernel, c.stride, c.act, bn=c.bn, bias=c.bias)


class TimingNet(nn.Module):
    def __init__(self, net: NetSpec):
        super().__init__()
        self.net_spec = net
        pre = [_from(net.stem)] + [_MB(b) for b in net.blocks]
        if net.final_expand is not None:
            pre.append(_from(net.final_expand))
        post = []
        if net.feature_mix is not None and not net.mix_after_pool:
            pre.append(_from(net.feature_mix))
        elif net.feature_mix is not None:
            post.append(_from(net.feature_mix))
        self.features = nn.Sequential(*pre)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mix = nn.Sequential(*post)
        self.classifier = nn.Linear(net.features, net.n_classes)

    def forward(self, x):
        x = self.mix(self.pool(self.features(x)))
        return self.classifier(x.flatten(1))
