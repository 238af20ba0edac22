import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from elastic import OFAError, get_space
from predictors.accuracy import AccuracyPredictor, fit_accuracy_predictor, format_report, holdout_split
from predictors.metrics import accuracy_quality, topk_hit_rate
from predictors.encoding import (OneHotEncoding, arch_arrays, arch_macs_params, ordinal_feature_names, ordinal_features,
                                 rich_features)
from predictors.ofa_predictor import SHIPPED, load_ofa_predictor

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is as fast and does not stall when the machine is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
NOISE = 0.002


def synthetic(n: int, seed: int = 0):
    """Accuracy as a noisy, saturating, monotone function of MACs, depth and kernel sizes (like a real supernet)."""
    sp = get_space("mbv3-w1.0-small", n_classes=10)
    rng = random.Random(seed)
    archs = [sp.sample(rng) for _ in range(n)]
    macs, _ = arch_macs_params(sp, archs)
    a = arch_arrays(sp, archs)
    x = np.log(macs / macs.min())
    acc = (0.86 + 0.05 * (1 - np.exp(-1.5 * x)) + 0.002 * a.d.sum(1) + 0.0004 * (a.ks * a.active).sum(1)
           + np.random.default_rng(seed).normal(0, NOISE, n))
    return sp, archs, acc


def test_onehot_matches_ofa_layout():
    sp = get_space("mbv3-w1.2")
    arch = sp.sample(random.Random(3))
    x = OneHotEncoding.ofa_imagenet().encode_arrays(arch_arrays(sp, [arch]))[0]
    assert x.shape == (128,)
    active = set(sp.active_blocks(arch))
    for i in range(20):
        ks, ex = x[3 * i: 3 * i + 3], x[60 + 3 * i: 63 + 3 * i]
        if i in active:
            assert ks[(3, 5, 7).index(arch.ks[i])] == 1 and ks.sum() == 1
            assert ex[(3, 4, 6).index(arch.e[i])] == 1 and ex.sum() == 1
        else:
            assert ks.sum() == 0 and ex.sum() == 0
    assert x[120 + (arch.r - 112) // 16] == 1 and x[120:].sum() == 1
    with pytest.raises(OFAError, match="resolution"):
        OneHotEncoding.ofa_imagenet().encode_arrays(arch_arrays(sp, [type(arch)(arch.ks, arch.e, arch.d, 96)]))


def test_rich_features_are_per_stage_sums():
    sp = get_space("mbv3-w1.0-small", n_classes=10)
    big, small = sp.largest(), sp.smallest()
    f = rich_features(sp, [big, small])
    assert f.shape == (2, 5 * 4 + 3)
    assert f[0, 0] == 4 and f[0, 1] == 4 * 7 and f[0, 2] == 4 * 6       # stage 0: depth, sum k, sum e
    assert f[1, 0] == 2 and f[1, 1] == 2 * 3 and f[1, 2] == 2 * 3
    assert f[0, -2] > f[1, -2]                                           # log MACs


def test_ordinal_features_give_each_block_its_choice_and_zero_beyond_the_depth():
    sp = get_space("mbv3-w1.0-small", n_classes=10)
    rng = random.Random(3)
    arch = sp.sample(rng)
    f = ordinal_features(sp, [sp.largest(), arch])
    nb, ns = sp.n_blocks, sp.n_stages
    assert f.shape == (2, 2 * nb + ns + 1) == (2, len(ordinal_feature_names(sp)))
    assert (f[0, :nb] == 7).all() and (f[0, nb:2 * nb] == 6).all() and (f[0, 2 * nb:-1] == 4).all()
    active = arch_arrays(sp, [arch]).active[0]
    assert (f[1, :nb][active] == np.asarray(arch.ks)[active]).all() and (f[1, :nb][~active] == 0).all()
    assert (f[1, nb:2 * nb][~active] == 0).all() and list(f[1, 2 * nb:-1]) == list(arch.d) and f[1, -1] == arch.r


def test_the_gps_features_are_the_ordinal_ones_and_log_macs():
    from elastic.netspec import net_macs
    from predictors.accuracy_models import feature_count
    from predictors.encoding import ordinal_macs_feature_names, ordinal_macs_features

    sp = get_space("mbv3-w1.0-small", n_classes=10)
    archs = [sp.largest(), sp.smallest(), sp.sample(random.Random(4))]
    f = ordinal_macs_features(sp, archs)
    assert f.shape[1] == len(ordinal_macs_feature_names(sp)) == feature_count("gp", sp) == len(ordinal_feature_names(sp)) + 1
    assert np.array_equal(f[:, :-1], ordinal_features(sp, archs))
    assert np.allclose(f[:, -1], [np.log(net_macs(sp.net_spec(a))) for a in archs])
    assert f[0, -1] > f[2, -1] > f[1, -1]


def test_cross_validated_fit_ranks_held_out_subnets():
    sp, archs, acc = synthetic(160)
    pred = fit_accuracy_predictor(sp, archs, acc, kinds=("ridge", "gbr"), folds=3, holdout=0.25, seed=0,
                                  hp={"gbr": {"n_estimators": 60, "learning_rate": 0.1}})
    rep = pred.report
    assert rep["chosen"] in ("ridge", "gbr") and set(rep["cv"]) == {"ridge", "gbr"}
    h = rep["holdout"]
    assert h["n"] == 40 and h["kendall_tau"] >= 0.75
    assert h["rmse"] < 2.5 * NOISE                                        # near the noise floor, in accuracy units
    assert 0.0 <= h["topk_hit_rate"] <= 1.0
    assert "held out" in format_report(rep)
    # prediction on fresh archs stays sensible
    _, fresh, facc = synthetic(60, seed=7)
    assert accuracy_quality(facc, pred.predict(fresh))["kendall_tau"] > 0.7


def test_the_reported_holdout_is_holdout_split():
    """The held-out metrics are those of the chosen kind fit on holdout_split's fitting rows (what benches re-derive)."""
    sp, archs, acc = synthetic(60)
    rep = fit_accuracy_predictor(sp, archs, acc, kinds=("ridge",), folds=3, holdout=0.25, seed=3).report
    hold, train = holdout_split(60, 0.25, 3)
    assert len(hold) == 15 and len(train) == 45 and not set(hold) & set(train)
    m = AccuracyPredictor.fit(sp, [archs[i] for i in train], acc[train], kind="ridge")
    assert rep["holdout"] == accuracy_quality(acc[hold], m.predict([archs[i] for i in hold]))
    assert not np.array_equal(holdout_split(60, 0.25, 4)[0], hold)       # the seed moves it


def test_mlp_fits_and_round_trips_exactly(tmp_path):
    sp, archs, acc = synthetic(160)
    pred = AccuracyPredictor.fit(sp, archs[:120], acc[:120], kind="mlp", steps=200, hidden=[64, 64])
    q = accuracy_quality(acc[120:], pred.predict(archs[120:]))
    assert q["kendall_tau"] > 0.5 and q["rmse"] < 0.02
    pred.save(tmp_path)
    assert (tmp_path / "accuracy_predictor.safetensors").exists() and (tmp_path / "accuracy_report.json").exists()
    again = AccuracyPredictor.load(tmp_path)
    np.testing.assert_array_equal(again.predict(archs[120:]), pred.predict(archs[120:]))


@pytest.mark.parametrize("kind", ["gbr", "gp", "ridge"])
def test_sklearn_kinds_round_trip_by_deterministic_refit(tmp_path, kind):
    sp, archs, acc = synthetic(60)
    hp = {"n_estimators": 40} if kind == "gbr" else {}
    pred = AccuracyPredictor.fit(sp, archs[:45], acc[:45], kind=kind, **hp)
    pred.report = {"note": "x"}
    pred.save(tmp_path)
    doc = json.loads((tmp_path / "accuracy_predictor.json").read_text())
    assert doc["kind"] == kind and len(doc["train"]["y"]) == 45
    again = AccuracyPredictor.load(tmp_path)
    np.testing.assert_allclose(again.predict(archs[45:]), pred.predict(archs[45:]), atol=1e-9)
    assert again.report == {"note": "x"}


def test_bad_predictor_files_are_clear_errors(tmp_path):
    with pytest.raises(OFAError, match="no accuracy predictor"):
        AccuracyPredictor.load(tmp_path)
    (tmp_path / "accuracy_predictor.json").write_text('{"format": "something-else"}')
    with pytest.raises(OFAError, match="not an accuracy predictor"):
        AccuracyPredictor.load(tmp_path)
    (tmp_path / "accuracy_predictor.json").write_text("{not json")
    with pytest.raises(OFAError, match="not a valid"):
        AccuracyPredictor.load(tmp_path)
    sp, archs, acc = synthetic(12)
    with pytest.raises(OFAError, match="too few"):
        fit_accuracy_predictor(sp, archs, acc)
    with pytest.raises(OFAError, match="unknown accuracy predictor kind"):
        AccuracyPredictor.fit(sp, archs, acc, kind="xgboost")


def test_topk_hit_rate():
    assert topk_hit_rate(np.array([1, 2, 3, 4]), np.array([1, 2, 3, 4]), 2) == 1.0
    assert topk_hit_rate(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1]), 2) == 0.0
    assert topk_hit_rate(np.array([1, 2, 3, 4]), np.array([1, 3, 4, 2]), 2) == 0.5


# ---- OFA's published predictor -------------------------------------------------------------------
def test_shipped_ofa_predictor_is_batched_and_sensible():
    assert SHIPPED.exists()
    p = load_ofa_predictor()
    sp = p.space
    assert sp.name == "mbv3-w1.2" and sp.n_classes == 1000
    rng = random.Random(0)
    archs = [sp.sample(rng) for _ in range(64)]
    batch = p.predict(archs)
    single = np.array([p.predict([a])[0] for a in archs[:8]])
    np.testing.assert_allclose(batch[:8], single, rtol=1e-6)
    lo, hi = p.predict([sp.smallest(), sp.largest()])
    assert 0.70 < lo < hi < 0.90 and ((batch > lo) & (batch < hi)).mean() > 0.9


def test_shipped_file_equals_the_original_pth(tmp_path):
    """The shipped safetensors hold OFA's original `.pth` tensors bit for bit (digests of the original's tensors in
    tests/data), a `.pth` state dict of them loads to the same predictor, and our numpy forward equals torch's."""
    import hashlib

    import torch
    from safetensors.numpy import load_file

    digest = json.loads((DATA / "ofa_predictor" / "mbv3-w1.2_imagenet_acc_predictor.digest.json").read_text())
    shipped = load_file(str(SHIPPED))
    assert sorted(shipped) == sorted(digest["tensor_sha256"])
    for key, want in digest["tensor_sha256"].items():
        arr = np.ascontiguousarray(shipped[key])
        assert arr.dtype == np.float32 and list(arr.shape) == digest["tensor_shape"][key]
        assert hashlib.sha256(arr.tobytes()).hexdigest() == want, key
    src = tmp_path / "mbv3-w1.2_imagenet_acc_predictor.pth"
    torch.save({k: torch.from_numpy(v.copy()) for k, v in shipped.items()}, src)
    a, b = load_ofa_predictor(), load_ofa_predictor(src)
    sp = a.space
    rng = random.Random(1)
    archs = [sp.sample(rng) for _ in range(32)]
    assert len(set(archs)) == 32
    np.testing.assert_array_equal(a.predict(archs), b.predict(archs))
    # and our numpy forward equals the original torch nn.Sequential
    sd = torch.load(src, weights_only=True, map_location="cpu")
    net = torch.nn.Sequential(torch.nn.Linear(128, 400), torch.nn.ReLU(), torch.nn.Linear(400, 400), torch.nn.ReLU(),
                              torch.nn.Linear(400, 400), torch.nn.ReLU(), torch.nn.Linear(400, 1))
    net.load_state_dict(sd)
    x = torch.from_numpy(OneHotEncoding.ofa_imagenet().encode_arrays(arch_arrays(sp, archs)))
    np.testing.assert_allclose(a.predict(archs), net(x).detach().numpy()[:, 0], atol=1e-5)


def test_wrong_file_for_ofa_predictor(tmp_path):
    import torch

    bad = tmp_path / "other.pth"
    torch.save({"0.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(OFAError, match="not OFA's mbv3-w1.2 accuracy predictor"):
        load_ofa_predictor(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(OFAError, match="not a loadable"):
        load_ofa_predictor(junk)
    with pytest.raises(OFAError, match="does not exist"):
        load_ofa_predictor(tmp_path / "missing.safetensors")
    st = tmp_path / "junk.safetensors"
    st.write_bytes(b"\x00" * 20)
    with pytest.raises(OFAError, match="not a readable safetensors"):
        load_ofa_predictor(st)


# ---- batched == one by one; MACs from the batched count ----------------------------------------------------------
@pytest.fixture(scope="module")
def fitted_kinds():
    sp, archs, acc = synthetic(60)
    hp = {"mlp": {"steps": 60, "hidden": [32, 32]}, "gbr": {"n_estimators": 30}, "gp": {}, "ridge": {}}
    pool = synthetic(40, seed=11)[1] + [sp.largest(), sp.smallest()]
    return {kind: AccuracyPredictor.fit(sp, archs, acc, kind=kind, **hp[kind]) for kind in hp}, pool


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["mlp", "gbr", "gp", "ridge"]), picks=st.lists(st.integers(0, 41), min_size=1, max_size=30))
def test_batched_accuracy_predictions_equal_one_by_one(fitted_kinds, kind, picks):
    preds, pool = fitted_kinds
    pred = preds[kind]
    batch = [pool[i] for i in picks]
    together = pred.predict(batch)
    assert together.shape == (len(batch),) and np.isfinite(together).all()
    alone = np.array([pred.predict([a])[0] for a in batch])
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-7)


def test_macs_params_come_from_the_batched_count_and_its_errors_surface(monkeypatch):
    """`arch_macs_params` once fell back to counting net by net on any AttributeError, hiding bugs in the batched
    count: it must equal the per-net count for every registered space, and a failure inside it must surface."""
    from elastic import complexity, net_macs, net_params
    from elastic.spaces import SPACES

    rng = random.Random(5)
    for name in SPACES:
        sp = get_space(name)
        archs = [sp.sample(rng) for _ in range(4)] + [sp.smallest()]
        m, p = arch_macs_params(sp, archs)
        specs = [sp.net_spec(a) for a in archs]
        np.testing.assert_array_equal(m, [net_macs(s) for s in specs])
        np.testing.assert_array_equal(p, [net_params(s) for s in specs])

    def broken(*args, **kwargs):
        raise AttributeError("a bug inside the batched count")

    monkeypatch.setattr(complexity, "macs", broken)
    with pytest.raises(AttributeError, match="a bug inside the batched count"):
        arch_macs_params(sp, archs)


def _gp_search_calls(hp: dict, x: np.ndarray, y: np.ndarray) -> tuple[int, float]:
    """(likelihood evaluations, fitted white-noise level) of a GP fit with hyperparameters `hp`."""
    from predictors.accuracy_models import DEFAULT_HP, make_sklearn_model

    model = make_sklearn_model("gp", {**DEFAULT_HP["gp"], **hp}, x.shape[1])
    gp, calls = model[-1], [0]
    search = gp.optimizer

    def counted(objective, theta, bounds):
        def f(t):
            calls[0] += 1
            return objective(t)
        return search(f, theta, bounds=bounds)

    gp.optimizer = counted
    model.fit(x, y)
    return calls[0], float(gp.kernel_.k2.noise_level)


def test_gp_search_is_capped_and_its_noise_floored():
    """The GP's likelihood search stops at `max_evals` (its fit cost is what the time budget plans) and its white
    noise stays at or above `noise_floor` of the labels' variance even on noiseless labels."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 6))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2            # smooth, no noise: left free the noise level collapses
    capped, _ = _gp_search_calls({"max_evals": 5}, x, y)
    free, free_noise = _gp_search_calls({"max_evals": 15000, "noise_floor": 1e-6}, x, y)
    assert capped <= 6 < free
    assert free_noise < 1e-3
    _, floored = _gp_search_calls({"noise_floor": 0.05}, x, y)
    assert floored >= 0.05 - 1e-12


def test_gp_likelihood_step_cost_is_measured_and_grows_with_rows():
    from predictors.accuracy_models import gp_likelihood_seconds

    small, large = gp_likelihood_seconds(50, 20), gp_likelihood_seconds(400, 20)
    assert 0 < small < large
