"""The whole chain on a CUDA GPU: train (fp32, bf16, fp16), fit-predictor, specialize (evolution and proxyless),
proxyless-search, each on `--compute-device cuda`, checked against the same steps on the CPU where they must agree.

Skipped without CUDA. `OFA_GPU_TESTS_DEVICE=cpu` runs the same tests on the CPU instead (what
`bench/gpu_check.sh --dry-run` does, so the script and these tests are checked on a machine without a GPU).
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

DEVICE = os.environ.get("OFA_GPU_TESTS_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU (OFA_GPU_TESTS_DEVICE=cpu runs these on the CPU)")]

SPACE = "mbv3-w1.0-small"
TINY = dict(space=SPACE, resolutions=[16, 20], data={"name": "digits", "subset_size": 128, "eval_size": 64},
            schedule="quick", batch_size=32, seed=2, progress=False, calib_images=64, eval_every=0, threads=1,
            eval_subnets=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """All four stages (2 steps a phase) on the device, bf16, augmented."""
    from ofa.training import TrainConfig, train

    run = tmp_path_factory.mktemp("gpu") / "run"
    summary = train(TrainConfig(run=str(run), stage="all", max_steps=2, device=DEVICE, precision="bf16",
                                augment=True, **TINY), log=lambda m: None)
    return run, summary


def test_augmentation_and_batches_on_the_device_equal_the_cpu():
    from ofa.data import augment_batch, prepare_batch

    x = torch.rand(16, 3, 20, 20)
    cpu = augment_batch(x, torch.Generator().manual_seed(3), True, rank=1, world=2)
    dev = augment_batch(x.to(DEVICE), torch.Generator().manual_seed(3), True, rank=1, world=2)
    assert dev.device.type == torch.device(DEVICE).type and torch.equal(dev.cpu(), cpu)
    a = prepare_batch(cpu, 24, (0.5,) * 3, (0.25,) * 3)
    b = prepare_batch(dev, 24, (0.5,) * 3, (0.25,) * 3)
    assert b.device == dev.device and b.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(a, b.cpu(), atol=1e-5)


def test_all_stages_train_on_the_device(trained):
    from ofa.run_dir import RunDir

    run, summary = trained
    assert [s["stage"] for s in summary["stages"]] == ["full", "kernel", "depth", "expand"]
    for s in summary["stages"]:
        assert all(0.0 <= r["acc"] <= 1.0 for r in s["eval"])
    state = RunDir(run).load_train_state()
    assert state["done"] and state["world"] == 1 and state["config"]["precision"] == "bf16"
    net = RunDir(run).load_supernet()
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_full_stage_in_other_precisions_and_exact_resume(tmp_path, precision):
    from safetensors.torch import load_file

    from ofa.run_dir import RunDir
    from ofa.training import TrainConfig, train

    cfg = dict(stage="full", epochs=2, max_steps=2, save_every=1, device=DEVICE, precision=precision,
               **{**TINY, "eval_subnets": 0})
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    snap = []
    original = RunDir.save_train_state

    def capture(self, state, *a, **k):
        original(self, state, *a, **k)
        if not snap and not state.get("done") and (state.get("epoch"), state.get("step")) == (0, 1):
            shutil.copytree(self.path, cut)
            snap.append(state)

    RunDir.save_train_state = capture
    try:
        train(TrainConfig(run=str(ref), **cfg), log=lambda m: None)
    finally:
        RunDir.save_train_state = original
    assert snap and (snap[0]["scaler"] is not None) == (precision == "fp16")
    if DEVICE.startswith("cuda"):
        assert snap[0]["rng"].get("cuda"), "the CUDA generator states belong in the checkpoint"
    train(TrainConfig(run=str(cut), **cfg), resume=True, log=lambda m: None)
    a = load_file(str(RunDir(ref).stage_weights_file("full")))
    b = load_file(str(RunDir(cut).stage_weights_file("full")))
    # cuDNN may pick other kernels in another process; in-process a resumed GPU run replays the same steps
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-4, f"resumed weights differ by {worst}"


def test_fit_predictor_and_specialize_on_the_device(trained, tmp_path, capsys):
    import ofa
    from ofa.accuracy_data import collect_from_run, dataset_paths
    from ofa.cli import main
    from ofa.run_dir import RunDir
    from ofa.training.evaluate import evaluate_arch

    src, _ = trained
    run = tmp_path / "run"
    shutil.copytree(src, run)
    data = collect_from_run(run, 12, calib_images=64, limit=64, device=DEVICE, progress=False)
    assert len(data) == 12 and dataset_paths(run)[0].exists()
    # the device measures what the CPU measures (up to an image or two of float-rounding ties)
    rd = RunDir(run)
    net, bundle = rd.load_supernet(), rd.load_data()
    for arch, acc in list(zip(data.archs, data.accuracies))[:2]:
        cpu = evaluate_arch(net, arch, bundle, "val", 64, "cpu", 64)
        assert abs(cpu - acc) <= 2 / 64 + 1e-9

    main(["fit-predictor", "--run", str(run), "--samples", "12", "--resume", "--kinds", "ridge", "--folds", "3",
          "--holdout", "0.25", "--calib-images", "64", "--limit", "64", "--compute-device", DEVICE, "--json"])
    assert json.loads(capsys.readouterr().out)["n_rows"] == 12

    fast = dict(population=16, generations=4, patience=2, init_samples=64, allow_extrapolation=True)
    res = ofa.specialize(run, device="pixel1", latency="4ms", calib_images=64, measure=False,
                         compute_device=DEVICE, **fast)
    assert len(res) == 1 and res[0].test_accuracy is not None
    loaded = ofa.load(res[0].path)
    assert next(loaded.parameters()).device.type == "cpu"
    with torch.no_grad():
        out = loaded(torch.rand(2, 3, res[0].arch.r, res[0].arch.r))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    on_cpu = ofa.specialize(run, device="pixel1", latency="4ms", calib_images=64, measure=False,
                            compute_device="cpu", out_dir=tmp_path / "cpu", **fast)
    assert on_cpu[0].arch == res[0].arch
    assert abs(on_cpu[0].test_accuracy - res[0].test_accuracy) <= 3 / len(bundle.test) + 1e-9

    prox = ofa.specialize(run, device="pixel1", latency="4ms", backend="proxyless", calib_images=64,
                          measure=False, compute_device=DEVICE, steps=4, budget_rounds=1, budget_steps=2,
                          allow_extrapolation=True, out_dir=tmp_path / "prox")
    assert len(prox) == 1 and prox[0].predicted_latency_ms <= 4.0


def test_proxyless_search_from_scratch_on_the_device(tmp_path):
    from ofa.proxyless_pipeline import proxyless_search

    summary = proxyless_search(space="proxyless-w1.3-small", data="digits", device="pixel1", budget="200ms",
                               resolution=24, batch_size=16, warmup_steps=2, search_steps=3, budget_rounds=1,
                               budget_steps=1, train_steps=2, subset=64, eval_size=32, out=tmp_path / "px",
                               compute_device=DEVICE, threads=1)
    assert summary["search"]["latency"] <= summary["target"]
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and (tmp_path / "px" / "result.json").exists()
