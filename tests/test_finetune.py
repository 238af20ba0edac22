"""`ofa finetune` / `ofa.finetune`: fine-tuning a specialized net end to end on tiny runs.

The runs are `mbv3-w1.0-small` supernets at 16/20 px whose full stage is trained for a few steps (on scikit-learn
digits; on Fashion-MNIST for the transfer test), specialized with a cheap ridge predictor on the flops proxy.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ofa
from elastic.errors import OFAError
from ofa.cli import main
from ofa.run_dir import RunDir
from ofa.training.finetune import FinetuneConfig, finetune
from test_faults import _one_error  # noqa: E402 (one line on stderr, exit 2)

SPACE = "mbv3-w1.0-small"
CALIB = 64
FAST = {"population": 24, "generations": 5, "patience": 3, "init_samples": 100}
QUIET = dict(progress=False, threads=1, calib_images=CALIB)


pytestmark = pytest.mark.usefixtures("one_thread")


def _specialized_run(root: Path, data: str, steps: int = 8, kernel_steps: int = 0) -> tuple[RunDir, Path]:
    """A run whose full stage is trained for `steps` steps (then the kernel stage for `kernel_steps`), and one net
    specialized from it."""
    from elastic.complexity import macs
    from ofa.accuracy_data import plan_subnets
    from ofa.training import TrainConfig, train
    from predictors.accuracy import AccuracyPredictor

    run = root / "run"
    common = dict(run=str(run), epochs=1, space=SPACE, resolutions=[16, 20], schedule="quick", batch_size=32,
                  data={"name": data, "subset_size": 256, "eval_size": 128}, seed=3, progress=False,
                  stage_eval=False, eval_every=0, calib_images=CALIB, threads=1)
    train(TrainConfig(stage="full", max_steps=steps, **common), log=lambda m: None)
    if kernel_steps:
        train(TrainConfig(stage="kernel", max_steps=kernel_steps, **common), log=lambda m: None)
    rd = RunDir(run)
    space = rd.load_space()
    archs = plan_subnets(space, 30, seed=0)
    m = macs(space, archs)
    AccuracyPredictor.fit(space, archs, 0.5 + 0.4 * (m - m.min()) / (m.max() - m.min()), kind="ridge").save(
        rd.path / "predictors")
    lo, hi = macs(space, [space.smallest(), space.largest()])
    (res,) = ofa.specialize(run, device="flops", macs=f"{(lo + 0.5 * (hi - lo)) / 1e6:.1f}M", calib_images=CALIB,
                            **FAST)
    return rd, res.path


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[RunDir, Path]:
    """The full stage and 2 steps of the kernel stage: the full stage's net and the supernet's largest subnet
    differ, as the two teachers do in a real run."""
    return _specialized_run(tmp_path_factory.mktemp("ft"), "digits", steps=6, kernel_steps=1)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# ---- the main path ------------------------------------------------------------------------------------------------
def test_finetune_trains_and_writes_a_folder_ofa_load_and_latency_read(digits, capsys):
    from elastic.bn_calibration import recalibrate_bn
    from ofa.training.evaluate import accuracy, calibration_batches

    rd, src = digits
    res = ofa.finetune(src, epochs=3, max_steps=5, lr=0.02, **QUIET)
    out = src.with_name(src.name + "-ft")
    assert res["path"] == str(out) and res["epochs"] == 3 and res["teacher"] == "full" and res["kd_ratio"] == 1.0
    assert not res["head_rebuilt"] and res["train_seconds"] > 0
    meta = json.loads((out / "arch.json").read_text())
    src_meta = json.loads((src / "arch.json").read_text())
    assert meta["arch"] == src_meta["arch"] and meta["space"] == src_meta["space"]
    ft = meta["finetune"]
    assert ft["recipe"]["epochs"] == 3 and ft["recipe"]["lr"] == 0.02 and ft["recipe"]["schedule"] == "cosine"
    assert ft["accuracy_before"]["test"] == res["accuracy_before"] and meta["measured"]["test_accuracy"] == \
        res["accuracy_after"]
    assert [h["epoch"] for h in ft["history"]] == [1, 2, 3] and all(0 <= h["val_acc"] <= 1 for h in ft["history"])
    assert [json.loads(line)["epoch"] for line in (out / "history.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert not out.with_name(out.name + ".partial").exists()     # the work folder is gone once the net is written
    # the net trained: its training loss fell, and it is not the input's weights any more
    losses = [h["train_loss"] for h in ft["history"]]
    assert losses[-1] < losses[0]
    net = ofa.load(out)
    assert _max_diff(net.state_dict(), ofa.load(src).state_dict()) > 1e-3
    # "before" is the input net after BN recalibration on the same images; "after" is what was written
    bundle = rd.load_data()
    calib = calibration_batches(bundle, net.arch.r, CALIB, seed=0)
    ref = ofa.load(src)
    recalibrate_bn(ref, calib)
    assert accuracy(ref, bundle, "test", net.arch.r) == res["accuracy_before"]
    assert accuracy(net, bundle, "test", net.arch.r) == res["accuracy_after"]
    # the teacher is the full stage's largest subnet at the net's resolution, BN recalibrated
    assert res["teacher_test_accuracy"] == _teacher_accuracy(rd, "full", net.arch.r)
    # `ofa latency` reads it like any specialized net
    capsys.readouterr()
    main(["latency", "--device", "pixel1", "--config", str(out / "arch.json"), "--json"])
    lat = json.loads(capsys.readouterr().out)
    main(["latency", "--device", "pixel1", "--config", str(src / "arch.json"), "--json"])
    assert lat["latency_ms"] == json.loads(capsys.readouterr().out)["latency_ms"] > 0


def _teacher_accuracy(rd: RunDir, stage: str | None, r: int) -> float:
    from elastic.bn_calibration import recalibrate_bn
    from ofa.training.evaluate import accuracy, calibration_batches

    bundle = rd.load_data()
    teacher = rd.load_supernet(stage).extract(rd.load_space().largest(r=r))
    recalibrate_bn(teacher, calibration_batches(bundle, r, CALIB, seed=0))
    return accuracy(teacher, bundle, "test", r)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_cli_json_exports_teacher_choice_and_force(digits, tmp_path, capsys):
    rd, src = digits
    out = tmp_path / "mine"
    argv = ["finetune", str(src), "--epochs", "1", "--max-steps", "3", "--teacher", "largest", "--out", str(out),
            "--export", "torchscript", "--eval-every", "0", "--calib-images", str(CALIB), "--threads", "1", "--json"]
    main(argv)
    doc = json.loads(capsys.readouterr().out)
    assert {"path", "accuracy_before", "accuracy_after", "epochs"} <= set(doc)
    assert doc["path"] == str(out) and doc["epochs"] == 1 and doc["teacher"] == "largest"
    assert sorted(p.name for p in out.iterdir()) == ["arch.json", "history.jsonl", "model.safetensors", "model.ts"]
    assert "val_acc" not in json.loads((out / "history.jsonl").read_text())     # --eval-every 0: none per epoch
    net = ofa.load(out)
    x = torch.rand(2, 3, net.arch.r, net.arch.r)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(out / "model.ts"))(x), net(x), atol=1e-5, rtol=1e-4)
    # the largest subnet of the supernet's latest weights teaches, not the full stage's (they differ here)
    latest, full = rd.load_supernet().state_dict(), rd.load_supernet("full").state_dict()
    assert _max_diff(latest, full) > 1e-4
    assert doc["teacher_test_accuracy"] == _teacher_accuracy(rd, None, net.arch.r)
    # an existing output is refused without --force (and left as it was), replaced with it
    before = (out / "model.safetensors").read_bytes()
    assert "exists; pass --force" in _one_error(argv, capsys)
    assert (out / "model.safetensors").read_bytes() == before
    main(argv[:-1] + ["--teacher", "none", "--max-steps", "1", "--force", "--json"])
    doc2 = json.loads(capsys.readouterr().out)
    assert doc2["teacher"] == "none" and doc2["kd_ratio"] == 0.0
    assert (out / "model.safetensors").read_bytes() != before


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ofa", "finetune", *args]


def _read_state(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:   # being replaced right now
        return None


def _kill_once_checkpointed(proc: subprocess.Popen, state_file: Path, at: tuple[int, int]) -> tuple | None:
    """SIGKILL `proc` once its checkpoint has reached (epoch, step) `at`; returns where it was (None: it ended)."""
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        st = _read_state(state_file)
        if st is not None and (st["epoch"], st["step"]) >= at:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return st["epoch"], st["step"]
        time.sleep(0.02)
    proc.wait(timeout=30)
    return None


def test_sigkill_and_resume_equals_uninterrupted_run(digits, tmp_path, capsys):
    """3 epochs x 3 steps, checkpoint every step, augmentation and dropout on: killed mid-run with SIGKILL and
    resumed, the written net has exactly the weights of an uninterrupted run."""
    _, src = digits
    common = dict(epochs=3, max_steps=3, save_every=1, augment=True, dropout=0.2, lr=0.02, seed=5)
    ref = finetune(FinetuneConfig(path=str(src), out=str(tmp_path / "ref"), **common, **QUIET), log=lambda m: None)
    out = tmp_path / "killed"
    args = (str(src), "--out", str(out), "--epochs", "3", "--max-steps", "3", "--save-every", "1", "--augment",
            "--dropout", "0.2", "--lr", "0.02", "--seed", "5", "--calib-images", str(CALIB), "--threads", "1",
            "--no-progress")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    work = RunDir(out.with_name("killed.partial"))
    killed_at = _kill_once_checkpointed(proc, work.state_file, (0, 2))
    assert killed_at is not None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    assert not work.load_train_state()["done"]
    # a plain rerun refuses to throw the unfinished work away
    assert "pass --resume to continue it" in _one_error(["finetune", *args], capsys) and not out.exists()
    done = subprocess.run(_cli(*args, "--resume", "--json"), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming fine-tuning" in done.stderr
    doc = json.loads(done.stdout)
    assert doc["resumed"] and doc["accuracy_before"] == ref["accuracy_before"]
    a, b = load_file(str(Path(ref["path"]) / "model.safetensors")), load_file(str(out / "model.safetensors"))
    diff = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"resumed weights differ from the uninterrupted run: {sorted(diff.items())[:5]}"
    assert doc["accuracy_after"] == ref["accuracy_after"]
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3]


# ---- new data -----------------------------------------------------------------------------------------------------
def _write_image_folder(root: Path, n_per_class: int = 60, size: int = 16) -> Path:
    """Three classes a small net tells apart: horizontal stripes, vertical stripes, a checkerboard (noisy)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = {"horizontal": (yy // 2) % 2, "vertical": (xx // 2) % 2, "checker": ((yy // 2) + (xx // 2)) % 2}
    for name, pat in patterns.items():
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            img = np.clip(pat * 180 + 40 + rng.normal(0, 30, pat.shape), 0, 255).astype(np.uint8)
            shift = rng.integers(0, 4, 2)
            img = np.roll(img, tuple(shift), axis=(0, 1))
            Image.fromarray(img).convert("RGB").save(root / name / f"{i}.png")
    return root


def test_new_data_image_folder_rebuilds_the_head(digits, tmp_path, capsys):
    rd, src = digits
    folder = _write_image_folder(tmp_path / "shapes", n_per_class=40)
    res = ofa.finetune(src, epochs=4, data=str(folder), out=tmp_path / "shapes-net", data_image_size=16,
                       batch_size=16, lr=0.05, **QUIET)
    assert res["head_rebuilt"] and res["teacher"] == "none" and res["kd_ratio"] == 0.0
    assert any("classifier is rebuilt" in n for n in res["notes"])
    net = ofa.load(res["path"])
    meta = net.meta
    assert meta["n_classes"] == 3 and meta["classes"] == ["checker", "horizontal", "vertical"]
    assert meta["space"]["n_classes"] == 3 and meta["predicted"]["accuracy"] is None
    x = torch.rand(4, 3, net.arch.r, net.arch.r)
    assert net(x).shape == (4, 3)
    # the body started from the inherited weights (a random start would be uncorrelated with them)
    body = lambda n: torch.cat([p.detach().flatten() for k, p in n.named_parameters()  # noqa: E731
                                if not k.startswith("classifier.")])
    assert float(torch.nn.functional.cosine_similarity(body(net), body(ofa.load(src)), dim=0)) > 0.9
    assert res["accuracy_after"] >= 0.8 and res["accuracy_after"] > res["accuracy_before"]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST is not installed")
def test_fashion_mnist_net_fine_tuned_on_digits(tmp_path):
    rd, src = _specialized_run(tmp_path, "fashion-mnist", steps=4)
    res = ofa.finetune(src, epochs=2, max_steps=8, data="digits", data_subset_size=256, lr=0.05, **QUIET)
    assert res["head_rebuilt"] and res["data"] == "digits" and res["teacher"] == "none"   # 10 classes, other ones
    meta = ofa.load(res["path"]).meta
    assert meta["classes"] == [str(i) for i in range(10)] and meta["finetune"]["data"]["name"] == "digits"
    assert res["accuracy_after"] > 0.3 > res["accuracy_before"]       # chance is 0.1
    # a fine-tuned net remembers its data: fine-tuning it again uses digits, with the head kept
    again = ofa.finetune(res["path"], epochs=1, max_steps=2, teacher="none", **QUIET)
    assert again["data"] == "digits" and not again["head_rebuilt"]
    assert again["accuracy_before"] == res["accuracy_after"]     # the same BN recalibration of the same weights


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_bad_inputs_are_one_line_errors_and_write_nothing(digits, tmp_path, capsys):
    from dataclasses import replace

    from ofa import atomic

    rd, src = digits
    src = _copy(src, tmp_path / "net")     # (its run is still the one its arch.json names)
    base = ["--epochs", "1", "--max-steps", "1", "--calib-images", str(CALIB), "--threads", "1"]

    def refused(path, *extra) -> str:
        msg = _one_error(["finetune", str(path), *base, *extra], capsys)
        assert not Path(str(path).rstrip("/") + "-ft").exists()
        return msg

    assert "is a run directory, not a specialized network" in refused(rd.path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no arch.json" in refused(empty)
    no_weights = _copy(src, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    assert "has arch.json but no model.safetensors" in refused(no_weights)
    arch_only = _copy(src, tmp_path / "arch_only")
    meta = json.loads((arch_only / "arch.json").read_text())
    (arch_only / "arch.json").write_text(json.dumps({**meta, "format": "ofa-arch/1"}))
    assert "architecture only" in refused(arch_only)
    for bad in ("0", "1001"):
        assert "--epochs must be a whole number from 1 to 1000" in refused(src, "--epochs", bad)
    for bad in ("0", "-0.1", "2", "nan"):
        assert "--lr must be > 0 and <= 1" in refused(src, "--lr", bad)
    assert "unknown --teacher 'big'" in refused(src, "--teacher", "big")
    assert "needs a teacher" in refused(src, "--teacher", "none", "--kd-ratio", "1")
    assert "--kd-ratio must be from 0 to 100" in refused(src, "--kd-ratio", "-1")

    # a run of another space, and a run whose weights are not the ones the net was cut from
    other = RunDir(tmp_path / "other")
    other.save_space(replace(rd.load_space(), resolutions=(20, 24)))
    assert "holds space mbv3-w1.0-small" in refused(src, "--run", str(other.path))
    changed = RunDir(_copy(rd.path, tmp_path / "changed"))
    sd = load_file(str(changed.weights_file))
    atomic.save_safetensors(changed.weights_file, {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()},
                            {"format": "ofa-supernet/1", "space": SPACE, "n_classes": "10", "stage": ""})
    assert "SHA-256 differs" in refused(src, "--run", str(changed.path))
    # a run without a full stage cannot give the full stage's teacher
    no_full = RunDir(_copy(rd.path, tmp_path / "no_full"))
    no_full.stage_weights_file("full").unlink()
    assert "--teacher largest" in refused(src, "--run", str(no_full.path))
    # the run the net names is gone and the folder is not inside it
    moved = _copy(src, tmp_path / "moved")
    meta = json.loads((moved / "arch.json").read_text())
    meta["provenance"]["run"] = str(tmp_path / "gone")
    (moved / "arch.json").write_text(json.dumps(meta))
    assert "is not there: give it with --run" in refused(moved)

    # data the net cannot take: images far smaller than its input, or other channels than its stem's
    folder = _write_image_folder(tmp_path / "tiny", n_per_class=12, size=3)
    assert "more than 4x up" in refused(src, "--data", str(folder), "--image-size", "3")
    one_channel = _one_channel_net(src, tmp_path / "gray")
    assert "3-channel images, but the net takes 1 channel" in refused(one_channel, "--teacher", "none")
    assert "nothing to resume" in refused(src, "--resume")


def _one_channel_net(src: Path, dst: Path) -> Path:
    from dataclasses import replace

    from elastic.spaces import space_from_dict
    from elastic.static_net import StaticNet
    from ofa.specialized import save_specialized

    meta = json.loads((src / "arch.json").read_text())
    space = replace(space_from_dict(meta["space"]), in_channels=1)
    arch = ofa.Arch.from_dict(meta["arch"])
    meta = {k: v for k, v in meta.items() if k not in ("format", "files")}
    save_specialized(dst, StaticNet(space.net_spec(arch), arch=arch), {**meta, "space": space.to_dict()})
    return dst


def test_config_checks():
    with pytest.raises(OFAError, match="unknown data option"):
        FinetuneConfig(path="x", epochs=1, data={"colour": "red"})
    with pytest.raises(OFAError, match="--batch-size must be >= 1"):
        FinetuneConfig(path="x", epochs=1, batch_size=0)
    cfg = FinetuneConfig(path="x", epochs=2, lr=0.01, exports=("onnx",))
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    from ofa.training.finetune import default_batch

    assert [default_batch(n) for n in (60000, 1222, 146, 10)] == [128, 64, 8, 8]


# ---- DDP --------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(digits, tmp_path):
    """BN frozen and no dropout (see tests/test_train_ddp.py for why): 2 gloo processes sharding each batch end
    with the weights of one process taking the whole batch, distillation included."""
    _, src = digits
    common = dict(epochs=1, max_steps=2, bn_mode="frozen", dropout=0.0, lr=0.001, batch_size=16, seed=2)
    finetune(FinetuneConfig(path=str(src), out=str(tmp_path / "one"), **common, **QUIET), log=lambda m: None)
    for _ in range(3):  # the free port can be taken before torchrun binds it: retry
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "ofa", "finetune", str(src), "--out", str(tmp_path / "two"),
               "--epochs", "1", "--max-steps", "2", "--bn-mode", "frozen", "--dropout", "0", "--lr", "0.001",
               "--batch-size", "16", "--seed", "2", "--calib-images", str(CALIB), "--threads", "1", "--no-progress",
               "--compute-device", "cpu"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode == 0 or "address already in use" not in out.stderr.lower():
            break
    assert out.returncode == 0, out.stderr[-4000:]
    assert "8/process x 2" in out.stderr
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    start = ofa.load(src).state_dict()
    params = [k for k, _ in ofa.load(src).named_parameters()]
    assert max(float((a[k] - start[k]).abs().max()) for k in params) > 1e-3      # training moved the weights...
    # ...identically up to float summation order, relative to how far each weight moved: on an AMD EPYC the
    # depthwise kernels' backward differs by 5.7e-5 on a weight that moved 0.12 (5e-4 of it); a sharding error
    # (a gradient summed instead of averaged, a shard missing) differs by the order of the move itself
    assert max(float((a[k] - b[k]).abs().max()) / max(1e-3, float((a[k] - start[k]).abs().max())) for k in params) < 2e-3
    # BN statistics are re-estimated at the end, through those weights: float sums in another order, relative to
    # their scale (1.2e-3 on the EPYC above, where the weights differ by 5e-4 of their move)
    assert max(float((a[k] - b[k]).abs().max()) / max(1.0, float(a[k].abs().max())) for k in a) < 5e-3
