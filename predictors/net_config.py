"""Read the network a user hands to `ofa latency`: our `arch.json` or an original OFA/ProxylessNAS `net_config`.

- `arch.json`: `{"space": name or space.json object, "n_classes": int, "arch": {"ks", "e", "d", "r"}, ...}`
  -> `space.net_spec(arch)` (what `ofa specialize` writes).
- OFA: `{"image_size": int, "net_config": {...}}` or a bare ProxylessNAS `net_config` (224 px unless given).
- A folder: a specialized net as `ofa specialize` writes it (`arch.json`), or as the original OFA publishes its
  specialized nets (`net.config`, with the resolution in `image_size` of `run.config` beside it). A bare
  `net.config` file also takes the resolution of a `run.config` beside it.
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
    """The network of a file (arch.json, an OFA net_config) or of a folder holding one (see the module doc);
    `image_size` overrides the resolution the files give."""
    p = network_file(path)
    data = read_json_file(p, "config file")
    if image_size is None and isinstance(data, dict) and "first_conv" in data:   # a bare net_config
        image_size = run_config_image_size(p)
    try:
        return netspec_from_json(data, image_size)
    except (KeyError, TypeError, ValueError) as exc:
        raise OFAError(f"config file '{p}' is malformed: {exc}") from None


def network_file(path: str | Path) -> Path:
    """The file that describes the network at `path`: the file itself, or inside a folder its `arch.json` (what
    `ofa specialize` writes) or its `net.config` (an original OFA specialized net)."""
    p = Path(path)
    if p.is_dir():
        found = next((p / name for name in FOLDER_FILES if (p / name).is_file()), None)
        if found is None:
            raise OFAError(f"folder '{p}' holds no network description; expected one of {', '.join(FOLDER_FILES)}")
        return found
    if not p.is_file():
        raise OFAError(f"config file '{p}' does not exist")
    return p


FOLDER_FILES = ("arch.json", "net.config")


def read_json_file(p: Path, what: str) -> Any:
    """The parsed JSON file `p`, or an OFAError naming it as `what` (missing, a folder, not JSON)."""
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise OFAError(f"{what} '{p}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as exc:
        raise OFAError(f"{what} '{p}' is not valid JSON: {exc}") from None


def run_config_image_size(config_path: str | Path) -> int | None:
    """The resolution named by the original OFA's `run.config` beside `config_path` (its `image_size`, one
    integer), None when there is none: the original keeps a specialized net's resolution there."""
    p = Path(config_path).parent / "run.config"
    if not p.is_file():
        return None
    data = read_json_file(p, "run config")
    size = data.get("image_size") if isinstance(data, dict) else None
    if isinstance(size, list) and len(size) == 1:
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise OFAError(f"run config '{p}' names no single resolution (image_size {size!r}); give the network's "
                       "resolution explicitly (--image-size, or the CSV's image_size column)")
    return size
