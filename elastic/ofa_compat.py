"""Compatibility with the original Once-for-All implementation (Han Cai et al., MIT License): its supernet
state dicts and its `net_config` network descriptions (MobileNetV3 / ProxylessNASNets, `conv` or
`mobile_inverted_conv` block keys).

- `supernet_from_ofa(space, state_dict, n_classes)`: our `Supernet` with the original weights (keys mapped).
- `netspec_from_ofa_config(cfg)` / `static_from_ofa_config(cfg)`: an original net_config as NetSpec / StaticNet.
- `static_from_ofa(cfg, state_dict)`: a StaticNet with the weights of an original static subnet.
Only key names differ; tensors (including the kernel-transformation matrices) are taken as they are.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch

from elastic.errors import OFAError
from elastic.netspec import ConvSpec, MBConvSpec, NetSpec, make_divisible
from elastic.spaces import SpaceSpec, get_space
from elastic.static_net import StaticNet

_BLOCK = r"^blocks\.(\d+)\.(?:conv|mobile_inverted_conv)\."
# (original key pattern, our key template); "bn.bn"/"conv.conv" nesting of the dynamic layers is optional.
_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^first_conv\.conv\.weight$"), "stem.conv.weight"),
    (re.compile(r"^first_conv\.bn\.(\w+)$"), r"stem.bn.\1"),
    (re.compile(_BLOCK + r"inverted_bottleneck\.conv\.(?:conv\.)?weight$"), r"blocks.\1.expand.conv.weight"),
    (re.compile(_BLOCK + r"inverted_bottleneck\.bn\.(?:bn\.)?(\w+)$"), r"blocks.\1.expand.bn.\2"),
    (re.compile(_BLOCK + r"depth_conv\.conv\.(?:conv\.)?weight$"), r"blocks.\1.dw.conv.weight"),
    (re.compile(_BLOCK + r"depth_conv\.conv\.(\d+)to(\d+)_matrix$"), r"blocks.\1.dw.conv.transform_\2to\3"),
    (re.compile(_BLOCK + r"depth_conv\.bn\.(?:bn\.)?(\w+)$"), r"blocks.\1.dw.bn.\2"),
    (re.compile(_BLOCK + r"depth_conv\.se\.fc\.(reduce|expand)\.(weight|bias)$"), r"blocks.\1.se.\2.\3"),
    (re.compile(_BLOCK + r"point_linear\.conv\.(?:conv\.)?weight$"), r"blocks.\1.project.conv.weight"),
    (re.compile(_BLOCK + r"point_linear\.bn\.(?:bn\.)?(\w+)$"), r"blocks.\1.project.bn.\2"),
    (re.compile(r"^final_expand_layer\.conv\.weight$"), "final_expand.conv.weight"),
    (re.compile(r"^final_expand_layer\.bn\.(\w+)$"), r"final_expand.bn.\1"),
    (re.compile(r"^feature_mix_layer\.conv\.(weight|bias)$"), r"feature_mix.conv.\1"),
    (re.compile(r"^feature_mix_layer\.bn\.(\w+)$"), r"feature_mix.bn.\1"),
    (re.compile(r"^classifier\.linear\.(weight|bias)$"), r"classifier.\1"),
]


def map_ofa_key(key: str) -> str | None:
    """Our key for an original OFA state-dict key (None when it is not a key of an OFA network)."""
    for pattern, template in _RULES:
        if pattern.match(key):
            return pattern.sub(template, key)
    return None


def ofa_key(key: str, dynamic: bool = True) -> str:
    """The original OFA key for one of ours (the supernet layout when `dynamic`, else a static subnet's)."""
    m = re.match(r"^blocks\.(\d+)\.(expand|dw|se|project)\.(.+)$", key)
    if m:
        idx, part, rest = m.groups()
        dyn = dynamic and idx != "0"
        inner = {"expand": "inverted_bottleneck", "dw": "depth_conv", "project": "point_linear"}.get(part)
        if part == "se":
            return f"blocks.{idx}.conv.depth_conv.se.fc.{rest}"
        sub, _, leaf = rest.partition(".")
        if sub == "conv" and leaf.startswith("transform_"):
            src, tgt = leaf[len("transform_"):].split("to")
            return f"blocks.{idx}.conv.{inner}.conv.{src}to{tgt}_matrix"
        twice = f"{sub}.{sub}." if dyn else f"{sub}."
        return f"blocks.{idx}.conv.{inner}.{twice}{leaf}"
    for ours, theirs in (("stem.", "first_conv."), ("final_expand.", "final_expand_layer."),
                         ("feature_mix.", "feature_mix_layer."), ("classifier.", "classifier.linear.")):
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


def _unwrap(state_dict: Any) -> dict[str, torch.Tensor]:
    if isinstance(state_dict, Mapping) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise OFAError("expected an OFA state dict (a non-empty mapping of key -> tensor)")
    out = {}
    for k, v in state_dict.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise OFAError(f"expected an OFA state dict of tensors; entry {k!r} is a {type(v).__name__}")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _load_mapped(model: torch.nn.Module, state_dict: Any, what: str, dynamic: bool) -> None:
    src = _unwrap(state_dict)
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for k, v in src.items():
        ours = map_ofa_key(k)
        if ours is None:
            raise OFAError(f"unexpected key '{k}' in the state dict: it is not a key of an OFA network ({what})")
        mapped[ours] = v
        origin[ours] = k
    expected = model.state_dict()
    unexpected = [origin[k] for k in mapped if k not in expected]
    if unexpected:
        raise OFAError(f"state dict does not fit {what}: {len(unexpected)} unexpected key(s), e.g. '{unexpected[0]}'"
                       " (a checkpoint of another space?)")
    missing = [k for k in expected if k not in mapped]
    if missing:
        raise OFAError(f"state dict does not fit {what}: {len(missing)} missing key(s), e.g. "
                       f"'{ofa_key(missing[0], dynamic)}' with shape {list(expected[missing[0]].shape)}")
    for k, t in expected.items():
        if tuple(mapped[k].shape) != tuple(t.shape):
            raise OFAError(f"state dict does not fit {what}: '{origin[k]}' has shape {list(mapped[k].shape)}, "
                           f"expected {list(t.shape)} (a checkpoint of another space or class count?)")
    with torch.no_grad():
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in mapped.items()}, strict=True)


def supernet_from_ofa(space: SpaceSpec | str, state_dict: Any, n_classes: int | None = None):
    """Our Supernet of `space` carrying the weights of an original OFA supernet state dict.

    Key names are mapped (including OFA's kernel-transformation matrices); every key must be present with the
    expected shape, or an OFAError says which one is wrong and what was expected.
    """
    from elastic.supernet import Supernet

    if isinstance(space, str):
        space = get_space(space, n_classes=n_classes or 1000)
    if not isinstance(space, SpaceSpec):
        raise OFAError(f"expected a SpaceSpec or a space name, got {type(space).__name__}")
    if n_classes is not None:
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise OFAError(f"number of classes must be an integer >= 2, got {n_classes!r}")
        if n_classes != space.n_classes:
            space = replace(space, n_classes=n_classes)
    net = Supernet(space)
    _load_mapped(net, state_dict, f"space {space.name} with {space.n_classes} classes", dynamic=True)
    return net


# ---- net_config ---------------------------------------------------------------------------------------
_ACTS = {None: "none", "none": "none", "relu": "relu", "relu6": "relu6", "h_swish": "h_swish"}


def _int(d: Mapping, key: str, where: str, default: Any = ...) -> int:
    if key not in d or d[key] is None:
        if default is ...:
            raise OFAError(f"net_config {where} lacks '{key}'")
        return default
    v = d[key]
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise OFAError(f"net_config {where} field '{key}' must be a positive integer, got {v!r}")
    return v


def _fraction(d: Mapping, key: str, default: float, where: str, zero_ok: bool = False) -> float:
    """A number in (0, 1) ([0, 1) with `zero_ok`); null or absent: `default`."""
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < 1 if zero_ok else 0 < v < 1):
        raise OFAError(f"net_config {where} field '{key}' must be a number in {'[0' if zero_ok else '(0'}, 1), "
                       f"got {v!r}")
    return float(v)


def _act(d: Mapping, where: str, default: str | None) -> str:
    a = d.get("act_func", default)
    if not (a is None or isinstance(a, str)) or a not in _ACTS:
        raise OFAError(f"net_config {where} has act_func {a!r}; supported: relu, relu6, h_swish, none")
    return _ACTS[a]


def _conv_layer(d: Any, where: str, in_hw: int) -> ConvSpec:
    if not isinstance(d, Mapping):
        raise OFAError(f"net_config {where} must be an object (a ConvLayer)")
    if d.get("name", "ConvLayer") != "ConvLayer":
        raise OFAError(f"net_config {where} is a {d.get('name')!r}; expected a ConvLayer")
    if d.get("ops_order", "weight_bn_act") != "weight_bn_act" or _int(d, "groups", where, 1) != 1 \
            or _int(d, "dilation", where, 1) != 1:
        raise OFAError(f"net_config {where}: only ops_order weight_bn_act, groups 1 and dilation 1 are supported")
    return ConvSpec(_int(d, "in_channels", where), _int(d, "out_channels", where), _int(d, "kernel_size", where, 1),
                    _int(d, "stride", where, 1), _act(d, where, None), in_hw=in_hw,
                    bn=bool(d.get("use_bn", True)), bias=bool(d.get("bias", False)))


def _split_config(cfg: Any, image_size: int | None) -> tuple[Mapping, int]:
    if isinstance(cfg, Mapping) and "net_config" in cfg:
        size = image_size if image_size is not None else cfg.get("image_size", 224)
        cfg = cfg["net_config"]
    else:
        size = 224 if image_size is None else image_size
    if isinstance(size, list) and size:
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise OFAError(f"image_size must be an integer >= 8, got {size!r}")
    if not isinstance(cfg, Mapping) or "first_conv" not in cfg or "blocks" not in cfg or "classifier" not in cfg:
        raise OFAError("net_config must be an object with 'first_conv', 'blocks' and 'classifier' "
                       "(an OFA MobileNetV3 or ProxylessNASNets config)")
    return cfg, size


def netspec_from_ofa_config(cfg: Any, image_size: int | None = None) -> NetSpec:
    """Parse an original net_config (bare, or `{name, image_size, net_config}`) into a NetSpec.

    The resolution is `image_size` if given, else the config's `image_size`, else 224. ZeroLayer blocks (identity
    in ProxylessNAS configs) are dropped; blocks without `act_func` use relu6 and without `mid_channels` use
    round(in * expand_ratio), as the original layers do.
    """
    cfg, size = _split_config(cfg, image_size)
    name = cfg.get("name")
    if name not in (None, "MobileNetV3", "ProxylessNASNets"):
        raise OFAError(f"net_config name {name!r} is not supported; expected MobileNetV3 or ProxylessNASNets")
    mbv3 = name == "MobileNetV3" or (name is None and cfg.get("final_expand_layer") is not None)
    stem = _conv_layer(cfg["first_conv"], "first_conv", size)
    hw, blocks = stem.out_hw, []
    if not isinstance(cfg["blocks"], list):
        raise OFAError("net_config 'blocks' must be a list")
    for i, b in enumerate(cfg["blocks"]):
        where = f"block {i}"
        conv = (b.get("conv") or b.get("mobile_inverted_conv")) if isinstance(b, Mapping) else None
        if not isinstance(conv, Mapping):
            raise OFAError(f"net_config {where} lacks its layer under 'conv' or 'mobile_inverted_conv'")
        if conv.get("name") == "ZeroLayer":
            if b.get("shortcut") is None:
                raise OFAError(f"net_config {where} is a ZeroLayer without shortcut (it would zero the features)")
            continue
        if conv.get("name") not in ("MBConvLayer", "MBInvertedConvLayer"):
            raise OFAError(f"net_config {where} is a {conv.get('name')!r}; expected MBConvLayer/MBInvertedConvLayer")
        in_ch, out_ch = _int(conv, "in_channels", where), _int(conv, "out_channels", where)
        e = conv.get("expand_ratio", 6)
        if isinstance(e, list) and len(e) == 1:
            e = e[0]
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e <= 64:
            raise OFAError(f"net_config {where} field 'expand_ratio' must be a positive number up to 64, got {e!r}")
        if e == 1:
            mid = None
        elif conv.get("mid_channels") is not None:
            mid = _int(conv, "mid_channels", where)
        else:
            mid = int(round(in_ch * e))
        stride = _int(conv, "stride", where, 1)
        residual = b.get("shortcut") is not None
        if residual and (stride != 1 or in_ch != out_ch):
            raise OFAError(f"net_config {where} has an identity shortcut but stride {stride}, {in_ch}->{out_ch} ch")
        if blocks and blocks[-1].out_ch != in_ch:
            raise OFAError(f"net_config {where} takes {in_ch} channels but the previous block gives {blocks[-1].out_ch}")
        spec = MBConvSpec(in_ch=in_ch, out_ch=out_ch, kernel=_int(conv, "kernel_size", where), stride=stride,
                          mid_ch=mid, act=_act(conv, where, "relu6"), se=bool(conv.get("use_se", False)),
                          residual=residual, in_hw=hw)
        if spec.kernel % 2 == 0:
            raise OFAError(f"net_config {where} has an even kernel size {spec.kernel}; only odd sizes are supported")
        blocks.append(spec)
        hw = spec.out_hw
    if not blocks:
        raise OFAError("net_config has no MBConv blocks")
    if blocks[0].in_ch != stem.out_ch:
        raise OFAError(f"net_config block 0 takes {blocks[0].in_ch} channels but first_conv gives {stem.out_ch}")
    final_expand = None
    if cfg.get("final_expand_layer") is not None:
        final_expand = _conv_layer(cfg["final_expand_layer"], "final_expand_layer", hw)
    mix = None
    if cfg.get("feature_mix_layer") is not None:
        mix = _conv_layer(cfg["feature_mix_layer"], "feature_mix_layer", 1 if mbv3 else hw)
    clf = cfg["classifier"]
    if not isinstance(clf, Mapping):
        raise OFAError("net_config 'classifier' must be an object (a LinearLayer)")
    bn = cfg.get("bn") or {}
    if not isinstance(bn, Mapping):
        raise OFAError("net_config 'bn' must be an object with eps and momentum")
    spec = NetSpec(
        family="mbv3" if mbv3 else "proxyless", resolution=size, stem=stem, blocks=tuple(blocks),
        final_expand=final_expand, feature_mix=mix, mix_after_pool=mbv3,
        n_classes=_int(clf, "out_features", "classifier"), bn_eps=_fraction(bn, "eps", 1e-5, "bn"),
        bn_momentum=_fraction(bn, "momentum", 0.1, "bn"),
        dropout=_fraction(clf, "dropout_rate", 0.0, "classifier", zero_ok=True), in_channels=stem.in_ch,
    )
    if _int(clf, "in_features", "classifier") != spec.features:
        raise OFAError(f"net_config classifier takes {clf['in_features']} features but the net gives {spec.features}")
    return spec


def static_from_ofa_config(cfg: Any, image_size: int | None = None) -> StaticNet:
    """A freshly initialised StaticNet for an original net_config (see `netspec_from_ofa_config`)."""
    return StaticNet(netspec_from_ofa_config(cfg, image_size))


def static_from_ofa(cfg: Any, state_dict: Any, image_size: int | None = None) -> StaticNet:
    """A StaticNet for an original net_config carrying the weights of the original static network.

    Block indices of the original state dict count ZeroLayer blocks; they are renumbered here.
    """
    net = static_from_ofa_config(cfg, image_size)
    cfg_blocks = _split_config(cfg, image_size)[0]["blocks"]
    renumber, n = {}, 0
    for i, b in enumerate(cfg_blocks):
        conv = b.get("conv") or b.get("mobile_inverted_conv")
        if conv.get("name") != "ZeroLayer":
            renumber[str(i)] = str(n)
            n += 1
    src = _unwrap(state_dict)
    fixed = {}
    for k, v in src.items():
        m = re.match(r"^blocks\.(\d+)\.(.*)$", k)
        if m and m.group(1) in renumber:
            k = f"blocks.{renumber[m.group(1)]}.{m.group(2)}"
        fixed[k] = v
    _load_mapped(net, fixed, "the net_config's network", dynamic=False)
    return net


# ---- which network a checkpoint holds ----------------------------------------------------------------
# The supernets published with Once-for-All, by the name of our space with the same layout.
PUBLISHED_SUPERNETS = {"mbv3-w1.0": "ofa_mbv3_d234_e346_k357_w1.0", "mbv3-w1.2": "ofa_mbv3_d234_e346_k357_w1.2",
                       "proxyless-w1.3": "ofa_proxyless_d234_e346_k357_w1.3"}
_POINT = re.compile(_BLOCK + r"point_linear\.conv\.(?:conv\.)?weight$")
_DEPTH = re.compile(_BLOCK + r"depth_conv\.conv\.(?:conv\.)?weight$")


@dataclass(frozen=True)
class CheckpointLayout:
    """What the shapes of an original state dict say about its network (read from a few keys, never trusted)."""

    family: str                      # "mbv3" or "proxyless"
    elastic: bool                    # a supernet (dynamic layers, kernel matrices) rather than a static network
    stem: int
    first_block: int
    stage_widths: tuple[int, ...]
    stage_blocks: tuple[int, ...]    # blocks per run of equal widths
    max_kernel: int
    final_expand: int | None
    feature_mix: int | None
    n_classes: int

    def describe(self) -> str:
        kind = "supernet" if self.elastic else "static network"
        fam = "MobileNetV3" if self.family == "mbv3" else "ProxylessNAS"
        return (f"an OFA-{fam} {kind} with a {self.stem}-channel stem, stage widths {list(self.stage_widths)} "
                f"and {self.n_classes} classes")

    def fits(self, space: SpaceSpec) -> bool:
        return (self.elastic and space.family == self.family and space.stem_channels == self.stem
                and space.first_block_channels == self.first_block
                and tuple(space.stage_widths) == self.stage_widths
                and tuple(space.stage_max_depth) == self.stage_blocks
                and max(space.ks_choices) == self.max_kernel and space.final_expand_channels == self.final_expand
                and space.feature_mix_channels == self.feature_mix)


def n_classes_of(state_dict: Any) -> int:
    """The class count of an original state dict, read from its classifier's shape."""
    sd = _unwrap(state_dict)
    w = sd.get("classifier.linear.weight")
    if w is None or w.ndim != 2:
        raise OFAError("state dict has no 'classifier.linear.weight' matrix: it is not an OFA network "
                       "(or its classifier is missing)")
    return int(w.shape[0])


def checkpoint_layout(state_dict: Any) -> CheckpointLayout | None:
    """The layout of an original state dict, or None when its keys do not describe an OFA network."""
    try:
        sd = _unwrap(state_dict)
        outs: dict[int, int] = {}
        kernels = []
        for k, v in sd.items():
            m = _POINT.match(k)
            if m and v.ndim == 4:
                outs[int(m.group(1))] = int(v.shape[0])
            m = _DEPTH.match(k)
            if m and v.ndim == 4:
                kernels.append(int(v.shape[-1]))
        if not outs or 0 not in outs:
            return None
        widths: list[int] = []
        counts: list[int] = []
        for i in sorted(outs)[1:]:
            if widths and widths[-1] == outs[i]:
                counts[-1] += 1
            else:
                widths.append(outs[i])
                counts.append(1)
        elastic = any(k.endswith("_matrix") or re.search(r"\.conv\.conv\.weight$", k) for k in sd)
        fe, fm = sd.get("final_expand_layer.conv.weight"), sd.get("feature_mix_layer.conv.weight")
        return CheckpointLayout(
            family="mbv3" if fe is not None else "proxyless", elastic=bool(elastic),
            stem=int(sd["first_conv.conv.weight"].shape[0]), first_block=outs[0], stage_widths=tuple(widths),
            stage_blocks=tuple(counts), max_kernel=max(kernels), final_expand=None if fe is None else int(fe.shape[0]),
            feature_mix=None if fm is None else int(fm.shape[0]), n_classes=n_classes_of(sd))
    except (OFAError, KeyError, IndexError, ValueError, AttributeError):
        return None


def spaces_like(state_dict: Any) -> list[str]:
    """Names of our spaces whose supernet has the layout of this original state dict (published ones first)."""
    from elastic.spaces import SPACES

    layout = checkpoint_layout(state_dict)
    if layout is None:
        return []
    names = list(PUBLISHED_SUPERNETS) + sorted(set(SPACES) - set(PUBLISHED_SUPERNETS))
    return [n for n in names if layout.fits(get_space(n, n_classes=max(2, layout.n_classes)))]


def arch_from_ofa_config(space: SpaceSpec, cfg: Any, image_size: int | None = None):
    """The Arch of `space` whose subnet is the network an original net_config describes, or an OFAError saying
    where the config leaves the space (a width, kernel, expand ratio, depth or resolution it does not have)."""
    from elastic.arch import Arch

    spec = netspec_from_ofa_config(cfg, image_size)
    where = f"the net_config is not a subnet of space {space.name}"
    if spec.family != space.family:
        raise OFAError(f"{where}: it is a {spec.family} network, the space is {space.family}")
    blocks = list(spec.blocks[1:])
    ks = [min(space.ks_choices)] * space.n_blocks
    es = [min(space.e_choices)] * space.n_blocks
    depths, start, pos = [], 0, 0
    for s, width in enumerate(space.stage_widths):
        n = 0
        while pos < len(blocks) and blocks[pos].out_ch == width and n < space.stage_max_depth[s]:
            b = blocks[pos]
            e = next((e for e in space.e_choices if b.mid_ch == make_divisible(b.in_ch * e, 8)), None)
            if e is None:
                raise OFAError(f"{where}: block {pos + 1} has {b.mid_ch} middle channels for {b.in_ch} inputs, "
                               f"no expand ratio of {list(space.e_choices)}")
            ks[start + n], es[start + n] = b.kernel, e
            n, pos = n + 1, pos + 1
        depths.append(n)
        start += space.stage_max_depth[s]
    if pos != len(blocks):
        raise OFAError(f"{where}: block {pos + 1} ({blocks[pos].out_ch} channels) fits none of its stages "
                       f"(widths {list(space.stage_widths)})")
    arch = space.validate(Arch(tuple(ks), tuple(es), tuple(depths), spec.resolution))
    ours = space.net_spec(arch)
    if replace(ours, dropout=spec.dropout, bn_momentum=spec.bn_momentum) != replace(spec, n_classes=ours.n_classes):
        raise OFAError(f"{where}: its layers differ from the space's subnet {arch.summary()} "
                       "(strides, activations, squeeze-excitation or head)")
    if spec.n_classes != space.n_classes:
        raise OFAError(f"the net_config has {spec.n_classes} classes, space {space.name} has {space.n_classes}")
    return arch


__all__ = ["CheckpointLayout", "PUBLISHED_SUPERNETS", "arch_from_ofa_config", "checkpoint_layout", "map_ofa_key",
           "n_classes_of", "netspec_from_ofa_config", "ofa_key", "spaces_like", "static_from_ofa",
           "static_from_ofa_config", "supernet_from_ofa"]
