"""Which subnets one training step of a phase trains (progressive shrinking's sampling)."""
from __future__ import annotations

import random

from elastic.arch import Arch
from elastic.spaces import SpaceSpec
from ofa.training.schedule import Phase


def sample_step_archs(space: SpaceSpec, phase: Phase, rng: random.Random, n: int, sandwich: bool,
                      resolution: int) -> list[Arch]:
    """The subnets trained at one step (all at the step's resolution)."""
    if phase.stage == "full":
        return [space.largest(r=resolution)]
    largest = Arch(ks=(max(phase.ks),) * space.n_blocks, e=(max(phase.e),) * space.n_blocks,
                   d=tuple(max(space.depth_choices(s)) for s in range(space.n_stages)), r=resolution)
    smallest = Arch(ks=(min(phase.ks),) * space.n_blocks, e=(min(phase.e),) * space.n_blocks,
                    d=tuple(min(x for x in space.depth_choices(s) if x in phase.d) if any(
                        x in phase.d for x in space.depth_choices(s)) else max(space.depth_choices(s))
                        for s in range(space.n_stages)), r=resolution)
    out = [largest, smallest] if sandwich else []
    while len(out) < n:
        out.append(space.sample(rng, ks=phase.ks, e=phase.e, d=phase.d, r=(resolution,)))
    return out[:n]


__all__ = ["sample_step_archs"]
