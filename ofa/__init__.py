"""ofa: train one elastic supernet, specialize it for any device without retraining.

    import ofa
    net = ofa.load("checkpoints/quickstart/specialized/pixel1@40ms")     # nn.Module, eval mode, net.arch
    results = ofa.specialize("checkpoints/quickstart", device="pixel1", latency="40ms")
"""
from elastic.arch import Arch
from elastic.errors import OFAError

__version__ = "0.1.0"
__all__ = ["Arch", "OFAError", "export", "load", "load_onnx", "specialize", "train", "__version__"]


def load(path, map_location="cpu"):
    """Load a specialized network written by `ofa specialize` (its folder, arch.json or model.safetensors)."""
    from ofa.specialized import load as _load

    return _load(path, map_location=map_location)


def load_onnx(path, precision="fp32", threads=None):
    """An onnxruntime InferenceSession of a specialized folder's `model.onnx` (fp32) or `model.int8.onnx` (int8),
    checked against the folder's weights; input `input` (NCHW float32, normalized as arch.json's `input` says),
    output `logits`, any batch size (see ofa.int8_export.load_onnx)."""
    from ofa.int8_export import load_onnx as _load_onnx

    return _load_onnx(path, precision=precision, threads=threads)


def export(path, formats="onnx-int8", **kwargs):
    """Export a specialized or fine-tuned folder again (onnx, torchscript) or quantize it to int8; mirrors
    `ofa export` (see ofa.export.export_folder)."""
    from ofa.export import export_folder

    return export_folder(path, formats, **kwargs)


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
