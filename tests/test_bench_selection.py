"""The timm comparison's pick (bench/specialize_quality.py) never looks at the test split."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("specialize_quality", ROOT / "bench" / "specialize_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SQ = _bench()
acc = st.floats(min_value=0.5, max_value=0.99, allow_nan=False)
candidate = st.fixed_dictionaries({"latency_ms": st.floats(min_value=0.1, max_value=2.0, allow_nan=False),
                                   "val": acc, "predicted": acc, "test": acc})


@settings(max_examples=60, deadline=None)
@given(cands=st.lists(candidate, min_size=1, max_size=12), limit=st.floats(min_value=0.1, max_value=2.0),
       new_tests=st.lists(acc, min_size=12, max_size=12))
def test_the_pick_ignores_test_accuracy(cands, limit, new_tests):
    for i, c in enumerate(cands):
        c["label"] = f"{i}ms"
    for by in ("val", "predicted"):
        chosen, within = SQ.pick(cands, limit, by)
        shuffled = [{**c, "test": t} for c, t in zip(cands, new_tests)]
        again, _ = SQ.pick(shuffled, limit, by)
        assert again["label"] == chosen["label"]          # other test accuracies, same pick
        under = [c for c in cands if c["latency_ms"] <= limit]
        assert within == bool(under)
        if under:
            assert chosen["latency_ms"] <= limit and chosen[by] == max(c[by] for c in under)
        else:
            assert chosen["latency_ms"] == min(c["latency_ms"] for c in cands)


def test_pick_by_validation_is_not_the_best_on_test():
    cands = [{"label": "a", "latency_ms": 0.30, "val": 0.890, "predicted": 0.880, "test": 0.895},
             {"label": "b", "latency_ms": 0.28, "val": 0.895, "predicted": 0.885, "test": 0.889},
             {"label": "c", "latency_ms": 0.50, "val": 0.990, "predicted": 0.990, "test": 0.990}]   # too slow
    timm = {"model": "t", "seeds": [{"test_accuracy": 0.880}, {"test_accuracy": 0.886}]}
    row = SQ.compare_row(timm, 0.31, cands, n_test=5000)
    assert row["validation"]["label"] == row["predicted"]["label"] == "b"
    assert row["optimistic_best_by_test"]["label"] == "a"
    assert row["validation"]["gain_points"] == pytest.approx(100 * (0.889 - 0.883))
    assert row["validation"]["gain_vs_best_seed_points"] == pytest.approx(100 * (0.889 - 0.886))
    lo, hi = row["validation"]["test_accuracy_ci95"]
    g_lo, g_hi = row["validation"]["gain_interval_points"]
    assert lo < 0.889 < hi and g_lo < row["validation"]["gain_points"] < g_hi
    assert g_hi - g_lo > 100 * (hi - lo)                    # the seeds' spread widens the gain's interval


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for k, n in ((4492, 5000), (5000, 5000), (13, 40)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert SQ.wilson_interval(k / n, n) == pytest.approx((ci.low, ci.high), abs=2e-4)


def test_from_results_recomputes_a_stored_comparison(tmp_path):
    stored = {"run": "r", "n_test_images": 5000, "points": [
        {"kind": "random", "arch": {"r": 32}, "real": 0.5, "val": 0.5, "predicted": 0.5},
        {"kind": "specialized@0.3ms", "arch": {"r": 32}, "real": 0.895, "val": 0.890, "predicted": 0.880},
        {"kind": "specialized@0.28ms-r32", "arch": {"r": 32}, "real": 0.889, "val": 0.895, "predicted": 0.885}],
        "comparison": [{"timm": "t", "timm_latency_ms": 0.31, "timm_test_accuracy": 0.883,
                        "timm_seeds": [{"test_accuracy": 0.880}, {"test_accuracy": 0.886}],
                        "all_candidates": [{"budget_ms": 0.3, "latency_ms": 0.30, "test_accuracy": 0.895},
                                           {"budget": "0.28ms-r32", "latency_ms": 0.29, "test_accuracy": 0.889}]},
                       {"timm": "u", "timm_latency_ms": 0.01, "ofa_error": "infeasible"}]}
    path = tmp_path / "specialize_quality_x.json"
    path.write_text(json.dumps(stored))
    out = SQ.corrected_from_results(path)
    assert [r["timm"] for r in out["comparison"]] == ["t"] and out["skipped"][0]["timm"] == "u"
    row = out["comparison"][0]
    assert row["validation"]["label"] == "0.28ms-r32" and row["optimistic_best_by_test"]["label"] == "0.3ms"
