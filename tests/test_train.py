"""ofa train: stages from checkpoints, clear errors, and exact resume after SIGKILL (real subprocess)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elastic.errors import OFAError
from ofa.run_dir import RunDir
from ofa.training import TrainConfig, train
from ofa.training.schedule import stage_phases

SPACE = "mbv3-w1.0-small"
TINY = dict(space=SPACE, resolutions=[16, 20], data={"name": "digits", "subset_size": 96, "eval_size": 32},
            schedule="quick", batch_size=16, seed=3, save_every=1, progress=False, eval_subnets=1, calib_images=32, eval_every=0,
            threads=1)
TINY_ARGS = ["--space", SPACE, "--resolutions", "16,20", "--data", "digits", "--subset", "96", "--eval-size", "32",
             "--schedule", "quick", "--batch-size", "16", "--seed", "3", "--save-every", "1", "--no-progress", "--eval-subnets", "1",
             "--threads", "1"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """A run directory whose `full` stage is trained (3 steps)."""
    run = tmp_path_factory.mktemp("ofa") / "base"
    summary = train(TrainConfig(run=str(run), stage="full", epochs=1, max_steps=3, **TINY), log=lambda m: None)
    ev = summary["stages"][0]["eval"]
    assert [r["name"] for r in ev] == ["largest", "smallest", "random0"]
    assert all(0.0 <= r["acc"] <= 1.0 for r in ev)
    return run


def test_stage_schedule_follows_ofa():
    from elastic.spaces import get_space

    sp = get_space(SPACE)
    depth, expand = stage_phases("depth", sp), stage_phases("expand", sp)
    assert [p.d for p in depth] == [(3, 4), (2, 3, 4)] and all(p.e == (6,) for p in depth)
    assert [p.e for p in expand] == [(4, 6), (3, 4, 6)]
    assert stage_phases("kernel", sp)[0].ks == (3, 5, 7) and stage_phases("full", sp)[0].ks == (7,)
    cfg = TrainConfig(run="x", epochs=8)
    assert [cfg.epochs_for(p) for p in depth] == [2, 8]
    full = stage_phases("full", sp)[0]
    assert TrainConfig(run="x").epochs_for(full) == 40  # the full schedule's defaults ...
    assert TrainConfig(run="x", dataset="digits").epochs_for(full) == 60  # ... adjusted per dataset
    assert TrainConfig(run="x", schedule="quick", batch_size=64).base_lr() == 0.2 * 64 / 256  # linear scaling
    assert TrainConfig(run="x", lr=0.5).base_lr() == 0.5
    with pytest.raises(OFAError, match="unknown schedule 'slow'"):
        TrainConfig(run="x", schedule="slow")
    with pytest.raises(OFAError, match="--sandwich needs --n-subnets >= 2"):
        TrainConfig(run="x", sandwich=True, n_subnets=1)
    quick = TrainConfig(run="x", schedule="quick")  # step caps: the elastic stages only, unless --max-steps
    assert (quick.max_steps_for("full"), quick.max_steps_for("kernel")) == (None, 140)
    assert TrainConfig(run="x", schedule="quick", dataset="digits").max_steps_for("expand") is None
    mine = TrainConfig(run="x", schedule="quick", elastic_max_steps=185)
    assert (mine.max_steps_for("full"), mine.max_steps_for("depth")) == (None, 185)
    assert TrainConfig(run="x", elastic_max_steps=9, max_steps=3).max_steps_for("expand") == 3
    with pytest.raises(OFAError, match="--elastic-max-steps must be >= 1, got 0"):
        TrainConfig(run="x", elastic_max_steps=0)
    ofa_rates = TrainConfig(run="x", schedule="quick", elastic_lr_scale=1)   # the scale acts on elastic phases only
    assert quick.lr_for(full) == ofa_rates.lr_for(full) == 0.1
    assert [round(quick.lr_for(p), 6) for p in depth] == [round(3 * ofa_rates.lr_for(p), 6) for p in depth] \
        == [0.024, 0.075]                                                    # quick: 3x OFA's factors by default
    assert TrainConfig(run="x").lr_for(depth[1]) == 0.15 * 256 / 256 * 0.25   # full schedule: OFA's factors
    old_state = {k: v for k, v in quick.to_dict().items() if k != "elastic_lr_scale"}   # saved before the option
    assert TrainConfig.from_dict(old_state).lr_for(depth[1]) == ofa_rates.lr_for(depth[1])   # resumes at its rates
    assert TrainConfig.from_dict(quick.to_dict()).lr_for(depth[1]) == quick.lr_for(depth[1])
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(OFAError, match="--elastic-lr-scale must be a positive number"):
            TrainConfig(run="x", elastic_lr_scale=bad)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_elastic_lr_scale_sets_the_optimizers_rate(full_run, tmp_path, scale, monkeypatch):
    import ofa.training.loop as loop

    built: list[float] = []
    real = loop.make_optimizer   # (ofa.training.optimization's, looked up in loop)

    def make_optimizer(model, cfg, lr):
        opt = real(model, cfg, lr)
        built.append(opt.param_groups[0]["lr"])
        return opt

    monkeypatch.setattr(loop, "make_optimizer", make_optimizer)
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    msgs: list[str] = []
    train(TrainConfig(run=str(run), stage="kernel", epochs=1, max_steps=1, elastic_lr_scale=scale, stage_eval=False,
                      **TINY), log=msgs.append)
    base = 0.2 * TINY["batch_size"] / 256
    assert built == [pytest.approx(base * 0.3 * scale)]          # the optimizer is built with the scaled rate
    (line,) = [m for m in msgs if m.startswith("phase kernel:")]
    assert f"lr {base * 0.3 * scale:.4g}," in line, line


def test_phase_steps_set_each_phases_total():
    from elastic.spaces import get_space
    from ofa.training.schedule import PHASE_NAMES, STAGES, parse_phase_steps

    sp = get_space(SPACE)
    assert PHASE_NAMES == tuple(p.name for st in STAGES for p in stage_phases(st, sp))   # the names users type
    cfg = TrainConfig(run="x", schedule="quick", dataset="fashion-mnist",
                      phase_steps=parse_phase_steps("kernel=100, depth/1=50,expand/2=626"))
    plan = {p.name: cfg.steps_plan(p, 60000) for st in STAGES for p in stage_phases(st, sp)}
    # 468 steps make an epoch at batch 128: 626 steps need two epochs of 313; unnamed phases keep the quick caps
    assert plan == {"full": (2, 468), "kernel": (1, 100), "depth/1": (1, 50), "depth/2": (1, 140),
                    "expand/1": (1, 140), "expand/2": (2, 313)}
    assert TrainConfig(run="x", schedule="quick", phase_steps={"expand/2": 937}).steps_plan(
        stage_phases("expand", sp)[1], 60000) == (3, 313)                  # 939: rounded up by < 1 step per epoch
    assert TrainConfig(run="x", phase_steps={"full": 5}, max_steps=2).steps_plan(stage_phases("full", sp)[0], 96 * 16) \
        == (1, 5)                                                          # a named total wins over the caps
    assert TrainConfig.from_dict(cfg.to_dict()).phase_steps == cfg.phase_steps   # stored and resumed with the run
    with pytest.raises(OFAError, match="unknown phase 'width'; allowed: full, kernel, depth/1, depth/2, expand/1"):
        TrainConfig(run="x", phase_steps=parse_phase_steps("width=3"))
    with pytest.raises(OFAError, match="depth/2 needs a whole number of steps >= 1, got 0"):
        TrainConfig(run="x", phase_steps={"depth/2": 0})
    for bad in ("kernel:3", "kernel=x", "kernel=1.5"):
        with pytest.raises(OFAError, match="--phase-steps takes PHASE=STEPS pairs"):
            parse_phase_steps(bad)


def test_quick_schedule_splits_its_elastic_steps_unless_told_otherwise():
    from elastic.spaces import get_space
    from ofa.training.schedule import QUICK_PHASE_STEPS, STAGES

    sp = get_space(SPACE)
    cfg = TrainConfig(run="x", schedule="quick", dataset="fashion-mnist").with_phase_steps(60000)
    assert cfg.phase_steps == QUICK_PHASE_STEPS and sum(QUICK_PHASE_STEPS.values()) == 5 * 140
    # a training set whose epoch is shorter than the 140-step cap shrinks the budget as the capped phases did
    small = TrainConfig(run="x", schedule="quick", dataset="fashion-mnist").with_phase_steps(2000)   # 15 steps
    assert small.phase_steps == {"kernel": 8, "depth/1": 4, "depth/2": 8, "expand/1": 4, "expand/2": 51}
    plan = {p.name: cfg.steps_plan(p, 60000) for st in STAGES for p in stage_phases(st, sp)}
    assert plan == {"full": (2, 468), "kernel": (1, 76), "depth/1": (1, 38), "depth/2": (1, 76),
                    "expand/1": (1, 38), "expand/2": (2, 236)}          # 472 steps: two epochs of 236
    assert TrainConfig.from_dict(cfg.to_dict()).phase_steps == QUICK_PHASE_STEPS   # stored with the run
    # the user's own phase lengths hold for every phase; other schedules and digits keep equal phases
    for own in (dict(elastic_max_steps=185), dict(max_steps=3), dict(epochs=1), dict(phase_steps={"kernel": 9})):
        got = TrainConfig(run="x", schedule="quick", dataset="fashion-mnist", **own).with_phase_steps(60000)
        assert got.phase_steps == own.get("phase_steps", {})
    assert TrainConfig(run="x", schedule="quick", dataset="fashion-mnist", elastic_max_steps=185).with_phase_steps(
        60000).steps_plan(stage_phases("expand", sp)[1], 60000) == (1, 185)
    assert TrainConfig(run="x", schedule="quick", dataset="digits").with_phase_steps(1500).phase_steps == {}
    assert TrainConfig(run="x", schedule="full", dataset="fashion-mnist").with_phase_steps(60000).phase_steps == {}
    # a run stored before the split existed (phase_steps None) resumes with equal phases
    old = TrainConfig.from_dict({"run": "x", "schedule": "quick", "dataset": "fashion-mnist"})
    assert old.phase_steps is None and old.steps_plan(stage_phases("expand", sp)[1], 60000) == (1, 140)


def test_phase_steps_run_in_training(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    for stage in ("kernel", "depth"):   # 96 images / batch 16 = 6 steps an epoch: 8 steps take 2 epochs of 4
        train(TrainConfig(run=str(run), stage=stage, max_steps=1, phase_steps={"depth/2": 8}, stage_eval=False,
                          **TINY), log=lambda m: None)
    epochs = [(h["stage"], h["phase"], h["epoch"], h["epochs"], round(h["images_per_s"] * h["seconds"]))
              for h in RunDir(run).history() if h["kind"] == "epoch" and h["stage"] == "depth"]
    assert epochs == [("depth", 1, 1, 1, 16), ("depth", 2, 1, 2, 64), ("depth", 2, 2, 2, 64)]


def test_run_dir_contents_and_history(full_run):
    run = RunDir(full_run)
    assert run.trained_stages() == ["full"]
    assert run.load_space().name == SPACE
    assert run.data_config()["name"] == "digits" and run.data_config()["subset_size"] == 96
    hist = run.history()
    assert [h["kind"] for h in hist] == ["epoch", "stage_eval"]
    assert hist[0]["train_loss"] > 0 and "largest" in hist[1]
    latest, full = _weights(run.weights_file), _weights(run.stage_weights_file("full"))
    assert latest.keys() == full.keys() and all(torch.equal(latest[k], full[k]) for k in latest)
    net = run.load_supernet("full")
    assert not net.training
    st = run.load_train_state()
    assert st["done"] and st["stage"] == "full"
    assert st["config"]["phase_steps"] == {}   # written out: the run's own --max-steps set every phase's length


def test_missing_previous_stage_names_the_command(tmp_path):
    with pytest.raises(OFAError, match=r"stage 'depth' starts from the 'kernel' stage checkpoint.*ofa train --stage kernel"):
        train(TrainConfig(run=str(tmp_path / "r"), stage="depth", **TINY), log=lambda m: None)
    out = subprocess.run([sys.executable, "-m", "ofa", "train", "--stage", "kernel", "--run", str(tmp_path / "r2"),
                          *TINY_ARGS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "error: stage 'kernel' starts from the 'full' stage checkpoint" in out.stderr
    assert "Traceback" not in out.stderr


def test_space_mismatch_and_retrain_are_errors(full_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(full_run, run)
    cfg = {**TINY, "space": "proxyless-w1.3-small"}
    with pytest.raises(OFAError, match="space 'mbv3-w1.0-small', not 'proxyless-w1.3-small'"):
        train(TrainConfig(run=str(run), stage="kernel", **cfg), log=lambda m: None)
    with pytest.raises(OFAError, match="must use the same data"):
        train(TrainConfig(run=str(run), stage="kernel", **{**TINY, "data": {"name": "fashion-mnist"}}),
              log=lambda m: None)
    with pytest.raises(OFAError, match="already trained"):
        train(TrainConfig(run=str(run), stage="full", **TINY), log=lambda m: None)
    with pytest.raises(OFAError, match="nothing to resume"):
        train(TrainConfig(run=str(tmp_path / "fresh"), stage="full", **TINY), resume=True, log=lambda m: None)


def _cli(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ofa", "train", "--run", str(run), *TINY_ARGS, *extra]


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_run(full_run, tmp_path):
    """The kernel stage (KD from `full`, 2 subnets/step, elastic resolution), 2 epochs x 2 steps, checkpoint every
    step: killed with SIGKILL mid-run and resumed, it ends with exactly the weights of an uninterrupted run."""
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    shutil.copytree(full_run, ref)
    shutil.copytree(full_run, killed)
    stage_args = ("--stage", "kernel", "--epochs", "2", "--max-steps", "2", "--no-stage-eval")
    train(TrainConfig(run=str(ref), stage="kernel", epochs=2, max_steps=2, stage_eval=False, **TINY), log=lambda m: None)

    proc = subprocess.Popen(_cli(killed, *stage_args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state_file = RunDir(killed).state_file
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if state_file.exists():
            try:
                st = torch.load(state_file, weights_only=True)
            except Exception:  # being replaced right now: read again
                st = None
            if st is not None and st["stage"] == "kernel" and (st["epoch"], st["step"]) >= (0, 1):
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = (st["epoch"], st["step"])
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    st = RunDir(killed).load_train_state()
    assert st["stage"] == "kernel" and not st["done"]  # really interrupted mid-stage
    assert not RunDir(killed).stage_weights_file("kernel").exists()

    out = subprocess.run(_cli(killed, "--resume"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming run" in out.stderr
    a, b = _weights(RunDir(ref).stage_weights_file("kernel")), _weights(RunDir(killed).stage_weights_file("kernel"))
    assert a.keys() == b.keys()
    diff = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"resumed weights differ from the uninterrupted run: {sorted(diff.items())[:5]}"
    # and the run really trained: kernel weights moved away from the full stage's
    base = _weights(RunDir(full_run).stage_weights_file("full"))
    assert any(not torch.equal(base[k], a[k]) for k in a)
    hist = RunDir(killed).history()
    assert [(h["stage"], h["epoch"]) for h in hist if h["kind"] == "epoch"] == [("full", 1), ("kernel", 1), ("kernel", 2)]


def test_step_sampling_is_deterministic_restricted_and_sandwiched():
    import random

    from elastic.spaces import get_space
    from ofa.training.randomness import derive_seed
    from ofa.training.step_archs import sample_step_archs

    sp = get_space(SPACE)
    p1 = stage_phases("depth", sp)[0]  # kernels 3/5/7, expand 6, depths {3, 4}
    key = derive_seed(3, 2, 1, 0, 5, "archs")
    a = sample_step_archs(sp, p1, random.Random(key), 4, True, 28)
    b = sample_step_archs(sp, p1, random.Random(key), 4, True, 28)
    assert a == b and len(a) == 4
    assert a[0] == sp.largest(28)
    assert a[1].d == (3,) * sp.n_stages and set(a[1].ks) == {3} and set(a[1].e) == {6}
    for arch in a:
        sp.validate(arch)
        assert arch.r == 28 and set(arch.e) == {6} and set(arch.d) <= {3, 4}
    other = sample_step_archs(sp, p1, random.Random(derive_seed(3, 2, 1, 0, 6, "archs")), 4, False, 28)
    assert other != a  # another step, other subnets
    assert [sample_step_archs(sp, stage_phases("full", sp)[0], random.Random(1), 3, False, 24)] == [[sp.largest(24)]]


def test_inplace_distillation_teaches_with_the_steps_largest_subnet(full_run, tmp_path, monkeypatch):
    import torch.nn.functional as F

    import ofa.training.loop as loop

    ce_inputs: list[torch.Tensor] = []
    kd_calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_ce, real_kd = F.cross_entropy, loop.soft_cross_entropy

    def ce(out, y, **kw):
        ce_inputs.append(out.detach().clone())
        return real_ce(out, y, **kw)

    def kd(out, teacher):
        kd_calls.append((out.detach().clone(), teacher.clone()))
        return real_kd(out, teacher)

    monkeypatch.setattr(F, "cross_entropy", ce)
    monkeypatch.setattr(loop, "soft_cross_entropy", kd)
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    msgs: list[str] = []
    train(TrainConfig(run=str(run), stage="kernel", epochs=1, max_steps=2, n_subnets=3, kd_teacher="inplace",
                      stage_eval=False, **TINY), log=msgs.append)
    assert any("distilling in place" in m for m in msgs) and not any("distilling from" in m for m in msgs)
    assert len(ce_inputs) == 6 and len(kd_calls) == 4    # 2 steps x 3 subnets; the largest has no teacher
    for step in range(2):
        largest_out = ce_inputs[3 * step]
        for j in (1, 2):
            student, teacher = kd_calls[2 * step + j - 1]
            assert torch.equal(teacher, largest_out)                 # the same step's largest subnet ...
            assert torch.equal(student, ce_inputs[3 * step + j])     # ... teaches the other two
            assert not torch.equal(student, teacher)
    with pytest.raises(OFAError, match="unknown --kd-teacher 'big'; allowed: full, inplace"):
        TrainConfig(run="x", kd_teacher="big")
    with pytest.raises(OFAError, match="needs the sandwich rule"):
        TrainConfig(run="x", schedule="quick", kd_teacher="inplace", sandwich=False)
    with pytest.raises(OFAError, match="needs the sandwich rule"):
        TrainConfig(run="x", kd_teacher="inplace")   # the full schedule has no sandwich by default
