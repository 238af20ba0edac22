"""Export a static network to ONNX (checked against ONNX Runtime) and TorchScript (checked against eager)."""
from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch

from elastic.errors import OFAError

EXPORT_FORMATS = ("onnx", "torchscript")


def parse_exports(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    out = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    bad = [t for t in out if t not in EXPORT_FORMATS]
    if bad:
        raise OFAError(f"unknown export format {bad[0]!r}; allowed: {', '.join(EXPORT_FORMATS)} (comma-separated)")
    return out


def _example(net: torch.nn.Module, resolution: int, example: torch.Tensor | None = None) -> torch.Tensor:
    if example is not None:
        return example.detach().float().cpu()
    channels = getattr(getattr(net, "net_spec", None), "in_channels", 3)
    return torch.randn(2, channels, resolution, resolution, generator=torch.Generator().manual_seed(0))


def _check(diff: float, ref: np.ndarray, tol: float, what: str) -> float:
    """Outputs must agree to `tol` relative to the logits' scale (at least 1): float32 ops reorder differently."""
    scale = max(1.0, float(np.abs(ref).max()))
    if not np.isfinite(diff) or diff > tol * scale:
        raise RuntimeError(f"{what} export differs from PyTorch by {diff:.2e} (> {tol:g} x logit scale {scale:.3g})")
    return diff


def export_onnx(net: torch.nn.Module, path: Path, resolution: int, atol: float = 1e-3,
                example: torch.Tensor | None = None) -> float:
    """Write `path` and return the max abs difference between ONNX Runtime and PyTorch outputs on `example`
    (real images are best: random noise drives an untrained net's logits far out of range)."""
    import onnxruntime as ort

    net = net.eval()
    x = _example(net, resolution, example)
    with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        ref = net(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    return _check(float(np.abs(got - ref).max()), ref, atol, "ONNX")


def export_torchscript(net: torch.nn.Module, path: Path, resolution: int, atol: float = 1e-5,
                       example: torch.Tensor | None = None) -> float:
    """Trace to `path` (loadable with `torch.jit.load`, no ofa needed) and check the reloaded module."""
    net = net.eval()
    x = _example(net, resolution, example)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, x, check_trace=False)  # checked below, on the saved-and-reloaded module
        traced.save(str(path))
        ref = net(x)
        diff = float((torch.jit.load(str(path))(x) - ref).abs().max())
    return _check(diff, ref.numpy(), atol, "TorchScript")


def export_model(net: torch.nn.Module, folder: Path, formats: tuple[str, ...], resolution: int,
                 example: torch.Tensor | None = None) -> list[str]:
    """Export into `folder`; returns the file names written."""
    written = []
    for fmt in formats:
        if fmt == "onnx":
            export_onnx(net, folder / "model.onnx", resolution, example=example)
            written.append("model.onnx")
        elif fmt == "torchscript":
            export_torchscript(net, folder / "model.ts", resolution, example=example)
            written.append("model.ts")
        else:
            raise OFAError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    return written
