"""Published Once-for-All weights end to end, without the real downloads: checkpoints in the original's layout are
rebuilt from tests/data/ofa_reference (every reference file found there: nothing here names the three we have),
saved with torch.save as the original does, then imported, extracted, loaded, exported, recalibrated and
evaluated through the CLI, and matched to the logits the original code recorded."""
from __future__ import annotations

import collections
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ofa
from elastic import Arch, get_space
from elastic.ofa_compat import map_ofa_key, ofa_key, static_from_ofa_config
from ofa.cli import main
from ofa.run_dir import RunDir
from nontrivial_state import randomize
from test_elastic_ofa_compat import REFERENCE, _threads, case_input, rebuild_state_dict  # noqa: F401 (one thread)

FILES = sorted(REFERENCE.glob("*.json"))
NAMES = [p.stem for p in FILES]
PUBLISHED = REFERENCE.parent / "latency" / "published_nets"


class _Pickled:
    """A Python object: torch.save pickles it, torch.load(weights_only=True) must refuse it."""


def _reference(name: str) -> dict:
    return json.loads((REFERENCE / f"{name}.json").read_text())


def _save_original(manifest: list, path: Path, wrap: bool = True, edit=None) -> dict:
    """A checkpoint as the original saves it: the state dict in the manifest's key order, optionally edited."""
    sd = rebuild_state_dict(manifest)
    ordered = collections.OrderedDict((k, sd[k]) for k, _ in manifest)
    if edit is not None:
        edit(ordered)
    torch.save({"state_dict": ordered, "epoch": 180} if wrap else ordered, path)
    return ordered


def _cli(args, capsys) -> str:
    main(args)
    return capsys.readouterr().out


_PROGRESS_LINE = re.compile(r"  .+: \d+/\d+ images, \d+ img/s")


def _fails(args, capsys, watch: Path, needle: str) -> str:
    """One `error:` line naming `needle`, exit 2, and nothing new or changed under `watch`."""
    before = sorted((str(p), p.stat().st_size) for p in watch.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        main(args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # progress lines of work done before the failure may come first ("  train ...: 9/9 images, 88 img/s");
    # the failure itself is one `error:` line, the last one
    err = [line for line in lines if not _PROGRESS_LINE.fullmatch(line)]
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), (args, lines)
    assert lines[-1] == err[0], (args, lines)
    assert needle in err[0], err[0]
    assert sorted((str(p), p.stat().st_size) for p in watch.rglob("*")) == before, f"{args} wrote files"
    return err[0]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """name -> (checkpoint path, run path) for every reference file, imported with --space."""
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for name in NAMES:
        ckpt = root / f"ofa_{name}.pth"
        _save_original(_reference(name)["manifest"], ckpt)
        main(["import-ofa", str(ckpt), "--space", _reference(name)["space"], "--run", str(root / name)])
        out[name] = (ckpt, root / name)
    return out


def _image_folder(root: Path, n_classes: int, per_class: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in range(n_classes):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                base = rng.integers(0, 255, 3) * (c + 1) % 255
                img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("name", NAMES)
def test_import_and_extract_match_the_original_logits(name, imported, capsys, tmp_path):
    """The recorded archs, given in turn as ks/e/d/r, as OFA's {r: [r]}, and as the subnet's net_config file."""
    data = _reference(name)
    ckpt, run = imported[name]
    space = get_space(data["space"], n_classes=data["n_classes"])
    for i, case in enumerate(data["cases"]):
        arch = {k: case[k] for k in ("ks", "e", "d", "r")}
        given = [json.dumps(arch), json.dumps({**arch, "r": [case["r"]]})]
        cfg_file = tmp_path / f"net{i}.config"
        cfg_file.write_text(json.dumps({"name": "x", "image_size": case["r"], "net_config": case["net_config"]}))
        given.append(str(cfg_file))
        folder = tmp_path / f"x{i}"
        out = _cli(["extract", "--run", str(run), "--arch", given[i % 3], "--no-recalibrate", "--out", str(folder)],
                   capsys)
        assert "supernet's own" in out
        net = ofa.load(folder)
        assert space.canonical(net.arch) == space.canonical(Arch(case["ks"], case["e"], case["d"], case["r"]))
        with torch.no_grad():
            y = net(case_input(i, case["r"]))
        torch.testing.assert_close(y, torch.tensor(case["logits"]), rtol=0, atol=1e-4)
        meta = json.loads((folder / "arch.json").read_text())
        assert meta["bn_statistics"].startswith("the supernet's own")
        assert meta["input"]["mean"] == [0.485, 0.456, 0.406]


def test_run_directory_holds_the_checked_weights_and_their_provenance(imported, capsys, tmp_path):
    import hashlib

    for name in NAMES:
        data = _reference(name)
        ckpt, run = imported[name]
        rd = RunDir(run)
        assert rd.load_space().name == data["space"] and rd.load_space().n_classes == data["n_classes"]
        assert rd.trained_stages() == ["full", "kernel", "depth", "expand"]
        got = rd.load_state_dict()
        original = rebuild_state_dict(data["manifest"])
        assert set(got) == {map_ofa_key(k) for k in original}
        assert all(torch.equal(got[map_ofa_key(k)], v) for k, v in original.items())
        facts = json.loads((run / "imported.json").read_text())
        assert facts["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
        assert facts["keys"] == len(data["manifest"]) and facts["fields"] == {"epoch": 180}
        described = rd.data_config()
        assert described["root"] is None and described["n_classes"] == data["n_classes"]
        assert described["resolutions"] == list(rd.load_space().resolutions)
        assert not (run / "predictors").exists()   # OFA's predictor is for mbv3-w1.2 on ImageNet's 1000 classes
    # a bare state dict, the space recognised from its shapes
    name = NAMES[0]
    bare = tmp_path / "bare.pth"
    _save_original(_reference(name)["manifest"], bare, wrap=False)
    out = _cli(["import-ofa", str(bare), "--run", str(tmp_path / "auto")], capsys)
    assert f"supernet {_reference(name)['space']}" in out and "ofa fit-predictor" in out
    assert RunDir(tmp_path / "auto").load_space().name == _reference(name)["space"]


def test_imagenet_supernet_gets_ofa_predictor_and_specializes_without_images(tmp_path, capsys):
    """mbv3-w1.2 with 1000 classes: ImageNet's description and OFA's predictor with its 160-224 px domain."""
    from predictors.accuracy import AccuracyPredictor
    from predictors.ofa_predictor import load_ofa_predictor

    data = _reference("mbv3-w1.2") if "mbv3-w1.2" in NAMES else pytest.skip("no mbv3-w1.2 reference")
    manifest = [[k, [1000] + s[1:] if k.startswith("classifier.") else s] for k, s in data["manifest"]]
    ckpt = tmp_path / "ofa_mbv3_d234_e346_k357_w1.2"
    _save_original(manifest, ckpt)
    run = tmp_path / "w12"
    out = _cli(["import-ofa", str(ckpt), "--space", "mbv3-w1.2", "--run", str(run)], capsys)
    assert "OFA's published ImageNet accuracy predictor" in out
    pred = AccuracyPredictor.load(run / "predictors")
    assert pred.meta["domain"]["resolutions"] == [160, 176, 192, 208, 224]
    archs = [Arch(c["ks"], c["e"], c["d"], c["r"]) for c in data["cases"]]
    np.testing.assert_allclose(pred.predict(archs), load_ofa_predictor().predict(archs), rtol=0, atol=1e-6)
    described = RunDir(run).data_config()
    assert len(described["classes"]) == 1000 and described["classes"][0] == "tench"
    res = json.loads(_cli(["specialize", "--run", str(run), "--device", "note10", "--latency", "25ms",
                           "--no-measure", "--json"], capsys))
    assert 160 <= res["arch"]["r"] <= 224 and res["test_accuracy"] is None
    assert "BN statistics are the supernet's own" in res["note"]
    meta = json.loads((Path(res["path"]) / "arch.json").read_text())
    assert meta["classes"] == described["classes"] and meta["input"]["std"] == [0.229, 0.224, 0.225]
    assert "classes" not in meta["provenance"]["data"]


def _eval_crop(path: Path, r: int) -> torch.Tensor:
    """The original's evaluation transform, written out: shorter side ceil(r / 0.875), center r x r crop."""
    img = Image.open(path).convert("RGB")
    s = math.ceil(r / 0.875)
    w, h = img.size
    size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    img = img.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - r) / 2.0)), int(round((size[1] - r) / 2.0))
    x = torch.from_numpy(np.asarray(img.crop((left, top, left + r, top + r)), dtype=np.float32) / 255.0)
    x = x.permute(2, 0, 1)
    return (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def test_recalibration_and_evaluation_on_an_image_folder(imported, tmp_path, capsys):
    from elastic.bn_calibration import recalibrate_bn
    from ofa.imagefolder import get_imagefolder

    name = NAMES[0]
    data = _reference(name)
    n_classes = data["n_classes"]
    folder = _image_folder(tmp_path / "images", n_classes, {"train": 3, "val": 2})
    case = data["cases"][0]
    arch = json.dumps({k: case[k] for k in ("ks", "e", "d")} | {"r": 128})
    _, run = imported[name]
    out = tmp_path / "recalibrated"
    doc = json.loads(_cli(["extract", "--run", str(run), "--arch", arch, "--data", f"imagefolder:{folder}",
                           "--workers", "2", "--out", str(out), "--json"], capsys))
    net = ofa.load(out)
    # BN statistics: those of the calibration batches, decoded here in this process (two workers decoded them
    # for the CLI: the seeded per-image augmentation does not depend on who decodes)
    bundle = get_imagefolder(folder, workers=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (27, 3, 20)
    expected = RunDir(run).load_supernet().extract(Arch.from_json(arch))
    recalibrate_bn(expected, list(bundle.loader("train", batch_size=27, resolution=128, shuffle=True, seed=0)))
    for k, v in expected.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=1e-5)
    unrecalibrated = RunDir(run).load_supernet().extract(Arch.from_json(arch)).state_dict()
    assert not torch.allclose(net.stem.bn.running_mean, unrecalibrated["stem.bn.running_mean"])
    # test accuracy: the val/ folder through the original's evaluation transform, computed here independently
    images = sorted((folder / "val").glob("*/*.png"))
    x = torch.stack([_eval_crop(p, 128) for p in images])
    labels = torch.tensor([int(p.parent.name[-2:]) for p in images])
    with torch.no_grad():
        correct = int((net(x).argmax(1) == labels).sum())
    assert doc["test_accuracy"] == correct / len(images)
    streamed = torch.cat([b for b, _ in bundle.loader("test", batch_size=8, resolution=128)])
    order = [images.index(Path(p)) for p, _ in bundle.test.samples]
    torch.testing.assert_close(streamed, x[order], rtol=0, atol=1e-5)
    assert doc["cost"]["calib_images"] == 27 and doc["cost"]["eval_images"] == 20
    meta = json.loads((Path(doc["path"]) / "arch.json").read_text())
    assert meta["bn_statistics"].startswith("recalibrated on 27 training images")
    assert meta["classes"] == [f"class{c:02d}" for c in range(n_classes)]


def test_specialize_with_image_folder_recalibrates_and_evaluates(imported, tmp_path, capsys):
    from elastic.complexity import macs
    from predictors.accuracy import AccuracyPredictor
    import random

    name = next((n for n in NAMES if _reference(n)["space"].startswith("mbv3")), None) or pytest.skip("no mbv3")
    _, run = imported[name]
    work = tmp_path / "run"
    import shutil

    shutil.copytree(run, work)
    sp = RunDir(work).load_space()
    rng = random.Random(0)
    archs = [sp.sample(rng, r=(160, 192, 224)) for _ in range(40)]
    AccuracyPredictor.fit(sp, archs, macs(sp, archs) / 1e9, kind="ridge").save(work / "predictors")
    folder = _image_folder(tmp_path / "images", sp.n_classes, {"train": 2, "val": 1})
    res = json.loads(_cli(["specialize", "--run", str(work), "--device", "note10", "--latency", "30ms", "--no-measure",
                           "--data", f"imagefolder:{folder}", "--json"], capsys))
    assert res["test_accuracy"] is not None and res["cost"]["calib_images"] == 2 * sp.n_classes - 2
    meta = json.loads((Path(res["path"]) / "arch.json").read_text())
    assert meta["bn_statistics"].startswith("recalibrated") and meta["measured"]["test_accuracy"] == res["test_accuracy"]
    three = _image_folder(tmp_path / "three", 3, {"train": 2, "val": 1})
    _fails(["specialize", "--run", str(work), "--device", "note10", "--latency", "20ms", "--data",
            f"imagefolder:{three}"], capsys, work, "has 3 classes but the network's head has")


def _published_net(tmp_path: Path, n_classes: int | None = None) -> tuple[Path, dict, torch.nn.Module]:
    """OFA's folder for one published net (net.config, init, run.config) with random weights."""
    path = next(PUBLISHED.glob("note10_*.json"), None) or pytest.skip("no published net")
    cfg = json.loads(path.read_text())
    if n_classes is not None:
        cfg["net_config"]["classifier"]["out_features"] = n_classes
    net = randomize(static_from_ofa_config(cfg)).eval()
    folder = tmp_path / "published"
    folder.mkdir()
    torch.save({"state_dict": {ofa_key(k, dynamic=False): v.contiguous() for k, v in net.state_dict().items()}},
               folder / "init")
    (folder / "net.config").write_text(json.dumps(cfg["net_config"]))
    (folder / "run.config").write_text(json.dumps({"image_size": cfg["image_size"]}))
    return folder, cfg, net


def test_published_specialized_net_loads_exports_and_predicts_latency(tmp_path, capsys):
    import onnxruntime as ort

    src, cfg, net = _published_net(tmp_path)
    out = tmp_path / "net"
    _cli(["import-ofa", str(src), "--out", str(out), "--export", "onnx"], capsys)
    loaded = ofa.load(out)
    x = torch.randn(2, 3, cfg["image_size"], cfg["image_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net(x)
        torch.testing.assert_close(loaded(x), ref, rtol=0, atol=0)
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-4)
    lat = [json.loads(_cli(["latency", "--device", "note10", "--config", str(c), "--json"], capsys))["latency_ms"]
           for c in (out / "arch.json", next(PUBLISHED.glob("note10_*.json")))]
    assert lat[0] == lat[1] > 0
    # the weights file with --net-config works the same
    _cli(["import-ofa", str(src / "init"), "--net-config", str(src / "net.config"), "--image-size",
          str(cfg["image_size"]), "--out", str(tmp_path / "net2")], capsys)
    assert all(torch.equal(a, b) for a, b in zip(ofa.load(tmp_path / "net2").state_dict().values(),
                                                  loaded.state_dict().values()))


def test_published_net_is_evaluated_on_an_image_folder(tmp_path, capsys):
    src, cfg, net = _published_net(tmp_path, n_classes=4)
    folder = _image_folder(tmp_path / "images", 4, {"val": 3, "train": 1})
    doc = json.loads(_cli(["import-ofa", str(src), "--out", str(tmp_path / "net"), "--data", f"imagefolder:{folder}",
                           "--workers", "0", "--json"], capsys))
    images = sorted((folder / "val").glob("*/*.png"))
    r = cfg["image_size"]
    with torch.no_grad():
        pred = net(torch.stack([_eval_crop(p, r) for p in images])).argmax(1)
    correct = int((pred == torch.tensor([int(p.parent.name[-2:]) for p in images])).sum())
    assert doc["test_accuracy"] == correct / len(images)


def test_onnx_export_of_an_extracted_subnet_matches_the_original_in_onnx_runtime(imported, tmp_path, capsys):
    import onnxruntime as ort

    name = NAMES[-1]
    case = _reference(name)["cases"][1]
    out = tmp_path / "onnx"
    _cli(["extract", "--run", str(imported[name][1]), "--arch", json.dumps({k: case[k] for k in ("ks", "e", "d", "r")}),
          "--no-recalibrate", "--export", "onnx", "--out", str(out)], capsys)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": case_input(1, case["r"]).numpy()})[0]
    np.testing.assert_allclose(got, np.asarray(case["logits"]), rtol=0, atol=1e-4)


def test_bad_inputs_are_one_line_errors_and_write_nothing(imported, tmp_path, capsys):
    spaces = {_reference(n)["space"]: n for n in NAMES}
    first = NAMES[0]
    data = _reference(first)
    space = data["space"]
    manifest = data["manifest"]
    runs = tmp_path / "runs"
    runs.mkdir()
    target = str(runs / "x")
    # a checkpoint of another space or width names the space it looks like
    for other, name in spaces.items():
        if other != space:
            _fails(["import-ofa", str(imported[name][0]), "--space", space, "--run", target], capsys, runs,
                   f"looks like a checkpoint of the {other} supernet")
    # missing, extra and wrong-shaped keys
    matrix = next(k for k, _ in manifest if k.endswith("7to5_matrix"))
    bn = next(k for k, s in manifest if k.endswith("bn.bn.weight"))
    edits = {"missing key": lambda sd: sd.pop(matrix),
             "unexpected key": lambda sd: sd.__setitem__("blocks.99.conv.point_linear.bn.bn.weight", torch.zeros(3)),
             "not a key of an OFA network": lambda sd: sd.__setitem__("head.fc.weight", torch.zeros(3)),
             "has shape": lambda sd: sd.__setitem__(bn, torch.zeros(sd[bn].shape[0] + 8))}
    for needle, edit in edits.items():
        bad = tmp_path / "bad.pth"
        _save_original(manifest, bad, edit=edit)
        _fails(["import-ofa", str(bad), "--space", space, "--run", target], capsys, runs, needle)
    # pickled objects, a truncated file, not a state dict, a static network given as a supernet, no such file
    torch.save({"state_dict": {"a": torch.zeros(1)}, "config": _Pickled()}, tmp_path / "pickled.pth")
    _fails(["import-ofa", str(tmp_path / "pickled.pth"), "--run", target], capsys, runs, "pickled Python objects")
    blob = imported[first][0].read_bytes()
    (tmp_path / "cut.pth").write_bytes(blob[: len(blob) // 2])
    _fails(["import-ofa", str(tmp_path / "cut.pth"), "--run", target], capsys, runs, "truncated or damaged")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    _fails(["import-ofa", str(tmp_path / "list.pth"), "--run", target], capsys, runs, "not a state dict")
    src, _, _ = _published_net(tmp_path)
    _fails(["import-ofa", str(src / "init"), "--run", target], capsys, runs, "not a supernet")
    _fails(["import-ofa", str(tmp_path / "nope.pth"), "--run", target], capsys, runs, "does not exist")
    _fails(["import-ofa", str(imported[first][0]), "--net-config", str(src / "net.config"), "--out", target], capsys,
           runs, "supernet")
    # an existing run is not replaced without --overwrite
    run = imported[first][1]
    _fails(["import-ofa", str(imported[first][0]), "--run", str(run)], capsys, run, "--overwrite")
    # archs outside the space, images of another class count, recalibration without images
    sp = get_space(space, n_classes=data["n_classes"])
    good = sp.largest(r=max(sp.resolutions)).to_dict()
    for arch, needle in (({**good, "ks": [9] * sp.n_blocks}, "'ks'[0] = 9 is not allowed"),
                         ({**good, "r": 236}, "'r' = 236 is not allowed"),
                         ({**good, "d": good["d"][:-1]}, "'d' has"),
                         ({"first_conv": {}, "blocks": [], "classifier": {}}, "net_config")):
        _fails(["extract", "--run", str(run), "--arch", json.dumps(arch), "--out", target], capsys, runs, needle)
    _fails(["extract", "--run", str(run), "--arch", "{nope", "--out", target], capsys, runs, "not valid JSON")
    three = _image_folder(tmp_path / "three", 3, {"train": 1, "val": 1})
    for cmd in (["extract", "--run", str(run), "--arch", json.dumps(good), "--out", target],
                ["import-ofa", str(imported[first][0]), "--run", target]):
        _fails(cmd + ["--data", f"imagefolder:{three}"], capsys, runs, "has 3 classes but the network's head has")
    _fails(["extract", "--run", str(run), "--arch", json.dumps(good), "--recalibrate", "--out", target], capsys, runs,
           "--recalibrate needs images")
    broken = _image_folder(tmp_path / "broken", data["n_classes"], {"train": 1, "val": 1})
    (broken / "val" / "class00" / "0.png").write_bytes(b"not an image")
    _fails(["extract", "--run", str(run), "--arch", json.dumps(good), "--data", f"imagefolder:{broken}", "--workers",
            "1", "--out", target], capsys, runs, "cannot read image")
    _fails(["extract", "--run", str(run), "--arch", json.dumps(good), "--data", f"imagefolder:{tmp_path / 'none'}",
            "--out", target], capsys, runs, "does not exist")
