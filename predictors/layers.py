"""A `NetSpec` seen as the sequence of layers a latency model prices one by one.

Every latency predictor (lookup table, per-layer regression, measured profile, MACs/params proxy) works on
the same `Layer` records, so a network's predicted latency is always the sum over `net_layers(net)`.
The layer split follows the published Once-for-All / ProxylessNAS latency tables:
stem `Conv`, one `expanded_conv` per MBConv block, `Conv_1` (final expand), `AvgPool2D`, `Conv_2`
(feature mix after the pool, MobileNetV3) and `Logits` (global pool if still spatial + classifier).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from elastic.netspec import ConvSpec, MBConvSpec, NetSpec, se_mid_channels

OPS = ("conv", "mbconv", "pool", "logits")


class Layer(NamedTuple):
    """One priced layer. `mid_ch` is 0 for a block without expansion; `se`, `hs`, `residual` are 0/1."""

    op: str
    in_hw: int
    in_ch: int
    out_ch: int
    kernel: int = 1
    stride: int = 1
    mid_ch: int = 0
    se: int = 0
    hs: int = 0
    residual: int = 0

    @property
    def out_hw(self) -> int:
        if self.op in ("pool", "logits"):
            return 1
        pad = self.kernel // 2
        return (self.in_hw + 2 * pad - self.kernel) // self.stride + 1

    def describe(self) -> str:
        if self.op == "mbconv":
            return (f"mbconv {self.in_hw}x{self.in_hw}x{self.in_ch}->{self.out_hw}x{self.out_hw}x{self.out_ch} "
                    f"mid {self.mid_ch} k{self.kernel} s{self.stride} se{self.se} hs{self.hs}")
        if self.op == "conv":
            return f"conv{self.kernel}x{self.kernel} {self.in_hw}x{self.in_hw}x{self.in_ch}->{self.out_ch} s{self.stride}"
        if self.op == "pool":
            return f"avgpool {self.in_hw}x{self.in_hw}x{self.in_ch}"
        return f"logits {self.in_hw}x{self.in_hw}x{self.in_ch}->{self.out_ch}"


def conv_layer(spec: ConvSpec) -> Layer:
    return Layer("conv", spec.in_hw, spec.in_ch, spec.out_ch, spec.kernel, spec.stride, 0, 0,
                 int(spec.act == "h_swish"), 0)


def block_layer(spec: MBConvSpec) -> Layer:
    return Layer("mbconv", spec.in_hw, spec.in_ch, spec.out_ch, spec.kernel, spec.stride, spec.mid_ch or 0,
                 int(spec.se), int(spec.act == "h_swish"), int(spec.residual))


def net_layers(net: NetSpec) -> list[Layer]:
    """The layers of `net` in forward order."""
    layers = [conv_layer(net.stem)] + [block_layer(b) for b in net.blocks]
    hw = net.blocks[-1].out_hw if net.blocks else net.stem.out_hw
    ch = net.blocks[-1].out_ch if net.blocks else net.stem.out_ch
    if net.final_expand is not None:
        layers.append(conv_layer(net.final_expand))
        ch = net.final_expand.out_ch
    if net.feature_mix is not None and net.mix_after_pool:
        layers.append(Layer("pool", hw, ch, ch))
        layers.append(conv_layer(net.feature_mix))
        hw, ch = 1, net.feature_mix.out_ch
    elif net.feature_mix is not None:
        layers.append(conv_layer(net.feature_mix))
        ch = net.feature_mix.out_ch
    layers.append(Layer("logits", hw, ch, net.n_classes))
    return layers


# ---- analytic proxies ------------------------------------------------------------------------------
def layer_macs(layer: Layer) -> int:
    """Multiply-accumulates, counted as `elastic.netspec.net_macs` counts them."""
    hi, ho = layer.in_hw, layer.out_hw
    if layer.op == "conv":
        return layer.in_ch * layer.out_ch * layer.kernel * layer.kernel * ho * ho
    if layer.op == "pool":
        return 0
    if layer.op == "logits":
        return layer.in_ch * layer.out_ch
    dw = layer.mid_ch or layer.in_ch
    macs = layer.in_ch * layer.mid_ch * hi * hi + dw * layer.kernel * layer.kernel * ho * ho
    if layer.se:
        macs += 2 * dw * se_mid_channels(dw)
    return macs + dw * layer.out_ch * ho * ho


def layer_params(layer: Layer, bn: bool = True) -> int:
    """Trainable parameters, counted as `elastic.netspec.net_params` counts them."""
    if layer.op == "conv":
        return layer.in_ch * layer.out_ch * layer.kernel * layer.kernel + (2 * layer.out_ch if bn else 0)
    if layer.op == "pool":
        return 0
    if layer.op == "logits":
        return layer.in_ch * layer.out_ch + layer.out_ch
    dw = layer.mid_ch or layer.in_ch
    p = (layer.in_ch * layer.mid_ch + 2 * layer.mid_ch) if layer.mid_ch else 0
    p += dw * layer.kernel * layer.kernel + 2 * dw
    if layer.se:
        m = se_mid_channels(dw)
        p += dw * m + m + m * dw + dw
    return p + dw * layer.out_ch + 2 * layer.out_ch


def net_layer_params(net: NetSpec) -> list[int]:
    """Per-layer parameter counts aligned with `net_layers(net)` (BN affine only where the layer has BN)."""
    layers = net_layers(net)
    bn_of = {id(l): True for l in layers}
    convs = [net.stem] + [c for c in (net.final_expand, net.feature_mix) if c is not None]
    conv_layers = [l for l in layers if l.op == "conv"]
    for layer, spec in zip(conv_layers, convs):
        bn_of[id(layer)] = spec.bn
    return [layer_params(l, bn=bn_of[id(l)]) for l in layers]


# ---- regression features ---------------------------------------------------------------------------
FEATURES = (
    "mb_const",        # one per MBConv block (launch/bookkeeping)
    "mb_expand_mmacs",  # 1x1 expansion
    "mb_dw3_mmacs", "mb_dw5_mmacs", "mb_dw7_mmacs",  # depthwise, split by kernel size
    "mb_project_mmacs",  # 1x1 projection
    "mb_mid_mact",     # middle activations written/read (M elements, before and after the depthwise)
    "mb_io_mact",      # block input + output activations (M elements)
    "mb_stride2",      # stride-2 block
    "se_mact",         # squeeze-excitation: pool + rescale over the middle activation (M elements)
    "hswish_mact",     # elements passing through h-swish (M)
    "conv_mmacs",      # dense convs (stem, final expand, feature mix) and the classifier
    "conv_mact",       # their input + output activations (M elements)
    "head_const",      # one per non-block layer
    "pool_mact",       # elements averaged by global pooling (M)
    "mb_weights_m",    # block weights (M): on small maps a conv costs by weights read, not by MACs
    "mb_channels_k",   # middle channels (thousands): per-channel overhead of depthwise/SE on small maps
    "conv_weights_m",  # dense conv / classifier weights (M)
)
N_FEATURES = len(FEATURES)
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURES)}


def layer_features(layer: Layer) -> np.ndarray:
    f = np.zeros(N_FEATURES)
    hi, ho = layer.in_hw, layer.out_hw
    M = 1e-6
    if layer.op == "mbconv":
        dw = layer.mid_ch or layer.in_ch
        f[0] = 1.0
        f[1] = layer.in_ch * layer.mid_ch * hi * hi * M
        k = min((3, 5, 7), key=lambda c: abs(c - layer.kernel))
        f[{3: 2, 5: 3, 7: 4}[k]] = dw * layer.kernel * layer.kernel * ho * ho * M
        f[5] = dw * layer.out_ch * ho * ho * M
        f[6] = ((layer.mid_ch * hi * hi if layer.mid_ch else 0) + dw * ho * ho) * M
        f[7] = (layer.in_ch * hi * hi + layer.out_ch * ho * ho) * M
        f[8] = float(layer.stride > 1)
        if layer.se:
            f[9] = dw * ho * ho * M
        if layer.hs:
            f[10] = ((layer.mid_ch * hi * hi if layer.mid_ch else 0) + dw * ho * ho) * M
        f[15] = (layer.in_ch * layer.mid_ch + dw * layer.kernel * layer.kernel + dw * layer.out_ch
                 + (2 * dw * se_mid_channels(dw) if layer.se else 0)) * M
        f[16] = dw * 1e-3
        return f
    f[13] = 1.0
    if layer.op == "conv":
        f[11] = layer_macs(layer) * M
        f[12] = (layer.in_ch * hi * hi + layer.out_ch * ho * ho) * M
        f[17] = layer.in_ch * layer.out_ch * layer.kernel * layer.kernel * M
        if layer.hs:
            f[10] = layer.out_ch * ho * ho * M
    elif layer.op == "pool":
        f[14] = layer.in_ch * hi * hi * M
    else:  # logits
        f[11] = layer.in_ch * layer.out_ch * M
        f[17] = layer.in_ch * layer.out_ch * M
        if hi > 1:
            f[14] = layer.in_ch * hi * hi * M
    return f


def features_matrix(layers: list[Layer]) -> np.ndarray:
    return np.stack([layer_features(layer) for layer in layers]) if layers else np.zeros((0, N_FEATURES))


def net_features(net: NetSpec) -> np.ndarray:
    """Sum of the per-layer features: a linear per-layer model prices the whole network with one dot product."""
    return features_matrix(net_layers(net)).sum(axis=0)
