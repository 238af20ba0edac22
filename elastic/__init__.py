"""The space: archs, search spaces, dynamic operators, supernets and subnet extraction."""
from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.netspec import ConvSpec, MBConvSpec, NetSpec, net_macs, net_params
from elastic.spaces import SPACES, SpaceSpec, get_space, register_space, space_from_dict

__all__ = [
    "Arch", "OFAError", "ConvSpec", "MBConvSpec", "NetSpec", "net_macs", "net_params",
    "SPACES", "SpaceSpec", "get_space", "register_space", "space_from_dict",
]
