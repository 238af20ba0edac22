"""Read the network a user hands to `ofa latency`: our `arch.json` or an original OFA/ProxylessNAS `net_config`.

- `arch.json`: `{"space": name or space.json object, "n_classes": int, "arch": {"ks", "e", "d", "r"}, ...}`
  -> `space.net_spec(arch)` (what `ofa specialize` writes).
- OFA: `{"image_size": int, "net_config": {...}}` or a bare ProxylessNAS `net_config` (224 px unless given).
net_configs are parsed by `elastic.ofa_compat.netspec_from_ofa_config` (the elastic layer owns that format).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.netspec import NetSpec
from elastic.ofa_compat import netspec_from_ofa_config
from elastic.spaces import get_space, space_from_dict


def netspec_from_json(data: Any, image_size: int | None = None) -> NetSpec:
    """A NetSpec from the parsed contents of an `arch.json` or an OFA net_config file."""
    if isinstance(data, dict) and "arch" in data:
        if "space" not in data:
            raise OFAError("arch.json needs a 'space' field naming the search space (see `ofa spaces`)")
        if isinstance(data["space"], dict):  # `ofa specialize` writes the space.json contents
            space = space_from_dict(data["space"])
        else:
            space = get_space(data["space"], n_classes=data.get("n_classes", 1000))
        arch = Arch.from_dict(data["arch"])
        if image_size is not None:
            arch = Arch(arch.ks, arch.e, arch.d, image_size)
        return space.net_spec(arch)
    if isinstance(data, dict) and ("net_config" in data or "first_conv" in data):
        return netspec_from_ofa_config(data, image_size)
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
