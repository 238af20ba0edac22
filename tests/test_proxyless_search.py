"""ProxylessNAS backend: expected latency, the budget loop, binarized memory, the standalone search end to end."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elastic.arch import Arch
from elastic.choice_indices import arch_choice_indices
from elastic.errors import OFAError
from elastic.spaces import get_space
from elastic.supernet import Supernet
from nontrivial_state import randomize
from predictors.latency import get_latency_predictor
from specialize.proxyless import OpLatencyTable, OverParamNet, SupernetLatencyTable, search_over_supernet
from specialize.proxyless.gates import mixed_ops, set_mode
from specialize.proxyless.saved_memory import saved_tensor_bytes
from specialize.proxyless.supernet_search import SupernetAlphas, search_mode, gated_forward

SPACE = "proxyless-w1.3-small"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine is shared: one intra-op thread avoids oversubscription stalls (10x slower otherwise)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def space():
    return get_space(SPACE, n_classes=10)


@pytest.fixture(scope="module")
def predictor(space):
    return get_latency_predictor("pixel1", space)


@pytest.fixture(scope="module")
def supernet(space):
    torch.manual_seed(0)
    return randomize(Supernet(space))   # (fresh: zero-scaled residual BNs would hide the kernel choices)


@pytest.mark.parametrize("name,device", [(SPACE, "pixel1"), ("mbv3-w1.2", "note10"), ("proxyless-w1.3", "flops")])
def test_expected_latency_equals_predictor_for_one_hot_probabilities(name, device):
    sp = get_space(name)
    pred = get_latency_predictor(device, sp)
    table = SupernetLatencyTable(sp, pred)
    rng = random.Random(0)
    archs = [sp.sample(rng) for _ in range(30)] + [sp.smallest(), sp.largest()]
    exact = pred.predict(archs)
    got = np.array([table.of_arch(a) for a in archs])
    assert np.allclose(got, exact, rtol=1e-9, atol=1e-9)
    assert exact.max() > 1.5 * exact.min()   # the archs really differ


def test_expected_latency_is_the_expectation_over_sampled_archs(space, predictor):
    table = SupernetLatencyTable(space, predictor)
    alphas = SupernetAlphas(space, table.resolutions)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for c in alphas.choices():
            c.copy_(torch.randn(c.shape, generator=g))
    p_k, p_e, p_d, p_r = alphas.probs()
    with torch.no_grad():
        expected = float(table.expected(p_k.double(), p_e.double(), [p.double() for p in p_d], p_r.double()))
    idx = [torch.multinomial(F.softmax(c.detach(), -1), 4000, replacement=True, generator=g) for c in alphas.choices()]
    archs = [alphas.decode([int(i[n]) for i in idx]) for n in range(4000)]
    mc = predictor.predict(archs)
    assert abs(mc.mean() - expected) < 4 * mc.std() / np.sqrt(len(mc)) + 1e-9


def test_latency_loss_forms():
    from specialize.proxyless.loss import latency_loss

    ce = torch.tensor(2.0)
    for lat, one_sided in ((8.0, False), (8.0, True), (12.0, True), (12.0, False)):
        e = torch.tensor(lat, requires_grad=True)
        loss = latency_loss(ce, e, 10.0, "mul", beta=0.5, one_sided=one_sided)
        (g,) = torch.autograd.grad(loss, e)
        ratio = lat / 10.0
        if one_sided and lat < 10:
            assert float(loss.detach()) == pytest.approx(2.0) and float(g) == 0.0   # no pull below the budget
        else:
            assert float(loss.detach()) == pytest.approx(2.0 * ratio ** 0.5)
            assert float(g) == pytest.approx(2.0 * 0.5 * ratio ** -0.5 / 10.0)
        e2 = torch.tensor(lat, requires_grad=True)
        add = latency_loss(ce, e2, 10.0, "add", lam=0.3, one_sided=one_sided)
        expected = 2.0 + 0.3 * (max(ratio - 1, 0) if one_sided else ratio)
        assert float(add.detach()) == pytest.approx(expected)
    with pytest.raises(OFAError, match="allowed: mul, add"):
        latency_loss(ce, torch.tensor(1.0), 1.0, "pow")


def test_op_table_latency_matches_predictor_on_derived_net(space, predictor):
    net = OverParamNet(space, 24, kernels=(3, 5), expands=(3,))
    table = OpLatencyTable(space, predictor, 24, net.choices)
    rng = random.Random(1)
    for _ in range(5):
        idx = [rng.randrange(len(c)) for c in net.choices]
        spec, arch = net.derive(idx)
        assert table.of_choice(idx) == pytest.approx(predictor.predict_net(spec), rel=1e-9)
        if arch is not None:   # a derived arch is the very same network as the space builds for it
            assert space.net_spec(arch).blocks == spec.blocks


def test_gated_forward_at_peaked_alphas_is_the_supernet_forward(space, supernet):
    alphas = SupernetAlphas(space, space.resolutions)
    rng = random.Random(3)
    arch = space.sample(rng)
    ki, ei, di, ri = arch_choice_indices(space, arch)
    with torch.no_grad():
        for b in range(space.n_blocks):
            alphas.k[b, ki[b]] = 60.0
            alphas.e[b, ei[b]] = 60.0
        for s in range(space.n_stages):
            alphas.d[s][di[s]] = 60.0
        alphas.r[ri] = 60.0
    x = torch.randn(4, 3, 28, 28)
    supernet.train()
    with search_mode(supernet):
        logits, active, _ = gated_forward(supernet, alphas, x, torch.Generator().manual_seed(0), True)
        supernet.set_active(arch)
        ref = supernet(F.interpolate(x, size=(arch.r, arch.r), mode="bilinear", align_corners=False))
    assert active == arch
    assert torch.allclose(logits, ref, atol=1e-5)
    # every active block whose kernel choice changes its output (maps of at least 3x3: on 2x2 maps kernels
    # 3/5/7 see the same pixels) gets a gradient; the weights get none (frozen)
    logits.sum().backward()
    kernel_matters = sum(b.in_hw >= 3 for b in space.net_spec(arch).blocks[1:])
    assert kernel_matters >= 4
    assert alphas.k.grad.abs().sum(1).gt(0).sum() >= kernel_matters
    assert alphas.r.grad.abs().sum() > 0


def test_supernet_search_meets_budget_and_keeps_supernet(space, predictor, supernet):
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    x, y = torch.randn(4, 3, 24, 24), torch.randint(0, 10, (4,))
    res = (24, 28)
    lo = float(predictor.predict([space.smallest(24)])[0])
    budget = lo * 1.2   # tight: uniform alphas sit far above it, so the loop has to work for it
    assert float(predictor.predict([space.sample(random.Random(0), r=res)])[0]) > budget
    arch, info = search_over_supernet(supernet, predictor, budget, [(x, y)], steps=2, budget_rounds=1,
                                      budget_steps=1, resolutions=res, seed=0)
    space.validate(arch)
    assert arch.r in res
    assert info["latency"] == pytest.approx(float(predictor.predict([arch])[0]))
    assert info["latency"] <= budget
    # how the budget was met agrees with what the search did (2 search steps, at most 1 strengthening round)
    phases = [h["phase"] for h in info["history"]]
    how = info["feasible_by"].split(";")[0]
    if how == "search":
        assert phases == ["search", "search"] and info["note"] is None
    elif how.startswith("strengthened"):
        assert phases == ["search", "search", "budget1"] and info["note"] is None
    else:
        assert how.startswith("greedy fallback") and "missed the budget" in info["note"]
        assert phases[:2] == ["search", "search"] and len(phases) <= 3
    # what the argmax left of the budget is spent: no single change to a costlier choice still fits
    costlier = []   # latencies of every arch one kernel or expand change away that costs more
    for i in range(2 * space.n_blocks):
        choices = space.ks_choices if i < space.n_blocks else space.e_choices
        for choice in choices:
            ks, es = list(arch.ks), list(arch.e)
            (ks if i < space.n_blocks else es)[i % space.n_blocks] = choice
            cand = Arch(tuple(ks), tuple(es), arch.d, arch.r)
            lat = float(predictor.predict([cand])[0])
            if lat > info["latency"] + 1e-9:
                costlier.append(lat)
    assert costlier and min(costlier) > budget
    assert len(info["history"]) >= 2 and info["history"][0]["expected_latency"] > budget
    after = supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # weights and BN statistics untouched
    # REINFORCE and the additive loss are available and meet the budget too
    arch2, info2 = search_over_supernet(supernet, predictor, budget, [(x, y)], steps=3, budget_rounds=0,
                                        estimator="reinforce", form="add", resolutions=res, seed=1)
    assert info2["latency"] <= budget and len(info2["history"]) == 3
    with pytest.raises(OFAError, match="cannot be met"):
        search_over_supernet(supernet, predictor, lo * 0.5, [(x, y)], steps=1)


def _tiny_space():
    # two blocks per stage, three stages: a small net whose blocks still have 2 x 2 candidates + zero
    sp = get_space(SPACE, n_classes=10)
    from dataclasses import replace
    return replace(sp, stage_widths=sp.stage_widths[:3], stage_strides=sp.stage_strides[:3],
                   stage_acts=sp.stage_acts[:3], stage_se=sp.stage_se[:3], stage_max_depth=(2, 2, 2),
                   d_choices=(1, 2))


def test_binarized_memory_is_one_path_while_weighted_sum_grows_with_candidates():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 24, 24), torch.randint(0, 10, (4,))
    ratios = {}
    for kernels in ((3,), (3, 5), (3, 5, 7)):
        net = OverParamNet(_tiny_space(), 24, kernels=kernels, expands=(3, 6), zero=False)
        net.train()

        def step(mode):
            set_mode(net, mode, torch.Generator().manual_seed(1))
            b, loss = saved_tensor_bytes(lambda: F.cross_entropy(net(x), y), exclude=list(net.parameters()))
            loss.backward()
            return b

        row = {}
        for mode in ("single", "two_path"):
            row[mode] = step(mode)
            for m in mixed_ops(net):
                m.fix(m.last_active)
            row[mode + "_static"] = step("fixed")
        row["weighted"] = step("weighted")
        for m in mixed_ops(net):
            m.fix(len(m) - 1)   # the largest candidate (k max, e6) everywhere
        row["largest"] = step("fixed")
        assert row["single"] <= 1.5 * row["single_static"]
        assert row["two_path"] <= 1.5 * row["two_path_static"]
        ratios[len(kernels) * 2] = row["weighted"] / row["largest"]
    # DARTS-style weighted sum keeps every candidate's activations: more than the largest path, growing with n
    assert ratios[2] > 1.3 and ratios[4] > ratios[2] * 1.4 and ratios[6] > ratios[4] * 1.2, ratios


def test_proxyless_search_command_end_to_end(tmp_path, capsys):
    from ofa.cli import main
    from ofa.specialized import load

    out = tmp_path / "pxs"
    budget = "9.5ms"
    try:
        main(["proxyless-search", "--data", "digits", "--resolution", "24", "--batch-size", "8", "--kernels", "3,5",
              "--expands", "3", "--warmup-steps", "1", "--search-steps", "2", "--budget-steps", "1",
              "--budget-rounds", "1", "--train-steps", "2", "--latency", budget, "--subset", "64", "--eval-size", "32",
              "--out", str(out), "--threads", "1", "--no-progress", "--json"])
    except SystemExit as exc:   # main() exits only on errors (or with 0)
        assert exc.code in (0, None)
    summary = json.loads(capsys.readouterr().out)
    result = json.loads((out / "result.json").read_text())
    assert summary["predicted_latency"] <= 9.5 and result["search"]["latency"] == pytest.approx(summary["predicted_latency"])
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert len(result["history"]) >= 3 and {"weight_ce", "ce", "expected_latency"} <= set(result["history"][-1])
    if result["search"]["arch"] is not None:
        net = load(out / "model")
        assert net(torch.randn(2, 3, 24, 24)).shape == (2, 10)
    else:
        assert (out / "model.safetensors").is_file()


def test_proxyless_search_command_rejects_impossible_budget(capsys):
    from ofa.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["proxyless-search", "--data", "digits", "--resolution", "24", "--latency", "0.1ms", "--subset", "16",
              "--no-progress"])
    assert exc.value.code == 2
    assert "cannot be met" in capsys.readouterr().err


def test_greedy_fallback_reaches_budget_giving_up_least_probability():
    from specialize.proxyless.feasible import greedy_to_budget

    # three choices with additive latencies; the argmax (index 0 everywhere) costs 10 + 10 + 10 = 30
    lat = [np.array([10.0, 5.0, 1.0]), np.array([10.0, 9.0]), np.array([10.0, 2.0])]
    logp = [np.log([0.5, 0.45, 0.05]), np.log([0.9, 0.1]), np.log([0.6, 0.4])]
    latency_of = lambda rows: np.array([sum(l[i] for l, i in zip(lat, r)) for r in rows])  # noqa: E731
    idx, total, moves = greedy_to_budget([0, 0, 0], logp, latency_of, target=22.0)
    assert total <= 22.0 and total == latency_of([idx])[0]
    # the cheapest way in log-probability per ms saved: choice 2 -> index 1 (8 ms for log(0.6/0.4))
    assert idx == [0, 0, 1] and moves == 1
    idx, total, _ = greedy_to_budget([0, 0, 0], logp, latency_of, target=13.0)
    assert total <= 13.0
    with pytest.raises(OFAError, match="cannot be met"):
        greedy_to_budget([0, 0, 0], logp, latency_of, target=5.0)
