"""Fit a training run (or the whole main job) into the time a user gives it.

A fixed-step schedule takes whatever time the machine makes of it: on this project's 2-core machines the same
steps ran at 41 to 445 images/s on different days. With `--time-budget 15m` the run first measures this
machine (`ofa.training.throughput`: a few full-stage and elastic steps, a subnet evaluation), then sizes the
work to the budget:

- training: the schedule's own steps (for the quick schedule: 2 full-stage epochs and 700 elastic steps split
  as `QUICK_PHASE_STEPS`, the split that measured best) all multiplied by one factor, so the full stage may be a
  fraction of an epoch or several epochs and the elastic phases keep their proportions;
- for the main job (`ofa quickstart`) also the accuracy predictor's subnets, the cpu profile's size and the
  specialization, estimated from the same measurements.

The plan is written to `<run>/time_budget.json` before any training step; a resumed or rerun job reads it
back and measures nothing again. `--time-budget` never changes what a step does (same learning-rate rule,
same subnets per step), only how many steps there are, so a budgeted run is an ordinary fixed-step run once
planned. Below a floor (3% of the schedule, `MIN_SCALE`) the plan says the machine is too slow for the
budget and runs the floor anyway.

This module is arithmetic and files only (no clock, no torch): the sizing is tested with injected rates.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from elastic.errors import OFAError
from predictors.accuracy_models import DEFAULT_HP

FORMAT = "ofa-time-budget/1"
FILE_NAME = "time_budget.json"
DEFAULT_BUDGET = "15m"            # the main job's default
SCOPES = ("train", "quickstart")

MIN_SCALE = 0.03                  # the floor: 3% of the schedule's steps
MIN_PHASE_STEPS = 4               # no phase shorter than this
TARGET = 0.97                     # plan to end at 97% of the budget (what follows the plan is not free)
MIN_DRIFT, MAX_DRIFT = 0.5, 3.0   # how far the machine's speed may have moved since it was measured
# Labels timed in this process (the pilot's, then STEADY_SUBNETS more) are many seconds of the very work that
# follows, so they may move its estimate further: a clean-clone job whose evaluation speed was measured while a
# test run shared the machine (978 img/s against 2600-3500 in the others) timed its labels at a third of their
# estimate, and clamped at MIN_DRIFT it used 84% of its budget.
MIN_LABEL_DRIFT, MAX_LABEL_DRIFT = 0.1, 10.0
MAX_RESCALE = 3.0                 # a stage-start revision gives at most this many times the planned steps

# The accuracy predictor of the main job (quickstart scope). What a subnet's label costs: `calib` training
# images to recalibrate BN plus `val` validation images; how many subnets: a share of what the budget leaves,
# between a floor and a ceiling (see docs/results.md, "The main job within a time budget" for the measurements behind these).
# The share was 0.25 until the GP on ordinal features (predictors.accuracy_models): its held-out tau still rises
# from 200 subnets (0.73) to 300-430 (0.82), while the supernet gains little from 10% more steps at this scale.
# 0.35 -> 0.45 (2026-12-03): a clean-clone job at 263 img/s got 216 subnets and held-out tau 0.74; 600 subnets of
# that supernet rank a fixed 150 of them at tau 0.77 fit on 216, 0.79 on 300, 0.81 on 400 (3 draws each).
# 0.45 -> 0.55 (2026-12-04): six clean-clone jobs at 0.45 (271-420 subnets) gave held-out tau 0.63-0.84, three of
# six at 0.75; on two of their runs the tau still climbs with the subnets' number (the first 300 / all 359 of one
# run: 0.69 / 0.76 over 8 random splits; 300 / 420 of the other: 0.76 / 0.78), and nothing else measured moved it
# (docs/results.md, "What bounds it").
PREDICTOR_SHARE = 0.55
PREDICTOR_MIN, PREDICTOR_MAX = 30, 1500
# Labels use up to PREDICTOR_VAL validation images, beyond the quick schedule's 2000-image evaluation cap where the
# split has them (Fashion-MNIST's carved validation split: 5000). Measured 2026-12-03 on 150 subnets of a main
# job's supernet: labels on its 2000 capped images and on the 3000 others rank the subnets alike at Kendall tau
# only 0.74 -- as far apart as the predictor from either -- so the label noise, not the model, bounded the
# held-out tau on 2000-image labels; 5000-image labels cost 1.9x as much per subnet (informative images).
PREDICTOR_CALIB, PREDICTOR_VAL = 500, 5000
# Labels on the informative images (`ofa.informative_images`): the first PILOT subnets on every validation image,
# the others on the images those disagreed on -- INFORMATIVE_GUESS of them until the pilot has measured it.
PILOT_MIN, PILOT_MAX, PILOT_SHARE = 10, 30, 0.2
INFORMATIVE_GUESS = 0.5
# Then the next STEADY_SUBNETS subnets (labels on the informative images alone: the work that remains) are timed
# and the rest sized once more from their time, where at least twice as many would follow them.
STEADY_SUBNETS = 20
# The cpu latency profile: (fitting, test) subnets and timing rounds; the smaller one when time is short.
PROFILE_FULL, PROFILE_SMALL = (40, 12, 5), (20, 6, 5)
PROFILE_SHARE = 0.06              # the small one when the full one would take more than this share of the budget
SPEC_EVALS = 13                   # nets evaluated at the end: 3 devices x 3 budgets; largest, smallest x val, test
STAGES_EVALUATED = ("full", "kernel", "depth", "expand")
STAGE_EVALS = 2 * len(STAGES_EVALUATED)   # largest + smallest at each stage end

# Costs that are not training steps or subnet evaluations, in seconds on a reference machine that evaluates
# subnets at REF_EVAL_IMAGE_S a image, scaled by the measured evaluation speed: predictor fitting (per run and per
# subnet), profiling (per subnet timed), the searches of the specialization, start-up (imports, data). From this
# project's 2-core machines on a quiet and on a loaded day, see docs/results.md, "The main job within a time budget".
REF_EVAL_IMAGE_S = 2.5e-4
REF_COSTS = {"fit_base_s": 3.0, "fit_per_subnet_s": 0.05, "fit_gp_s": 16.0, "profile_per_subnet_s": 0.2,
             "specialize_s": 5.0, "startup_s": 4.0}
# The Gaussian-process predictor's fits (5 CV folds, held-out, final): each at most `max_evals` evaluations of its
# likelihood (`predictors.accuracy_models`), each evaluation timed on this machine at GP_REF_ROWS rows
# (`Rates.gp_eval_s`) and scaled to other row counts m by (d m^2 + m^3) (the gradient's d matrices of m x m and
# the Cholesky factor). Plans measured before that (no gp_eval_s) use the older fit: `fit_gp_s` x
# (rows / 100) ** GP_FIT_EXPONENT at the reference speed.
GP_REF_ROWS = 200
GP_FIT_EXPONENT = 1.5


# ---- durations --------------------------------------------------------------------------------------------
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?$")
OFF_WORDS = ("off", "none", "fixed")


def parse_duration(text: str | float | int | None, what: str = "--time-budget") -> float:
    """`15m` -> 900.0, `900s`, `1h`, `1h30m`, `2.5h`, `1m30s` (seconds). Anything else is an OFAError."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text or "").strip().lower().replace(" ", "")
        m = _DURATION.match(s)
        if not s or not m or not any(m.groups()):
            raise OFAError(f"{what} takes a duration such as 15m, 900s, 1h or 1h30m, got {text!r}")
        h, mi, se = (float(g) if g else 0.0 for g in m.groups())
        seconds = 3600 * h + 60 * mi + se
    if not (seconds > 0 and math.isfinite(seconds)):
        raise OFAError(f"{what} must be a positive duration such as 15m, 900s, 1h or 1h30m, got {text!r}")
    return seconds


def parse_budget_option(text: str | None) -> float | None:
    """A CLI value: a duration, or off/none/fixed (None: the fixed-step schedule)."""
    if text is None or str(text).strip().lower() in OFF_WORDS:
        return None
    return parse_duration(text)


def format_duration(seconds: float) -> str:
    from ofa.progress import format_duration as fmt

    return fmt(seconds)


# ---- what was measured -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rates:
    """This machine's costs, measured by `ofa.training.throughput.measure_rates` (seconds)."""
    batch: int                       # images per training step
    full_step_s: float               # one full-stage step (the largest subnet, forward + backward + update)
    elastic_step_s: dict[str, float]  # one step of each elastic phase (its subnets and the teacher)
    eval_image_s: float              # one image through an extracted subnet (BN calibration or evaluation)
    eval_subnet_s: float             # fixed cost of evaluating one subnet (extraction, BN reset)
    probe_s: float = 0.0             # what measuring took
    threads: int = 1
    gp_eval_s: float = 0.0           # one GP likelihood evaluation on GP_REF_ROWS rows (0: not measured)
    gp_features: int = 0             # columns the GP is fit on (`predictors.accuracy_models.feature_count`)

    @property
    def speed(self) -> float:
        """How much slower than the reference machine (1.0: as fast; 5: five times slower), by subnet evaluation."""
        return self.eval_image_s / REF_EVAL_IMAGE_S

    def full_images_per_s(self) -> float:
        return self.batch / self.full_step_s

    def eval_cost(self, calib: int, val: int) -> float:
        return self.eval_subnet_s + (calib + val) * self.eval_image_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Rates":
        return cls(**{k: d[k] for k in ("batch", "full_step_s", "elastic_step_s", "eval_image_s", "eval_subnet_s",
                                        "probe_s", "threads", "gp_eval_s", "gp_features") if k in d})


# ---- the plan ----------------------------------------------------------------------------------------------
@dataclass
class BudgetPlan:
    budget_s: float
    scope: str
    rates: Rates
    scale: float                             # fraction of the schedule's steps
    phase_steps: dict[str, int]              # every phase, full stage included
    estimate_s: dict[str, float]             # per part, plus "total"
    floor: bool = False                      # the budget was too small: the floor runs
    predictor: dict[str, int] | None = None  # subnets, calib_images, val_images (quickstart scope)
    profile: dict[str, int] | None = None    # n_fit, n_test, rounds (quickstart scope)
    eval_images: dict[str, int] = field(default_factory=dict)   # calib, val images of the stage-end evaluations
    notes: list[str] = field(default_factory=list)
    spent_s: dict[str, float] = field(default_factory=dict)     # seconds used at milestones (for a resumed job)
    base_steps: dict[str, int] = field(default_factory=dict)    # the schedule's own steps (scale 1)
    revisions: list[dict[str, Any]] = field(default_factory=list)   # re-sized at stage starts (revise_steps)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rates"] = self.rates.to_dict()
        return {"format": FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BudgetPlan":
        if d.get("format") != FORMAT:
            raise OFAError(f"not a time-budget plan (expected format '{FORMAT}', got {d.get('format')!r})")
        try:
            return cls(budget_s=float(d["budget_s"]), scope=d["scope"], rates=Rates.from_dict(d["rates"]),
                       scale=float(d["scale"]), phase_steps={k: int(v) for k, v in d["phase_steps"].items()},
                       estimate_s=dict(d["estimate_s"]), floor=bool(d.get("floor")), predictor=d.get("predictor"),
                       profile=d.get("profile"), eval_images=dict(d.get("eval_images") or {}),
                       notes=list(d.get("notes") or []), spent_s=dict(d.get("spent_s") or {}),
                       base_steps={k: int(v) for k, v in (d.get("base_steps") or {}).items()},
                       revisions=list(d.get("revisions") or []))
        except (KeyError, TypeError, ValueError) as exc:
            raise OFAError(f"damaged time-budget plan ({type(exc).__name__}: {exc})") from None


def plan_path(run: str | Path) -> Path:
    return Path(run) / FILE_NAME


def save_plan(run: str | Path, plan: BudgetPlan) -> Path:
    from ofa import atomic

    return atomic.write_json(plan_path(run), plan.to_dict())


def load_plan(run: str | Path) -> BudgetPlan | None:
    import json

    path = plan_path(run)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OFAError(f"{path} is not valid JSON ({exc}); delete it to plan again") from None
    try:
        return BudgetPlan.from_dict(doc)
    except OFAError as exc:
        raise OFAError(f"{path}: {exc}; delete it to plan again") from None


def stored_plan_for(run: str | Path, budget_s: float, scope: str) -> BudgetPlan | None:
    """The run's stored plan when it was made for this budget and scope; an OFAError when for another."""
    plan = load_plan(run)
    if plan is None:
        return None
    if abs(plan.budget_s - budget_s) > 0.5 or plan.scope != scope:
        raise OFAError(f"{plan_path(run)} plans a {format_duration(plan.budget_s)} {plan.scope} budget, not "
                       f"{format_duration(budget_s)} {scope}: resume with the same --time-budget, or use another --run")
    return plan


# ---- sizing ------------------------------------------------------------------------------------------------
def scaled_steps(base_steps: dict[str, int], scale: float) -> dict[str, int]:
    return {k: max(MIN_PHASE_STEPS, int(round(v * scale))) for k, v in base_steps.items()}


def train_seconds(steps: dict[str, int], rates: Rates) -> float:
    return sum(n * (rates.full_step_s if name == "full" else rates.elastic_step_s[name]) for name, n in steps.items())


def _fixed_costs(rates: Rates) -> dict[str, float]:
    return {k: v * rates.speed for k, v in REF_COSTS.items()}


def pilot_size(n: int) -> int:
    return int(min(PILOT_MAX, max(PILOT_MIN, round(PILOT_SHARE * n)), n))


def label_images(n: int, calib: int, val: int, pilot: int = 0, fraction: float = 1.0) -> float:
    """Images evaluated for `n` labels: each recalibrates on `calib`; the first `pilot` see all `val` images, the
    others `fraction` of them."""
    p = min(pilot, n)
    return n * calib + p * val + (n - p) * fraction * val


def gp_fit_seconds(n: int, rates: Rates, folds: int = 5, holdout: float = 0.2) -> float:
    """The GP's fits on `n` subnets: `folds` CV fits on (1 - holdout)(1 - 1/folds) of the rows, the held-out fit on
    (1 - holdout), the final fit on all (rows capped at its max_rows), each at most `max_evals` likelihood steps."""
    hp = DEFAULT_HP["gp"]
    cap = hp["max_rows"]
    if not rates.gp_eval_s or not rates.gp_features:
        return _fixed_costs(rates)["fit_gp_s"] * (min(n, cap) / 100) ** GP_FIT_EXPONENT
    d = rates.gp_features

    def step(m: float) -> float:
        m = min(m, cap)
        return rates.gp_eval_s * (d * m * m + m ** 3) / (d * GP_REF_ROWS ** 2 + GP_REF_ROWS ** 3)

    train = (1 - holdout) * n
    return hp["max_evals"] * (folds * step(train * (1 - 1 / folds)) + step(train) + step(n))


def fit_seconds(n: int, rates: Rates) -> float:
    """Fitting the accuracy predictor on `n` subnets: every kind's cross-validation, the held-out and final fits."""
    c = _fixed_costs(rates)
    return c["fit_base_s"] + n * c["fit_per_subnet_s"] + gp_fit_seconds(n, rates)


def predictor_seconds(n: int, rates: Rates, calib: int = PREDICTOR_CALIB, val: int = PREDICTOR_VAL, pilot: int = 0,
                      fraction: float = 1.0, measured: int = 0) -> float:
    """Measuring `n` more subnets and fitting the predictor on them and the `measured` ones before them."""
    return (n * rates.eval_subnet_s + fit_seconds(n + measured, rates)
            + label_images(n, calib, val, pilot, fraction) * rates.eval_image_s)


def predictor_subnets_for(seconds: float, rates: Rates, calib: int = PREDICTOR_CALIB, val: int = PREDICTOR_VAL,
                          pilot: int = 0, fraction: float = 1.0, lo: int = PREDICTOR_MIN,
                          hi: int = PREDICTOR_MAX, measured: int = 0) -> int:
    """As many more subnets as `seconds` pay for (collection, and fitting on them and `measured` others), within
    [lo, hi]."""
    def cost(n: int) -> float:
        return predictor_seconds(n, rates, calib, val, pilot, fraction, measured)

    if cost(lo) > seconds:
        return int(lo)
    good, bad = int(lo), int(hi) + 1    # cost rises with n: the largest n that fits, by bisection
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if cost(mid) <= seconds else (good, mid)
    return good


def plan_budget(budget_s: float, rates: Rates, base_steps: dict[str, int], *, scope: str = "train",
                stage_eval: tuple[int, int] = (1000, 2000), eval_subnets: int = STAGE_EVALS,
                spec_eval: tuple[int, int] = (1000, 2000), predictor_subnets: int | None = None,
                predictor_images: tuple[int, int] = (PREDICTOR_CALIB, PREDICTOR_VAL)) -> BudgetPlan:
    """Size `base_steps` (the schedule's steps per phase, "full" included) and, for the quickstart scope, the
    predictor and profile so that the estimated total lands at TARGET x `budget_s`.

    `stage_eval` / `spec_eval`: (calibration, evaluation) images of one stage-end / specialized-net evaluation.
    `predictor_subnets`: a fixed number of predictor subnets (the rest is sized around it); `predictor_images`:
    the (calibration, validation) images of one predictor label.
    """
    if scope not in SCOPES:
        raise OFAError(f"unknown time-budget scope '{scope}'; allowed: {', '.join(SCOPES)}")
    if not budget_s > 0:
        raise OFAError(f"time budget must be positive, got {budget_s}")
    missing = [k for k in base_steps if k != "full" and k not in rates.elastic_step_s]
    if missing:
        raise OFAError(f"no measured step time for phase(s) {', '.join(missing)}")
    costs = _fixed_costs(rates)
    est: dict[str, float] = {"startup": costs["startup_s"], "measuring": rates.probe_s,
                             "stage_evals": eval_subnets * rates.eval_cost(*stage_eval)}
    notes: list[str] = []
    target = TARGET * budget_s
    pred_cfg = prof_cfg = None
    if scope == "quickstart":
        prof_cfg = PROFILE_FULL
        est["profile"] = (prof_cfg[0] + prof_cfg[1]) * costs["profile_per_subnet_s"]
        est["specialize"] = costs["specialize_s"] + SPEC_EVALS * rates.eval_cost(*spec_eval)
        if est["profile"] > PROFILE_SHARE * budget_s:   # a slow machine: the small profile leaves more for the rest
            prof_cfg = PROFILE_SMALL
            est["profile"] = (prof_cfg[0] + prof_cfg[1]) * costs["profile_per_subnet_s"]
        rest = target - sum(est.values())
        calib, val = predictor_images
        guess = predictor_subnets_for(PREDICTOR_SHARE * rest, rates, calib, val, PILOT_MAX, INFORMATIVE_GUESS)
        n_pred = predictor_subnets if predictor_subnets is not None else \
            predictor_subnets_for(PREDICTOR_SHARE * rest, rates, calib, val, pilot_size(guess), INFORMATIVE_GUESS)
        pilot = pilot_size(n_pred)
        est["predictor"] = predictor_seconds(n_pred, rates, calib, val, pilot, INFORMATIVE_GUESS)
        pred_cfg = {"subnets": int(n_pred), "calib_images": calib, "val_images": val, "pilot": pilot,
                    "informative": INFORMATIVE_GUESS}
    available = target - sum(est.values())
    unit = train_seconds(base_steps, rates)          # seconds of the schedule at scale 1
    scale = available / unit if unit > 0 else MIN_SCALE
    for _ in range(8):   # phases held at MIN_PHASE_STEPS cost more than their share: shrink the others to match
        if scale < MIN_SCALE:
            break
        scale *= available / max(train_seconds(scaled_steps(base_steps, scale), rates), 1e-9)
    floor = scale < MIN_SCALE
    scale = max(scale, MIN_SCALE)
    steps = scaled_steps(base_steps, scale)
    est["train"] = train_seconds(steps, rates)
    est["total"] = sum(v for k, v in est.items() if k != "total")
    if floor:
        notes.append(f"this machine is too slow for a {format_duration(budget_s)} budget "
                     f"({rates.full_images_per_s():.0f} img/s in the full stage): running the minimum "
                     f"({MIN_SCALE:g} x the schedule), expected to take {format_duration(est['total'])}")
    plan = BudgetPlan(budget_s=float(budget_s), scope=scope, rates=rates, scale=float(scale), phase_steps=steps,
                      base_steps=dict(base_steps),
                      estimate_s=est, floor=floor, predictor=pred_cfg,
                      profile=None if prof_cfg is None else dict(zip(("n_fit", "n_test", "rounds"), prof_cfg)),
                      eval_images={"calib": stage_eval[0], "val": stage_eval[1], "subnets": eval_subnets},
                      notes=notes)
    return plan


def resize_predictor(plan: BudgetPlan, spent_s: float, measured_so_far: int = 0,
                     pilot_seconds: float | None = None, recent: tuple[int, float] | None = None) -> int:
    """Subnets for the predictor from what the budget has left (`spent_s` used so far, `measured_so_far` subnets
    already measured), at the informative share of images in `plan.predictor`.

    The later parts' estimates are scaled by how the training's estimate compared with its real time (a machine
    that slowed down since it was measured is slower for the rest too). `pilot_seconds`: what measuring the
    pilot's `measured_so_far` subnets took in this process; the subnet evaluations that follow are then scaled by
    how that compared with its estimate instead (the same work, timed just before). `recent` = (n, seconds): the
    last n subnets, measured after the pilot on the informative images alone, took `seconds` -- the very work
    that remains, so it calibrates the rest better still (a pilot's labels on every image ran 1.44x their
    estimate in a clean-clone job whose later labels ran 1.2x theirs)."""
    assert plan.predictor is not None
    est = plan.estimate_s
    planned_so_far = est["startup"] + est["measuring"] + est["train"] + est["stage_evals"]
    if plan.revisions:   # the training re-sized itself: its steps ran `drift` x the measured time
        drift = plan.revisions[-1]["drift"]
    else:
        drift = min(MAX_DRIFT, max(MIN_DRIFT, spent_s / planned_so_far)) if planned_so_far > 0 else 1.0
    after = (est.get("profile", 0.0) + est.get("specialize", 0.0)) * drift
    left = TARGET * plan.budget_s - spent_s - after
    rates = plan.rates
    p = plan.predictor
    # labels timed in this process: (how many, how many of them pilot labels on every image, seconds)
    timed = ((recent[0], 0, recent[1]) if recent is not None and recent[0] > 0
             else (measured_so_far, measured_so_far, pilot_seconds) if pilot_seconds and measured_so_far else None)
    eval_drift = drift
    if timed is not None:
        n, on_every_image, seconds = timed
        planned = n * rates.eval_subnet_s + label_images(n, p["calib_images"], p["val_images"], on_every_image,
                                                         p.get("informative", 1.0)) * rates.eval_image_s
        if planned > 0:
            eval_drift = min(MAX_LABEL_DRIFT, max(MIN_LABEL_DRIFT, seconds / planned))
    slowed = Rates(**{**rates.to_dict(), "eval_image_s": rates.eval_image_s * eval_drift,
                      "eval_subnet_s": rates.eval_subnet_s * eval_drift, "full_step_s": rates.full_step_s * drift})
    pilot_left = max(0, p.get("pilot", 0) - measured_so_far)
    more = predictor_subnets_for(left, slowed, p["calib_images"], p["val_images"], pilot_left,
                                 p.get("informative", 1.0), lo=0, measured=measured_so_far)
    return int(min(PREDICTOR_MAX, max(PREDICTOR_MIN, p.get("pilot", 0), measured_so_far + more)))


# ---- in a training run -------------------------------------------------------------------------------------
def plan_training(cfg, run, space, bundle, info, say, stages=None, **options: Any):
    """`cfg` with its steps sized to `cfg.time_budget` (the stored plan of `run` when there is one, else measured
    now on rank 0 and stored), and the per-epoch evaluations off (stage ends keep largest and smallest).
    `options` go to `plan_budget` (e.g. predictor_subnets)."""
    from dataclasses import replace

    from ofa.training.distributed import broadcast_object

    plan = stored_plan_for(run.path, cfg.time_budget, cfg.time_budget_scope) if info.is_main else None
    n_train = len(bundle.train)
    batch = cfg.resolved("batch_size")
    if info.is_main and plan is not None:
        say(f"time budget: following the plan stored in {plan_path(run.path)} (nothing measured again)")
    elif info.is_main:
        from ofa.training.throughput import measure_rates

        stage_eval = (min(cfg.resolved("calib_images"), n_train), len(bundle.val))
        label_val = len(bundle.val)
        if cfg.time_budget_scope == "quickstart":   # the predictor's labels may use the split beyond the eval cap
            label_val = len(run.load_data(uncapped=True).val)
        import torch

        try_threads = (1,) if cfg.threads is None and info.device.type == "cpu" and not info.distributed else ()
        rates = measure_rates(space, bundle, cfg, info.device, batch // info.world, say, threads=try_threads)
        rates = Rates(**{**rates.to_dict(), "batch": batch})
        plan = plan_budget(cfg.time_budget, rates, cfg.schedule_steps(space, n_train, stages or STAGES_EVALUATED), scope=cfg.time_budget_scope,
                           stage_eval=stage_eval, spec_eval=(stage_eval[0], len(bundle.test)),
                           eval_subnets=len(stages or STAGES_EVALUATED) * (2 + (cfg.eval_subnets or 0)) if cfg.stage_eval else 0,
                           predictor_images=(min(PREDICTOR_CALIB, n_train), min(PREDICTOR_VAL, label_val)),
                           **options)
        plan.spent_s["measured"] = plan.estimate_s["startup"] + rates.probe_s
        save_plan(run.path, plan)
    plan = BudgetPlan.from_dict(broadcast_object(info, plan.to_dict() if plan is not None else None))
    use_planned_threads(cfg, plan, info)
    if info.is_main:
        say(render_plan(plan, batch, n_train))
    return replace(cfg, phase_steps=dict(plan.phase_steps), eval_every=0,
                   eval_subnets=0 if cfg.eval_subnets is None else cfg.eval_subnets), plan


def report_training(plan: BudgetPlan, used_s: float, say) -> dict[str, float]:
    """Budget, estimate and time used of a budgeted training run (scope "train"), said and returned."""
    out = {"budget_s": plan.budget_s, "estimate_s": plan.estimate_s["total"], "used_s": used_s,
           "used_fraction": used_s / plan.budget_s}
    say(f"time budget {format_duration(plan.budget_s)}: used {format_duration(used_s)} "
        f"({100 * used_s / plan.budget_s:.0f}%; planned {format_duration(plan.estimate_s['total'])})")
    return out


def revise_steps(plan: BudgetPlan, remaining: list[str], done: list[str], done_actual_s: float,
                 used_s: float) -> dict[str, Any]:
    """Re-size the phases not started yet (`remaining`, in order) to the time the training has left.

    `done`: the phases trained so far, which took `done_actual_s` seconds of steps against the plan's estimate
    for them: their ratio (`drift`, clipped) says how much slower (or faster) the machine runs now than when it
    was measured, and the remaining steps are estimated at that speed. `used_s`: seconds the job has used. The
    training is to end when the plan said it would; the remaining phases keep the schedule's proportions."""
    r, est = plan.rates, plan.estimate_s
    planned_done = train_seconds({k: plan.phase_steps[k] for k in done}, r)
    drift = min(MAX_DRIFT, max(MIN_DRIFT, done_actual_s / planned_done)) if planned_done > 0 else 1.0
    train_end = est["startup"] + est["measuring"] + est["train"] + est.get("stage_evals", 0.0)
    n_stages = max(1, len({k.split("/")[0] for k in plan.phase_steps}))
    evals_left = est.get("stage_evals", 0.0) * len({k.split("/")[0] for k in remaining}) / n_stages * drift
    left = train_end - used_s - evals_left
    base = {k: plan.base_steps[k] for k in remaining}
    unit = train_seconds(base, r) * drift
    scale = min(MAX_RESCALE * plan.scale, max(MIN_SCALE, left / unit)) if unit > 0 else plan.scale
    for _ in range(8):   # as in plan_budget: phases held at MIN_PHASE_STEPS cost more than their share
        if scale <= MIN_SCALE:
            break
        scale = max(MIN_SCALE, scale * left / max(train_seconds(scaled_steps(base, scale), r) * drift, 1e-9))
    return {"stage": remaining[0].split("/")[0], "used_s": used_s, "drift": drift, "scale": scale,
            "phase_steps": scaled_steps(base, scale)}


class BudgetRun:
    """A budgeted training run in progress: its plan, the time it has used, and the re-sizing at stage starts."""

    def __init__(self, run, plan: BudgetPlan, offset_s: float, is_main: bool = True):
        import time

        self.run, self.plan, self.offset_s, self.is_main = run, plan, offset_s, is_main
        self.t0 = time.monotonic()

    def used(self) -> float:
        import time

        return self.offset_s + time.monotonic() - self.t0

    def milestone(self, name: str) -> None:
        if self.is_main:
            self.plan.spent_s[name] = self.used()
            save_plan(self.run.path, self.plan)

    def revise(self, cfg, stage: str, space, info, say):
        """`cfg` with the steps of `stage` and the later stages re-sized (once; a resume reuses the revision)."""
        from dataclasses import replace

        from ofa.training.distributed import broadcast_object
        from ofa.training.schedule import STAGES, stage_phases

        later = [p.name for s in STAGES[STAGES.index(stage):] for p in stage_phases(s, space)]
        remaining = [k for k in later if k in self.plan.phase_steps]
        done = [k for k in self.plan.phase_steps if k not in remaining]
        rev = next((v for v in self.plan.revisions if v["stage"] == stage), None)
        if rev is None and self.is_main and remaining and done and self.plan.base_steps:
            seconds = {}
            for h in self.run.history():
                if h.get("kind") == "epoch":
                    name = h["stage"] if h["stage"] in ("full", "kernel") else f"{h['stage']}/{h['phase']}"
                    seconds[name] = seconds.get(name, 0.0) + float(h.get("seconds") or 0.0)
            rev = revise_steps(self.plan, remaining, done, sum(seconds.get(k, 0.0) for k in done), self.used())
            self.plan.revisions.append(rev)
            self.plan.phase_steps.update(rev["phase_steps"])
            save_plan(self.run.path, self.plan)
            say(f"time budget: {format_duration(rev['used_s'])} used; the steps so far ran at {rev['drift']:.2f} x "
                f"their estimate, so from stage '{stage}' on: {rev['scale']:.3f} x the schedule's steps ("
                + ", ".join(f"{k} {v}" for k, v in rev["phase_steps"].items()) + ")")
        rev = broadcast_object(info, rev)
        if rev is None:
            return cfg
        return replace(cfg, phase_steps={**cfg.phase_steps, **rev["phase_steps"]})


def use_planned_threads(cfg, plan: BudgetPlan, info) -> None:
    """A budgeted CPU run without --threads trains on the thread count its measurement found fastest."""
    if cfg.threads is None and info.device.type == "cpu" and not info.distributed and plan.rates.threads:
        import torch

        torch.set_num_threads(plan.rates.threads)


def budget_run(cfg, run, resume: bool, plan: BudgetPlan | None, info) -> BudgetRun | None:
    """The BudgetRun of a budgeted training (`plan`: just made; None on a resume, read from the run)."""
    if cfg.time_budget is None:
        return None
    if plan is None:
        plan = load_plan(run.path)
        if plan is None:
            return None
        use_planned_threads(cfg, plan, info)
        return BudgetRun(run, plan, max(plan.spent_s.values(), default=0.0), info.is_main)
    return BudgetRun(run, plan, plan.spent_s.get("measured", plan.estimate_s["startup"]), info.is_main)


# ---- what the user reads -----------------------------------------------------------------------------------
def render_plan(plan: BudgetPlan, batch: int, n_train: int) -> str:
    """The plan as one block: what was measured, then each part with its size and estimated time."""
    r, e, s = plan.rates, plan.estimate_s, plan.phase_steps
    what = "training" if plan.scope == "train" else "the whole job: training, predictor, cpu profile, specialization"
    elastic = {k: v for k, v in s.items() if k != "full"}
    full = s.get("full", 0)
    rows = [("start-up, measuring", f"{r.probe_s:.0f} s of timed steps and evaluations", e["startup"] + e["measuring"])]
    if full:
        rows.append(("full stage", f"{full} steps = {full * batch:,} images ({full * batch / max(n_train, 1):.2f} "
                                   f"epochs)", train_seconds({"full": full}, r)))
    if elastic:
        rows.append(("elastic stages", f"{sum(elastic.values())} steps: " + ", ".join(f"{k} {v}" for k, v in
                                                                                      elastic.items()),
                     train_seconds(elastic, r)))
    if plan.eval_images.get("subnets", STAGE_EVALS):
        rows.append(("stage-end evals", f"{plan.eval_images.get('subnets', STAGE_EVALS)} subnets x "
                                        f"({plan.eval_images.get('calib')} + {plan.eval_images.get('val')} images)",
                     e["stage_evals"]))
    if plan.predictor:
        p = plan.predictor
        rows.append(("accuracy predictor", f"{p['subnets']} subnets x ({p['calib_images']} calibration + "
                                           f"{p['val_images']} validation images, ~{100 * p.get('informative', 1):.0f}"
                                           f"% of them after a {p.get('pilot', 0)}-subnet pilot), fitting",
                     e["predictor"]))
    if plan.profile:
        p = plan.profile
        rows.append(("cpu profile", f"{p['n_fit']} + {p['n_test']} subnets x {p['rounds']} rounds", e["profile"]))
    if "specialize" in e:
        rows.append(("specialization", f"3 devices x 3 latency budgets; {SPEC_EVALS} nets evaluated",
                     e["specialize"]))
    rows.append(("total", f"of {format_duration(plan.budget_s)}", e["total"]))
    w0, w1 = max(len(x[0]) for x in rows), max(len(x[1]) for x in rows)
    lines = [f"time budget {format_duration(plan.budget_s)} for {what}",
             f"  measured: full stage {r.full_images_per_s():.0f} img/s ({r.full_step_s:.3f} s a step of {batch}), "
             f"subnet evaluation {1 / r.eval_image_s:.0f} img/s",
             "  elastic steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in r.elastic_step_s.items()),
             f"  plan: {plan.scale:.2f} x the schedule's steps" + (" (the floor)" if plan.floor else "")]
    lines += [f"    {a:<{w0}}  {b:<{w1}}  {format_duration(c):>8}" for a, b, c in rows]
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


__all__ = ["BudgetPlan", "BudgetRun", "budget_run", "revise_steps", "DEFAULT_BUDGET", "FILE_NAME", "Rates", "load_plan", "parse_budget_option",
           "parse_duration", "plan_budget", "plan_path", "predictor_seconds", "render_plan", "resize_predictor",
           "save_plan", "scaled_steps", "stored_plan_for", "train_seconds"]
