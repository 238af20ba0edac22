"""`ofa specialize` / `ofa.specialize` / `ofa.load` end to end on a tiny run with a cheap fitted predictor.

The run is an untrained `mbv3-w1.0-small` supernet at 16/20 px on scikit-learn digits; its accuracy predictor is a
ridge fit on 40 planned archs whose "accuracy" grows with MACs, so a bigger budget must buy a more accurate arch.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import ofa
from elastic.errors import OFAError
from ofa.cli import main

FAST = {"population": 24, "generations": 15, "patience": 5, "init_samples": 300}   # API-only search overrides
# pixel1 was fit on 152-240 px networks: searching this run's 16-20 px subnets with it extrapolates, explicitly
FAST["allow_extrapolation"] = True
CALIB = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets on a shared 2-core machine: one intra-op thread is faster than two fighting."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from elastic.complexity import macs
    from elastic.spaces import get_space
    from elastic.supernet import Supernet
    from ofa.accuracy_data import plan_subnets
    from ofa.run_dir import RunDir
    from predictors.accuracy import AccuracyPredictor

    torch.manual_seed(0)
    space = get_space("mbv3-w1.0-small", n_classes=10, resolutions=(16, 20))
    rd = RunDir(tmp_path_factory.mktemp("spec") / "run")
    rd.save_space(space)
    rd.save_data_config({"name": "digits", "subset_size": 96, "eval_size": 32})
    rd.save_weights(Supernet(space), space)
    archs = plan_subnets(space, 40, seed=0)
    m = macs(space, archs)
    acc = 0.5 + 0.4 * (m - m.min()) / (m.max() - m.min())
    AccuracyPredictor.fit(space, archs, acc, kind="ridge").save(rd.path / "predictors")
    return rd


@pytest.fixture(scope="module")
def lat_range(run):
    """pixel1 latency (ms) of the smallest and the largest subnet."""
    from predictors.latency import get_latency_predictor

    sp = run.load_space()
    lo, hi = get_latency_predictor("pixel1", sp).predict([sp.smallest(), sp.largest()])
    return float(lo), float(hi)


def _cli_json(capsys, args):
    main(["specialize", *args, "--json"])
    return json.loads(capsys.readouterr().out)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_api_artifact_load_and_exports(run, lat_range):
    import onnxruntime as ort

    from elastic.bn_calibration import recalibrate_bn
    from ofa.training.evaluate import calibration_batches

    lo, hi = lat_range
    budget = round(lo + 0.5 * (hi - lo), 2)
    (res,) = ofa.specialize(run.path, device="pixel1", latency=f"{budget}ms", export="onnx,torchscript",
                            calib_images=CALIB, **FAST)
    assert res.path == run.path / "specialized" / f"pixel1@{budget:g}ms"
    assert res.predicted_latency_ms <= budget and res.arch != run.load_space().largest()
    assert 0.0 <= res.test_accuracy <= 1.0 and res.measured_latency_ms is None   # pixel1 is not this machine
    assert sorted(p.name for p in res.path.iterdir()) == ["arch.json", "model.onnx", "model.safetensors", "model.ts"]
    meta = json.loads((res.path / "arch.json").read_text())
    assert meta["arch"] == res.arch.to_dict() and meta["space"]["name"] == "mbv3-w1.0-small"
    assert len(meta["classes"]) == 10 and meta["predicted"]["latency_ms"] == pytest.approx(res.predicted_latency_ms)
    assert meta["measured"]["test_accuracy"] == res.test_accuracy
    assert meta["provenance"]["run"] == str(run.path) and len(meta["provenance"]["supernet_sha256"]) == 64

    net = ofa.load(res.path)
    assert not net.training and net.arch == res.arch
    # the saved net is the supernet's subnet after the same BN recalibration (no retraining)
    bundle = run.load_data()
    ref = run.load_supernet().extract(res.arch)
    recalibrate_bn(ref, calibration_batches(bundle, res.arch.r, CALIB, seed=0))
    ref.eval()
    x, _ = next(iter(bundle.loader("test", batch_size=16, resolution=res.arch.r)))
    with torch.no_grad():
        got, want = net(x), ref(x)
    assert torch.allclose(got, want, atol=1e-5) and got.shape == (16, 10)
    # exports agree with PyTorch on real images
    onnx_out = ort.InferenceSession(str(res.path / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    assert np.abs(onnx_out - got.numpy()).max() < 1e-3 * max(1.0, float(got.abs().max()))
    ts_out = torch.jit.load(str(res.path / "model.ts"))(x)
    assert torch.allclose(ts_out, got, atol=1e-5)
    # loading by arch.json or model.safetensors path works too
    assert ofa.load(res.path / "model.safetensors").arch == res.arch


def test_cli_flops_macs_budget_json(run, capsys):
    from elastic.complexity import macs

    sp = run.load_space()
    lo, hi = macs(sp, [sp.smallest(), sp.largest()])
    budget_m = round((lo + 0.4 * (hi - lo)) / 1e6, 1)
    doc = _cli_json(capsys, ["--run", str(run.path), "--device", "flops", "--macs", f"{budget_m}M"])
    assert {"arch", "predicted_accuracy", "predicted_latency_ms", "path", "search_seconds"} <= set(doc)
    assert doc["predicted_latency_ms"] is None            # flops is a MACs proxy, not a latency
    assert doc["macs"] <= budget_m * 1e6 and doc["search_seconds"] > 0
    arch = ofa.Arch.from_dict(doc["arch"])
    assert float(macs(sp, [arch])[0]) == pytest.approx(doc["macs"])
    assert Path(doc["path"]).name == f"flops@{budget_m:g}M-macs" and ofa.load(doc["path"]).arch == arch


def test_infeasible_budget_names_the_fastest_latency(run, lat_range, capsys):
    with pytest.raises(SystemExit) as err:
        main(["specialize", "--run", str(run.path), "--device", "pixel1", "--latency", "0.01ms", "--allow-extrapolation"])
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert "\n" not in msg and msg.startswith("error:") and "fastest" in msg
    fastest = float(re.search(r"([0-9.]+) ms", msg.split("fastest")[1]).group(1))
    assert 0 < fastest <= lat_range[0] + 0.01
    assert not (run.path / "specialized" / "pixel1@0.01ms").exists()


def test_budget_above_largest_returns_largest_with_note(run, capsys):
    main(["specialize", "--run", str(run.path), "--device", "pixel1", "--latency", "10s", "--allow-extrapolation"])
    out = capsys.readouterr().out
    assert "pixel1@10000ms" in out and "returning the largest subnet" in out        # the table and its note
    meta = json.loads((run.path / "specialized" / "pixel1@10000ms" / "arch.json").read_text())
    assert ofa.Arch.from_dict(meta["arch"]) == run.load_space().largest() and "largest" in meta["note"]


def test_several_budgets_are_pareto_consistent_and_plotted(run, lat_range, capsys):
    lo, hi = lat_range
    budgets = [round(lo + f * (hi - lo), 2) for f in (0.15, 0.4, 0.7)]
    doc = _cli_json(capsys, ["--run", str(run.path), "--device", "pixel1", "--pareto", "--allow-extrapolation",
                             "--latency", ",".join(f"{b}ms" for b in reversed(budgets))])
    results = doc["results"]
    assert [r["budget"] for r in results] == [f"{b:g}ms" for b in budgets]          # tightest first
    for r, b in zip(results, budgets):
        assert r["predicted_latency_ms"] <= b and Path(r["path"]).is_dir()
    accs = [r["predicted_accuracy"] for r in results]
    assert accs == sorted(accs) and accs[0] < accs[-1]
    base = run.path / "specialized"
    assert (base / "pixel1_pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = json.loads((base / "pixel1_pareto.json").read_text())["front"]
    lats, faccs = [p["latency_ms"] for p in front], [p["accuracy"] for p in front]
    assert len(front) >= 3 and lats == sorted(lats) and faccs == sorted(faccs)       # non-dominated
    assert max(faccs) >= accs[-1] - 1e-9


def test_damaged_artifacts_are_one_line_errors(run, tmp_path):
    (res,) = ofa.specialize(run.path, device="pixel1", latency=1e4, evaluate=False, calib_images=CALIB,
                            allow_extrapolation=True)
    bad = tmp_path / "bad"
    shutil.copytree(res.path, bad)
    meta = json.loads((bad / "arch.json").read_text())

    (bad / "arch.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "arch"}))
    with pytest.raises(OFAError, match="missing field") as e1:
        ofa.load(bad)
    smaller = run.load_space().smallest().to_dict()
    (bad / "arch.json").write_text(json.dumps({**meta, "arch": smaller}))
    with pytest.raises(OFAError, match="does not match arch.json") as e2:
        ofa.load(bad)
    (bad / "arch.json").write_text(json.dumps({**meta, "arch": {**smaller, "ks": [9] * len(smaller["ks"])}}))
    with pytest.raises(OFAError) as e3:
        ofa.load(bad)
    (bad / "arch.json").write_text("{not json")
    with pytest.raises(OFAError, match="not valid JSON") as e4:
        ofa.load(bad)
    with pytest.raises(OFAError, match="does not exist"):
        ofa.load(tmp_path / "nowhere")
    for e in (e1, e2, e3, e4):
        assert "\n" not in str(e.value)


def test_respecialize_replaces_folder_atomically(run, lat_range, monkeypatch):
    import ofa.export

    lo, hi = lat_range
    budget = f"{round(lo + 0.3 * (hi - lo), 2)}ms"
    (first,) = ofa.specialize(run.path, device="pixel1", latency=budget, evaluate=False, calib_images=CALIB,
                              seed=1, **FAST)
    before = {p.name: p.read_bytes() for p in first.path.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("export failed midway")

    monkeypatch.setattr(ofa.export, "export_onnx", broken)
    with pytest.raises(RuntimeError, match="midway"):
        ofa.specialize(run.path, device="pixel1", latency=budget, export="onnx", evaluate=False,
                       calib_images=CALIB, seed=2, **FAST)
    assert {p.name: p.read_bytes() for p in first.path.iterdir()} == before       # old folder untouched
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    monkeypatch.undo()
    (again,) = ofa.specialize(run.path, device="pixel1", latency=budget, export="torchscript", evaluate=False,
                              calib_images=CALIB, seed=2, **FAST)
    assert again.path == first.path and (again.path / "model.ts").is_file()
    assert json.loads((again.path / "arch.json").read_text())["provenance"]["seed"] == 2


def test_bad_budget_and_missing_predictor_are_clear(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["specialize", "--run", str(run.path), "--device", "pixel1", "--latency", "fast"])
    assert err.value.code == 2 and "40ms" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["specialize", "--run", str(run.path), "--device", "flops", "--latency", "10ms"])
    assert err.value.code == 2 and "--macs" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(run.path, bare, ignore=shutil.ignore_patterns("predictors", "specialized"))
    with pytest.raises(OFAError, match="fit-predictor"):
        ofa.specialize(bare, device="pixel1", latency="5ms")


def test_archs_only_with_ofa_predictor(tmp_path, capsys):
    """Arch-only search with OFA's published predictor: the shipped safetensors through the API, and the same tensors
    as an original-style `.pth` state dict through the CLI."""
    from safetensors.numpy import load_file

    from elastic.spaces import get_space
    from predictors import ofa_predictor
    from predictors.latency import get_latency_predictor

    ofa_pth = tmp_path / "mbv3-w1.2_imagenet_acc_predictor.pth"
    torch.save({k: torch.from_numpy(v.copy()) for k, v in load_file(str(ofa_predictor.SHIPPED)).items()}, ofa_pth)
    (res,) = ofa.specialize(device="note10", latency="25ms", space="mbv3-w1.2",
                            accuracy_predictor=ofa_predictor.SHIPPED)
    sp = get_space("mbv3-w1.2")
    assert res.path is None and res.predicted_latency_ms <= 25.0
    assert float(get_latency_predictor("note10", sp).predict([res.arch])[0]) == pytest.approx(res.predicted_latency_ms)
    acc_pred = ofa_predictor.load_ofa_predictor()
    assert res.predicted_accuracy == pytest.approx(float(acc_pred.predict([res.arch])[0]))
    assert res.predicted_accuracy > float(acc_pred.predict([sp.smallest()])[0]) + 0.02   # the budget was used
    assert res.predicted_latency_ms > 0.8 * 25.0
    doc = _cli_json(capsys, ["--space", "mbv3-w1.2", "--accuracy-predictor", str(ofa_pth), "--device", "note10",
                             "--latency", "25ms", "--out", str(tmp_path)])
    assert doc["path"] == str(tmp_path / "note10@25ms")
    meta = json.loads((tmp_path / "note10@25ms" / "arch.json").read_text())
    assert meta["arch"] == doc["arch"] and not (tmp_path / "note10@25ms" / "model.safetensors").exists()
    with pytest.raises(OFAError, match="architecture only"):
        ofa.load(tmp_path / "note10@25ms")


def test_resolution_limits_the_search_and_names_the_folder(run, lat_range, capsys):
    budget = f"{(lat_range[0] + lat_range[1]) / 2:.3f}ms"
    doc = _cli_json(capsys, ["--run", str(run.path), "--device", "pixel1", "--latency", budget, "--resolution", "16",
                             "--no-measure", "--allow-extrapolation"])
    folder = run.path / "specialized" / f"pixel1@{budget}-r16"
    assert doc["path"] == str(folder) and doc["arch"]["r"] == 16 and doc["resolutions"] == [16]
    meta = json.loads((folder / "arch.json").read_text())
    assert meta["arch"]["r"] == 16 and meta["provenance"]["resolutions_searched"] == [16]
    net = ofa.load(folder)
    assert net.arch.r == 16 and net(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    # the unrestricted search of the same budget keeps its own folder and records both resolutions
    (free,) = ofa.specialize(run.path, device="pixel1", latency=budget, measure=False, evaluate=False, **FAST)
    assert free.path == run.path / "specialized" / f"pixel1@{budget}" and folder.exists()
    assert json.loads((free.path / "arch.json").read_text())["provenance"]["resolutions_searched"] == [16, 20]
    (pl,) = ofa.specialize(run.path, device="pixel1", latency=budget, backend="proxyless", resolution=[20],
                           measure=False, evaluate=False, steps=4, budget_rounds=0, batch_size=8,
                           allow_extrapolation=True)
    assert pl.arch.r == 20 and pl.path.name == f"pixel1@{budget}-r20" and pl.predicted_latency_ms <= float(budget[:-2])
    for bad, says in (("18", "allowed: 16, 20"), ("big", "bad resolution 'big'")):
        with pytest.raises(SystemExit) as err:
            main(["specialize", "--run", str(run.path), "--device", "pixel1", "--latency", budget, "--resolution", bad])
        msg = capsys.readouterr().err.strip()
        assert err.value.code == 2 and "\n" not in msg and says in msg
