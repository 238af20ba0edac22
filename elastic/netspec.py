"""`NetSpec`: a static network described as data (layer by layer, with shapes).

This is the contract between the layers of the project: a space turns an `Arch` into a `NetSpec`
(`SpaceSpec.net_spec`), an original OFA `net_config` parses into one, the static network is built from one,
MACs/params are counted from one, and latency predictors key their per-layer tables on its layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ACTIVATIONS = ("relu", "relu6", "h_swish", "none")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor` as MobileNet/OFA do (never more than 10% down)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def conv_out(hw: int, kernel: int, stride: int) -> int:
    """Output size of a 'same'-padded convolution (padding kernel // 2), as in OFA."""
    pad = kernel // 2
    return (hw + 2 * pad - kernel) // stride + 1


def se_mid_channels(channels: int, reduction: int = 4) -> int:
    """Hidden width of OFA's squeeze-excitation module for `channels` inputs."""
    return make_divisible(channels // reduction, 8)


@dataclass(frozen=True)
class ConvSpec:
    """Conv (+ optional BN) (+ activation). `in_hw` is the input's spatial size."""

    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    act: str
    in_hw: int
    bn: bool = True
    bias: bool = False

    @property
    def out_hw(self) -> int:
        return conv_out(self.in_hw, self.kernel, self.stride)


@dataclass(frozen=True)
class MBConvSpec:
    """Mobile inverted bottleneck: [1x1 expand + BN + act] -> kxk depthwise + BN + act [-> SE] -> 1x1 project + BN.

    `mid_ch` is None when the block has no expansion layer (expand ratio 1, the fixed first block).
    """

    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    mid_ch: int | None
    act: str
    se: bool
    residual: bool
    in_hw: int

    @property
    def out_hw(self) -> int:
        return conv_out(self.in_hw, self.kernel, self.stride)

    @property
    def dw_ch(self) -> int:
        return self.mid_ch if self.mid_ch is not None else self.in_ch


@dataclass(frozen=True)
class NetSpec:
    """A whole static network.

    Forward order: stem -> blocks -> [final_expand] -> global average pool -> [feature_mix] -> classifier.
    `feature_mix` operates on the pooled 1x1 map in MobileNetV3 (`mix_after_pool=True`) and before the pool in
    ProxylessNAS (`mix_after_pool=False`).
    """

    family: str
    resolution: int
    stem: ConvSpec
    blocks: tuple[MBConvSpec, ...]
    final_expand: ConvSpec | None
    feature_mix: ConvSpec | None
    mix_after_pool: bool
    n_classes: int
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    dropout: float = 0.0
    in_channels: int = 3
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def features(self) -> int:
        last = self.feature_mix or self.final_expand
        return last.out_ch if last is not None else self.blocks[-1].out_ch


def conv_macs(spec: ConvSpec) -> int:
    out_hw = spec.out_hw
    return spec.in_ch * spec.out_ch * spec.kernel * spec.kernel * out_hw * out_hw


def mbconv_macs(spec: MBConvSpec) -> int:
    hw_in, hw_out = spec.in_hw, spec.out_hw
    macs = 0
    if spec.mid_ch is not None:
        macs += spec.in_ch * spec.mid_ch * hw_in * hw_in
    macs += spec.dw_ch * spec.kernel * spec.kernel * hw_out * hw_out
    if spec.se:
        mid = se_mid_channels(spec.dw_ch)
        macs += 2 * spec.dw_ch * mid
    macs += spec.dw_ch * spec.out_ch * hw_out * hw_out
    return macs


def net_macs(net: NetSpec) -> int:
    """Multiply-accumulates of conv/linear layers (BN, activations, pooling and SE scaling not counted)."""
    total = conv_macs(net.stem) + sum(mbconv_macs(b) for b in net.blocks)
    if net.final_expand is not None:
        total += conv_macs(net.final_expand)
    if net.feature_mix is not None:
        total += conv_macs(net.feature_mix)
    total += net.features * net.n_classes
    return int(total)


def _conv_params(spec: ConvSpec) -> int:
    p = spec.in_ch * spec.out_ch * spec.kernel * spec.kernel
    if spec.bn:
        p += 2 * spec.out_ch
    if spec.bias:
        p += spec.out_ch
    return p


def net_params(net: NetSpec) -> int:
    """Trainable parameters (conv/linear weights and biases, BN affine)."""
    total = _conv_params(net.stem)
    for b in net.blocks:
        if b.mid_ch is not None:
            total += b.in_ch * b.mid_ch + 2 * b.mid_ch
        total += b.dw_ch * b.kernel * b.kernel + 2 * b.dw_ch
        if b.se:
            mid = se_mid_channels(b.dw_ch)
            total += b.dw_ch * mid + mid + mid * b.dw_ch + b.dw_ch
        total += b.dw_ch * b.out_ch + 2 * b.out_ch
    for layer in (net.final_expand, net.feature_mix):
        if layer is not None:
            total += _conv_params(layer)
    total += net.features * net.n_classes + net.n_classes
    return int(total)


__all__ = [
    "ACTIVATIONS", "ConvSpec", "MBConvSpec", "NetSpec", "conv_out", "make_divisible", "se_mid_channels",
    "net_macs", "net_params"
]
