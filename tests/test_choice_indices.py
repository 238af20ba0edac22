"""elastic.choice_indices: an arch as positions in its space's choice lists, one arch or a batch of values."""
from __future__ import annotations

import random

import numpy as np
import pytest

from elastic.arch import Arch
from elastic.choice_indices import arch_choice_indices, index_in_choices
from elastic.spaces import get_space


@pytest.mark.parametrize("name", ["mbv3-w1.0-small", "proxyless-w1.3"])
def test_arch_choice_indices_point_back_at_the_archs_values(name):
    sp = get_space(name, n_classes=10)
    rng = random.Random(0)
    for _ in range(20):
        arch = sp.sample(rng)
        ki, ei, di, ri = arch_choice_indices(sp, arch)
        assert len(ki) == len(ei) == sp.n_blocks and len(di) == sp.n_stages
        back = Arch(tuple(sp.ks_choices[i] for i in ki), tuple(sp.e_choices[i] for i in ei),
                    tuple(sp.depth_choices(s)[i] for s, i in enumerate(di)), sp.resolutions[ri])
        assert back == arch
    sub = sp.resolutions[1:]   # a search's subset: the resolution is looked up there
    assert arch_choice_indices(sp, sp.largest(), sub)[3] == len(sub) - 1
    with pytest.raises(ValueError):
        arch_choice_indices(sp, sp.smallest(), sub)


def test_index_in_choices_marks_values_outside_the_choices():
    got = index_in_choices((3, 5, 7), np.array([[7, 3, 5], [4, -1, 99]], dtype=np.int64))
    assert got.dtype == np.int64
    assert got.tolist() == [[2, 0, 1], [-1, -1, -1]]
