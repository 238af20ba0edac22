"""Read the network a user hands to `ofa latency`: our `arch.json` or an original OFA/ProxylessNAS `net_config`.

- `arch.json`: `{"space": name, "n_classes": int, "arch": {"ks", "e", "d", "r"}, ...}` -> `space.net_spec(arch)`.
- OFA: `{"image_size": int, "net_config": {...}}` or a bare ProxylessNAS `net_config` (224 px unless given).
Only the shapes are needed for latency, so the net_config is parsed straight into a `NetSpec`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.netspec import ConvSpec, MBConvSpec, NetSpec
from elastic.spaces import get_space


def _int(d: dict, key: str, where: str, default: Any = ...) -> int:
    if key not in d:
        if default is ...:
            raise OFAError(f"net_config {where} lacks '{key}'")
        return default
    v = d[key]
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, int):
        raise OFAError(f"net_config {where} field '{key}' must be an integer, got {v!r}")
    return v


def _conv(d: Any, where: str, in_hw: int) -> ConvSpec:
    if not isinstance(d, dict):
        raise OFAError(f"net_config {where} must be an object")
    return ConvSpec(_int(d, "in_channels", where), _int(d, "out_channels", where), _int(d, "kernel_size", where, 1),
                    _int(d, "stride", where, 1), d.get("act_func") or "none", in_hw=in_hw,
                    bn=bool(d.get("use_bn", True)), bias=bool(d.get("bias", False)))


def netspec_from_ofa_config(cfg: Any, image_size: int = 224) -> NetSpec:
    """Parse an original `net_config` (MobileNetV3 or ProxylessNAS) into a NetSpec at `image_size` px."""
    if not isinstance(cfg, dict) or "first_conv" not in cfg or "blocks" not in cfg:
        raise OFAError("net_config must be an object with 'first_conv', 'blocks' and 'classifier'")
    if not isinstance(image_size, int) or image_size < 8:
        raise OFAError(f"image_size must be an integer >= 8, got {image_size!r}")
    mbv3 = "final_expand_layer" in cfg or cfg.get("name") == "MobileNetV3"
    stem = _conv(cfg["first_conv"], "first_conv", image_size)
    hw, blocks = stem.out_hw, []
    for i, b in enumerate(cfg["blocks"]):
        conv = b.get("mobile_inverted_conv") if isinstance(b, dict) else None
        if not isinstance(conv, dict):
            raise OFAError(f"net_config block {i} lacks 'mobile_inverted_conv'")
        if conv.get("name") == "ZeroLayer":
            continue  # an identity block: no compute
        where = f"block {i}"
        in_ch, out_ch = _int(conv, "in_channels", where), _int(conv, "out_channels", where)
        e = conv.get("expand_ratio", 6)
        mid = conv.get("mid_channels")
        if e == 1:
            mid = None
        elif mid is None:
            mid = int(round(in_ch * e))
        spec = MBConvSpec(in_ch=in_ch, out_ch=out_ch, kernel=_int(conv, "kernel_size", where),
                          stride=_int(conv, "stride", where, 1), mid_ch=mid, act=conv.get("act_func") or "relu6",
                          se=bool(conv.get("use_se", False)), residual=b.get("shortcut") is not None, in_hw=hw)
        blocks.append(spec)
        hw = spec.out_hw
    if not blocks:
        raise OFAError("net_config has no MBConv blocks")
    final_expand = _conv(cfg["final_expand_layer"], "final_expand_layer", hw) if cfg.get("final_expand_layer") else None
    mix_cfg = cfg.get("feature_mix_layer")
    mix = _conv(mix_cfg, "feature_mix_layer", 1 if mbv3 else hw) if mix_cfg else None
    clf = cfg.get("classifier")
    if not isinstance(clf, dict):
        raise OFAError("net_config lacks 'classifier'")
    bn = cfg.get("bn") or {}
    return NetSpec(family="mbv3" if mbv3 else "proxyless", resolution=image_size, stem=stem, blocks=tuple(blocks),
                   final_expand=final_expand, feature_mix=mix, mix_after_pool=mbv3,
                   n_classes=_int(clf, "out_features", "classifier"), bn_eps=float(bn.get("eps", 1e-5)))


def netspec_from_json(data: Any, image_size: int | None = None) -> NetSpec:
    """A NetSpec from the parsed contents of an `arch.json` or an OFA net_config file."""
    if isinstance(data, dict) and "arch" in data:
        if "space" not in data:
            raise OFAError("arch.json needs a 'space' field naming the search space (see `ofa spaces`)")
        n_classes = data.get("n_classes", 1000)
        space = get_space(data["space"], n_classes=n_classes)
        arch = Arch.from_dict(data["arch"])
        if image_size is not None:
            arch = Arch(arch.ks, arch.e, arch.d, image_size)
        return space.net_spec(arch)
    if isinstance(data, dict) and "net_config" in data:
        size = image_size or data.get("image_size", 224)
        if isinstance(size, list):
            size = size[0]
        return netspec_from_ofa_config(data["net_config"], size)
    if isinstance(data, dict) and "first_conv" in data:
        return netspec_from_ofa_config(data, image_size or 224)
    raise OFAError("config must be an arch.json ({'space', 'arch'}) or an OFA net_config "
                   "({'image_size', 'net_config'} or a bare net_config)")


def load_net_config(path: str | Path, image_size: int | None = None) -> NetSpec:
    p = Path(path)
    if not p.is_file():
        raise OFAError(f"config file '{p}' does not exist")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OFAError(f"config file '{p}' is not valid JSON: {exc}") from None
    try:
        return netspec_from_json(data, image_size)
    except (KeyError, TypeError, ValueError) as exc:
        raise OFAError(f"config file '{p}' is malformed: {exc}") from None
