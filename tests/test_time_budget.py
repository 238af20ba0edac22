"""--time-budget: durations, the sizing arithmetic with injected machine rates, the stored plan, and a budgeted run
killed and resumed (it follows its stored plan and measures nothing again)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from elastic.errors import OFAError
from ofa.run_dir import RunDir
from ofa.training import TrainConfig, train
from ofa.training.schedule import QUICK_PHASE_STEPS
from ofa.training.time_budget import (MIN_PHASE_STEPS, MIN_SCALE, PREDICTOR_CALIB, PREDICTOR_MAX, PREDICTOR_MIN,
                                      PREDICTOR_VAL, TARGET, BudgetPlan,
                                      Rates, load_plan, parse_budget_option, parse_duration, plan_budget,
                                      predictor_seconds, render_plan, resize_predictor, revise_steps, save_plan,
                                      stored_plan_for, train_seconds)

# the quick schedule on Fashion-MNIST's 55,000 training images: 2 full epochs of 429 steps + the 700-step split
QUICK_STEPS = {"full": 858, **QUICK_PHASE_STEPS}


def rates(full_step_s: float, elastic_ratio: float = 2.3, image_s: float | None = None) -> Rates:
    """A machine whose full-stage step takes `full_step_s`; elastic steps `elastic_ratio` x that, the first phase
    (largest kernel-phase subnets) dearer than the last."""
    el = {"kernel": 1.15, "depth/1": 1.08, "depth/2": 1.02, "expand/1": 0.98, "expand/2": 0.95}
    return Rates(batch=128, full_step_s=full_step_s, elastic_step_s={k: v * elastic_ratio * full_step_s
                                                                      for k, v in el.items()},
                 eval_image_s=image_s if image_s is not None else full_step_s / 128 / 8,
                 eval_subnet_s=0.05 * full_step_s / 0.3, probe_s=20 * full_step_s)


@pytest.mark.parametrize("text,seconds", [("15m", 900), ("900s", 900), ("1h", 3600), ("1h30m", 5400),
                                          ("2.5h", 9000), ("1m30s", 90), (" 15 m ", 900), ("10min", 600),
                                          ("1H", 3600), (42, 42)])
def test_durations_in_the_documented_forms(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["15", "15x", "", "m", "-5m", "0s", "1m1h", "fast", "1.5.2h", "nanm", "15m 3", None])
def test_bad_durations_are_one_line_errors_naming_the_forms(text):
    with pytest.raises(OFAError) as err:
        parse_duration(text)
    assert "15m" in str(err.value) and "1h30m" in str(err.value) and "\n" not in str(err.value)


def test_off_means_the_fixed_step_schedule():
    assert parse_budget_option("off") is None and parse_budget_option(None) is None
    assert parse_budget_option("NONE") is None and parse_budget_option("20m") == 1200


@pytest.mark.parametrize("scope", ["train", "quickstart"])
@pytest.mark.parametrize("step_s", [0.29, 0.6, 2.4])   # 445, 213 and 53 img/s in the full stage: fast to slow days
def test_plan_lands_on_the_budget_with_the_schedules_proportions(scope, step_s):
    r = rates(step_s)
    plan = plan_budget(900, r, QUICK_STEPS, scope=scope, eval_subnets=0 if scope == "quickstart" else 8)
    assert not plan.floor
    est = plan.estimate_s
    assert est["total"] == pytest.approx(sum(v for k, v in est.items() if k != "total"))
    assert est["train"] == pytest.approx(train_seconds(plan.phase_steps, r))
    # every phase scaled by one factor: the proportions that measured best survive (to rounding)
    for name, base in QUICK_STEPS.items():
        assert plan.phase_steps[name] == max(MIN_PHASE_STEPS, round(base * plan.scale))
    assert abs(est["total"] - TARGET * 900) < 0.02 * 900      # rounding of steps only
    if scope == "quickstart":
        assert PREDICTOR_MIN <= plan.predictor["subnets"] <= PREDICTOR_MAX
        p = plan.predictor
        assert p["pilot"] <= p["subnets"] and p["calib_images"] == PREDICTOR_CALIB and p["val_images"] == PREDICTOR_VAL
        assert est["predictor"] == pytest.approx(predictor_seconds(p["subnets"], r, PREDICTOR_CALIB, PREDICTOR_VAL,
                                                                   p["pilot"], p["informative"]))
        assert {"profile", "specialize"} <= est.keys()
    else:
        assert plan.predictor is None and "profile" not in est


def test_faster_machines_buy_more_of_everything_and_time_scales_it():
    slow, fast = (plan_budget(900, rates(s), QUICK_STEPS, scope="quickstart") for s in (2.4, 0.3))
    assert fast.scale > 5 * slow.scale
    assert fast.phase_steps["full"] > slow.phase_steps["full"] and fast.predictor["subnets"] > slow.predictor["subnets"]
    double = plan_budget(1800, rates(0.3), QUICK_STEPS, scope="quickstart")
    assert double.scale > 1.8 * fast.scale
    # a fast machine with an hour runs more than the fixed schedule: several full epochs, longer elastic phases
    hour = plan_budget(3600, rates(0.25), QUICK_STEPS, scope="train")
    assert hour.scale > 1 and hour.phase_steps["full"] > 858 and hour.phase_steps["expand/2"] > 472


@pytest.mark.parametrize("seconds", [40.0, 120.0, 400.0, 2000.0])
def test_predictor_gets_the_most_subnets_its_time_pays_for(seconds):
    from ofa.training.time_budget import predictor_seconds, predictor_subnets_for

    r = rates(0.4)
    n = predictor_subnets_for(seconds, r, 500, 2000, 30, 0.4)
    assert PREDICTOR_MIN <= n <= PREDICTOR_MAX
    if n > PREDICTOR_MIN:
        assert predictor_seconds(n, r, 500, 2000, 30, 0.4) <= seconds
    if n < PREDICTOR_MAX:
        assert predictor_seconds(n + 1, r, 500, 2000, 30, 0.4) > seconds
    # the GP's fit grows faster than the rows: twice the time buys fewer than twice the subnets above its floor
    if PREDICTOR_MIN < n < PREDICTOR_MAX // 2:
        assert predictor_subnets_for(2 * seconds, r, 500, 2000, 30, 0.4) < 2 * n + 1


def test_an_absurdly_slow_machine_runs_the_floor_and_says_so():
    plan = plan_budget(900, rates(40.0), QUICK_STEPS, scope="quickstart")
    assert plan.floor and plan.scale == MIN_SCALE
    assert plan.phase_steps["full"] == round(858 * MIN_SCALE) and min(plan.phase_steps.values()) >= MIN_PHASE_STEPS
    assert plan.predictor["subnets"] == PREDICTOR_MIN
    assert plan.estimate_s["total"] > 900
    assert any("too slow for a 15m00s budget" in n for n in plan.notes)
    assert "the floor" in render_plan(plan, 128, 55000)


def test_predictor_is_resized_to_the_time_training_left():
    r = rates(0.6)
    plan = plan_budget(900, r, QUICK_STEPS, scope="quickstart")
    planned = plan.estimate_s["startup"] + plan.estimate_s["measuring"] + plan.estimate_s["train"] + \
        plan.estimate_s["stage_evals"]
    on_time = resize_predictor(plan, planned)
    assert abs(on_time - plan.predictor["subnets"]) <= 0.05 * plan.predictor["subnets"] + 1
    late = resize_predictor(plan, planned * 1.15)     # training ran 15% over: fewer subnets, still the floor at least
    early = resize_predictor(plan, planned * 0.9)
    assert PREDICTOR_MIN <= late < on_time < early
    assert resize_predictor(plan, 2000) == PREDICTOR_MIN  # over budget already: the floor


@pytest.mark.parametrize("drift", [1.3, 1.0, 0.8])
def test_stage_starts_resize_the_rest_to_end_training_on_time(drift):
    """After the full stage ran `drift` x its estimate, the elastic phases are re-sized so that the training still
    ends when planned (the machine assumed to stay at the speed the full stage saw), in the schedule's proportions."""
    r = rates(0.6)
    plan = plan_budget(900, r, QUICK_STEPS, scope="quickstart", eval_subnets=0)
    est = plan.estimate_s
    full_planned = train_seconds({"full": plan.phase_steps["full"]}, r)
    used = est["startup"] + est["measuring"] + drift * full_planned
    elastic = [k for k in QUICK_STEPS if k != "full"]
    rev = revise_steps(plan, elastic, ["full"], drift * full_planned, used)
    assert rev["drift"] == pytest.approx(drift) and rev["stage"] == "kernel"
    end = used + drift * train_seconds(rev["phase_steps"], r)
    assert end == pytest.approx(est["startup"] + est["measuring"] + est["train"], rel=0.01)
    for k in elastic:
        assert rev["phase_steps"][k] == max(MIN_PHASE_STEPS, round(QUICK_STEPS[k] * rev["scale"]))
    if drift == 1.0:   # on time: the plan stands (to the rounding of steps)
        assert rev["scale"] == pytest.approx(plan.scale, rel=0.01)
    else:
        assert (rev["scale"] < plan.scale) == (drift > 1)
    # the predictor then budgets its subnets at the speed the training saw
    plan.revisions.append(rev)
    at_drift = resize_predictor(plan, end)
    plan.revisions[-1] = {**rev, "drift": 1.0}
    at_measured_speed = resize_predictor(plan, end)
    assert (at_drift < at_measured_speed) == (drift > 1) and (at_drift > at_measured_speed) == (drift < 1)


def test_plan_files_round_trip_and_refuse_another_budget(tmp_path):
    plan = plan_budget(900, rates(0.5), QUICK_STEPS, scope="quickstart")
    plan.spent_s["measured"] = 12.5
    save_plan(tmp_path, plan)
    again = load_plan(tmp_path)
    assert again.to_dict() == plan.to_dict()
    assert isinstance(again, BudgetPlan) and again.rates == plan.rates
    assert stored_plan_for(tmp_path, 900, "quickstart").phase_steps == plan.phase_steps
    with pytest.raises(OFAError, match="plans a 15m00s quickstart budget, not 20m00s quickstart"):
        stored_plan_for(tmp_path, 1200, "quickstart")
    (tmp_path / "time_budget.json").write_text("{")
    with pytest.raises(OFAError, match="not valid JSON"):
        load_plan(tmp_path)
    assert load_plan(tmp_path / "nowhere") is None


def test_budget_and_fixed_lengths_do_not_mix(tmp_path):
    with pytest.raises(OFAError, match="leave out --epochs"):
        TrainConfig(run="x", time_budget=900, epochs=3)
    with pytest.raises(OFAError, match="positive duration"):
        TrainConfig(run="x", time_budget=-1.0)
    with pytest.raises(OFAError, match="leave out --phase-steps"):
        train(TrainConfig(run=str(tmp_path / "x"), time_budget=900, phase_steps={"kernel": 5}), log=lambda m: None)


# ---- a budgeted run, killed and resumed --------------------------------------------------------------------
TINY_ARGS = ["--space", "mbv3-w1.0-small", "--resolutions", "16,20", "--data", "digits", "--subset", "96",
             "--eval-size", "32", "--schedule", "quick", "--batch-size", "16", "--seed", "3", "--save-every", "1",
             "--no-progress", "--threads", "1", "--stage", "full"]


def _ofa(*args: str, **kw):
    return [sys.executable, "-m", "ofa", *args]


@pytest.mark.slow
def test_budgeted_run_killed_and_resumed_follows_its_stored_plan(tmp_path):
    run = tmp_path / "budgeted"
    cmd = _ofa("train", "--run", str(run), *TINY_ARGS, "--time-budget", "3s")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state_file, deadline, killed = RunDir(run).state_file, time.time() + 240, False
    while time.time() < deadline and proc.poll() is None:
        if state_file.exists():
            try:
                st = torch.load(state_file, weights_only=True)
            except Exception:   # being replaced right now
                st = None
            if st is not None and not st.get("done") and st["step"] >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                killed = st["step"]
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    plan_file = run / "time_budget.json"
    plan = json.loads(plan_file.read_bytes())
    assert plan["scope"] == "train" and plan["budget_s"] == 3 and set(plan["phase_steps"]) == {"full"}

    out = subprocess.run(_ofa("train", "--run", str(run), "--resume", "--no-progress", "--threads", "1"), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming run" in out.stderr and "measuring this machine" not in out.stderr
    again = json.loads(plan_file.read_bytes())                  # the plan is not redone (only its clock moves on)
    assert {k: v for k, v in again.items() if k != "spent_s"} == {k: v for k, v in plan.items() if k != "spent_s"}
    assert "stage full" in again["spent_s"]
    steps = plan["phase_steps"]["full"]
    hist = [h for h in RunDir(run).history() if h["kind"] == "epoch"]   # (its images: those after the resume)
    assert [(h["stage"], h["epoch"]) for h in hist] == [("full", 1)]
    assert round(hist[0]["images_per_s"] * hist[0]["seconds"]) == 16 * (steps - killed)

    # the same steps as a fixed-step run: the resumed budgeted run ends with exactly its weights
    ref = tmp_path / "fixed"
    train(TrainConfig(run=str(ref), stage="full", space="mbv3-w1.0-small", resolutions=[16, 20],
                      data={"name": "digits", "subset_size": 96, "eval_size": 32}, schedule="quick", batch_size=16,
                      seed=3, save_every=1, progress=False, threads=1, phase_steps={"full": steps}, stage_eval=False),
          log=lambda m: None)
    a, b = load_file(str(RunDir(ref).weights_file)), load_file(str(RunDir(run).weights_file))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_after_planning_reuses_the_plan(tmp_path):
    """Stopped after planning but before the first checkpoint, a rerun (not a resume) follows the stored plan."""
    run = tmp_path / "planned"
    cfg = TrainConfig(run=str(run), stage="full", space="mbv3-w1.0-small", resolutions=[16, 20],
                      data={"name": "digits", "subset_size": 96, "eval_size": 32}, schedule="quick", batch_size=16,
                      seed=3, progress=False, threads=1, time_budget=2.0, stage_eval=False)

    class Stop(Exception):
        pass

    said: list[str] = []

    def stop_at_first_phase(msg: str) -> None:
        said.append(msg)
        if msg.startswith("phase full"):
            raise Stop

    with pytest.raises(Stop):
        train(cfg, log=stop_at_first_phase)
    assert any(m.startswith("measuring this machine") for m in said) and not RunDir(run).state_file.exists()
    first = (run / "time_budget.json").read_bytes()
    said.clear()
    with pytest.raises(Stop):
        train(cfg, log=stop_at_first_phase)
    assert not any(m.startswith("measuring this machine") for m in said)
    assert any("following the plan stored" in m for m in said) and (run / "time_budget.json").read_bytes() == first
    # (no stage ended: the plan's clock has not moved either)
    with pytest.raises(OFAError, match="plans a 2s train budget, not 5s train"):
        train(TrainConfig(**{**cfg.to_dict(), "time_budget": 5.0}), log=lambda m: None)


def test_a_timed_pilot_calibrates_the_predictors_remaining_subnets():
    """The pilot's measured time rescales the evaluations that follow it: a pilot that took twice its estimate
    leaves fewer subnets, one that took half leaves more, one on time changes nothing."""
    from ofa.training.time_budget import label_images

    r = rates(0.6)
    plan = plan_budget(900, r, QUICK_STEPS, scope="quickstart")
    p = plan.predictor
    est = plan.estimate_s
    used = est["startup"] + est["measuring"] + est["train"] + est["stage_evals"]   # training on time: drift 1
    pilot_est = p["pilot"] * r.eval_subnet_s + label_images(p["pilot"], p["calib_images"], p["val_images"],
                                                            p["pilot"]) * r.eval_image_s
    plain = resize_predictor(plan, used, p["pilot"])
    assert resize_predictor(plan, used, p["pilot"], pilot_seconds=pilot_est) == plain
    slow = resize_predictor(plan, used, p["pilot"], pilot_seconds=2 * pilot_est)
    fast = resize_predictor(plan, used, p["pilot"], pilot_seconds=0.5 * pilot_est)
    assert slow < plain < fast


def test_timed_labels_after_the_pilot_size_the_rest():
    """The subnets timed after the pilot (informative images only: the work that remains) rescale what follows
    them, whatever the pilot said: on time leaves the drift-1 size, twice as slow fewer, half as slow more; and
    the fit is costed on every subnet, not only the ones still to measure."""
    from ofa.training.time_budget import STEADY_SUBNETS, label_images

    r = rates(0.6)
    plan = plan_budget(900, r, QUICK_STEPS, scope="quickstart")
    p = plan.predictor
    p["informative"] = 0.4
    est = plan.estimate_s
    used = est["startup"] + est["measuring"] + est["train"] + est["stage_evals"]
    done = p["pilot"] + STEADY_SUBNETS
    on_time = STEADY_SUBNETS * r.eval_subnet_s + label_images(STEADY_SUBNETS, p["calib_images"], p["val_images"],
                                                              0, 0.4) * r.eval_image_s
    plain = resize_predictor(plan, used, done)
    assert resize_predictor(plan, used, done, pilot_seconds=10 * on_time, recent=(STEADY_SUBNETS, on_time)) == plain
    slow = resize_predictor(plan, used, done, recent=(STEADY_SUBNETS, 2 * on_time))
    fast = resize_predictor(plan, used, done, recent=(STEADY_SUBNETS, 0.5 * on_time))
    faster = resize_predictor(plan, used, done, recent=(STEADY_SUBNETS, 0.3 * on_time))
    assert done < slow < plain < fast < faster     # a third of the estimate is believed, not clamped at a half
    # the estimate behind the size: measuring the rest plus fitting on all of them fits in what is left
    left = TARGET * 900 - used - (est["profile"] + est["specialize"])
    more = plain - done
    assert predictor_seconds(more, r, p["calib_images"], p["val_images"], 0, 0.4, measured=done) <= left
    assert predictor_seconds(more + 1, r, p["calib_images"], p["val_images"], 0, 0.4, measured=done) > left
    assert predictor_seconds(more, r, p["calib_images"], p["val_images"], 0, 0.4, measured=done) > \
        predictor_seconds(more, r, p["calib_images"], p["val_images"], 0, 0.4)


def test_gp_fit_cost_follows_the_measured_likelihood_step():
    """With this machine's GP step measured, the fit's estimate is that step scaled to the fits' rows, times the
    search's cap: proportional to the step, growing faster than the rows, flat beyond the row cap."""
    from dataclasses import replace

    from ofa.training.time_budget import gp_fit_seconds
    from predictors.accuracy_models import DEFAULT_HP

    measured = replace(rates(0.6), gp_eval_s=0.03, gp_features=46)
    twice = replace(measured, gp_eval_s=0.06)
    assert gp_fit_seconds(300, twice) == pytest.approx(2 * gp_fit_seconds(300, measured))
    assert gp_fit_seconds(400, measured) > 2 * gp_fit_seconds(200, measured)
    cap = DEFAULT_HP["gp"]["max_rows"]
    assert gp_fit_seconds(5 * cap, measured) == pytest.approx(gp_fit_seconds(3 * cap, measured))
    # one step at the reference rows: 5 CV fits, the held-out and the final fit of at most max_evals steps each
    assert gp_fit_seconds(200, measured) < 7 * DEFAULT_HP["gp"]["max_evals"] * 0.03


def test_the_main_jobs_predictor_is_sized_after_the_pilot_and_again_after_steady_labels(tmp_path, monkeypatch):
    """`ofa.quickstart`'s budgeted labels, with the evaluations and the clock faked: a pilot on time keeps the
    planned size; the next STEADY_SUBNETS labels, taking twice their estimate, shrink the rest; the decisions are
    stored, and a resumed job measures nothing again and resizes nothing."""
    import types

    import numpy as np

    import ofa.informative_images as informative
    import ofa.quickstart as qs
    from elastic.spaces import get_space
    from ofa.accuracy_data import dataset_paths, read_dataset
    from ofa.informative_images import InformativeImages
    from ofa.training.time_budget import STEADY_SUBNETS, label_images, load_plan, save_plan

    space = get_space("mbv3-w1.0-small", n_classes=10)
    rd = RunDir(tmp_path / "run")
    rd.create()
    rd.save_space(space)
    rd.save_data_config({"name": "digits", "subset_size": 96, "eval_size": 64})
    r = rates(0.6)
    plan = plan_budget(900, r, QUICK_STEPS, scope="quickstart")
    p = plan.predictor
    est = plan.estimate_s
    fake = types.SimpleNamespace(now=0.0)
    fake.monotonic = lambda: fake.now
    monkeypatch.setattr(qs, "time", fake)
    clock = qs._Clock()
    fake.now = est["startup"] + est["measuring"] + est["train"] + est["stage_evals"]   # training on time
    fraction = 0.4
    per_pilot = r.eval_subnet_s + label_images(1, p["calib_images"], p["val_images"], 1) * r.eval_image_s
    per_later = r.eval_subnet_s + label_images(1, p["calib_images"], p["val_images"], 0, fraction) * r.eval_image_s
    measured = []

    def fake_evaluator(path, pilot, **kw):
        found = InformativeImages(np.arange(40), 50, 100, {a: 0.5 for a in pilot})

        def evaluate(arch):
            fake.now += per_pilot if arch in found.pilot_accuracy else 2 * per_later
            measured.append(arch)
            return 0.5 + 0.001 * (len(measured) % 7)
        return evaluate, lambda: found

    monkeypatch.setattr(informative, "informative_evaluator", fake_evaluator)
    said = []
    data = qs._budgeted_predictor_data(rd, space, plan, clock, None, 0, said.append)
    stored = load_plan(rd.path).predictor
    after_pilot = int(next(m for m in said if "pilot disagreed" in m).split(": ")[-1].split()[0])
    assert stored["sized"] == stored["sized_after_pilot"] == stored["sized_steady"] == 1
    assert any(f"{STEADY_SUBNETS} subnets on the informative images took" in m for m in said)
    assert p["pilot"] + STEADY_SUBNETS < stored["subnets"] < after_pilot
    assert len(data) == len(read_dataset(dataset_paths(rd.path)[0], space)) == stored["subnets"] == len(measured)
    # a resumed job follows the stored sizes: nothing measured, nothing resized
    said.clear()
    again = qs._budgeted_predictor_data(rd, space, load_plan(rd.path), qs._Clock(fake.now), None, 0, said.append)
    assert len(again) == stored["subnets"] == len(measured) and not said
