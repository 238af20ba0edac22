"""Supernet: extraction equivalence, bad input, channel sorting, BN calibration, export."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from elastic import Arch, OFAError, get_space
from elastic.bn_calibration import recalibrate_bn
from elastic.ops import DynamicDepthwiseConv
from elastic.spaces import SPACES
from elastic.static_net import StaticNet
from elastic.supernet import Supernet
from nontrivial_state import randomize

ALL_SPACES = ["mbv3-w1.0-small", "mbv3-w0.5-small", "mbv3-w1.2-small", "proxyless-w1.3-small", "mbv3-w1.0", "mbv3-w1.2",
              "proxyless-w1.3"]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


_NETS: dict[str, Supernet] = {}


def supernet(name: str) -> Supernet:
    if name not in _NETS:
        torch.manual_seed(0)
        _NETS[name] = randomize(Supernet(get_space(name)))
    return _NETS[name]


@pytest.mark.parametrize("name", ALL_SPACES)
def test_extracted_net_matches_supernet(name):
    net = supernet(name)
    space = net.space
    r = 32 if name.endswith("small") else 128
    rng = random.Random(hash(name) % 1000)
    n_random = 2 if name.endswith("small") else 1
    archs = [space.largest(r), space.smallest(r)] + [space.sample(rng, r=[r]) for _ in range(n_random)]
    g = torch.Generator().manual_seed(1)
    for arch in archs:
        x = torch.randn(2, 3, r, r, generator=g)
        net.set_active(arch)
        net.eval()
        static = net.extract(arch)
        assert isinstance(static, StaticNet) and static.arch == arch
        assert static.net_spec == space.net_spec(arch)
        assert not any(isinstance(m, DynamicDepthwiseConv) for m in static.modules())
        with torch.no_grad():
            torch.testing.assert_close(static(x), net(x), rtol=0, atol=1e-5)
        # train mode: batch statistics, dropout with the same seed, running stats updated the same way
        net.train()
        static.train()
        torch.manual_seed(3)
        y_super = net(x)
        torch.manual_seed(3)
        y_static = static(x)
        torch.testing.assert_close(y_static, y_super, rtol=0, atol=1e-4)
        updated = net.active_state_dict()
        for k, v in static.state_dict().items():
            torch.testing.assert_close(v, updated[k], rtol=0, atol=1e-5, msg=k)
    net.set_active(space.largest())


@settings(max_examples=14, deadline=None)
@given(name=st.sampled_from(sorted(SPACES)), seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_extraction_equals_the_supernet_for_random_archs_of_every_registered_space(name, seed):
    """Any arch (random kernel / expand / depth, any of the space's resolutions) of any registered space: the
    extracted net computes what the supernet computes with that arch active (tiny 24-px input, eval mode)."""
    net = supernet(name)
    space = net.space
    arch = space.sample(random.Random(seed))
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(seed))
    net.set_active(arch)
    net.eval()
    static = net.extract(arch).eval()
    assert static.arch == arch and static.net_spec == space.net_spec(arch)
    with torch.no_grad():
        torch.testing.assert_close(static(x), net(x), rtol=0, atol=1e-5)


def test_extracted_net_owns_its_weights():
    net = supernet("mbv3-w1.0-small")
    space = net.space
    arch = space.largest(32)
    static = net.extract(arch)
    ptrs = {p.untyped_storage().data_ptr() for p in net.state_dict().values()}
    assert all(t.untyped_storage().data_ptr() not in ptrs for t in static.state_dict().values())
    x = torch.randn(2, 3, 32, 32)
    net.eval(), static.eval()
    with torch.no_grad():
        before = static(x).clone()
        for p in net.parameters():
            p.add_(0.5)
        after = static(x)
        for p in net.parameters():
            p.sub_(0.5)
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_kernel_transform_follows_ofa():
    """k=5: centre 5x5 of the 7x7 through the 25x25 matrix; k=3: centre 3x3 of that through the 9x9 matrix."""
    dw = DynamicDepthwiseConv(8, (3, 5, 7), 1)
    with torch.no_grad():
        dw.transform_7to5.copy_(torch.randn(25, 25))
        dw.transform_5to3.copy_(torch.randn(9, 9))
    w7 = dw.weight.detach()
    w5 = (w7[:, :, 1:6, 1:6].reshape(-1, 25) @ dw.transform_7to5.detach().T).view(8, 1, 5, 5)
    w3 = (w5[:, :, 1:4, 1:4].reshape(-1, 9) @ dw.transform_5to3.detach().T).view(8, 1, 3, 3)
    torch.testing.assert_close(dw.transformed_weight(8, 5), w5)
    torch.testing.assert_close(dw.transformed_weight(6, 3), w3[:6])
    # the cached kernel of inference mode follows parameter updates
    dw.eval()
    with torch.no_grad():
        first = dw.active_weight(8, 3).clone()
        dw.transform_5to3.mul_(2)
        torch.testing.assert_close(dw.active_weight(8, 3), 2 * first)


def test_training_step_reaches_all_active_parameters():
    net = Supernet(get_space("mbv3-w1.0-small"))
    space = net.space
    arch = Arch(ks=(3,) * space.n_blocks, e=(4,) * space.n_blocks, d=(2,) * space.n_stages, r=32)
    net.set_active(arch)
    net.train()
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    blk = net.blocks[1]
    mid = blk.active_mid
    assert blk.dw.conv.transform_5to3.grad.abs().sum() > 0 and blk.dw.conv.transform_7to5.grad.abs().sum() > 0
    assert blk.expand.conv.weight.grad[:mid].abs().sum() > 0
    assert blk.expand.conv.weight.grad[mid:].abs().sum() == 0
    assert net.blocks[3].expand.conv.weight.grad is None  # depth 2: the stage's third block is inactive


def test_sort_channels_keeps_largest_net_function():
    net = randomize(Supernet(get_space("mbv3-w1.0-small")), seed=5)
    space = net.space
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        w_before = net.blocks[6].project.conv.weight.clone()
        net.sort_channels()
        after = net(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    importance = net.blocks[6].project.conv.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])
    assert not torch.equal(w_before, net.blocks[6].project.conv.weight)  # it did re-order
    # SE hidden channels sorted too (block 6 is in an SE stage)
    se_imp = net.blocks[6].se.expand.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(se_imp[:-1] >= se_imp[1:])
    assert space.stage_se[1]


def _with(s, **kw):
    return replace(s.smallest(32), **kw)


@pytest.mark.parametrize("bad, match", [
    (lambda s: _with(s, ks=(3,) * (s.n_blocks - 1)), "'ks' has"),
    (lambda s: _with(s, e=(3,) * (s.n_blocks + 1)), "'e' has"),
    (lambda s: _with(s, d=(2,) * (s.n_stages - 1)), "'d' has"),
    (lambda s: _with(s, ks=(9,) + (3,) * (s.n_blocks - 1)), r"'ks'\[0\] = 9 .* allowed: \[3, 5, 7\]"),
    (lambda s: _with(s, e=(3,) * (s.n_blocks - 1) + (5,)), r"'e'\[20\] = 5 .* allowed: \[3, 4, 6\]"),
    (lambda s: _with(s, d=(5,) + (2,) * (s.n_stages - 2) + (1,)), r"'d'\[0\] = 5 .* allowed for stage 0"),
    (lambda s: _with(s, d=(2,) * (s.n_stages - 2) + (1, 1)), r"'d'\[4\] = 1"),
    (lambda s: _with(s, r=31), r"'r' = 31 .* allowed: \[24, 28, 32\]"),
])
def test_bad_archs_are_clear_errors(bad, match):
    net = supernet("proxyless-w1.3-small")
    arch = bad(net.space)
    before = net.active_arch
    with pytest.raises(OFAError, match=match):
        net.set_active(arch)
    with pytest.raises(OFAError, match=match):
        net.extract(arch)
    assert net.active_arch == before


def test_proxyless_last_stage_is_one_block():
    space = get_space("proxyless-w1.3-small")
    net = supernet("proxyless-w1.3-small")
    assert len(net.blocks) == 1 + space.n_blocks == 1 + 21
    arch = space.largest(32)
    bad = replace(arch, d=arch.d[:-1] + (2,))
    with pytest.raises(OFAError, match="stage 5"):
        net.set_active(bad)


def test_recalibrate_bn_computes_exact_batch_stats():
    net = randomize(Supernet(get_space("mbv3-w1.0-small")), seed=2)
    space = net.space
    arch = Arch(ks=(5,) * space.n_blocks, e=(3,) * space.n_blocks, d=(2,) * space.n_stages, r=28)
    net.set_active(arch)
    net.eval()
    g = torch.Generator().manual_seed(4)
    batches = [torch.randn(4, 3, 28, 28, generator=g) for _ in range(3)]
    inactive_mean = net.blocks[4].dw.bn.running_mean.clone()          # stage 0, block 4: inactive at depth 2
    tail_var = net.blocks[1].dw.bn.running_var[net.blocks[1].active_mid:].clone()
    # expected: exact mean / unbiased var of the stem BN's input over all images
    with torch.no_grad():
        feats = torch.cat([net.stem.conv(b) for b in batches])
    n = recalibrate_bn(net, batches)
    assert n == 3 and not net.training
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    torch.testing.assert_close(net.stem.bn.running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    # the variance is the cumulative average of each batch's unbiased variance (as torch's momentum=None does)
    per_batch_var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats.split(4)]).mean(0)
    torch.testing.assert_close(net.stem.bn.running_var, per_batch_var, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(net.stem.bn.running_var, torch.ones_like(net.stem.bn.running_var))
    # unused parts keep their statistics
    torch.testing.assert_close(net.blocks[4].dw.bn.running_mean, inactive_mean, rtol=0, atol=0)
    torch.testing.assert_close(net.blocks[1].dw.bn.running_var[net.blocks[1].active_mid:], tail_var, rtol=0, atol=0)
    # the supernet's calibrated stats are those a calibrated extracted net gets
    static = net.extract(arch)
    with torch.no_grad():
        for m in static.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
    recalibrate_bn(static, batches)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(static(x), net(x), rtol=0, atol=1e-4)
    with pytest.raises(OFAError, match="at least one batch"):
        recalibrate_bn(static, [])


def test_static_net_exports(tmp_path):
    net = supernet("mbv3-w1.0-small")
    space = net.space
    static = net.extract(space.sample(random.Random(3), r=[32])).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = static(x)
        torch.testing.assert_close(torch.jit.script(static)(x), ref)
        torch.testing.assert_close(torch.jit.trace(static, x)(x), ref)
    onnx = pytest.importorskip("onnxruntime")
    path = tmp_path / "net.onnx"
    torch.onnx.export(static, (x,), str(path), dynamo=False, input_names=["x"])
    out = onnx.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-4, atol=1e-5)


def test_supernet_rejects_non_space():
    with pytest.raises(OFAError, match="SpaceSpec"):
        Supernet("mbv3-w1.0")
