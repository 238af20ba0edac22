"""ofa: train one elastic supernet, specialize it for any device without retraining.

    import ofa
    net = ofa.load("checkpoints/quickstart/specialized/pixel1@40ms")     # nn.Module, eval mode, net.arch
    results = ofa.specialize("checkpoints/quickstart", device="pixel1", latency="40ms")
"""
from elastic.arch import Arch
from elastic.errors import OFAError

__version__ = "0.1.0"
__all__ = ["Arch", "OFAError", "export", "extract", "finetune", "fit_profile", "import_ofa", "load", "load_onnx",
           "specialize", "train", "write_probes", "__version__"]


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


def write_probes(space, out, n=40, **kwargs):
    """Probe networks of a space and a timing kit for any device; mirrors `ofa profile probes`
    (see ofa.device_profiles.write_probes)."""
    from ofa.device_profiles import write_probes as _write_probes

    return _write_probes(space, out, n=n, **kwargs)


def fit_profile(timings, name, prior=None, **kwargs):
    """A device profile fit from a timings CSV (probe ids or network files), with or without a prior profile;
    mirrors `ofa profile fit` (see ofa.device_profiles.fit_profile)."""
    from ofa.device_profiles import fit_profile as _fit_profile

    return _fit_profile(timings, name, prior=prior, **kwargs)


def finetune(path, epochs, **kwargs):
    """Fine-tune a specialized net (KD from its run's teacher, or on new data); mirrors `ofa finetune`:
    `ofa.finetune("checkpoints/x/specialized/pixel1@40ms", epochs=3)` writes `pixel1@40ms-ft` and returns its
    summary (see ofa.training.finetune.finetune_folder)."""
    from ofa.training.finetune import finetune_folder

    return finetune_folder(path, epochs, **kwargs)


def import_ofa(checkpoint, run=None, **kwargs):
    """Import weights published with the original Once-for-All code; mirrors `ofa import-ofa`:
    `ofa.import_ofa("ofa_mbv3_d234_e346_k357_w1.2", "checkpoints/w12")` writes a run directory (a supernet);
    `ofa.import_ofa("note10_lat@22ms_top1@76.6_finetune@25/", out="nets/note10")` a specialized-net folder
    (see ofa.ofa_import)."""
    from pathlib import Path

    from ofa.ofa_import import import_net, import_supernet

    if "out" in kwargs or "net_config" in kwargs or Path(checkpoint).is_dir():
        if kwargs.get("out") is None:
            raise OFAError("a specialized network is imported into a folder: give out=DIR")
        return import_net(checkpoint, kwargs.pop("out"), **kwargs)
    if run is None:
        raise OFAError("a supernet is imported into a run directory: give run=DIR")
    return import_supernet(checkpoint, run, **kwargs)


def extract(run, arch, **kwargs):
    """The subnet `arch` (ks/e/d/r, or an OFA net_config) of a run's supernet as a specialized-net folder;
    mirrors `ofa extract` (see ofa.extraction.extract)."""
    from ofa.extraction import extract as _extract

    return _extract(run, arch, **kwargs)


def train(config=None, **kwargs):
    """Train a supernet by progressive shrinking: `ofa.train(run="checkpoints/x", stage="all", schedule="quick")`."""
    from ofa.training import TrainConfig
    from ofa.training import train as _train

    cfg = config if config is not None else TrainConfig(**kwargs)
    return _train(cfg)
