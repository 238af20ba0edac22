"""int8 export (`ofa export --format onnx-int8`, `ofa specialize --export onnx-int8`), `ofa.load_onnx`, int8 timing.

The network is the smallest `mbv3-w0.5-small` subnet at 16 px, trained for 80 Adam steps on scikit-learn digits
(about 87% test accuracy), saved as a specialized folder with its ONNX export.
"""
from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest
import torch

import ofa
from elastic.errors import OFAError
from ofa.cli import main

RES = 16
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle():
    from ofa.data import get_data

    return get_data("digits")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, bundle):
    import torch.nn.functional as F

    from elastic.spaces import get_space
    from elastic.static_net import StaticNet
    from ofa.specialized import save_specialized

    torch.manual_seed(0)
    space = get_space("mbv3-w0.5-small", n_classes=10, resolutions=(RES,))
    arch = space.smallest()
    net = StaticNet(space.net_spec(arch))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for epoch in range(4):
        for x, y in bundle.loader("train", batch_size=64, resolution=RES, shuffle=True, seed=epoch):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    meta = {"space": space.to_dict(), "arch": arch.to_dict(), "n_classes": 10, "measured": {"test_accuracy": None},
            "provenance": {"data": bundle.config},
            "input": {"resolution": RES, "channels": 3, "mean": list(bundle.mean), "std": list(bundle.std)}}
    x, _ = next(iter(bundle.loader("train", batch_size=4, resolution=RES)))
    return save_specialized(tmp_path_factory.mktemp("int8") / "net", net, meta, exports=("onnx",), example=x)


def _copy(folder, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(folder, dst)
    return dst


def _digests(folder):
    from ofa.specialization import file_digest

    return {p.name: file_digest(p) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def exported(folder, tmp_path_factory):
    """A copy of the folder quantized through the CLI (all parts int8), with its arch.json."""
    dst = tmp_path_factory.mktemp("int8x") / "net"
    shutil.copytree(folder, dst)
    main(["export", str(dst), "--format", "onnx-int8", "--calib-images", "200", "--float-parts", "none", "--json"])
    return dst, json.loads((dst / "arch.json").read_text())


def test_int8_export_agrees_with_fp32_and_loads_in_one_call(folder, exported, bundle):
    dst, meta = exported
    assert (dst / "model.int8.onnx").is_file() and "model.int8.onnx" in meta["files"]
    assert _digests(dst)["model.onnx"] == _digests(folder)["model.onnx"]   # the fp32 export is untouched
    sec = meta["int8"]
    assert sec["quantization"]["calib_images"] == 200 and sec["quantization"]["calib_split"] == "train"
    assert sec["coverage"]["int8_kernels"] > 10   # convolutions really run as int8 kernels
    test = sec["test"]
    assert test["images"] == len(bundle.test)
    assert test["fp32_accuracy"] > 0.7                       # a trained net, so agreement means something
    assert test["argmax_agreement"] >= 0.95
    assert abs(test["drop_points"]) <= 3.0
    assert test["drop_ci95_points"][0] <= test["drop_points"] <= test["drop_ci95_points"][1]
    assert meta["measured"]["int8_test_accuracy"] == test["int8_accuracy"]
    lat = sec["latency"]
    assert lat["fp32_ms"] > 0 and lat["int8_ms"] > 0 and meta["measured"]["int8_latency_ms"] == lat["int8_ms"]

    # one call each, same input conventions: name, NCHW normalized images, any batch size
    s32, s8 = ofa.load_onnx(dst), ofa.load_onnx(dst, precision="int8", threads=1)
    assert [i.name for i in s8.get_inputs()] == [i.name for i in s32.get_inputs()] == ["input"]
    x, _ = next(iter(bundle.loader("val", batch_size=64, resolution=RES)))
    x = x.contiguous().numpy()
    y32, y8 = s32.run(None, {"input": x})[0], s8.run(None, {"input": x})[0]
    assert y8.shape == y32.shape == (64, 10)
    assert np.abs(y8 - y32).max() <= 0.15 * (y32.max() - y32.min())   # bounded difference on real images
    assert (y8.argmax(1) == y32.argmax(1)).mean() >= 0.9
    assert np.allclose(s8.run(None, {"input": x[:1]})[0], y8[:1], atol=1e-5)
    with pytest.raises(OFAError, match="unknown precision 'fp16'"):
        ofa.load_onnx(dst, precision="fp16")


def test_calibration_is_reproducible(folder, bundle):
    from ofa.int8_export import calibration_images
    from predictors.quantize import prepare, quantize

    a = calibration_images(bundle, RES, 120, seed=0)
    b = calibration_images(bundle, RES, 120, seed=0)
    c = calibration_images(bundle, RES, 120, seed=1)
    assert sum(len(x) for x in a) == 120 and all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    fp32 = (folder / "model.onnx").read_bytes()
    pre = prepare(fp32)
    first, again, other = (quantize(fp32, imgs, prepared=pre) for imgs in (a, b, c))
    assert first == again          # same seed: the same model, byte for byte
    assert first != other          # other images: other activation ranges


def test_float_parts_stay_float(folder, bundle):
    from ofa.int8_export import calibration_images, choose_float_parts
    from predictors.quantize import int8_coverage, nodes_of_parts, part_names, prepare, quantize

    fp32 = (folder / "model.onnx").read_bytes()
    pre = prepare(fp32)
    names = part_names(pre)
    assert names[0] == "stem" and "head" in names and "hswish" in names and "block0" in names
    assert all(n.startswith("/stem/") for n in nodes_of_parts(pre, ["stem"]))
    with pytest.raises(OFAError, match="unknown float part 'block99'"):
        nodes_of_parts(pre, ["block99"])
    calib = calibration_images(bundle, RES, 100)
    full = int8_coverage(quantize(fp32, calib, prepared=pre))
    # a negative tolerance and gain force the search: both candidates are scored and kept, best first
    parts, model, record = choose_float_parts(fp32, pre, calib, bundle, RES, tolerance=-100, min_gain=-100,
                                              candidates=["stem", "head"])
    assert sorted(parts) == ["head", "stem"] and record["split"] == "val"
    assert set(record["single_part_accuracy"]) == {"stem", "head"}
    kept = int8_coverage(model)
    assert kept["int8_kernels"] < full["int8_kernels"] and kept["float_ops"] > full["float_ops"]


def test_bad_inputs_are_one_line_and_leave_fp32_files(folder, exported, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file, save_file

    import predictors.quantize as quantize

    def fails(path, *extra, match):
        before = _digests(path)
        with pytest.raises(SystemExit) as exc:
            main(["export", str(path), "--format", "onnx-int8", "--no-measure", *extra])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and match in err, err
        assert _digests(path) == before and not (path / "model.int8.onnx").exists()

    missing = _copy(folder, tmp_path, "missing")
    (missing / "model.onnx").unlink()
    fails(missing, match="has no model.onnx")

    stale = _copy(folder, tmp_path, "stale")   # weights changed after the export (as fine-tuning in place would)
    state = load_file(str(stale / "model.safetensors"))
    state["classifier.bias"] = state["classifier.bias"] + 1.0
    save_file(state, str(stale / "model.safetensors"))
    fails(stale, match="is stale: model.safetensors changed")
    # the remedy the message names: re-export onnx from the current weights, then quantize
    main(["export", str(stale), "--format", "onnx,onnx-int8", "--float-parts", "none", "--no-measure",
          "--no-evaluate", "--json"])
    fixed = json.loads(capsys.readouterr().out)
    assert fixed["written"] == ["model.onnx", "model.int8.onnx"]
    assert ofa.load_onnx(stale, precision="int8").get_inputs()[0].name == "input"

    ok = _copy(folder, tmp_path, "ok")
    fails(ok, "--calib-images", "50", match="needs at least 100 images")
    fails(ok, "--calib-images", "100000", match="training split has")
    fails(ok, "--float-parts", "block99", match="unknown float part")

    monkeypatch.setattr(quantize, "FUSING_LEVEL", "ORT_DISABLE_ALL")   # a runtime that does not fuse QDQ to int8
    quantize._probe.cache_clear()
    try:
        fails(ok, match="has no int8 kernels")
    finally:
        quantize._probe.cache_clear()

    # an int8 model whose weights changed since is refused on load too
    dst, _ = exported
    stale8 = _copy(dst, tmp_path, "stale8")
    save_file(state, str(stale8 / "model.safetensors"))
    with pytest.raises(OFAError, match="stale"):
        ofa.load_onnx(stale8, precision="int8")


def _fake_timings(monkeypatch):
    """measure_nets replaced by a MACs-proportional stand-in (records the precision asked for)."""
    import predictors.measure as measure
    from elastic.netspec import net_macs

    asked, signature = [], inspect.signature(measure.measure_nets)

    def timed(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        asked.append(bound.arguments.get("precision"))
        return np.array([1e-7 * net_macs(n) + 0.05 for n in bound.arguments["nets"]])

    monkeypatch.setattr(measure, "measure_nets", timed)
    return asked


def test_specialize_for_cpu_int8_exports_int8_and_resave_drops_it(tmp_path, monkeypatch):
    """`ofa specialize --device cpu-int8 --export onnx-int8`: the result is timed here in int8 and quantized."""
    import predictors.quantize as quantize
    from elastic.complexity import macs
    from elastic.spaces import get_space
    from elastic.supernet import Supernet
    from ofa.accuracy_data import plan_subnets
    from ofa.export import parse_exports
    from ofa.run_dir import RunDir
    from predictors.accuracy import AccuracyPredictor

    assert parse_exports("onnx-int8") == ("onnx", "onnx-int8")
    # the supernet is untrained (near-chance accuracy): no float parts to search for (tested above)
    monkeypatch.setattr("ofa.int8_export.DEFAULT_FLOAT_PARTS", "none")
    torch.manual_seed(0)
    space = get_space("mbv3-w0.5-small", n_classes=10, resolutions=(RES,))
    rd = RunDir(tmp_path / "run")
    rd.save_space(space)
    rd.save_data_config({"name": "digits", "subset_size": 300, "eval_size": 100})
    rd.save_weights(Supernet(space), space)
    archs = plan_subnets(space, 30, seed=0)
    m = macs(space, archs)
    AccuracyPredictor.fit(space, archs, 0.5 + 0.4 * (m - m.min()) / (m.max() - m.min()), kind="ridge").save(
        rd.path / "predictors")
    # an int8 profile of this space, fit on stand-in timings (the real ones are the hook's, tested below)
    from predictors.measure import fit_measured_profile
    from predictors.profiles import save_user_profile

    monkeypatch.setenv("OFA_HOME", str(tmp_path))
    with monkeypatch.context() as patched:
        asked = _fake_timings(patched)
        save_user_profile(fit_measured_profile(space, name="cpu-int8", n_fit=20, n_test=3, precision="int8"))
    assert asked == ["int8"]
    timed = []
    real = quantize.quantize_for_timing
    monkeypatch.setattr(quantize, "quantize_for_timing", lambda model, x: timed.append(x.shape) or real(model, x))
    (res,) = ofa.specialize(rd.path, device="cpu-int8", latency="1000ms", export="onnx-int8", calib_images=64,
                            population=16, generations=3, patience=2, init_samples=50)
    assert timed == [(1, 3, RES, RES)] and res.measured_latency_ms > 0   # measured here, in int8
    meta = json.loads((res.path / "arch.json").read_text())
    assert {"model.onnx", "model.int8.onnx"} <= set(meta["files"]) and res.extra["int8"]["test"]["images"] == 100
    assert meta["exports"]["model.int8.onnx"]["source_sha256"] == meta["exports"]["model.onnx"]["sha256"]
    assert meta["measured"]["int8_test_accuracy"] == res.extra["int8"]["test"]["int8_accuracy"]
    # a folder re-saved from this arch.json (as fine-tuning does) carries no int8 figures of the old net
    from ofa.specialized import load, save_specialized

    again = save_specialized(tmp_path / "resaved", load(res.path), {k: v for k, v in meta.items() if k != "files"})
    new = json.loads((again / "arch.json").read_text())
    assert "int8" not in new and "int8_test_accuracy" not in new["measured"] and new["exports"] == {}


def test_int8_timing_hook_times_the_quantized_net(monkeypatch):
    import predictors.quantize as quantize
    from elastic.spaces import get_space
    from predictors.measure import measure_nets

    real, kernels = quantize.quantize_for_timing, []

    def spy(model, example):
        out = real(model, example)
        kernels.append(quantize.int8_coverage(out)["int8_kernels"])
        return out

    monkeypatch.setattr(quantize, "quantize_for_timing", spy)
    space = get_space("mbv3-w0.5-small")
    ms = measure_nets([space.net_spec(space.smallest())], precision="int8", rounds=2, repeats=1, warmup=1,
                      turn_warmup=1)
    assert len(kernels) == 1 and kernels[0] > 10 and ms.shape == (1,) and 0 < ms[0] < 1e3
    with pytest.raises(OFAError, match="int8 latency is measured with onnxruntime on the cpu"):
        measure_nets([], runtime="torch", precision="int8")


def test_profile_precision_option_records_itself(tmp_path, monkeypatch, capsys):
    """`ofa profile --precision int8` measures with precision int8 (the hook above) and says so in the profile
    it saves as `cpu-int8`; the timings here are a stand-in (a MACs-proportional latency) to keep it fast."""
    from predictors.profiles import load_profile

    monkeypatch.setenv("OFA_HOME", str(tmp_path))
    asked = _fake_timings(monkeypatch)
    main(["profile", "--precision", "INT8", "--space", "mbv3-w0.5-small", "--fit", "20", "--test", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "cpu-int8" and asked == ["int8"]
    prof = load_profile("cpu-int8")
    assert prof.extra["precision"] == "int8" and "int8" in prof.description and prof.error["test"]["n"] == 3
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--precision", "fp16"])
    assert exc.value.code == 2 and "unknown precision 'fp16'" in capsys.readouterr().err


def test_int8_probes_are_quantized_and_say_so(tmp_path, capsys):
    import onnx

    main(["profile", "probes", "--space", "mbv3-w0.5-small", "--n", "2", "--out", str(tmp_path / "p"),
          "--precision", "int8", "--json"])
    capsys.readouterr()
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    for probe in manifest["probes"]:
        ops = {n.op_type for n in onnx.load(str(tmp_path / "p" / probe["file"])).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
