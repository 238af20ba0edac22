"""`ofa profile` under torchrun: the timed subnets shared out over the processes, one GPU each.

Timing in parallel is sound only where the processes do not share what is timed. Several processes on one CPU
share its cores, caches and memory bandwidth, so each would time the others' load as well: `ofa profile` on the
CPU refuses to run as several processes (and several machines' CPUs would mix their speeds into one profile).
Processes on separate, identical GPUs each time their own GPU (CUDA events); their share of the host's CPU only
launches kernels, which a machine with a few cores per GPU has to spare. The GPUs must be of one model (checked
by name), since a profile describes one device; clock differences between cards of one model remain, and the
profile's error on fresh subnets (measured across the cards) says how much they matter.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from elastic.errors import OFAError


def ranked_measure(device: str) -> tuple[bool, Callable | None]:
    """(is this the main process, a `measure_nets` replacement timing this rank's share) for `ofa profile`.
    One process: (True, None), measure as usual."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True, None
    if device != "cuda":
        raise OFAError("ofa profile on the CPU must run as one process: processes timed side by side share the "
                       "CPU's cores, caches and memory bandwidth, which disturbs every timing (several GPUs, one "
                       "process each, are fine: --device cuda)")
    import torch

    from ofa.training.distributed import ObjectChannel, init_distributed
    from predictors.measure import measure_nets

    info = init_distributed("cuda")
    channel = ObjectChannel(info)
    names = channel.gather(torch.cuda.get_device_name(info.device))
    if len(set(names)) > 1:
        raise OFAError(f"the processes' GPUs differ ({', '.join(sorted(set(names)))}); a profile describes one kind "
                       f"of device: profile each kind on its own")

    def measure(nets, *args, **kwargs) -> np.ndarray:
        """measure_nets(nets, *args, **kwargs) on this rank's share; progress shown by rank 0 alone."""
        if len(args) > 6:   # progress passed by position: measure_nets(nets, runtime, threads, device, warmup,
            args = (*args[:6], args[6] if info.is_main else None, *args[7:])   # repeats, rounds, progress, ...)
        elif not info.is_main:
            kwargs["progress"] = None
        return np.asarray(channel.map_shards(list(nets), lambda part: [float(v) for v in measure_nets(
            part, *args, **kwargs)]), dtype=np.float64)

    return info.is_main, measure


__all__ = ["ranked_measure"]
