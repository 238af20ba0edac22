"""Profiles for any device: probe networks and their kit, `ofa profile fit` (with and without a prior),
predictor domains and the search staying inside them, run-local profiles, batch latency."""
from __future__ import annotations

import ast
import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from elastic.errors import OFAError
from elastic.spaces import get_space
from predictors.fewshot import fit_timings, net_terms
from predictors.latency import LatencyPredictor, get_latency_predictor
from predictors.layer_regression import LayerRegression
from predictors.layers import FEATURES, net_layers
from predictors.probes import load_manifest, stratified_archs, write_probes
from predictors.profiles import load_profile, profile_from_dict

SPACE = "mbv3-w0.5-small"


def _cli(argv, capsys):
    """(exit code, stdout, stderr) of `ofa ARGV` run in this process."""
    from ofa.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    """Five probes of the half-width small space, batch 2 (written once for the module)."""
    out = tmp_path_factory.mktemp("probes") / "probes"
    write_probes(get_space(SPACE), out, n=5, batch=2, seed=3)
    return out


# ---- probes ----------------------------------------------------------------------------------------------
def test_stratified_probes_span_the_space():
    space = get_space("mbv3-w1.0")
    archs = stratified_archs(space, 14, seed=0)
    assert archs[0] == space.smallest() and archs[1] == space.largest()
    assert len({space.canonical(a) for a in archs}) == 14
    rest = archs[2:]
    assert {a.r for a in rest} == set(space.resolutions)           # 12 probes over 7 resolutions: each one
    mean_k = [np.mean(a.ks) for a in rest]
    assert min(mean_k) < 4.2 and max(mean_k) > 5.8                  # kernel levels spread (uniform: ~5 +- 0.5)
    with pytest.raises(OFAError, match="at least 2"):
        stratified_archs(space, 1)


def test_probe_manifest_round_trip_and_onnx_runs_with_declared_shape(probe_dir):
    import hashlib

    import onnxruntime as ort

    m = load_manifest(probe_dir)
    space = get_space(SPACE)
    assert m.space.name == SPACE and m.batch == 2 and sorted(m.probes) == ["p000", "p001", "p002", "p003", "p004"]
    assert m.probes["p000"].arch == space.smallest() and m.probes["p001"].arch == space.largest()
    data = json.loads((probe_dir / "manifest.json").read_text())
    assert data["format"] == "ofa-probes" and data["version"] == 1 and data["space"]["name"] == SPACE
    for p in m.probes.values():
        assert p.input_shape == (2, 3, p.arch.r, p.arch.r)
        blob = (probe_dir / p.file).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == p.sha256
        sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        (inp,) = sess.get_inputs()
        assert inp.name == "x" and list(inp.shape) == list(p.input_shape)
        (y,) = sess.run(None, {"x": np.random.default_rng(0).standard_normal(p.input_shape).astype(np.float32)})
        assert y.shape == (2, space.n_classes) and np.isfinite(y).all()
    template = list(csv.reader((probe_dir / "timings.csv").open()))
    assert template[0] == ["network", "latency_ms"] and [r[0] for r in template[1:]] == sorted(m.probes)
    readme = (probe_dir / "README.md").read_text()
    assert "onnxruntime_perf_test" in readme and "latency_ms" in readme and "batch of 2" in readme
    with pytest.raises(OFAError, match="already holds probes"):
        write_probes(space, probe_dir, n=3)


def test_timing_script_needs_only_numpy_and_onnxruntime():
    from predictors.probes import KIT

    tree = ast.parse((KIT / "time_probes.py").read_text())
    imported = {n.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for n in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - set(sys.stdlib_module_names) == {"numpy", "onnxruntime"}


def test_script_times_probes_and_profile_fit_accepts_its_csv(probe_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OFA_HOME", str(tmp_path / "home"))
    out = tmp_path / "t.csv"
    subprocess.run([sys.executable, str(probe_dir / "time_probes.py"), "--only", "p000,p001,p002", "--rounds", "2",
                    "--repeats", "1", "--warmup", "1", "--out", str(out)], check=True, capture_output=True)
    rows = list(csv.DictReader(out.open()))
    assert [r["network"] for r in rows] == ["p000", "p001", "p002"]
    assert all(float(r["latency_ms"]) > 0 and r["space"] == SPACE and r["batch"] == "2" for r in rows)
    assert float(rows[1]["latency_ms"]) > float(rows[0]["latency_ms"])        # the largest is slower than the smallest
    code, text, err = _cli(["profile", "fit", "--timings", str(out), "--probes", str(probe_dir), "--name", "board",
                            "--json"], capsys)
    assert code == 0, err
    report = json.loads(text)
    assert report["kind"] == "regression" and report["batch"] == 2 and report["error"]["timed_nets"] == 3
    assert report["error"]["chosen"] == "macs"                  # the only model 3 nets support without a prior
    import ofa

    api = ofa.fit_profile(out, "board-api", probes=probe_dir)           # the Python API does the same
    assert api.path == tmp_path / "home" / "profiles" / "board-api.json" and api.error["chosen"] == "macs"
    code, text, _ = _cli(["devices", "--json"], capsys)
    row = next(r for r in json.loads(text) if r["name"] == "board")
    assert row["timed_nets"] == 3 and row["meaning"] == "time per batch of 2" and "leave-one-out" in row["error"]
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"space": SPACE, "n_classes": 10, "arch": get_space(SPACE).sample(random.Random(1)).to_dict()}))
    code, text, _ = _cli(["latency", "--device", "board", "--config", str(arch), "--json"], capsys)
    assert code == 0 and json.loads(text)["latency_ms"] > 0 and json.loads(text)["batch"] == 2


# ---- fitting on synthetic timings from known per-layer models --------------------------------------------
def _nets(space_name, n, seed):
    space = get_space(space_name)
    rng = random.Random(seed)
    return [space.net_spec(space.sample(rng)) for _ in range(n)]


def test_fit_with_prior_recovers_per_op_scales_and_overhead():
    prior = load_profile("pixel1")
    pp = LatencyPredictor(prior)
    truth = {"prior:dense": 1.5, "prior:k3": 1.2, "prior:k5": 1.0, "prior:k7": 0.7, "head_const": 0.03}
    idx = {t: i for i, t in enumerate(FEATURES + ("prior:dense", "prior:k3", "prior:k5", "prior:k7"))}

    def device(nets):
        T = np.stack([net_terms(n, pp) for n in nets])
        return sum(T[:, idx[t]] * c for t, c in truth.items())

    rng = np.random.default_rng(0)
    fit_nets, fresh = _nets(SPACE, 16, 0), _nets(SPACE, 40, 1)
    ms = device(fit_nets) * (1 + 0.002 * rng.standard_normal(16))
    prof = fit_timings(fit_nets, ms, "synthetic", prior=prior, spaces=[SPACE])
    assert prof.kind == "transfer" and prof.error["chosen"] == "per-op-scales"
    assert prof.error["loo"]["mape_pct"] < 0.5 and prof.error["loo"]["kendall_tau"] > 0.95
    for term, value in truth.items():   # the fixed overhead is a small share of each time: less well pinned
        assert prof.transfer.coef[term] == pytest.approx(value, rel=0.1 if term == "head_const" else 0.03), term
    # saved and loaded, it prices fresh networks as the device does, batched and per network alike
    loaded = profile_from_dict(json.loads(json.dumps(prof.to_dict())), "test")
    pred = get_latency_predictor(loaded)
    got = np.array([pred.predict_net(n) for n in fresh])
    np.testing.assert_allclose(got, device(fresh), rtol=0.01)
    space = get_space(SPACE)
    archs = [space.sample(random.Random(7)) for _ in range(6)]
    np.testing.assert_allclose(get_latency_predictor(loaded, space).predict(archs),
                               [pred.predict_net(space.net_spec(a)) for a in archs], rtol=1e-9)
    # three timings: only the models with at most 2 parameters compete, and one of them is chosen
    few = fit_timings(fit_nets[:3], ms[:3], "few", prior=prior)
    assert few.error["params"] <= 2 and few.error["timed_nets"] == 3
    assert {r["model"] for r in few.error["candidates"] if "loo" in r} == {"macs", "scale", "scale+overhead"}


def test_fit_without_prior_recovers_a_per_layer_model():
    coef = np.random.default_rng(1).uniform(0.0, 1.0, len(FEATURES)) * 0.05
    truth = LayerRegression(coef)

    def true_ms(nets):
        return np.array([float(truth.predict_layers(net_layers(n)).sum()) for n in nets])

    fit_nets, fresh = _nets("mbv3-w1.0-small", 30, 2), _nets("mbv3-w1.0-small", 40, 3)
    prof = fit_timings(fit_nets, true_ms(fit_nets), "synthetic-np")
    assert prof.kind == "regression" and prof.error["loo"]["mape_pct"] < 0.5
    assert prof.error["chosen"] == "per-layer"
    pred = get_latency_predictor(prof)
    np.testing.assert_allclose([pred.predict_net(n) for n in fresh], true_ms(fresh), rtol=0.01)
    assert prof.domain.resolutions == (24, 28, 32) and prof.domain.families == ("mbv3",)


# ---- bad input --------------------------------------------------------------------------------------------
def _write_csv(path: Path, rows, header=("network", "latency_ms")):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.mark.parametrize("rows,says", [
    ([("p000", "1.0"), ("p009", "2.0"), ("p001", "3")], "neither a probe"),
    ([("p000", "1.0"), ("p000", "2.0"), ("p001", "3")], "listed twice"),
    ([("p000", "fast"), ("p001", "2.0"), ("p002", "3")], "not a number"),
    ([("p000", "0"), ("p001", "2.0"), ("p002", "3")], "must be positive"),
    ([("p000", "-1.5"), ("p001", "2.0"), ("p002", "3")], "must be positive"),
    ([("p000", "nan"), ("p001", "2.0"), ("p002", "3")], "positive time"),
    ([("p000", "1.0"), ("p001", "2.0")], "needs at least 3"),
    ([("broken.json", "1.0"), ("p001", "2.0"), ("p002", "3")], "not valid JSON"),
])
def test_bad_timings_are_one_line_exit_2_and_nothing_saved(probe_dir, tmp_path, monkeypatch, capsys, rows, says):
    monkeypatch.setenv("OFA_HOME", str(tmp_path / "home"))
    (tmp_path / "broken.json").write_text("{not json")
    csv_path = _write_csv(tmp_path / "t.csv", rows)
    code, _, err = _cli(["profile", "fit", "--timings", str(csv_path), "--probes", str(probe_dir), "--name", "bad"],
                        capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "home" / "profiles").exists()


def test_other_bad_fits(probe_dir, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("OFA_HOME", str(home))
    good = _write_csv(tmp_path / "t.csv", [("p000", "1"), ("p001", "4"), ("p002", "2"), ("p003", "2.5")])

    def fails(args, says):
        code, _, err = _cli(["profile", "fit", "--timings", str(good), "--probes", str(probe_dir), *args], capsys)
        assert code == 2 and err.count("\n") == 1 and says in err, err

    # probes timed from another probe set / space (the kit's script writes these columns)
    other = _write_csv(tmp_path / "o.csv", [("p000", "1", "mbv3-w1.0"), ("p001", "4", "mbv3-w1.0"), ("p002", "2", "mbv3-w1.0")],
                       header=("network", "latency_ms", "space"))
    code, _, err = _cli(["profile", "fit", "--timings", str(other), "--probes", str(probe_dir), "--name", "x"], capsys)
    assert code == 2 and "was timed from space mbv3-w1.0" in err
    # a manifest of another version
    old = tmp_path / "old_probes"
    old.mkdir()
    data = json.loads((probe_dir / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**data, "version": 99}))
    code, _, err = _cli(["profile", "fit", "--timings", str(good), "--probes", str(old), "--name", "x"], capsys)
    assert code == 2 and "version 99" in err
    # a prior of another space family (note10 models mbv3 only; these are proxyless networks)
    px = tmp_path / "px"
    write_probes(get_space("proxyless-w1.3-small"), px, n=3, seed=0)
    pcsv = _write_csv(px / "timings.csv", [("p000", "1"), ("p001", "3"), ("p002", "2")])
    code, _, err = _cli(["profile", "fit", "--timings", str(pcsv), "--name", "x", "--prior", "note10"], capsys)
    assert code == 2 and "same space family" in err
    fails(["--name", "x", "--model", "per-layer"], "needs at least 19")
    fails(["--name", "x", "--model", "scale"], "give --prior")
    fails(["--name", "x", "--prior", "params"], "cannot be a prior")
    fails(["--name", "../x"], "not allowed")
    fails(["--name", "pixel1"], "already exists")                   # would shadow a shipped profile
    assert not (home / "profiles").exists()
    code, _, _ = _cli(["profile", "fit", "--timings", str(good), "--probes", str(probe_dir), "--name", "mine"], capsys)
    assert code == 0
    first = (home / "profiles" / "mine.json").read_bytes()
    fails(["--name", "mine", "--prior", "pixel1"], "already exists")
    assert (home / "profiles" / "mine.json").read_bytes() == first  # not overwritten
    code, _, _ = _cli(["profile", "fit", "--timings", str(good), "--probes", str(probe_dir), "--name", "mine",
                       "--prior", "pixel1", "--force"], capsys)
    assert code == 0 and json.loads((home / "profiles" / "mine.json").read_text())["extra"]["prior"] == "pixel1"


def test_network_files_as_timed_networks(tmp_path, monkeypatch, capsys):
    """A user who timed published nets fits a profile from their files (OFA net_config / arch.json)."""
    monkeypatch.setenv("OFA_HOME", str(tmp_path / "home"))
    nets = Path(__file__).resolve().parent / "data" / "latency" / "published_nets"
    rows = [(str(nets / f"pixel1_lat-{ms}ms_top1-{acc}.json"), ms) for ms, acc in
            (("20", "71.4_finetune-25"), ("40", "74.9_finetune-25"), ("79", "78.7_finetune-75"), ("143", "80.1_finetune-75"))]
    good = _write_csv(tmp_path / "pub.csv", rows)
    code, text, err = _cli(["profile", "fit", "--timings", str(good), "--name", "pix", "--prior", "note10", "--json"],
                           capsys)
    assert code == 0, err
    report = json.loads(text)
    assert report["error"]["timed_nets"] == 4 and report["error"]["loo"]["mape_pct"] < 10
    assert report["domain"]["resolutions"] == [152, 172, 224, 240]


def _ofa_layout(published: Path, folder: Path) -> Path:
    """A published net as the original OFA ships its specialized nets: FOLDER/net.config (the bare net_config)
    and FOLDER/run.config (its image_size)."""
    doc = json.loads(published.read_text())
    folder.mkdir(parents=True)
    (folder / "net.config").write_text(json.dumps(doc["net_config"]))
    (folder / "run.config").write_text(json.dumps({"image_size": doc["image_size"], "test_batch_size": 500}))
    return folder


def test_original_ofa_folders_and_specialized_folders_as_timed_networks(tmp_path, monkeypatch, capsys):
    """OFA's specialized nets come as net.config + run.config: a CSV naming their folders (or the net.config
    files) fits the same profile as the single-file form, at the resolutions run.config gives."""
    monkeypatch.setenv("OFA_HOME", str(tmp_path / "home"))
    nets = Path(__file__).resolve().parent / "data" / "latency" / "published_nets"
    files = sorted(nets.glob("pixel1_lat-*.json"))
    ms = [f.name.split("_")[1][4:-2] for f in files]
    folders = [_ofa_layout(f, tmp_path / "ofa_specialized" / f.stem) for f in files]
    reports = []
    for name, rows in (("single", [(str(f), m) for f, m in zip(files, ms)]),
                       ("folders", [(f"ofa_specialized/{d.name}", m) for d, m in zip(folders, ms)]),
                       ("netconfig", [(str(d / "net.config"), m) for d, m in zip(folders, ms)])):
        csv_path = _write_csv(tmp_path / f"{name}.csv", rows)
        code, text, err = _cli(["profile", "fit", "--timings", str(csv_path), "--name", name, "--prior", "note10",
                                "--json"], capsys)
        assert code == 0, err
        reports.append(json.loads(text))
    assert reports[0]["domain"]["resolutions"] == [152, 172, 224, 240]
    for r in reports[1:]:
        assert r["domain"]["resolutions"] == reports[0]["domain"]["resolutions"]
        assert r["domain"]["families"] == reports[0]["domain"]["families"]
        assert r["error"]["loo"] == pytest.approx(reports[0]["error"]["loo"])
    # `ofa latency` reads the same folder, and --image-size still overrides run.config
    code, text, err = _cli(["latency", "--device", "pixel1", "--config", str(folders[0]), "--json"], capsys)
    code2, text2, _ = _cli(["latency", "--device", "pixel1", "--config", str(files[0]), "--json"], capsys)
    assert code == code2 == 0, err
    assert json.loads(text) == json.loads(text2)
    code, text, _ = _cli(["latency", "--device", "pixel1", "--config", str(folders[0]), "--image-size", "160",
                          "--json"], capsys)
    assert code == 0 and json.loads(text)["image_size"] == 160
    # a folder `ofa specialize` writes (arch.json) is a network too
    space = get_space("mbv3-w1.0")
    arch = space.sample(random.Random(0))
    mine = tmp_path / "specialized" / "cpu@5ms"
    mine.mkdir(parents=True)
    (mine / "arch.json").write_text(json.dumps({"space": space.to_dict(), "arch": arch.to_dict(), "n_classes": 1000}))
    code, text, err = _cli(["latency", "--device", "note10", "--config", str(mine), "--json"], capsys)
    assert code == 0 and json.loads(text)["image_size"] == arch.r, err
    # what cannot be read is one line, exit 2
    (folders[1] / "run.config").write_text(json.dumps({"image_size": [160, 224]}))
    (tmp_path / "empty").mkdir()
    for config, says in ((folders[1], "names no single resolution"), (tmp_path / "empty", "holds no network")):
        code, _, err = _cli(["latency", "--device", "pixel1", "--config", str(config)], capsys)
        assert code == 2 and err.count("\n") == 1 and says in err, err


# ---- domains and the search ------------------------------------------------------------------------------
FAST = {"population": 16, "generations": 6, "patience": 3, "init_samples": 200}


def test_search_stays_in_the_predictors_domain_and_extrapolates_only_when_asked(tmp_path):
    import ofa

    (res,) = ofa.specialize(space="mbv3-w1.2", device="note10", latency="15ms", **FAST)
    dom = res.extra["search_domain"]
    assert res.arch.r >= 160 and dom["restricted"] and dom["resolutions"] == [160, 176, 192, 208, 224]
    assert "extrapolated" not in res.extra
    with pytest.raises(OFAError, match=r"resolution 128 is outside the domain of OFA's accuracy predictor.*"
                                       r"latency profile 'note10'.*--allow-extrapolation"):
        ofa.specialize(space="mbv3-w1.2", device="note10", latency="15ms", resolution=128, **FAST)
    (ext,) = ofa.specialize(space="mbv3-w1.2", device="note10", latency="15ms", resolution=128,
                            allow_extrapolation=True, out_dir=tmp_path, **FAST)
    assert ext.arch.r == 128 and ext.extra["extrapolated"]["resolution"] == 128 and "extrapolated" in ext.note
    meta = json.loads((ext.path / "arch.json").read_text())
    assert meta["extrapolated"]["resolution"] == 128 and meta["provenance"]["resolutions_searched"] == [128]


def test_profile_fit_on_large_inputs_does_not_price_small_subnets(tmp_path):
    """A cpu-like profile measured on mbv3-w1.0 (128-224 px) refuses a 24-32 px space unless told to extrapolate."""
    import ofa
    from predictors.accuracy import AccuracyPredictor

    small = get_space("mbv3-w1.0-small")
    archs = [small.sample(random.Random(i)) for i in range(30)]
    acc = np.random.default_rng(0).uniform(0.5, 0.9, 30)
    AccuracyPredictor.fit(small, archs, acc, kind="ridge").save(tmp_path / "acc")
    big = get_space("mbv3-w1.0")
    nets = [big.net_spec(big.sample(random.Random(i))) for i in range(25)]
    prof = fit_timings(nets, [1 + n.resolution / 100 for n in nets], "cpu-like", spaces=["mbv3-w1.0"])
    prof.save(tmp_path / "cpu-like.json")
    with pytest.raises(OFAError, match=r"no resolution of space mbv3-w1.0-small \(24, 28, 32 px\) lies in the domain "
                                       r"of latency profile 'cpu-like': mbv3 nets at 128-224 px"):
        ofa.specialize(space="mbv3-w1.0-small", device=str(tmp_path / "cpu-like.json"), latency="2ms",
                       accuracy_predictor=tmp_path / "acc", **FAST)
    (r,) = ofa.specialize(space="mbv3-w1.0-small", device=str(tmp_path / "cpu-like.json"), latency="1e4ms",
                          accuracy_predictor=tmp_path / "acc", allow_extrapolation=True, **FAST)
    assert r.extra["extrapolated"]["outside"] and r.extra["search_domain"]["extrapolated"] == [24, 28, 32]


def test_accuracy_predictor_records_the_resolutions_of_its_data(tmp_path):
    from predictors.accuracy import AccuracyPredictor
    from predictors.ofa_predictor import load_ofa_predictor

    space = get_space("mbv3-w1.0-small")
    archs = [space.sample(random.Random(i), r=[28, 32]) for i in range(20)]
    pred = AccuracyPredictor.fit(space, archs, np.linspace(0.5, 0.9, 20), kind="ridge")
    pred.save(tmp_path)
    dom = AccuracyPredictor.load(tmp_path).domain
    assert dom.resolutions == (28, 32) and not dom.continuous and dom.spaces == ("mbv3-w1.0-small",)
    assert not dom.holds_resolution(24) and dom.holds("mbv3", 32) and not dom.holds("proxyless", 32)
    assert load_ofa_predictor().domain.resolutions == (160, 176, 192, 208, 224)


def test_shipped_and_legacy_profiles_have_domains(tmp_path):
    assert load_profile("note10").domain.resolutions == (160, 176, 192, 208, 224)
    assert load_profile("pixel1").domain.describe_resolutions() == "152-240 px"
    assert load_profile("flops").domain is None
    # a measured profile written before domains existed: derived from the subnets it timed
    legacy = load_profile("pixel1").to_dict()
    legacy.update(kind="measured", domain=None, space="mbv3-w1.0",
                  extra={"archs": [get_space("mbv3-w1.0").smallest(160).to_dict(), get_space("mbv3-w1.0").largest(192).to_dict()]})
    (tmp_path / "old.json").write_text(json.dumps(legacy))
    assert load_profile(tmp_path / "old.json").domain.describe_resolutions() == "160-192 px"


# ---- run-local profiles ---------------------------------------------------------------------------------------
def test_device_name_resolves_to_the_runs_own_profile_first(tmp_path, monkeypatch, capsys):
    from ofa.specialization import resolve_device

    monkeypatch.setenv("OFA_HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    with pytest.raises(OFAError) as exc:
        resolve_device("cpu", run)
    msg = str(exc.value)
    assert str(run / "profiles" / "cpu.json") in msg and str(tmp_path / "home" / "profiles" / "cpu.json") in msg
    prof = load_profile("pixel1")
    prof.name = "cpu"
    prof.save(run / "profiles" / "cpu.json")
    said = []
    got = resolve_device("cpu", run, said.append)
    assert got.path == run / "profiles" / "cpu.json" and said == [f"device 'cpu': using the run's own profile {got.path}"]
    cfg = tmp_path / "net.json"
    cfg.write_text(json.dumps({"space": "mbv3-w1.0", "arch": get_space("mbv3-w1.0").largest().to_dict()}))
    code, text, _ = _cli(["latency", "--device", "cpu", "--run", str(run), "--config", str(cfg), "--json"], capsys)
    assert code == 0 and json.loads(text)["device"] == "cpu"
    code, _, err = _cli(["latency", "--device", "cpu", "--config", str(cfg)], capsys)
    assert code == 2 and "ofa profile --device cpu" in err


# ---- batch latency, GPU --------------------------------------------------------------------------------------
def test_batch_option_times_whole_batches_and_the_profile_says_so(capsys):
    from predictors.measure import _Runner, build_module

    space = get_space(SPACE)
    net = space.net_spec(space.smallest())
    runner = _Runner(build_module(net), (3, 24, 24), "onnxruntime", 1, "cpu", batch=3)
    runner.run()
    prof = load_profile("pixel1")
    prof.batch = 64
    again = profile_from_dict(prof.to_dict(), "t")
    assert again.batch == 64 and again.meaning == "time per batch of 64"
    code, _, err = _cli(["profile", "--batch", "0"], capsys)
    assert code == 2 and "Invalid value for '--batch'" in err
    code, _, err = _cli(["profile", "--threads", "2", "probes", "--out", "x"], capsys)
    assert code == 2 and "after its name" in err


@pytest.mark.gpu
def test_cuda_profile_by_cuda_events_at_batch_64():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from predictors.measure import fit_measured_profile

    prof = fit_measured_profile(get_space(SPACE), name="gpu", device="cuda", runtime="torch", n_fit=20, n_test=3,
                                rounds=3, batch=64)
    assert prof.batch == 64 and prof.extra["clock"] == "CUDA events" and prof.extra["gpu"]["before"]["name"]
    assert all(v > 0 for v in prof.extra["measured_ms"])
