"""Dynamic operators of the elastic supernet, numerically faithful to Once-for-All (Cai et al., 2020).

- Elastic kernel: the depthwise weight is stored at the largest kernel (7x7). A smaller kernel takes the centre
  of the next larger one and multiplies each flattened filter by a learned square matrix (OFA's kernel
  transformation, initialised to the identity): 7 -> 5 with a 25x25 matrix, then 5 -> 3 with a 9x9 matrix.
- Elastic width (expand ratio): the first `mid` middle channels; weights are views into the largest tensors.
- Dynamic BN: the first `c` channels of the running stats and affine parameters; in training the slice of the
  running stats is updated in place. With all channels active it is a plain BatchNorm2d.
- Dynamic SE: the first `mid` / `c` channels of the largest SE, mid = make_divisible(c // 4, 8).

The active configuration is set once per arch (`DynamicMBConv.set_active`), so the forward pass does no
Python work beyond slicing; transformed kernels are cached only for inference without autograd.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from elastic.errors import OFAError
from elastic.netspec import make_divisible, se_mid_channels

_ACT_FN = {"relu": F.relu, "relu6": F.relu6, "h_swish": F.hardswish, "none": None}


def act_fn(name: str):
    if name not in _ACT_FN:
        raise OFAError(f"unknown activation '{name}'; allowed: {', '.join(_ACT_FN)}")
    return _ACT_FN[name]


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first `x.shape[1]` channels of the largest BN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
            self.training or not self.track_running_stats, factor, self.eps,
        )


class DynamicDepthwiseConv(nn.Module):
    """Depthwise conv with elastic kernel size (OFA kernel transformation) and elastic channel count.

    Parameters: `weight` [C, 1, K, K] at the largest kernel, and one `transform_{a}to{b}` matrix [b*b, b*b] for
    each consecutive pair of kernel sizes (largest first).
    """

    def __init__(self, channels: int, kernel_sizes: tuple[int, ...], stride: int):
        super().__init__()
        ks = sorted(set(int(k) for k in kernel_sizes))
        if not ks or any(k % 2 == 0 or k < 1 for k in ks):
            raise OFAError(f"kernel sizes must be odd positive integers, got {list(kernel_sizes)}")
        self.kernel_sizes = tuple(ks)
        self.max_kernel = ks[-1]
        self.channels = channels
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(channels, 1, self.max_kernel, self.max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self._chain: list[tuple[int, int, str]] = []
        for i in range(len(ks) - 1, 0, -1):
            src, tgt = ks[i], ks[i - 1]
            name = f"transform_{src}to{tgt}"
            self.register_parameter(name, nn.Parameter(torch.eye(tgt * tgt)))
            self._chain.append((src, tgt, name))
        self._cache: dict = {}

    def transformed_weight(self, channels: int, kernel: int) -> torch.Tensor:
        """Weight [channels, 1, kernel, kernel]: the centre of the larger kernels through the transform chain."""
        w = self.weight if channels == self.channels else self.weight[:channels]
        if kernel == self.max_kernel:
            return w
        for src, tgt, name in self._chain:
            if src <= kernel:
                break
            s = (src - tgt) // 2
            f = w[:, :, s:s + tgt, s:s + tgt].reshape(-1, tgt * tgt)
            w = F.linear(f, getattr(self, name)).view(channels, 1, tgt, tgt)
        return w

    def active_weight(self, channels: int, kernel: int) -> torch.Tensor:
        if kernel == self.max_kernel or self.training or torch.is_grad_enabled():
            return self.transformed_weight(channels, kernel)
        # Inference without autograd: reuse the transformed kernel while the parameters are unchanged.
        stamp = tuple((p.data_ptr(), p._version) for p in self.parameters(recurse=False))
        hit = self._cache.get((channels, kernel))
        if hit is not None and hit[0] == stamp:
            return hit[1]
        w = self.transformed_weight(channels, kernel)
        self._cache[(channels, kernel)] = (stamp, w)
        return w

    def clear_cache(self) -> None:
        self._cache.clear()


class DynamicSE(nn.Module):
    """OFA's SE module over the first c channels: mid = make_divisible(c // 4, 8) of the largest reduce layer."""

    def __init__(self, max_channels: int):
        super().__init__()
        mid = se_mid_channels(max_channels)
        self.reduce = nn.Conv2d(max_channels, mid, 1, bias=True)
        self.expand = nn.Conv2d(mid, max_channels, 1, bias=True)

    def forward(self, x: torch.Tensor, mid: int) -> torch.Tensor:
        c = x.shape[1]
        y = x.mean((2, 3), keepdim=True)
        if c == self.expand.out_channels:
            y = F.relu(self.reduce(y))
            y = F.hardsigmoid(self.expand(y))
        else:
            y = F.relu(F.conv2d(y, self.reduce.weight[:mid, :c], self.reduce.bias[:mid]))
            y = F.hardsigmoid(F.conv2d(y, self.expand.weight[:c, :mid], self.expand.bias[:c]))
        return x * y


class _ConvBN(nn.Module):
    """Holder of a conv weight (as `conv`) and its dynamic BN (as `bn`), for state-dict layout."""

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv = conv
        self.bn = bn


class DynamicMBConv(nn.Module):
    """Elastic mobile inverted bottleneck: kernel from `kernel_sizes`, middle width from `expand_ratios`.

    Middle width for ratio e: make_divisible(in_ch * e, 8) (as OFA); SE hidden width se_mid_channels(mid).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_sizes: tuple[int, ...], expand_ratios: tuple[int, ...],
                 stride: int, act: str, se: bool, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.kernel_sizes = tuple(sorted(set(kernel_sizes)))
        self.expand_ratios = tuple(sorted(set(expand_ratios)))
        self.max_mid = make_divisible(round(in_ch * max(self.expand_ratios)), 8)
        self.act_name = act
        self._act = act_fn(act)
        self.use_se = bool(se)
        self.residual = stride == 1 and in_ch == out_ch
        bn = dict(eps=bn_eps, momentum=bn_momentum)
        self.expand = _ConvBN(nn.Conv2d(in_ch, self.max_mid, 1, bias=False),
                              DynamicBatchNorm2d(self.max_mid, **bn))
        self.dw = _ConvBN(DynamicDepthwiseConv(self.max_mid, self.kernel_sizes, stride),
                          DynamicBatchNorm2d(self.max_mid, **bn))
        self.se = DynamicSE(self.max_mid) if self.use_se else None
        self.project = _ConvBN(nn.Conv2d(self.max_mid, out_ch, 1, bias=False), DynamicBatchNorm2d(out_ch, **bn))
        self.set_active(max(self.kernel_sizes), max(self.expand_ratios))

    def mid_channels(self, expand_ratio: int) -> int:
        return make_divisible(round(self.in_ch * expand_ratio), 8)

    def set_active(self, kernel: int, expand_ratio: int) -> None:
        if kernel not in self.kernel_sizes:
            raise OFAError(f"kernel size {kernel} is not allowed; allowed: {list(self.kernel_sizes)}")
        if expand_ratio not in self.expand_ratios:
            raise OFAError(f"expand ratio {expand_ratio} is not allowed; allowed: {list(self.expand_ratios)}")
        self.active_kernel = int(kernel)
        self.active_expand = int(expand_ratio)
        self.active_mid = self.mid_channels(expand_ratio)
        self.active_se_mid = se_mid_channels(self.active_mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid, k, act = self.active_mid, self.active_kernel, self._act
        full = mid == self.max_mid   # full width: the parameters themselves, no slice (and no SliceBackward)
        w_expand = self.expand.conv.weight if full else self.expand.conv.weight[:mid]
        w_project = self.project.conv.weight if full else self.project.conv.weight[:, :mid]
        y = F.conv2d(x, w_expand)
        y = act(self.expand.bn(y))
        y = F.conv2d(y, self.dw.conv.active_weight(mid, k), None, self.stride, k // 2, 1, mid)
        y = act(self.dw.bn(y))
        if self.se is not None:
            y = self.se(y, self.active_se_mid)
        y = self.project.bn(F.conv2d(y, w_project))
        if self.residual:
            y = y + x
        return y

    # ---- extraction and channel sorting ---------------------------------------------------------
    @torch.no_grad()
    def active_state(self) -> dict[str, torch.Tensor]:
        """State of the active sub-block in `elastic.static_net.MBConv` layout (fresh tensors, same memory layout)."""
        mid, m, k = self.active_mid, self.active_se_mid, self.active_kernel

        def own(t: torch.Tensor) -> torch.Tensor:
            return t.detach().clone(memory_format=torch.preserve_format)

        def bn(prefix: str, b: nn.BatchNorm2d, c: int) -> dict[str, torch.Tensor]:
            return {
                f"{prefix}.weight": own(b.weight[:c]), f"{prefix}.bias": own(b.bias[:c]),
                f"{prefix}.running_mean": own(b.running_mean[:c]), f"{prefix}.running_var": own(b.running_var[:c]),
                f"{prefix}.num_batches_tracked": own(b.num_batches_tracked),
            }

        sd = {"expand.conv.weight": own(self.expand.conv.weight[:mid])}
        sd.update(bn("expand.bn", self.expand.bn, mid))
        sd["dw.conv.weight"] = own(self.dw.conv.transformed_weight(mid, k))
        sd.update(bn("dw.bn", self.dw.bn, mid))
        if self.se is not None:
            sd["se.reduce.weight"] = own(self.se.reduce.weight[:m, :mid])
            sd["se.reduce.bias"] = own(self.se.reduce.bias[:m])
            sd["se.expand.weight"] = own(self.se.expand.weight[:mid, :m])
            sd["se.expand.bias"] = own(self.se.expand.bias[:mid])
        sd["project.conv.weight"] = own(self.project.conv.weight[:, :mid])
        sd.update(bn("project.bn", self.project.bn, self.out_ch))
        return sd

    @torch.no_grad()
    def sort_channels(self, expand_stage: int = 0) -> None:
        """Re-order middle channels by importance (OFA's re_organize_middle_weights).

        Importance of a middle channel = L1 norm of the project 1x1 weight over that input channel. With
        `expand_stage` = s > 0 the channels of the s+1 largest widths are sorted within their own bands so that
        narrower sub-networks already trained keep their channels (as OFA does).
        """
        importance = self.project.conv.weight.abs().sum(dim=(0, 2, 3))
        if expand_stage > 0:
            widths = [self.mid_channels(e) for e in sorted(self.expand_ratios, reverse=True)]
            right, base = len(importance), -len(widths) * 1e5
            for i in range(min(expand_stage, len(widths) - 1) + 1):
                left = widths[i]
                importance[left:right] += base
                base += 1e5
                right = left
        idx = torch.sort(importance, dim=0, descending=True)[1]

        def take(p: torch.Tensor, dim: int, index: torch.Tensor) -> None:
            p.copy_(torch.index_select(p, dim, index))

        take(self.project.conv.weight, 1, idx)
        for b in (self.dw.bn, self.expand.bn):
            for t in (b.weight, b.bias, b.running_mean, b.running_var):
                take(t, 0, idx)
        take(self.dw.conv.weight, 0, idx)
        take(self.expand.conv.weight, 0, idx)
        if self.se is not None:
            take(self.se.expand.weight, 0, idx)
            take(self.se.expand.bias, 0, idx)
            take(self.se.reduce.weight, 1, idx)
            se_idx = torch.sort(self.se.expand.weight.abs().sum(dim=(0, 2, 3)), dim=0, descending=True)[1]
            take(self.se.expand.weight, 1, se_idx)
            take(self.se.reduce.weight, 0, se_idx)
            take(self.se.reduce.bias, 0, se_idx)
        self.dw.conv.clear_cache()


__all__ = ["DynamicBatchNorm2d", "DynamicDepthwiseConv", "DynamicMBConv", "DynamicSE", "act_fn"]
