"""ofa: train one elastic supernet, specialize it for any device without retraining.

    import ofa
    net = ofa.load("checkpoints/quickstart/specialized/pixel1@40ms")     # nn.Module, eval mode, net.arch
    results = ofa.specialize("checkpoints/quickstart", device="pixel1", latency="40ms")
"""
from elastic.arch import Arch
from elastic.errors import OFAError

__version__ = "0.1.0"
__all__ = ["Arch", "OFAError", "load", "specialize", "train", "__version__"]


def load(path, map_location="cpu"):
    """Load a specialized network written by `ofa specialize` (its folder, arch.json or model.safetensors)."""
    from ofa.specialized import load as _load

    return _load(path, map_location=map_location)


def specialize(run=None, **kwargs):
    """Search and extract the best subnet(s) of a trained run; mirrors `ofa specialize` (see ofa.specialization)."""
    from ofa.specialization import specialize as _specialize

    return _specialize(run, **kwargs)


def train(config=None, **kwargs):
    """Train a supernet by progressive shrinking: `ofa.train(run="checkpoints/x", stage="all", schedule="quick")`."""
    from ofa.training import TrainConfig
    from ofa.training import train as _train

    cfg = config if config is not None else TrainConfig(**kwargs)
    return _train(cfg)
