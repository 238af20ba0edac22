"""Per-layer latency lookup table: exact where a layer's key exists, interpolated across input size otherwise.

Published tables are measured per input resolution (the Note10 ones at 160..224 px), while a space allows
other resolutions and published networks use any size. A layer whose shape-free key (everything but the
input size) was measured at two or more sizes is interpolated linearly in the number of input pixels
(latency of these layers grows about linearly with pixel count), and extrapolated only a little
(input side down to half the smallest measured, up to 1.5x the largest).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

from predictors.layers import Layer

MIN_SIDE_RATIO = 0.5
MAX_SIDE_RATIO = 1.5


class LayerTable:
    def __init__(self, entries: Iterable[tuple[Layer, float]]):
        sums: dict[Layer, list[float]] = defaultdict(list)
        for layer, ms in entries:
            sums[Layer(*layer)].append(float(ms))
        # the same layer measured in two tables (e.g. 7x7 maps at 208 and 224 px): average the runs
        self.entries: dict[Layer, float] = {k: float(np.mean(v)) for k, v in sums.items()}
        groups: dict[Layer, list[tuple[int, float]]] = defaultdict(list)
        for layer, ms in self.entries.items():
            groups[layer._replace(in_hw=0)].append((layer.in_hw, ms))
        self._by_shape = {k: (np.array([p[0] for p in sorted(v)], float), np.array([p[1] for p in sorted(v)]))
                          for k, v in groups.items()}

    def __len__(self) -> int:
        return len(self.entries)

    def exact(self, layer: Layer) -> float | None:
        return self.entries.get(layer)

    def lookup(self, layer: Layer) -> float | None:
        """Exact entry, else interpolation across input size, else None (the table cannot price it)."""
        hit = self.entries.get(layer)
        if hit is not None:
            return hit
        found = self._by_shape.get(layer._replace(in_hw=0))
        if found is None or len(found[0]) < 2:
            return None
        hws, ms = found
        hw = float(layer.in_hw)
        if hw < MIN_SIDE_RATIO * hws[0] or hw > MAX_SIDE_RATIO * hws[-1]:
            return None
        x, px = hw * hw, hws * hws
        if px[0] <= x <= px[-1]:
            return float(np.interp(x, px, ms))
        i, j = (0, 1) if x < px[0] else (-2, -1)
        slope = (ms[j] - ms[i]) / (px[j] - px[i])
        ref = i if x < px[0] else j
        return float(max(ms[ref] + slope * (x - px[ref]), 0.0))

    def to_rows(self) -> list[list]:
        return [list(layer) + [ms] for layer, ms in sorted(self.entries.items())]

    @classmethod
    def from_rows(cls, rows: list) -> "LayerTable":
        return cls((Layer(*row[:-1]), row[-1]) for row in rows)
