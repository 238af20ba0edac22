"""Process-group helpers for `torchrun` (DistributedDataParallel): NCCL on GPUs, gloo on CPU.

Outside torchrun (no WORLD_SIZE in the environment) everything degrades to one process, rank 0.

Compute devices are named `auto` (a GPU when there is one, else the CPU), `cpu`, `cuda` (under torchrun: the GPU
of the process's LOCAL_RANK) or `cuda:N` (that GPU; under torchrun only with one process per machine, since
several processes cannot share one explicit index). `parse_compute_device` checks the text, `pick_device` turns it
into a `torch.device` for this process.

Many machines: every process runs `torchrun --nnodes M --node_rank I --nproc_per_node G --master_addr HOST
--master_port PORT -m ofa ...`; the run directory must be on a filesystem all machines share (rank 0 writes the
checkpoints every rank resumes from, and the shards of an accuracy dataset are merged from it).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from elastic.errors import OFAError

COMPUTE_DEVICES = "auto, cpu, cuda, cuda:N"
# Collective waits between long pieces of independent work (ranks measuring their shares of an accuracy dataset
# finish minutes apart at ImageNet scale). A rank that dies closes its connections, so its peers still fail fast.
LONG_WAIT = timedelta(hours=24)
# The training group's collective timeout. While rank 0 alone evaluates (an epoch's validation, the stage-end
# subnets with their BN recalibration), the others wait in a barrier or their next all-reduce; at ImageNet scale
# that outlasts NCCL's default of 10 minutes.
GROUP_TIMEOUT = timedelta(hours=1)
_CUDA = re.compile(r"cuda:(\d+)")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def parse_compute_device(device: str | None) -> str:
    """The canonical name of a compute device (None -> 'auto'), or an OFAError listing what is allowed."""
    name = "auto" if device is None else str(device).strip().lower()
    if name in ("auto", "cpu", "cuda") or _CUDA.fullmatch(name):
        return name
    raise OFAError(f"unknown compute device '{device}'; allowed: {COMPUTE_DEVICES} (a latency profile such as pixel1 "
                   f"goes to --device in specialize / latency / proxyless-search)")


def pick_device(device: str | None, local_rank: int = 0, local_world: int = 1) -> torch.device:
    """This process's torch.device for the compute device `device` (see the module doc)."""
    name = parse_compute_device(device)
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if not torch.cuda.is_available():
        raise OFAError(f"compute device {name} was asked for but no CUDA GPU is available; use cpu or auto")
    count = torch.cuda.device_count()
    m = _CUDA.fullmatch(name)
    if m is None:
        index = local_rank
    elif local_world > 1:
        raise OFAError(f"compute device {name} names one GPU, but this machine runs {local_world} processes; "
                       f"use 'cuda' (each process takes the GPU of its LOCAL_RANK) or CUDA_VISIBLE_DEVICES")
    else:
        index = int(m.group(1))
    if index >= count:
        raise OFAError(f"compute device cuda:{index} does not exist: this machine has {count} GPU(s) "
                       f"(cuda:0 to cuda:{count - 1})" + (" -- more processes than GPUs?" if m is None else ""))
    return torch.device(f"cuda:{index}")


def init_distributed(device: str | None = "auto") -> DistInfo:
    """Join the torchrun process group if there is one (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    dev = pick_device(device, local_rank, local_world)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=GROUP_TIMEOUT)
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(info: DistInfo, obj):
    """Rank 0's value on every rank (used to share small plain values such as errors)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(info: DistInfo, values: list[float], device: torch.device) -> list[float]:
    if not info.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class ObjectChannel:
    """Plain Python values between the processes, on a gloo group whose waits may last `LONG_WAIT` (any backend:
    NCCL moves only GPU tensors). One process: every call returns at once with this process's value."""

    def __init__(self, info: DistInfo):
        self.info = info
        self.group = dist.new_group(backend="gloo", timeout=LONG_WAIT) if info.distributed else None

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.group is None:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.group is None:
            return [obj]
        out: list[Any] = [None] * self.info.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def map_shards(self, items: list, fn) -> list:
        """`fn(items[rank::world])` on every rank, the results put back in the order of `items` on every rank
        (`fn` returns one value per item it is given)."""
        rank, world = self.info.rank, self.info.world
        parts = self.gather([v for v in fn(items[rank::world])])
        out: list[Any] = [None] * len(items)
        for r, part in enumerate(parts):
            out[r::world] = part
        return out

    def wait(self) -> None:
        """A barrier that lets the slowest rank take up to LONG_WAIT."""
        self.gather(None)

    def raise_first_error(self, message: str | None) -> None:
        """Every rank raises the same OFAError when any rank had one (instead of the others waiting for it)."""
        errors = [m for m in self.gather(message) if m]
        if errors:
            raise OFAError(errors[0])


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
