"""Re-estimate BatchNorm running statistics for a (sub)network from a few batches.

Every BN computes the exact mean/variance over the given batches (cumulative moving average: momentum None,
stats reset first), with a train-mode forward pass under no_grad; train/eval modes and momenta are restored.
For a `Supernet` with an active arch, only what that arch uses is re-estimated: channels beyond the widths
seen during calibration and BNs of inactive blocks keep their previous statistics, so other subnets'
statistics are not destroyed.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from elastic.errors import OFAError


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable) -> int:
    """Reset and re-estimate every BN's running stats over `batches`; returns the number of batches used.

    Each batch is an input tensor or a tuple/list whose first element is the input (e.g. (images, labels)).
    Not `torch.optim.swa_utils.update_bn`, which gives the same statistics on an extracted net but resets whole
    BNs: a supernet's unused channels and inactive blocks would lose theirs.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    modes = {m: m.training for m in model.modules()}
    saved = {bn: (bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in bns}
    seen: dict[nn.Module, int] = {}

    def record(module: nn.Module, args: tuple) -> None:
        seen[module] = max(seen.get(module, 0), int(args[0].shape[1]))

    hooks = [bn.register_forward_pre_hook(record) for bn in bns]
    n = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, torch.Tensor):
                raise OFAError(f"BN calibration batches must be tensors or (tensor, ...) tuples, got {type(x).__name__}")
            model(x)
            n += 1
        if n == 0:
            raise OFAError("BN calibration needs at least one batch; got none")
    finally:
        for h in hooks:
            h.remove()
        for bn, (momentum, mean, var, count) in saved.items():
            bn.momentum = momentum
            c = seen.get(bn, 0) if n else 0
            bn.running_mean[c:] = mean[c:]
            bn.running_var[c:] = var[c:]
            if c == 0:
                bn.num_batches_tracked.copy_(count)
        for m, mode in modes.items():
            m.training = mode
    return n


__all__ = ["recalibrate_bn"]
