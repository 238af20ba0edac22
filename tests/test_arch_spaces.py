import json
import random
from pathlib import Path

import pytest

from elastic import Arch, OFAError, get_space, net_macs
from elastic.spaces import SPACES

DATA = Path(__file__).resolve().parent / "data"


def test_arch_json_round_trip_and_hash():
    sp = get_space("mbv3-w1.0", n_classes=10)
    a = sp.sample(random.Random(0))
    b = Arch.from_json(a.to_json())
    assert a == b and hash(a) == hash(b)
    assert isinstance(b.ks, tuple) and len(b.ks) == 20


@pytest.mark.parametrize("name", sorted(SPACES))
def test_samples_stay_valid(name):
    """(Mutation and crossover live in specialize/genome.py's Genome, tested in tests/test_evolution.py.)"""
    sp = get_space(name, n_classes=10)
    rng = random.Random(1)
    for _ in range(50):
        sp.validate(sp.sample(rng))
    assert net_macs(sp.net_spec(sp.largest())) > net_macs(sp.net_spec(sp.smallest()))


@pytest.mark.parametrize("field,value,needle", [
    ("ks", [3] * 19, "'ks' has 19 entries"),
    ("ks", [3] * 19 + [9], "'ks'[19] = 9"),
    ("e", [3] * 19 + [5], "'e'[19] = 5"),
    ("d", [2, 3, 4, 4, 5], "'d'[4] = 5"),
    ("d", [2, 3, 4, 4], "'d' has 4 entries"),
    ("r", 150, "'r' = 150"),
])
def test_validation_names_bad_field_and_allowed_values(field, value, needle):
    sp = get_space("mbv3-w1.0")
    good = sp.largest().to_dict()
    good[field] = value
    with pytest.raises(OFAError) as err:
        sp.arch_from_dict(good)
    message = str(err.value)
    assert needle in message
    assert "allowed" in message or "needs" in message


def test_missing_field_and_non_integer():
    with pytest.raises(OFAError, match="missing field"):
        Arch.from_dict({"ks": [3], "e": [3], "d": [2]})
    with pytest.raises(OFAError, match="integers"):
        Arch(ks=[3.5], e=[3], d=[2], r=32)


def test_unknown_space_lists_known():
    with pytest.raises(OFAError, match="known spaces: .*mbv3-w1.0"):
        get_space("resnet50")


@pytest.mark.parametrize("name", ["mbv3-w1.0", "mbv3-w1.2", "proxyless-w1.3"])
def test_net_spec_matches_reference_net_configs(name):
    path = DATA / "ofa_reference" / f"{name}.json"
    data = json.loads(path.read_text())
    sp = get_space(name, n_classes=data["n_classes"])
    for case in data["cases"]:
        spec = sp.net_spec(Arch(ks=case["ks"], e=case["e"], d=case["d"], r=case["r"]))
        ref = [(b["conv"]["in_channels"], b["conv"]["out_channels"], b["conv"]["kernel_size"], b["conv"]["stride"],
                b["conv"]["mid_channels"], b["conv"]["act_func"], b["conv"]["use_se"], b["shortcut"] is not None)
               for b in case["net_config"]["blocks"]]
        ours = [(b.in_ch, b.out_ch, b.kernel, b.stride, b.mid_ch, b.act, b.se, b.residual) for b in spec.blocks]
        assert ours == ref
        assert spec.feature_mix.out_ch == case["net_config"]["feature_mix_layer"]["out_channels"]


def test_summary_lists_only_active_blocks_stage_by_stage():
    a = Arch(ks=(3, 5, 7, 7) * 5, e=(4, 6, 3, 3) * 5, d=(2, 3, 4, 2, 3), r=32)
    assert a.summary() == "r32 d2.3.4.2.3 k35.357.3577.35.357 e46.463.4633.46.463"
    p = Arch(ks=(5,) * 20 + (7,), e=(6,) * 20 + (3,), d=(2, 2, 2, 2, 2, 1), r=224)  # ProxylessNAS: last stage 1
    assert p.summary() == "r224 d2.2.2.2.2.1 k55.55.55.55.55.7 e66.66.66.66.66.3"
    assert p.summary(get_space("proxyless-w1.3").stage_max_depth) == p.summary()


def test_half_width_small_space_halves_every_width_and_head():
    half, full = get_space("mbv3-w0.5-small"), get_space("mbv3-w1.0-small")
    assert half.stage_widths == (16, 24, 40, 56, 80) and half.stage_strides == full.stage_strides
    assert (half.final_expand_channels, half.feature_mix_channels) == (480, 512)
    assert (full.final_expand_channels, full.feature_mix_channels) == (960, 1280)   # OFA's head, unchanged
    for arch in (half.smallest(28), half.largest(28)):
        assert net_macs(half.net_spec(arch)) < 0.4 * net_macs(full.net_spec(arch))
