"""Putting a net into training mode for a trainer: BatchNorm frozen or not, the dropout rate."""
from __future__ import annotations

import torch.nn as nn


def set_train_mode(model: nn.Module, bn_mode: str) -> None:
    """`model.train()`; with `bn_mode` "frozen" its BatchNorm layers stay in eval mode (running statistics kept)."""
    model.train()
    if bn_mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def set_dropout(model: nn.Module, p: float | None) -> None:
    """Set every dropout rate of `model` (its `nn.Dropout` layers and a float `dropout` attribute) to `p`; None
    leaves them."""
    if p is None:
        return
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
    if hasattr(model, "dropout") and isinstance(getattr(model, "dropout"), float):
        model.dropout = p


__all__ = ["set_dropout", "set_train_mode"]
