"""The space: archs, search spaces, dynamic operators, supernets and subnet extraction."""
from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.netspec import ConvSpec, MBConvSpec, NetSpec, net_macs, net_params
from elastic.spaces import SPACES, SpaceSpec, get_space, register_space, space_from_dict

__all__ = [
    "Arch", "OFAError", "ConvSpec", "MBConvSpec", "NetSpec", "net_macs", "net_params",
    "SPACES", "SpaceSpec", "get_space", "register_space", "space_from_dict",
]

# Torch-backed parts, imported lazily so that `import elastic` stays light for callers that only need archs/specs.
_LAZY = {
    "Supernet": "elastic.supernet", "StaticNet": "elastic.static_net",
    "supernet_from_ofa": "elastic.ofa_compat", "static_from_ofa_config": "elastic.ofa_compat",
    "recalibrate_bn": "elastic.bn_calibration",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'elastic' has no attribute {name!r}")
