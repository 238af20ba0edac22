"""Progressive-shrinking stages and phases, and the training configuration with per-dataset defaults.

Stages as in OFA (Cai et al. 2020): `full` trains the largest subnet (it becomes the KD teacher); `kernel` makes
kernel sizes elastic; `depth` adds elastic depth (phase 1: depths {4, 3}, phase 2: {4, 3, 2}); `expand` adds
elastic expand ratios (phase 1: {6, 4}, phase 2: {6, 4, 3}), after re-sorting channels by importance. The
resolution is elastic throughout: every step draws one of the space's resolutions.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from elastic.errors import OFAError
from elastic.spaces import SpaceSpec

STAGES = ("full", "kernel", "depth", "expand")
SCHEDULES = ("quick", "full")
PHASE_NAMES = ("full", "kernel", "depth/1", "depth/2", "expand/1", "expand/2")   # as `Phase.name` spells them


@dataclass(frozen=True)
class Phase:
    stage: str
    index: int                 # 1-based phase number within the stage
    ks: tuple[int, ...]        # allowed choices while training this phase
    e: tuple[int, ...]
    d: tuple[int, ...]
    epoch_share: float         # epochs = max(1, round(share * stage epochs))
    lr_factor: float           # relative to the base learning rate (the `full` stage's)

    @property
    def name(self) -> str:
        return self.stage if self.index == 1 and self.stage in ("full", "kernel") else f"{self.stage}/{self.index}"


def stage_phases(stage: str, space: SpaceSpec) -> list[Phase]:
    """The phases of `stage` for `space` (choice lists restricted as progressive shrinking prescribes)."""
    K, E, D = sorted(space.ks_choices), sorted(space.e_choices), sorted(space.d_choices)
    kmax, emax, dmax = (max(K),), (max(E),), (max(D),)
    if stage == "full":
        return [Phase("full", 1, kmax, emax, dmax, 1.0, 1.0)]
    if stage == "kernel":
        return [Phase("kernel", 1, tuple(K), emax, dmax, 1.0, 0.3)]
    if stage == "depth":
        return [Phase("depth", 1, tuple(K), emax, tuple(D[-2:]), 0.25, 0.08),
                Phase("depth", 2, tuple(K), emax, tuple(D), 1.0, 0.25)]
    if stage == "expand":
        return [Phase("expand", 1, tuple(K), tuple(E[-2:]), tuple(D), 0.25, 0.08),
                Phase("expand", 2, tuple(K), tuple(E), tuple(D), 1.0, 0.25)]
    raise OFAError(f"unknown stage '{stage}'; allowed: {', '.join(STAGES)} or all")


def stages_for(stage: str) -> list[str]:
    if stage == "all":
        return list(STAGES)
    if stage not in STAGES:
        raise OFAError(f"unknown stage '{stage}'; allowed: {', '.join(STAGES)}, all")
    return [stage]


def previous_stage(stage: str) -> str | None:
    i = STAGES.index(stage)
    return STAGES[i - 1] if i > 0 else None


# The quick schedule's 700 elastic steps (5 x 140), most of them in the one phase that trains every subnet.
QUICK_PHASE_STEPS = {"kernel": 76, "depth/1": 38, "depth/2": 76, "expand/1": 38, "expand/2": 472}

# Defaults: (epochs of the `full` stage, epochs of each later stage, global batch, base lr per 256 images,
# weight decay, warmup epochs, label smoothing, training subset size, eval images) per schedule.
_SCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "full": dict(full_epochs=40, stage_epochs=20, batch_size=256, lr=0.15, weight_decay=5e-5, warmup_epochs=1.0,
                 label_smoothing=0.1, subset_size=None, eval_size=None, calib_images=2000, eval_subnets=4,
                 elastic_max_steps=None, augment=True, sandwich=False, elastic_lr_scale=1.0, phase_steps=None),
    # the CPU schedule aimed at < 10 minutes on 2 cores: 2 epochs of the largest subnet over the whole training
    # set, then 700 elastic steps (KD from the full stage): 3.6 epochs' worth of images in all. The figures below
    # are from 140 steps in each of the 5 elastic phases (the split before QUICK_PHASE_STEPS). Short schedules
    # underfit, so no augmentation; the sandwich rule (largest + smallest each step) keeps the largest subnet from
    # losing what the full stage taught it. Fashion-MNIST test, largest / smallest subnet, at OFA's elastic
    # learning rates: 89.01 / 85.81%; 170 steps gave 89.35 / 86.65% but up to 11 minutes; the earlier split (3 full
    # epochs, 60 steps per elastic phase) 89.06 / 83.59%, and 88.57% for the largest without the sandwich rule.
    # The elastic phases run at 3x OFA's learning-rate factors: OFA's (0.08-0.3 of the full stage's) suit a
    # well-trained full net; after 2 epochs the subnets still have much to learn. Same runs otherwise, 3x vs 1x:
    # ten random subnets 85.17 vs 83.48% on average (all ten higher), smallest 86.68 vs 85.81%, largest 89.24
    # vs 89.01%.
    # Where the elastic steps go matters too: only expand/2 trains the whole space, so the quick schedule gives it
    # two thirds of its 700 elastic steps (QUICK_PHASE_STEPS). A pair sharing one full stage, Fashion-MNIST test
    # (10,000 images), 140 per phase vs this split: largest 88.85 -> 89.46%, smallest 86.33 -> 87.75%, ten random
    # 85.01 -> 85.28% on average, same cost (NUMBERS.md, "Where the elastic steps go").
    "quick": dict(full_epochs=2, stage_epochs=1, batch_size=128, lr=0.2, weight_decay=5e-5, warmup_epochs=0.2,
                  label_smoothing=0.1, subset_size=None, eval_size=2000, calib_images=1000, eval_subnets=2,
                  elastic_max_steps=140, augment=False, sandwich=True, elastic_lr_scale=3.0,
                  phase_steps=QUICK_PHASE_STEPS),
}


# Per-dataset adjustments of the schedule defaults (small datasets get more epochs, CIFAR the usual long runs).
_DATASET_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("full", "digits"): dict(full_epochs=60, stage_epochs=30, batch_size=128, calib_images=1000),
    ("full", "cifar10"): dict(full_epochs=120, stage_epochs=60, weight_decay=5e-4),
    ("full", "cifar100"): dict(full_epochs=150, stage_epochs=75, weight_decay=5e-4),
    ("quick", "digits"): dict(full_epochs=10, stage_epochs=2, batch_size=64, elastic_max_steps=None, phase_steps=None),
}


# Where the soft targets of knowledge distillation come from: OFA's fixed teacher (the `full` stage's largest
# subnet) or, as in BigNAS' in-place distillation, the largest subnet of the same step (the sandwich rule trains
# it first), a teacher that keeps improving -- on a short schedule the `full` stage's net is still weak.
KD_TEACHERS = ("full", "inplace")


# What a run saved before an option existed was trained with, where that differs from the option's default now:
# such a run resumes as it started (runs before --elastic-lr-scale used OFA's factors, 1x, in every schedule).
_BEFORE_OPTION: dict[str, Any] = {"elastic_lr_scale": 1.0}


_SETTING_TYPES = {"int": (numbers.Integral,), "float": (numbers.Real,), "bool": (bool,), "str": (str,),
                  "dict": (dict,), "list": (list, tuple)}


def _check_setting_types(cfg: "TrainConfig") -> None:
    """Each setting of the declared type (JSON or an API call may give others): an OFAError naming it otherwise.
    `run` may be any path, `device` anything `parse_compute_device` reads."""
    for f in fields(cfg):
        if f.name in ("run", "device"):
            continue
        value = getattr(cfg, f.name)
        kinds = [k.strip().split("[")[0] for k in str(f.type).split("|")]
        if value is None and "None" in kinds:
            continue
        allowed = tuple(t for k in kinds for t in _SETTING_TYPES.get(k, ()))
        if allowed and (not isinstance(value, allowed) or isinstance(value, bool) and bool not in allowed):
            raise OFAError(f"training setting {f.name} must be {' or '.join(kinds)}, got {value!r}")


@dataclass
class TrainConfig:
    """Everything a training run depends on (plain values: stored in train_state.pt for --resume)."""
    run: str
    stage: str = "all"
    space: str | None = None              # default: mbv3-w1.0-small for <= 64 px data, else mbv3-w1.0
    resolutions: list[int] | None = None  # restrict/replace the space's resolutions (stored in space.json)
    data: dict[str, Any] = field(default_factory=dict)   # ofa.data.get_data keyword arguments
    schedule: str = "full"
    epochs: int | None = None             # epochs of each stage (phase 1 of depth/expand gets a quarter)
    full_epochs: int | None = None        # epochs of the `full` stage (default: `epochs` or the schedule's)
    batch_size: int | None = None         # global batch (all processes together)
    lr: float | None = None               # base learning rate of the `full` stage at this batch size
    opt: str = "sgd"                      # timm optimizer name (sgd = nesterov momentum)
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    min_lr_ratio: float = 0.01
    label_smoothing: float | None = None
    seed: int = 0
    n_subnets: int = 2                    # subnets sampled per step in the elastic stages (full: always 1)
    sandwich: bool | None = None          # largest + smallest + (n_subnets - 2) random (default: the schedule's)
    kd_ratio: float = 1.0                 # weight of the distillation loss
    kd_teacher: str = "full"              # "full": the `full` stage's checkpoint (OFA); "inplace": the step's largest
    max_steps: int | None = None          # cap on steps per epoch (tiny tests)
    elastic_max_steps: int | None = None  # cap on steps per epoch of the elastic stages (default: the schedule's)
    elastic_lr_scale: float | None = None  # multiplies the elastic phases' rates (OFA's factors 0.08-0.3; quick: 3)
    phase_steps: dict[str, int] | None = None  # total steps of named phases (e.g. {"expand/2": 626}); wins over caps
    save_every: int = 100                 # checkpoint every K steps (and at every epoch end)
    eval_subnets: int | None = None       # random subnets evaluated at each stage end (+ largest, smallest)
    eval_split: str = "val"
    stage_eval: bool = True               # evaluate largest/smallest/random subnets at each stage end
    calib_images: int | None = None       # training images for BN recalibration before an evaluation
    eval_every: int = 1                   # validate the largest subnet every N epochs (0: never)
    augment: bool | None = None           # random shifts/flips (default: the schedule's; quick: off)
    bn_mode: str = "train"                # "train" or "frozen" (BN kept in eval mode while training)
    dropout: float | None = None          # override the space's dropout
    device: str = "auto"                  # compute device: auto | cpu | cuda | cuda:N (ofa.training.distributed)
    precision: str = "fp32"               # fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler)
    channels_last: bool = True            # NHWC activations and weights (measured faster on CPU; GPU: bench)
    threads: int | None = None
    workers: int = 0
    overwrite: bool = False
    progress: bool = True
    dataset: str | None = None            # set by the trainer once the data is loaded (selects defaults)
    time_budget: float | None = None      # seconds: size the steps to this (ofa.training.time_budget)
    time_budget_scope: str = "train"      # what the budget covers: "train", or "quickstart" (the whole main job)

    def __post_init__(self) -> None:
        _check_setting_types(self)
        if self.schedule not in SCHEDULES:
            raise OFAError(f"unknown schedule '{self.schedule}'; allowed: {', '.join(SCHEDULES)}")
        stages_for(self.stage)
        if self.bn_mode not in ("train", "frozen"):
            raise OFAError(f"bn mode must be 'train' or 'frozen', got {self.bn_mode!r}")
        if self.eval_split not in ("val", "test"):
            raise OFAError(f"eval split must be 'val' or 'test', got {self.eval_split!r}")
        for name in ("epochs", "full_epochs", "batch_size", "max_steps", "elastic_max_steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise OFAError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.n_subnets < 1:
            raise OFAError(f"--n-subnets must be >= 1, got {self.n_subnets}")
        if self.sandwich and self.n_subnets < 2:
            raise OFAError("--sandwich needs --n-subnets >= 2 (largest + smallest + random ones)")
        if self.save_every < 1:
            raise OFAError(f"--save-every must be >= 1, got {self.save_every}")
        if self.lr is not None and not self.lr > 0:
            raise OFAError(f"--lr must be > 0, got {self.lr}")
        if self.elastic_lr_scale is not None and not (self.elastic_lr_scale > 0
                                                      and math.isfinite(self.elastic_lr_scale)):
            raise OFAError(f"--elastic-lr-scale must be a positive number, got {self.elastic_lr_scale}")
        for name, steps in (self.phase_steps or {}).items():
            if name not in PHASE_NAMES:
                raise OFAError(f"--phase-steps: unknown phase '{name}'; allowed: {', '.join(PHASE_NAMES)}")
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
                raise OFAError(f"--phase-steps: {name} needs a whole number of steps >= 1, got {steps!r}")
        if self.kd_teacher not in KD_TEACHERS:
            raise OFAError(f"unknown --kd-teacher '{self.kd_teacher}'; allowed: {', '.join(KD_TEACHERS)}")
        if self.kd_teacher == "inplace" and not (self.resolved("sandwich") and self.n_subnets >= 2):
            raise OFAError("--kd-teacher inplace distils from the largest subnet of each step: it needs the sandwich "
                           "rule (--sandwich, --n-subnets >= 2)")
        if not self.kd_ratio >= 0:
            raise OFAError(f"--kd-ratio must be >= 0, got {self.kd_ratio}")
        for name in ("threads", "eval_subnets", "calib_images"):
            v = getattr(self, name)
            if v is not None and v < (1 if name == "threads" else 0):
                raise OFAError(f"--{name.replace('_', '-')} must be >= {1 if name == 'threads' else 0}, got {v}")
        for name in ("weight_decay", "warmup_epochs", "label_smoothing", "dropout"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise OFAError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
        for name in ("label_smoothing", "dropout"):
            v = getattr(self, name)
            if v is not None and not v < 1:
                raise OFAError(f"--{name.replace('_', '-')} must be < 1, got {v}")
        if self.time_budget is not None:
            if not (self.time_budget > 0 and math.isfinite(self.time_budget)):
                raise OFAError(f"--time-budget must be a positive duration, got {self.time_budget}")
            fixed = [n for n in ("epochs", "full_epochs", "max_steps", "elastic_max_steps") if getattr(self, n)]
            if fixed:
                raise OFAError(f"--time-budget sizes the steps itself; leave out --{fixed[0].replace('_', '-')} (or "
                               f"leave out --time-budget for a fixed-step run)")
        if self.time_budget_scope not in ("train", "quickstart"):
            raise OFAError(f"time budget scope must be 'train' or 'quickstart', got {self.time_budget_scope!r}")
        if self.workers < 0:
            raise OFAError(f"--workers must be >= 0, got {self.workers}")
        from ofa.training.distributed import parse_compute_device
        from ofa.training.precision import check_precision

        self.device = parse_compute_device(self.device)
        check_precision(self.precision)
        for key in ("subset_size", "eval_size"):
            v = (self.data or {}).get(key)
            if v is not None and v < 1:
                raise OFAError(f"--{key.replace('_size', '').replace('_', '-')}{'-size' if key == 'eval_size' else ''} "
                               f"must be >= 1, got {v}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """A stored config (train_state.pt's "config"): every setting is checked, a damaged one is an OFAError."""
        if not isinstance(d, dict) or not isinstance(d.get("run"), str):
            raise OFAError("the stored training config is damaged (not an object with a 'run' path); restore "
                           "train_state.pt or start a new run")
        known = {f.name for f in fields(cls)}
        return cls(**{**_BEFORE_OPTION, **{k: v for k, v in d.items() if k in known}})

    # ---- resolved values (defaults filled from the schedule) ------------------------------------------
    def default(self, name: str) -> Any:
        per_data = _DATASET_DEFAULTS.get((self.schedule, self.dataset or ""), {})
        return per_data[name] if name in per_data else _SCHEDULE_DEFAULTS[self.schedule][name]

    def resolved(self, name: str) -> Any:
        v = getattr(self, name, None)
        return self.default(name) if v is None else v

    def epochs_for(self, phase: Phase) -> int:
        if phase.stage == "full":
            n = self.full_epochs or self.epochs or self.default("full_epochs")
        else:
            n = self.epochs or self.default("stage_epochs")
        return max(1, round(phase.epoch_share * n))

    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return self.default("lr") * self.resolved("batch_size") / 256

    def lr_for(self, phase: Phase) -> float:
        """Peak learning rate of `phase`: the base rate times the phase's factor (times --elastic-lr-scale)."""
        scale = 1.0 if phase.stage == "full" else self.resolved("elastic_lr_scale")
        return self.base_lr() * phase.lr_factor * scale

    def max_steps_for(self, stage: str) -> int | None:
        """Cap on steps per epoch: --max-steps, else for the elastic stages --elastic-max-steps or the schedule's cap."""
        if self.max_steps is not None:
            return self.max_steps
        return None if stage == "full" else self.resolved("elastic_max_steps")

    def steps_plan(self, phase: Phase, n_train: int) -> tuple[int, int]:
        """(epochs, steps per epoch) of `phase` on `n_train` training images.

        A phase named in --phase-steps runs that many steps in all, as the fewest whole epochs that hold them, of
        equal length (so the total may round up by less than one step per epoch); otherwise the phase's epochs,
        each capped by --max-steps / --elastic-max-steps.
        """
        batch = self.resolved("batch_size")
        epoch_steps = n_train // batch
        if epoch_steps < 1:
            raise OFAError(f"{n_train} training images are fewer than one batch of {batch}; lower --batch-size")
        total = (self.phase_steps or {}).get(phase.name)
        if total is not None:
            epochs = math.ceil(total / epoch_steps)
            return epochs, math.ceil(total / epochs)
        cap = self.max_steps_for(phase.stage)
        return self.epochs_for(phase), min(epoch_steps, cap) if cap else epoch_steps

    def with_phase_steps(self, n_train: int) -> "TrainConfig":
        """This config with its per-phase steps written out, as a new run stores them: --phase-steps as given, else
        the schedule's split -- unless --epochs / --max-steps / --elastic-max-steps set the phases' length, which
        then holds for every phase ({}: none named). Resumed runs keep what they stored (None: none named).

        The schedule's split is of its elastic budget, 5 phases x its step cap; on a training set whose epoch is
        shorter than the cap (`n_train` images) the budget shrinks with it, as the capped phases would have."""
        if self.phase_steps is not None:
            return self
        own_length = any(v is not None for v in (self.epochs, self.max_steps, self.elastic_max_steps))
        split = None if own_length else self.default("phase_steps")
        if not split:
            return replace(self, phase_steps={})
        cap = self.default("elastic_max_steps")
        per_phase = min(cap, max(1, n_train // self.resolved("batch_size")))
        return replace(self, phase_steps={k: max(1, round(v * per_phase / cap)) for k, v in split.items()})

    def schedule_steps(self, space: SpaceSpec, n_train: int, stages: tuple[str, ...] | list[str] = STAGES
                       ) -> dict[str, int]:
        """Total steps of every phase of `stages` (default: all, full included) this config runs on `n_train` images."""
        out = {}
        for stage in stages:
            for phase in stage_phases(stage, space):
                epochs, steps = self.steps_plan(phase, n_train)
                out[phase.name] = epochs * steps
        return out

    def subnets_per_step(self, stage: str) -> int:
        return 1 if stage == "full" else self.n_subnets

    def data_kwargs(self) -> dict[str, Any]:
        """get_data arguments: the schedule's subset/eval sizes unless the data config sets them."""
        out = dict(self.data)
        out.setdefault("subset_size", self.default("subset_size"))
        out.setdefault("eval_size", self.default("eval_size"))
        return out


def parse_phase_steps(text: str) -> dict[str, int]:
    """`kernel=100,expand/2=626` -> {"kernel": 100, "expand/2": 626} (checked by TrainConfig)."""
    out: dict[str, int] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = int(value)
        except ValueError:
            raise OFAError(f"--phase-steps takes PHASE=STEPS pairs separated by commas (phases: "
                           f"{', '.join(PHASE_NAMES)}), got {item!r}") from None
    return out


def default_space_name(native_res: int) -> str:
    return "mbv3-w1.0-small" if native_res <= 64 else "mbv3-w1.0"
