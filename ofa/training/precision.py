"""Mixed precision for training: `fp32` (none), `bf16` (autocast), `fp16` (autocast plus a gradient scaler).

Autocast runs the convolutions and matrix products in the lower precision and keeps reductions (losses, softmax,
BatchNorm statistics) in fp32. bf16 has fp32's exponent range, so its gradients need no scaling; fp16's small
range lets small gradients underflow, so its loss is scaled up before backward and the gradients scaled back
before the step (`torch.amp.GradScaler`; a step whose gradients overflowed is skipped and the scale halved). The
scaler's state belongs in the checkpoint for an exact resume. Evaluation (BN recalibration, accuracy) stays fp32.
"""
from __future__ import annotations

import contextlib

import torch

from elastic.errors import OFAError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Below this fp16 loss scale every recent step overflowed even at a tiny scale: the run has diverged.
MIN_FP16_SCALE = 2.0 ** -8


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise OFAError(f"unknown precision '{precision}'; allowed: {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16, else None."""
    return torch.amp.GradScaler(device.type) if check_precision(precision) == "fp16" else None


__all__ = ["MIN_FP16_SCALE", "PRECISIONS", "autocast", "check_precision", "grad_scaler"]
