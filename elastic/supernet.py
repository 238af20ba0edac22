"""`Supernet`: the elastic network of a `SpaceSpec` (OFA-MobileNetV3 or OFA-ProxylessNAS).

Layout (state-dict keys): `stem`, `blocks.0` (the fixed expand-1 block), `blocks.1..n` (one `DynamicMBConv` per
elastic block, stage by stage, `stage_max_depth[s]` per stage), `final_expand` (MobileNetV3), `feature_mix`,
`classifier`. `set_active(arch)` selects kernel, expand ratio and depth; the resolution is the input's size.
`extract(arch)` returns a `StaticNet` computing the same function with its own copies of the weights.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.ops import DynamicDepthwiseConv, DynamicMBConv
from elastic.spaces import SpaceSpec
from elastic.static_net import (MEMORY_FORMAT, ClassifierHead, ConvBNAct, MBConv, StaticNet, init_weights,
                               static_from_state_dict)


class Supernet(ClassifierHead):
    def __init__(self, space: SpaceSpec):
        super().__init__()
        if not isinstance(space, SpaceSpec):
            raise OFAError(f"Supernet needs a SpaceSpec (see elastic.get_space), got {type(space).__name__}")
        self.space = space
        spec = space.net_spec(space.largest())
        eps, mom = spec.bn_eps, spec.bn_momentum
        self.stem = ConvBNAct.from_spec(spec.stem, eps, mom)
        blocks: list[nn.Module] = [MBConv(spec.blocks[0], eps, mom)]
        in_ch = space.first_block_channels
        for s, width in enumerate(space.stage_widths):
            for j in range(space.stage_max_depth[s]):
                stride = space.stage_strides[s] if j == 0 else 1
                blocks.append(DynamicMBConv(in_ch, width, space.ks_choices, space.e_choices, stride,
                                            space.stage_acts[s], space.stage_se[s], eps, mom))
                in_ch = width
        self.blocks = nn.ModuleList(blocks)
        self.final_expand = (ConvBNAct.from_spec(spec.final_expand, eps, mom)
                             if spec.final_expand is not None else None)
        self.feature_mix = ConvBNAct.from_spec(spec.feature_mix, eps, mom) if spec.feature_mix is not None else None
        self.mix_after_pool = bool(spec.mix_after_pool)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(spec.features, spec.n_classes)
        init_weights(self)
        for m in self.modules():
            if isinstance(m, DynamicDepthwiseConv):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")   # N(0, sqrt(2 / (k*k*C))), OFA's he_fout
        self.to(memory_format=MEMORY_FORMAT)   # channels-last, like StaticNet (see elastic.static_net)
        self.active_arch: Arch | None = None
        self._active_blocks: list[DynamicMBConv] = []
        self.set_active(space.largest())

    # ---- the active arch -------------------------------------------------------------------------
    @property
    def elastic_blocks(self) -> list[DynamicMBConv]:
        return list(self.blocks)[1:]  # type: ignore[return-value]

    def set_active(self, arch: Arch) -> None:
        """Activate `arch` (validated against the space; OFAError when it does not belong to it)."""
        self.space.validate(arch)
        elastic = self.elastic_blocks
        for i, blk in enumerate(elastic):
            blk.set_active(arch.ks[i], arch.e[i])
        self._active_blocks = [elastic[i] for i in self.space.active_blocks(arch)]
        self.active_arch = arch

    def largest(self, r: int | None = None) -> Arch:
        return self.space.largest(r)

    def smallest(self, r: int | None = None) -> Arch:
        return self.space.smallest(r)

    @contextlib.contextmanager
    def running_blocks(self, modules: Sequence[nn.Module]) -> Iterator[None]:
        """Forward through these modules instead of the active arch's blocks (the stem, the fixed first block and
        the head stay the supernet's own), until the `with` block ends; the active arch is left as it is."""
        saved = self._active_blocks
        self._active_blocks = list(modules)
        try:
            yield
        finally:
            self._active_blocks = saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](self.stem(x))
        for blk in self._active_blocks:
            x = blk(x)
        return self.head(x)

    def train(self, mode: bool = True) -> "Supernet":
        super().train(mode)
        self.clear_kernel_cache()
        return self

    def clear_kernel_cache(self) -> None:
        for m in self.modules():
            if isinstance(m, DynamicDepthwiseConv):
                m.clear_cache()

    # ---- extraction ------------------------------------------------------------------------------
    @torch.no_grad()
    def active_state_dict(self, arch: Arch | None = None) -> dict[str, torch.Tensor]:
        """The state dict of the static net of `arch` (default: the active arch), as fresh tensors."""
        if arch is not None:
            previous = self.active_arch
            self.set_active(arch)
            try:
                return self.active_state_dict()
            finally:
                if previous is not None:
                    self.set_active(previous)
        out: dict[str, torch.Tensor] = {}

        def copy_module(prefix: str, module: nn.Module | None) -> None:
            if module is None:
                return
            for k, v in module.state_dict().items():
                out[f"{prefix}.{k}"] = v.detach().clone()

        copy_module("stem", self.stem)
        copy_module("blocks.0", self.blocks[0])
        for n, blk in enumerate(self._active_blocks, start=1):
            for k, v in blk.active_state().items():
                out[f"blocks.{n}.{k}"] = v
        copy_module("final_expand", self.final_expand)
        copy_module("feature_mix", self.feature_mix)
        copy_module("classifier", self.classifier)
        return out

    def extract(self, arch: Arch | None = None) -> StaticNet:
        """A StaticNet for `arch` (default: the active arch) with copied weights and BN running stats.

        The static net is in the supernet's train/eval mode, on its device and dtype, and shares no memory
        with it. The supernet's active arch is left unchanged.
        """
        arch = self.active_arch if arch is None else arch
        spec = self.space.net_spec(arch)
        net = static_from_state_dict(spec, self.active_state_dict(arch), arch=arch)
        net.train(self.training)
        return net

    # ---- channel importance ----------------------------------------------------------------------
    def sort_channels(self, expand_stage: int = 0) -> None:
        """Re-sort every elastic block's middle channels by importance (before training the expand stage).

        Leaves the function of every arch using the full middle width unchanged.
        """
        for blk in self.elastic_blocks:
            blk.sort_channels(expand_stage)


__all__ = ["Supernet"]
