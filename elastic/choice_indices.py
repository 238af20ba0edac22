"""Archs as positions in their space's choice lists: what one-hot tables, search genomes and architecture
parameters are indexed by.

- `arch_choice_indices`: one arch -> per block the index of its kernel size in `space.ks_choices` and of its
  expand ratio in `space.e_choices`, per stage the index of its depth in `space.depth_choices(stage)`, and the
  index of its resolution (in the space's resolutions, or a search's subset of them).
- `index_in_choices`: the batched lookup, for numpy arrays of values (-1 marks a value that is not a choice).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from elastic.arch import Arch
from elastic.spaces import SpaceSpec


def arch_choice_indices(space: SpaceSpec, arch: Arch, resolutions: Sequence[int] | None = None
                        ) -> tuple[list[int], list[int], list[int], int]:
    """(kernel index per block, expand index per block, depth index per stage, resolution index) of `arch`;
    `resolutions` (default `space.resolutions`) is the list its resolution is looked up in. ValueError for a
    value that is not one of its choices."""
    res = space.resolutions if resolutions is None else resolutions
    return ([space.ks_choices.index(k) for k in arch.ks], [space.e_choices.index(e) for e in arch.e],
            [space.depth_choices(s).index(d) for s, d in enumerate(arch.d)], res.index(arch.r))


def index_in_choices(choices: Sequence[int], values: np.ndarray) -> np.ndarray:
    """The index in `choices` (non-negative integers) of each of `values` (int64, the same shape); -1 where a value
    is not one of them."""
    lut = np.full(max(choices) + 1, -1, dtype=np.int64)
    for i, c in enumerate(choices):
        lut[c] = i
    inside = (values >= 0) & (values < len(lut))
    out = np.full(values.shape, -1, dtype=np.int64)
    out[inside] = lut[values[inside]]
    return out


__all__ = ["arch_choice_indices", "index_in_choices"]
