"""Export a static network to ONNX (checked against ONNX Runtime) and TorchScript (checked against eager).

`onnx-int8` (the ONNX export quantized to int8) needs calibration images, so it is not written here but by
`ofa.int8_export.export_int8` once the folder with its `model.onnx` is in place; asking for it implies `onnx`.
Each export's SHA-256 and that of the weights it was made from are recorded (`export_record`, arch.json's
`exports`), so that a later step can tell an export that no longer matches the weights.
"""
from __future__ import annotations

import io
import os
import shutil
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch

from elastic.errors import OFAError

EXPORT_FORMATS = ("onnx", "onnx-int8", "torchscript")
EXPORT_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "torchscript": "model.ts"}


def parse_exports(text: str | None) -> tuple[str, ...]:
    """'onnx,torchscript' -> ('onnx', 'torchscript'); 'onnx-int8' brings 'onnx' (what it quantizes) before it."""
    if not text:
        return ()
    out = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [t for t in out if t not in EXPORT_FORMATS]
    if bad:
        raise OFAError(f"unknown export format {bad[0]!r}; allowed: {', '.join(EXPORT_FORMATS)} (comma-separated)")
    if "onnx-int8" in out and "onnx" not in out:
        out = ("onnx",) + out
    return out


def export_record(folder: Path, files: list[str], weights: Path | None = None) -> dict:
    """{file: {sha256, weights_sha256}} for exports in `folder` made from `weights` (its `model.safetensors`)."""
    from ofa.specialization import file_digest

    digest = file_digest(weights or folder / "model.safetensors")
    return {f: {"sha256": file_digest(folder / f), "weights_sha256": digest} for f in files}


def _example(net: torch.nn.Module, resolution: int, example: torch.Tensor | None = None) -> torch.Tensor:
    if example is not None:
        return example.detach().float().cpu()
    channels = getattr(getattr(net, "net_spec", None), "in_channels", 3)
    return torch.randn(2, channels, resolution, resolution, generator=torch.Generator().manual_seed(0))


def _check(diff: float, ref: np.ndarray, tol: float, what: str) -> float:
    """Outputs must agree to `tol` relative to the logits' scale (at least 1): float32 ops reorder differently."""
    scale = max(1.0, float(np.abs(ref).max()))
    if not np.isfinite(diff) or diff > tol * scale:
        raise OFAError(f"the {what} export computes outputs {diff:.2e} away from PyTorch's (allowed {tol:g} x logit "
                       f"scale {scale:.3g}), so it was not kept; leave {what.lower()} out of the export formats or "
                       "check the network's weights for extreme values")
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
    """Export into `folder`; returns the file names written (`onnx-int8` is left to `ofa.int8_export`)."""
    written = []
    for fmt in formats:
        if fmt == "onnx-int8":
            continue
        if fmt == "onnx":
            export_onnx(net, folder / "model.onnx", resolution, example=example)
            written.append("model.onnx")
        elif fmt == "torchscript":
            export_torchscript(net, folder / "model.ts", resolution, example=example)
            written.append("model.ts")
        else:
            raise OFAError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    return written


def export_folder(path: str | Path, formats: str = "onnx-int8", *, data=None, progress: bool = False,
                  **int8_options) -> dict:
    """Export a specialized (or fine-tuned) folder's network: `onnx` / `torchscript` are re-written from its
    `model.safetensors` (atomically, digests recorded), then `onnx-int8` quantizes the folder's `model.onnx`
    (`ofa.int8_export.export_int8`, which takes `int8_options`; unused without it). Returns {"path", "written",
    "int8": the int8 section of arch.json}."""
    from ofa import atomic
    from ofa.specialized import load, read_meta

    wanted = parse_exports(formats)
    if not wanted:
        raise OFAError(f"give at least one export format; allowed: {', '.join(EXPORT_FORMATS)}")
    folder, meta = read_meta(path)
    # as given: `onnx-int8` alone quantizes the existing model.onnx (checked fresh) and re-writes nothing else
    fp32 = [f for f in dict.fromkeys(t.strip().lower() for t in formats.split(",")) if f in EXPORT_FILES
            and f != "onnx-int8"]
    written: list[str] = []
    if fp32:
        net = load(folder)
        resolution = int(meta.get("input", {}).get("resolution") or net.net_spec.resolution)
        tmp = folder / f".export-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        try:
            names = export_model(net, tmp, tuple(fp32), resolution)
            record = export_record(tmp, names, weights=folder / "model.safetensors")
            for name in names:
                os.replace(tmp / name, folder / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        meta.setdefault("exports", {}).update(record)
        meta["files"] = list(dict.fromkeys(list(meta.get("files") or []) + names))
        atomic.write_json(folder / "arch.json", meta)
        written += names
    out: dict = {"path": str(folder), "written": written}
    if "onnx-int8" in wanted:
        from ofa.int8_export import INT8_FILE, export_int8

        out["int8"] = export_int8(folder, data=data, progress=progress, **int8_options)
        written.append(INT8_FILE)
    return out
