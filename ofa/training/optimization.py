"""The optimizer and learning-rate schedule of both trainers (`ofa train`, `ofa finetune`): timm's factories.

`cfg` is a `TrainConfig` or a `FinetuneConfig`: either gives `opt`, `momentum`, `min_lr_ratio` and, through
`resolved`, `weight_decay` and `warmup_epochs`.
"""
from __future__ import annotations

import torch.nn as nn

from ofa.training.schedule import TrainConfig


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float):
    """timm's `cfg.opt` optimizer over `model`'s parameters at rate `lr`."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.resolved("weight_decay"),
                               momentum=cfg.momentum)


def make_scheduler(optimizer, cfg: TrainConfig, lr: float, total_steps: int, steps_per_epoch: int):
    """A per-step cosine schedule from `lr` down to `lr * cfg.min_lr_ratio` over `total_steps`, after a linear
    warmup from `lr / 10` (`warmup_epochs` of steps, at most a quarter of them)."""
    from timm.scheduler import CosineLRScheduler

    warmup = min(int(round(cfg.resolved("warmup_epochs") * steps_per_epoch)), total_steps // 4)
    if total_steps <= 1:  # timm warns that a 1-step cosine does nothing; that is expected in tiny runs
        import logging

        logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)
    return CosineLRScheduler(optimizer, t_initial=max(total_steps, 1), lr_min=lr * cfg.min_lr_ratio,
                             warmup_t=warmup, warmup_lr_init=lr * 0.1 if warmup else 0.0, warmup_prefix=False,
                             t_in_epochs=False)


__all__ = ["make_optimizer", "make_scheduler"]
