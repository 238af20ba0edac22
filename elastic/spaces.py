"""Search spaces, registered by name (like timm's model registry).

A `SpaceSpec` says what the supernet looks like (stem, the fixed first block, elastic stages, head) and which
values each elastic dimension may take. It validates archs, samples/mutates/crosses them, and turns an arch
into a `NetSpec` (the static network that arch denotes).

Spaces: `mbv3-w1.0`, `mbv3-w1.2` (OFA-MobileNetV3), `proxyless-w1.3` (OFA-ProxylessNAS), their
small-input variants `*-small` for 28-32 px data, and `mbv3-w0.5-small` (half width, for the tightest budgets).
The small-input variants keep the last stride-2 stage's resolution: one stride-2 layer fewer, so a 32 px input
ends at 2x2 like a 64 px one would (chosen over an unstrided stem, which costs 2.5x the MACs for the same depth
of downsampling).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.netspec import ConvSpec, MBConvSpec, NetSpec, make_divisible

SPACES: dict[str, Callable[..., "SpaceSpec"]] = {}


def register_space(name: str):
    def add(fn: Callable[..., "SpaceSpec"]):
        SPACES[name] = fn
        return fn

    return add


@dataclass(frozen=True)
class SpaceSpec:
    name: str
    family: str                      # "mbv3" or "proxyless"
    width_mult: float
    stem_channels: int
    stem_stride: int
    first_block_channels: int        # the fixed expand-1 k3 block after the stem
    stage_widths: tuple[int, ...]
    stage_strides: tuple[int, ...]
    stage_acts: tuple[str, ...]
    stage_se: tuple[bool, ...]
    stage_max_depth: tuple[int, ...]     # blocks per stage in the supernet (4; ProxylessNAS' last stage 1)
    final_expand_channels: int | None    # MobileNetV3: 1x1 conv before the pool
    feature_mix_channels: int
    head_act: str
    first_act: str                   # activation of the stem
    first_block_act: str
    mix_after_pool: bool
    bn_eps: float
    ks_choices: tuple[int, ...] = (3, 5, 7)
    e_choices: tuple[int, ...] = (3, 4, 6)
    d_choices: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[int, ...] = (128, 144, 160, 176, 192, 208, 224)
    n_classes: int = 1000
    in_channels: int = 3
    dropout: float = 0.1
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    # ---- shape of an arch --------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        """Number of elastic blocks (entries of `ks` and `e`)."""
        return sum(self.stage_max_depth)

    @property
    def n_stages(self) -> int:
        return len(self.stage_widths)

    def depth_choices(self, stage: int) -> tuple[int, ...]:
        """Depths a stage may take: the space's depth choices capped at the stage's block count."""
        cap = self.stage_max_depth[stage]
        return tuple(sorted({min(d, cap) for d in self.d_choices}))

    def stage_of_block(self) -> list[int]:
        out: list[int] = []
        for s, n in enumerate(self.stage_max_depth):
            out.extend([s] * n)
        return out

    # ---- validation ---------------------------------------------------------------------------
    def validate(self, arch: Arch) -> Arch:
        """Return `arch` if it belongs to this space, else raise OFAError naming the bad field."""
        if not isinstance(arch, Arch):
            raise OFAError(f"expected an Arch for space {self.name}, got {type(arch).__name__}")
        nb, ns = self.n_blocks, self.n_stages
        if len(arch.ks) != nb:
            raise OFAError(f"arch field 'ks' has {len(arch.ks)} entries; space {self.name} needs {nb} (one per elastic block)")
        if len(arch.e) != nb:
            raise OFAError(f"arch field 'e' has {len(arch.e)} entries; space {self.name} needs {nb} (one per elastic block)")
        if len(arch.d) != ns:
            raise OFAError(f"arch field 'd' has {len(arch.d)} entries; space {self.name} needs {ns} (one per stage)")
        for i, k in enumerate(arch.ks):
            if k not in self.ks_choices:
                raise OFAError(f"arch field 'ks'[{i}] = {k} is not allowed in space {self.name}; allowed: {list(self.ks_choices)}")
        for i, e in enumerate(arch.e):
            if e not in self.e_choices:
                raise OFAError(f"arch field 'e'[{i}] = {e} is not allowed in space {self.name}; allowed: {list(self.e_choices)}")
        for s, d in enumerate(arch.d):
            allowed = self.depth_choices(s)
            if d not in allowed:
                raise OFAError(f"arch field 'd'[{s}] = {d} is not allowed in space {self.name}; allowed for stage {s}: {list(allowed)}")
        if arch.r not in self.resolutions:
            raise OFAError(f"arch field 'r' = {arch.r} is not allowed in space {self.name}; allowed: {list(self.resolutions)}")
        return arch

    def arch_from_dict(self, data: Any) -> Arch:
        return self.validate(Arch.from_dict(data))

    def pick_resolutions(self, resolutions: Sequence[int] | None = None) -> tuple[int, ...]:
        """The resolutions a search may use: all of the space's (None) or the given ones, sorted, each the space's."""
        if resolutions is None:
            return tuple(self.resolutions)
        out = tuple(sorted({int(r) for r in resolutions}))
        bad = [r for r in out if r not in self.resolutions]
        if not out or bad:
            raise OFAError(f"resolution {bad[0] if bad else '(none)'} is not one of space {self.name}'s input "
                           f"resolutions; allowed: {', '.join(map(str, self.resolutions))}")
        return out

    # ---- special archs ------------------------------------------------------------------------
    def largest(self, r: int | None = None) -> Arch:
        return Arch(
            ks=(max(self.ks_choices),) * self.n_blocks,
            e=(max(self.e_choices),) * self.n_blocks,
            d=tuple(max(self.depth_choices(s)) for s in range(self.n_stages)),
            r=max(self.resolutions) if r is None else r,
        )

    def smallest(self, r: int | None = None) -> Arch:
        return Arch(
            ks=(min(self.ks_choices),) * self.n_blocks,
            e=(min(self.e_choices),) * self.n_blocks,
            d=tuple(min(self.depth_choices(s)) for s in range(self.n_stages)),
            r=min(self.resolutions) if r is None else r,
        )

    def active_blocks(self, arch: Arch) -> list[int]:
        return arch.active_blocks(self.stage_max_depth)

    def canonical(self, arch: Arch) -> Arch:
        """The same network with inactive blocks' entries set to the smallest choice (for deduplication)."""
        active = set(self.active_blocks(arch))
        ks = tuple(k if i in active else min(self.ks_choices) for i, k in enumerate(arch.ks))
        e = tuple(v if i in active else min(self.e_choices) for i, v in enumerate(arch.e))
        return replace(arch, ks=ks, e=e)

    # ---- sampling -------------------------------------------------------------------------------
    def sample(self, rng: random.Random, ks: Sequence[int] | None = None, e: Sequence[int] | None = None,
               d: Sequence[int] | None = None, r: Sequence[int] | None = None) -> Arch:
        """A uniformly random arch; optional choice lists restrict each dimension (progressive shrinking)."""
        ks_c = tuple(ks or self.ks_choices)
        e_c = tuple(e or self.e_choices)
        r_c = tuple(r or self.resolutions)
        depths = []
        for s in range(self.n_stages):
            allowed = [x for x in self.depth_choices(s) if d is None or x in d] or [max(self.depth_choices(s))]
            depths.append(rng.choice(allowed))
        return Arch(
            ks=tuple(rng.choice(ks_c) for _ in range(self.n_blocks)),
            e=tuple(rng.choice(e_c) for _ in range(self.n_blocks)),
            d=tuple(depths),
            r=rng.choice(r_c),
        )

    # ---- the static network an arch denotes ------------------------------------------------------
    def net_spec(self, arch: Arch) -> NetSpec:
        self.validate(arch)
        r = arch.r
        stem = ConvSpec(self.in_channels, self.stem_channels, 3, self.stem_stride, self.first_act, in_hw=r)
        hw = stem.out_hw
        first = MBConvSpec(
            in_ch=self.stem_channels, out_ch=self.first_block_channels, kernel=3, stride=1, mid_ch=None,
            act=self.first_block_act, se=False, residual=self.stem_channels == self.first_block_channels, in_hw=hw,
        )
        blocks = [first]
        hw, in_ch = first.out_hw, first.out_ch
        start = 0
        for s, width in enumerate(self.stage_widths):
            for j in range(arch.d[s]):
                i = start + j
                stride = self.stage_strides[s] if j == 0 else 1
                block = MBConvSpec(
                    in_ch=in_ch, out_ch=width, kernel=arch.ks[i], stride=stride,
                    mid_ch=make_divisible(in_ch * arch.e[i], 8), act=self.stage_acts[s], se=self.stage_se[s],
                    residual=(stride == 1 and in_ch == width), in_hw=hw,
                )
                blocks.append(block)
                hw, in_ch = block.out_hw, width
            start += self.stage_max_depth[s]
        final_expand = None
        if self.final_expand_channels is not None:
            final_expand = ConvSpec(in_ch, self.final_expand_channels, 1, 1, self.head_act, in_hw=hw)
            in_ch = self.final_expand_channels
        if self.mix_after_pool:
            mix = ConvSpec(in_ch, self.feature_mix_channels, 1, 1, self.head_act, in_hw=1, bn=False)
        else:
            mix = ConvSpec(in_ch, self.feature_mix_channels, 1, 1, self.head_act, in_hw=hw)
        return NetSpec(
            family=self.family, resolution=r, stem=stem, blocks=tuple(blocks), final_expand=final_expand,
            feature_mix=mix, mix_after_pool=self.mix_after_pool, n_classes=self.n_classes, bn_eps=self.bn_eps,
            dropout=self.dropout, in_channels=self.in_channels,
        )

    # ---- identity and persistence ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """What `space.json` stores: enough to rebuild and to check a checkpoint belongs to this space."""
        return {
            "name": self.name, "n_classes": self.n_classes, "in_channels": self.in_channels,
            "ks_choices": list(self.ks_choices), "e_choices": list(self.e_choices),
            "d_choices": list(self.d_choices), "resolutions": list(self.resolutions),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def get_space(name: str, n_classes: int = 1000, **overrides: Any) -> SpaceSpec:
    """Build a registered space; unknown names are a clear error listing the known ones."""
    if name not in SPACES:
        raise OFAError(f"unknown space '{name}'; known spaces: {', '.join(sorted(SPACES))}")
    if not isinstance(n_classes, int) or n_classes < 2:
        raise OFAError(f"number of classes must be an integer >= 2, got {n_classes!r}")
    spec = SPACES[name](n_classes=n_classes)
    return replace(spec, **overrides) if overrides else spec


def _whole(value: Any, what: str, least: int, most: int) -> int:
    """`value` as an int in [least, most] (JSON may give 32.0), else OFAError naming `what`."""
    ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if not ok or not least <= value <= most:
        raise OFAError(f"space field {what} must be an integer in {least}..{most}, got {value!r}")
    return int(value)


def space_from_dict(data: Any) -> SpaceSpec:
    """Rebuild a space from `space.json` contents, validating every field: a registered name, whole numbers in range,
    and choice lists that are non-empty subsets of the registered space's (resolutions: any sizes >= 8 px)."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise OFAError("space.json must be a JSON object with at least a 'name' field (a registered space name)")
    base = get_space(data["name"], n_classes=_whole(data.get("n_classes", 1000), "n_classes", 2, 1_000_000))
    overrides: dict[str, Any] = {}
    for key in ("ks_choices", "e_choices", "d_choices", "resolutions"):
        if key not in data:
            continue
        values = data[key]
        if not isinstance(values, list) or not values:
            raise OFAError(f"space field {key} must be a non-empty list of integers, got {values!r}")
        out = tuple(sorted({_whole(v, f"{key}[{i}]", 8 if key == "resolutions" else 1, 4096)
                            for i, v in enumerate(values)}))
        allowed = getattr(base, key)
        if key != "resolutions" and not set(out) <= set(allowed):
            raise OFAError(f"space field {key} = {list(out)} is not a subset of space {base.name}'s "
                           f"{list(allowed)}")
        overrides[key] = out
    if "in_channels" in data:
        overrides["in_channels"] = _whole(data["in_channels"], "in_channels", 1, 64)
    return replace(base, **overrides)


# ---------------------------------------------------------------------------------------------------
# OFA-MobileNetV3: base widths 16 | 16 | 24 40 80 112 160 | 960 | 1280, strides 2 | 1 | 2 2 2 1 2.
def _mbv3(name: str, width: float, n_classes: int, small: bool, feature_mix: int | None = None) -> SpaceSpec:
    base = [16, 16, 24, 40, 80, 112, 160, 960, 1280]
    w = [make_divisible(c * width, 8) for c in base[:-1]]
    if feature_mix is None:   # OFA's rule: 1280, widened with the width above 1.0
        feature_mix = make_divisible(base[8] * width, 8) if width > 1.0 else base[8]
    return SpaceSpec(
        name=name, family="mbv3", width_mult=width,
        stem_channels=w[0], stem_stride=2, first_block_channels=w[1],
        stage_widths=tuple(w[2:7]), stage_strides=(2, 2, 2, 1, 1) if small else (2, 2, 2, 1, 2),
        stage_acts=("relu", "relu", "h_swish", "h_swish", "h_swish"),
        stage_se=(False, True, False, True, True), stage_max_depth=(4, 4, 4, 4, 4),
        final_expand_channels=w[7], feature_mix_channels=feature_mix,
        head_act="h_swish", first_act="h_swish", first_block_act="relu", mix_after_pool=True, bn_eps=1e-5,
        resolutions=(24, 28, 32) if small else (128, 144, 160, 176, 192, 208, 224),
        n_classes=n_classes,
    )


# OFA-ProxylessNAS: base widths 32 | 16 | 24 40 80 96 192 320 | 1280, strides 2 | 1 | 2 2 2 1 2 1.
def _proxyless(name: str, width: float, n_classes: int, small: bool) -> SpaceSpec:
    base = [32, 16, 24, 40, 80, 96, 192, 320, 1280]
    w = [make_divisible(c * width, 8) for c in base]
    return SpaceSpec(
        name=name, family="proxyless", width_mult=width,
        stem_channels=w[0], stem_stride=2, first_block_channels=w[1],
        stage_widths=tuple(w[2:8]), stage_strides=(2, 2, 2, 1, 1, 1) if small else (2, 2, 2, 1, 2, 1),
        stage_acts=("relu6",) * 6, stage_se=(False,) * 6, stage_max_depth=(4, 4, 4, 4, 4, 1),
        final_expand_channels=None, feature_mix_channels=w[8] if width > 1.0 else base[8],
        head_act="relu6", first_act="relu6", first_block_act="relu6", mix_after_pool=False, bn_eps=1e-3,
        resolutions=(24, 28, 32) if small else (128, 144, 160, 176, 192, 208, 224),
        n_classes=n_classes,
    )


@register_space("mbv3-w1.0")
def mbv3_w10(n_classes: int = 1000) -> SpaceSpec:
    return _mbv3("mbv3-w1.0", 1.0, n_classes, small=False)


@register_space("mbv3-w1.2")
def mbv3_w12(n_classes: int = 1000) -> SpaceSpec:
    return _mbv3("mbv3-w1.2", 1.2, n_classes, small=False)


@register_space("proxyless-w1.3")
def proxyless_w13(n_classes: int = 1000) -> SpaceSpec:
    return _proxyless("proxyless-w1.3", 1.3, n_classes, small=False)


@register_space("mbv3-w1.0-small")
def mbv3_w10_small(n_classes: int = 10) -> SpaceSpec:
    return _mbv3("mbv3-w1.0-small", 1.0, n_classes, small=True)


@register_space("mbv3-w0.5-small")
def mbv3_w05_small(n_classes: int = 10) -> SpaceSpec:
    """Half-width OFA-MobileNetV3 for 28-32 px data, for the smallest devices and budgets. Every width is halved,
    the 1x1 head too (final expand 480, feature mix 512 = MobileNetV3-Small's 1024 halved): with OFA's 1280-wide
    mix the head alone would hold 0.67M of the smallest subnet's 0.87M weights (10 classes; 0.29M of 0.49M with
    512) and set a latency floor (measured
    with ONNX Runtime on one CPU thread: smallest subnet 0.105 ms with a 1280 mix, 0.088 ms with 512; timm's
    mobilenetv3_small_050 at 32 px: 0.088 ms). Its subnets span 0.09-0.24 ms there (mbv3-w1.0-small: 0.16-0.77)."""
    return _mbv3("mbv3-w0.5-small", 0.5, n_classes, small=True, feature_mix=512)


@register_space("mbv3-w1.2-small")
def mbv3_w12_small(n_classes: int = 10) -> SpaceSpec:
    return _mbv3("mbv3-w1.2-small", 1.2, n_classes, small=True)


@register_space("proxyless-w1.3-small")
def proxyless_w13_small(n_classes: int = 10) -> SpaceSpec:
    return _proxyless("proxyless-w1.3-small", 1.3, n_classes, small=True)
