"""Numerical faithfulness to the original Once-for-All code, on its recorded outputs (tests/data/ofa_reference)."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from elastic import Arch, OFAError, get_space
from elastic.ofa_compat import (map_ofa_key, netspec_from_ofa_config, ofa_key, static_from_ofa,
                                static_from_ofa_config, supernet_from_ofa)
from elastic.supernet import Supernet

DATA = Path(__file__).resolve().parent / "data"
REFERENCE = DATA / "ofa_reference"
PUBLISHED = DATA / "latency" / "published_nets"


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def rebuild_state_dict(manifest: list) -> dict[str, torch.Tensor]:
    """The reference files' `weight_fill` rule: tensors from the sorted key list, Generator seed 1000 + i."""
    shapes = {key: list(shape) for key, shape in manifest}
    out: dict[str, torch.Tensor] = {}
    for i, key in enumerate(sorted(shapes)):
        g = torch.Generator().manual_seed(1000 + i)
        shape = shapes[key]
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            t = torch.tensor(0, dtype=torch.long)
        elif leaf == "running_var":
            t = torch.rand(shape, generator=g) + 0.5
        elif leaf == "running_mean":
            t = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1 and leaf == "weight":
            t = 1 + torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:
            t = torch.randn(shape, generator=g) * 0.1
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        out[key] = t
    return out


_LOADED: dict[str, tuple[dict, dict, Supernet]] = {}


def reference(name: str):
    path = REFERENCE / f"{name}.json"
    if name not in _LOADED:
        data = json.loads(path.read_text())
        sd = rebuild_state_dict(data["manifest"])
        net = supernet_from_ofa(get_space(data["space"]), sd, data["n_classes"]).eval()
        _LOADED[name] = (data, sd, net)
    return _LOADED[name]


def case_input(index: int, r: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7 + index)
    return torch.randn(2, 3, r, r, generator=g)


@pytest.mark.parametrize("name", ["mbv3-w1.0", "mbv3-w1.2", "proxyless-w1.3"])
def test_extracted_subnets_match_original_logits(name):
    data, _, net = reference(name)
    for index, case in enumerate(data["cases"]):
        arch = Arch(case["ks"], case["e"], case["d"], case["r"])
        x = case_input(index, arch.r)
        assert case.get("input_seed", 7 + index) == 7 + index
        static = net.extract(arch).eval()
        ref = torch.tensor(case["logits"])
        with torch.no_grad():
            torch.testing.assert_close(static(x), ref, rtol=0, atol=1e-4)
            net.set_active(arch)
            torch.testing.assert_close(net(x), ref, rtol=0, atol=1e-4)
        # the original net_config describes the same network: with the extracted weights it gives the logits
        from_config = static_from_ofa_config(case["net_config"], image_size=arch.r)
        # (the original subnet's classifier records dropout 0; dropout is a training setting, not structure)
        assert replace(from_config.net_spec, dropout=static.net_spec.dropout) == static.net_spec
        from_config.load_state_dict(static.state_dict())
        from_config.eval()
        with torch.no_grad():
            torch.testing.assert_close(from_config(x), ref, rtol=0, atol=1e-4)


def test_static_from_ofa_loads_original_static_keys():
    data, _, net = reference("mbv3-w1.0")
    case = data["cases"][1]
    arch = Arch(case["ks"], case["e"], case["d"], case["r"])
    static = net.extract(arch)
    original = {ofa_key(k, dynamic=False): v for k, v in static.state_dict().items()}
    assert "blocks.1.conv.inverted_bottleneck.conv.weight" in original
    rebuilt = static_from_ofa({"image_size": arch.r, "net_config": case["net_config"]}, original).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(case_input(1, arch.r)), torch.tensor(case["logits"]), rtol=0, atol=1e-4)


def test_key_mapping_round_trips():
    data, sd, net = reference("proxyless-w1.3")
    ours = set(net.state_dict())
    assert {map_ofa_key(k) for k in sd} == ours
    assert {ofa_key(k) for k in ours} == set(sd)


def test_bad_state_dicts_are_clear_errors():
    data, sd, _ = reference("mbv3-w1.0")
    space = get_space("mbv3-w1.0")
    missing = dict(sd)
    del missing["blocks.7.conv.depth_conv.conv.7to5_matrix"]
    with pytest.raises(OFAError, match=r"missing key.*'blocks\.7\.conv\.depth_conv\.conv\.7to5_matrix' with shape \[25, 25\]"):
        supernet_from_ofa(space, missing, 10)
    extra = dict(sd)
    extra["blocks.99.conv.point_linear.bn.bn.weight"] = torch.zeros(3)
    with pytest.raises(OFAError, match="unexpected key.*blocks.99"):
        supernet_from_ofa(space, extra, 10)
    with pytest.raises(OFAError, match="not a key of an OFA network"):
        supernet_from_ofa(space, {**sd, "foo.bar": torch.zeros(1)}, 10)
    with pytest.raises(OFAError, match=r"classifier.linear.weight' has shape \[10, 1280\], expected \[100, 1280\]"):
        supernet_from_ofa(space, sd, 100)
    # a state dict of another space: first mismatch reported with the expected shape
    other = reference("mbv3-w1.2")[1]
    with pytest.raises(OFAError, match=r"space mbv3-w1.0 .*'.*' has shape \[24.*expected \[16"):
        supernet_from_ofa(space, other, 10)
    proxy = reference("proxyless-w1.3")[1]
    with pytest.raises(OFAError, match="space mbv3-w1.0"):
        supernet_from_ofa(space, proxy, 10)
    with pytest.raises(OFAError, match="state dict"):
        supernet_from_ofa(space, {}, 10)


def test_published_nets_build_and_run():
    files = sorted(PUBLISHED.glob("*.json"))
    assert len(files) == 11
    for path in files:
        cfg = json.loads(path.read_text())
        spec = netspec_from_ofa_config(cfg)
        expected_r = cfg.get("image_size", 224)
        assert spec.resolution == expected_r
        inner = cfg.get("net_config", cfg)
        assert spec.n_classes == inner["classifier"]["out_features"] == 1000
        n_zero = sum((b.get("conv") or b.get("mobile_inverted_conv"))["name"] == "ZeroLayer" for b in inner["blocks"])
        assert len(spec.blocks) == len(inner["blocks"]) - n_zero
        net = static_from_ofa_config(cfg).eval()
        with torch.no_grad():
            y = net(torch.randn(1, 3, 64, 64))   # any input size runs; small for speed
        assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_bad_net_configs_are_clear_errors():
    data, _, _ = reference("mbv3-w1.0")
    cfg = json.loads(json.dumps(data["cases"][0]["net_config"]))
    with pytest.raises(OFAError, match="first_conv"):
        netspec_from_ofa_config({"blocks": []})
    bad = json.loads(json.dumps(cfg))
    bad["blocks"][1]["conv"]["in_channels"] = 17
    with pytest.raises(OFAError, match="block 1 takes 17 channels but the previous block gives 16"):
        netspec_from_ofa_config(bad)
    bad = json.loads(json.dumps(cfg))
    bad["blocks"][2]["conv"]["act_func"] = "gelu"
    with pytest.raises(OFAError, match="act_func 'gelu'"):
        netspec_from_ofa_config(bad)
    with pytest.raises(OFAError, match="image_size"):
        netspec_from_ofa_config({"image_size": "big", "net_config": cfg})
