"""`ofa finetune` / `ofa.finetune`: train a specialized network further, from its inherited weights.

A folder written by `ofa specialize` holds a subnet cut out of the supernet with BN recalibrated, never trained on
its own. Fine-tuning trains it alone for a few epochs -- with knowledge distillation from the run's teacher (the
`full` stage's net, as OFA's progressive shrinking uses, or the final supernet's largest subnet), timm's optimizer
and cosine schedule with a short warmup and a small learning rate (the net starts trained) -- and writes a new
folder in the same format beside the input (`pixel1@40ms` -> `pixel1@40ms-ft`), with the recipe, the accuracies
before and after and the training time in its `arch.json`.

New data (`data=` naming another dataset than the run's): the classifier is rebuilt for the new classes (the body
keeps its weights) and distillation is off, unless the class lists are the same.

Resume is exact: as in the supernet's training loop (`ofa.training.loop`), every random choice is derived from
(seed, epoch, step), and the optimizer, scheduler and RNG states are checkpointed in `<out>.partial/` (with the
history), so a run killed at any point and resumed ends with the weights of an uninterrupted one. Under torchrun
the batch is sharded over the processes (DDP); rank 0 evaluates and writes.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from elastic.arch import Arch
from elastic.bn_calibration import recalibrate_bn
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec, space_from_dict
from elastic.static_net import StaticNet
from ofa import atomic
from ofa.data import DataBundle, augment_batch, collate_batch, get_data, prepare_batch
from ofa.run_dir import RunDir, check_state_dict
from ofa.training.distributed import (DistInfo, all_reduce_sum, barrier, broadcast_object, init_distributed,
                                     parse_compute_device)
from ofa.training.evaluate import accuracy, calibration_batches
from ofa.training.kd import soft_cross_entropy
from ofa.progress import Progress
from ofa.training.optimization import make_optimizer, make_scheduler
from ofa.training.randomness import derive_seed, rng_state, set_rng_state
from ofa.training.train_modes import set_dropout, set_train_mode

TEACHERS = ("full", "largest", "none")
STATE_VERSION = 1
MAX_EPOCHS = 1000
MAX_LR = 1.0
MAX_UPSCALE = 4            # images are resized to the net's input; more than 4x up is refused (8 px digits -> 32 px)
DEFAULT_LR_PER_256 = 0.02  # SGD (Nesterov) peak rate per 256 images for a net that starts trained
NEW_HEAD_LR_PER_256 = 0.1  # ... and for one whose classifier was rebuilt for new data
DATA_KEYS = ("root", "val_size", "split_seed", "subset_size", "eval_size", "image_size", "val_from", "download")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (plain values: stored in the checkpoint for --resume).

    `opt`, `momentum`, `weight_decay`, `warmup_epochs` and `min_lr_ratio` are read by the timm optimizer and
    scheduler factories of `ofa.training.optimization` (through `resolved`), so both trainers build them the same way.
    """
    path: str                              # the folder `ofa specialize` wrote
    epochs: int
    run: str | None = None                 # the run PATH came from (default: the one its arch.json names)
    data: dict[str, Any] = field(default_factory=dict)   # get_data overrides; {} -> the data PATH was trained on
    out: str | None = None                 # output folder (default: PATH + "-ft")
    teacher: str = "full"                  # full | largest | none
    kd_ratio: float | None = None          # distillation weight (default 1 with a teacher)
    lr: float | None = None                # peak learning rate (default: DEFAULT_LR_PER_256 x batch / 256)
    batch_size: int | None = None          # global batch (default: 128, halved until an epoch has 10 steps)
    opt: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-5
    warmup_epochs: float = 0.1
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    augment: bool = False
    bn_mode: str = "train"                 # train | frozen (BN statistics kept fixed while training)
    dropout: float | None = None           # override the net's dropout
    from_scratch: bool = False             # baseline: the same arch and recipe from a random init
    seed: int = 0
    max_steps: int | None = None           # cap on steps per epoch
    save_every: int = 50                   # checkpoint every K steps (and at every epoch end)
    eval_every: int = 1                    # validation accuracy every N epochs into the history (0: only at the end)
    calib_images: int = 1000               # training images for BN recalibration before each test evaluation
    exports: tuple[str, ...] = ()
    force: bool = False
    device: str = "auto"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.exports = tuple(self.exports)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or not 1 <= self.epochs <= MAX_EPOCHS:
            raise OFAError(f"--epochs must be a whole number from 1 to {MAX_EPOCHS}, got {self.epochs!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LR):
            raise OFAError(f"--lr must be > 0 and <= {MAX_LR:g} (a fine-tuning rate is small: the net starts "
                           f"trained), got {self.lr}")
        if self.teacher not in TEACHERS:
            raise OFAError(f"unknown --teacher '{self.teacher}'; allowed: {', '.join(TEACHERS)}")
        if self.kd_ratio is not None:
            if not (math.isfinite(self.kd_ratio) and 0 <= self.kd_ratio <= 100):
                raise OFAError(f"--kd-ratio must be from 0 to 100, got {self.kd_ratio}")
            if self.kd_ratio > 0 and self.teacher == "none":
                raise OFAError("--kd-ratio > 0 needs a teacher; --teacher none turns distillation off")
        for name in ("batch_size", "max_steps", "save_every", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise OFAError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.eval_every < 0:
            raise OFAError(f"--eval-every must be >= 0, got {self.eval_every}")
        if self.calib_images < 1:
            raise OFAError(f"--calib-images must be >= 1, got {self.calib_images}")
        for name in ("weight_decay", "warmup_epochs", "label_smoothing", "dropout"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise OFAError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
        for name in ("label_smoothing", "dropout"):
            v = getattr(self, name)
            if v is not None and not v < 1:
                raise OFAError(f"--{name.replace('_', '-')} must be < 1, got {v}")
        self.device = parse_compute_device(self.device)
        if self.bn_mode not in ("train", "frozen"):
            raise OFAError(f"--bn-mode must be 'train' or 'frozen', got {self.bn_mode!r}")
        unknown = sorted(set(self.data) - {"name", *DATA_KEYS})
        if unknown:
            raise OFAError(f"unknown data option(s) {', '.join(unknown)}; allowed: name, {', '.join(DATA_KEYS)}")

    def resolved(self, name: str) -> Any:
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exports"] = list(self.exports)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FinetuneConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ---- the input folder, its run and its data --------------------------------------------------------------------
def _check_not_a_run(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir() and not (p / "arch.json").exists() and (p / "space.json").exists():
        raise OFAError(f"'{p}' is a run directory, not a specialized network; give one of the folders "
                       f"`ofa specialize --run {p}` writes (e.g. {p / 'specialized' / 'cpu@10ms'})")
    return p


def read_source(path: str | Path) -> tuple[Path, dict[str, Any], StaticNet]:
    """The specialized folder at `path`: (folder, arch.json, the loaded net), or a one-line error naming what
    it lacks."""
    from ofa.specialized import load, read_meta

    folder, meta = read_meta(_check_not_a_run(path))
    return folder, meta, load(folder)


def source_data_config(meta: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """The data the net in `folder` was last trained on: a fine-tuned net's own, else its run's."""
    data = (meta.get("finetune") or {}).get("data") or (meta.get("provenance") or {}).get("data")
    if data is not None and (not isinstance(data, dict) or "name" not in data):
        raise OFAError(f"'{folder / 'arch.json'}' has a malformed provenance.data (a data config with a 'name')")
    return data


def resolve_run(run: str | Path | None, folder: Path, meta: dict[str, Any], space: SpaceSpec) -> RunDir | None:
    """The run `folder` was specialized from, checked: same space, and the supernet weights it was extracted
    from (their SHA-256 in arch.json). None when no run is given and the one arch.json names is not there."""
    from ofa.specialization import file_digest

    prov = meta.get("provenance") or {}
    if run is not None:
        rd = RunDir(run)
    else:
        candidates = [Path(prov["run"])] if prov.get("run") else []
        candidates.append(folder.parent.parent)          # <run>/specialized/<name>
        rd = next((RunDir(c) for c in candidates if (c / "space.json").exists()), None)
        if rd is None:
            return None
    run_space = rd.load_space()
    if run_space != space:
        raise OFAError(f"run {rd.path} holds space {run_space.name} ({run_space.n_classes} classes, resolutions "
                       f"{list(run_space.resolutions)}), but '{folder}' was specialized from {space.name} "
                       f"({space.n_classes} classes, resolutions {list(space.resolutions)}); give the run it came "
                       "from with --run")
    want = prov.get("supernet_sha256")
    if want and rd.weights_file.exists() and file_digest(rd.weights_file) != want:
        raise OFAError(f"run {rd.path}'s supernet.safetensors is not the one '{folder}' was extracted from (its "
                       "SHA-256 differs: re-trained since, or another run); give the run it came from with --run, "
                       "or fine-tune without a teacher (--teacher none)")
    if not rd.weights_file.exists():
        raise OFAError(f"run {rd.path} has no supernet.safetensors; give the run '{folder}' came from with --run")
    return rd


def resolve_data(cfg: FinetuneConfig, src_data: dict[str, Any] | None) -> dict[str, Any]:
    """The get_data kwargs: the data the net was trained on with the options given, or the data named."""
    from ofa.data import _resolve_name

    given = dict(cfg.data)
    name = given.pop("name", None)
    if name is None:
        if src_data is None:
            raise OFAError(f"'{cfg.path}' does not say which data it was trained on (no provenance.data in its "
                           "arch.json); pass --data")
        return {**src_data, **given}
    canonical = _resolve_name(name, given.get("root"))[0]
    if src_data is not None and canonical == src_data.get("name"):
        return {**src_data, **given}
    return {"name": name, **given}


def check_input(bundle: DataBundle, net: StaticNet) -> None:
    """Refuse data the net cannot take: other channels than its stem's, or images far smaller than its input."""
    spec = net.net_spec
    x, _ = bundle.train[0]
    channels, size = int(x.shape[-3]), int(x.shape[-1])
    if channels != spec.in_channels:
        raise OFAError(f"data '{bundle.name}' has {channels}-channel images, but the net takes {spec.in_channels} "
                       "channel(s)")
    if size * MAX_UPSCALE < spec.resolution:
        raise OFAError(f"data '{bundle.name}' has {size} px images; the net takes {spec.resolution} px, more than "
                       f"{MAX_UPSCALE}x up (allowed: images of at least {math.ceil(spec.resolution / MAX_UPSCALE)} px"
                       ", e.g. a larger --image-size for an ImageFolder)")


def default_batch(n_train: int, batch: int = 128) -> int:
    """128, halved (down to 8) until an epoch holds at least 10 steps."""
    while batch > 8 and n_train < 10 * batch:
        batch //= 2
    return batch


# ---- nets ---------------------------------------------------------------------------------------------------
def _with_new_head(net: StaticNet, space: SpaceSpec, arch: Arch, n_classes: int, seed: int) -> StaticNet:
    """The same body with a freshly initialized classifier for `n_classes`."""
    spec = replace(space, n_classes=n_classes).net_spec(arch)
    torch.manual_seed(derive_seed(seed, "head"))
    new = StaticNet(spec, arch=arch)
    body = {k: v for k, v in net.state_dict().items() if not k.startswith("classifier.")}
    missing, unexpected = new.load_state_dict(body, strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    return new


def _teacher(rd: RunDir, which: str, space: SpaceSpec, resolution: int, calib: list, device) -> nn.Module:
    if which == "full" and not rd.stage_weights_file("full").exists():
        raise OFAError(f"run {rd.path} has no full-stage checkpoint ({rd.stage_weights_file('full')}); use "
                       "--teacher largest (the supernet's largest subnet) or --teacher none")
    supernet = rd.load_supernet(stage="full" if which == "full" else None)
    net = supernet.extract(space.largest(r=resolution)).to(device)
    recalibrate_bn(net, calib)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _evaluate(net: nn.Module, bundle: DataBundle, resolution: int, device, splits=("val", "test")) -> dict[str, float]:
    return {s: accuracy(net, bundle, s, resolution, device=device) for s in splits}


# ---- the entry point -------------------------------------------------------------------------------------------
@dataclass
class _Job:
    """A fine-tuning resolved from its config: the nets, the data and the numbers its steps use."""
    cfg: FinetuneConfig
    info: DistInfo
    folder: Path
    meta: dict[str, Any]
    out: Path
    work: RunDir                 # <out>.partial/: train_state.pt (exact resume) and history.jsonl
    space: SpaceSpec             # the input net's space
    out_space: SpaceSpec         # the output's (other classes where the head is rebuilt)
    bundle: DataBundle
    net: StaticNet
    teacher: nn.Module | None
    kd_ratio: float
    classes_match: bool
    notes: list[str]
    batch: int
    steps_per_epoch: int
    lr: float
    calib: list
    recipe: dict[str, Any]

    @property
    def arch(self) -> Arch:
        return self.net.arch


def finetune(cfg: FinetuneConfig, resume: bool = False, log: Callable[[str], None] | None = None,
             console=None) -> dict[str, Any]:
    """Fine-tune the specialized net `cfg.path` for `cfg.epochs` epochs; returns a summary dict (path, accuracy
    before and after on the test split, epochs, recipe figures). Works as one process or under torchrun."""
    info = init_distributed(cfg.device)
    say = (log or print) if info.is_main else (lambda msg: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg, state, out, work = _open(cfg, resume, info, say)
    if state is not None and state.get("done") and out.exists():
        say(f"{out} is already fine-tuned; nothing to resume")
        return {**_summary_from_folder(out), "resumed": True}
    job = _prepare(cfg, info, out, work, say)
    if state is None:
        before, teacher_acc = _before(job, say)
    else:
        before, teacher_acc = state["before"], state.get("teacher_accuracy")
    train_seconds = _train(job, state, before, teacher_acc, say, console)
    result = _finish(job, before, teacher_acc, train_seconds, say) if info.is_main else None
    barrier(info)
    return {**broadcast_object(info, result), "resumed": resume}


def finetune_folder(path: str | Path, epochs: int, *, data: str | Path | dict[str, Any] | None = None,
                    resume: bool = False, log: Callable[[str], None] | None = None, **options: Any) -> dict[str, Any]:
    """`ofa.finetune`: `data` is a dataset name, an ImageFolder path or a `get_data` dict (default: the data the
    net was trained on); `data_<option>=` sets one of its options (`data_subset_size=5000`, `data_image_size=64`);
    every other keyword is a `FinetuneConfig` field (`lr=`, `teacher=`, `kd_ratio=`, `out=`, `force=`, ...)."""
    data_cfg = {} if data is None else dict(data) if isinstance(data, dict) else {"name": str(data)}
    for key in [k for k in options if k.startswith("data_")]:
        data_cfg[key[len("data_"):]] = options.pop(key)
    for key in ("run", "out"):
        if options.get(key) is not None:
            options[key] = str(options[key])
    cfg = FinetuneConfig(path=str(path), epochs=epochs, data=data_cfg, **options)
    return finetune(cfg, resume=resume, log=log)


def _open(cfg: FinetuneConfig, resume: bool, info: DistInfo, say) -> tuple[FinetuneConfig, dict | None, Path, RunDir]:
    """The output folder and the work folder beside it; the stored state and config when resuming. Refuses to
    overwrite an output folder (without --force) or an unfinished fine-tuning (without --resume / --force)."""
    from ofa.specialized import read_meta

    folder, _ = read_meta(_check_not_a_run(cfg.path))
    out = Path(cfg.out) if cfg.out else folder.with_name(f"{folder.name}-ft")
    if out.resolve() == folder.resolve():
        raise OFAError(f"--out {out} is the input folder; fine-tuning writes a new folder beside it")
    work = RunDir(out.with_name(f"{out.name}.partial"))
    if resume:
        state = work.load_train_state()
        if state is None:
            raise OFAError(f"nothing to resume: {work.state_file} does not exist; start without --resume")
        keep = {k: getattr(cfg, k) for k in ("device", "threads", "progress")}
        cfg = replace(FinetuneConfig.from_dict(state["config"]), **keep)
        if state.get("done") and not out.exists():
            raise OFAError(f"the fine-tuning into {out} finished, but {out} is gone; start it again with --force")
        if not state.get("done"):
            say(f"resuming fine-tuning into {out}: epoch {state['epoch'] + 1} step {state['step']}")
        return cfg, state, out, work
    old = work.load_train_state() if work.state_file.exists() else None
    if old is not None and not old.get("done") and not cfg.force:
        raise OFAError(f"an unfinished fine-tuning into {out} is in {work.path}; pass --resume to continue it, "
                       "or --force to start over")
    if out.exists() and not cfg.force:
        raise OFAError(f"{out} exists; pass --force to replace it, or --out another folder")
    barrier(info)   # every process has checked before rank 0 clears the work folder
    if info.is_main and work.path.exists():
        shutil.rmtree(work.path)
    barrier(info)
    return cfg, None, out, work


def _prepare(cfg: FinetuneConfig, info: DistInfo, out: Path, work: RunDir, say) -> _Job:
    folder, meta, net = read_source(cfg.path)
    space = space_from_dict(meta["space"])
    arch = net.arch
    data_kwargs = resolve_data(cfg, source_data_config(meta, folder))
    if info.is_main:       # rank 0 unpacks / caches the data first
        bundle = get_data(**data_kwargs)
    barrier(info)
    if not info.is_main:
        bundle = get_data(**data_kwargs)
    check_input(bundle, net)
    classes_match = bundle.n_classes == space.n_classes and (
        not meta.get("classes") or not bundle.classes or list(meta["classes"]) == list(bundle.classes))
    teacher_kind = cfg.teacher if (cfg.kd_ratio is None or cfg.kd_ratio > 0) else "none"
    notes = []
    if not classes_match:
        shown = ", ".join(map(str, bundle.classes[:5])) + (", ..." if len(bundle.classes) > 5 else "")
        notes.append(f"data '{bundle.name}' has {bundle.n_classes} classes ({shown}), the net {space.n_classes}: "
                     "the classifier is rebuilt for them (the body keeps its weights)")
        if teacher_kind != "none":
            notes.append("distillation off: the teacher's classes are not the data's")
        teacher_kind = "none"
    kd_ratio = (1.0 if cfg.kd_ratio is None else cfg.kd_ratio) if teacher_kind != "none" else 0.0
    rd = resolve_run(cfg.run, folder, meta, space) if (teacher_kind != "none" or cfg.run) else None
    if teacher_kind != "none" and rd is None:
        raise OFAError(f"the run '{folder}' came from ({(meta.get('provenance') or {}).get('run')}) is not there: "
                       "give it with --run, or fine-tune without distillation (--teacher none)")

    out_space = replace(space, n_classes=bundle.n_classes) if not classes_match else space
    if cfg.from_scratch:
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        net = StaticNet(out_space.net_spec(arch), arch=arch)
        notes.append("from scratch: random initial weights (a baseline), not the inherited ones")
    elif not classes_match:
        net = _with_new_head(net, space, arch, bundle.n_classes, cfg.seed)
    set_dropout(net, cfg.dropout)
    net = net.to(info.device)

    batch = cfg.batch_size or default_batch(len(bundle.train))
    if batch % info.world:
        raise OFAError(f"--batch-size {batch} must be divisible by the number of processes ({info.world})")
    steps_per_epoch = len(bundle.train) // batch
    if steps_per_epoch < 1:
        raise OFAError(f"{len(bundle.train)} training images are fewer than one batch of {batch}; lower --batch-size")
    if cfg.max_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)
    lr = cfg.lr or (NEW_HEAD_LR_PER_256 if not classes_match else DEFAULT_LR_PER_256) * batch / 256
    calib = calibration_batches(bundle, arch.r, cfg.calib_images, device=info.device, seed=cfg.seed)
    teacher = _teacher(rd, teacher_kind, space, arch.r, calib, info.device) if teacher_kind != "none" else None
    recipe = {"epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch, "lr": lr,
              "opt": cfg.opt, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay,
              "warmup_epochs": cfg.warmup_epochs, "schedule": "cosine", "min_lr_ratio": cfg.min_lr_ratio,
              "label_smoothing": cfg.label_smoothing, "teacher": teacher_kind, "kd_ratio": kd_ratio,
              "augment": cfg.augment, "bn_mode": cfg.bn_mode, "dropout": cfg.dropout, "seed": cfg.seed,
              "from_scratch": cfg.from_scratch, "head_rebuilt": not classes_match, "processes": info.world}
    for n in notes:      # (every check is done: a bad input is one line of error, nothing else)
        say(n)
    say(f"data {bundle.summary()}")
    return _Job(cfg=cfg, info=info, folder=folder, meta=meta, out=out, work=work, space=space, out_space=out_space,
                bundle=bundle, net=net, teacher=teacher, kd_ratio=kd_ratio, classes_match=classes_match, notes=notes,
                batch=batch, steps_per_epoch=steps_per_epoch, lr=lr, calib=calib, recipe=recipe)


def _before(job: _Job, say) -> tuple[dict[str, float], float | None]:
    """BN recalibrated on this data (on every process: the same batches give the same statistics), then the
    val/test accuracy before training and the teacher's test accuracy (rank 0; stored for a resume)."""
    info, r = job.info, job.arch.r
    recalibrate_bn(job.net, job.calib)
    before = _evaluate(job.net, job.bundle, r, info.device) if info.is_main else None
    teacher_acc = (_evaluate(job.teacher, job.bundle, r, info.device, ("test",))["test"]
                   if info.is_main and job.teacher is not None else None)
    before, teacher_acc = broadcast_object(info, (before, teacher_acc))
    if not job.classes_match:
        say(f"before fine-tuning: the rebuilt classifier is untrained (test accuracy {before['test']:.2%})")
    else:
        say(f"before fine-tuning (BN recalibrated): val {before['val']:.2%}, test {before['test']:.2%}")
    return before, teacher_acc


def _train(job: _Job, state: dict | None, before, teacher_acc, say, console) -> float:
    """The epochs (from where `state` stopped); returns the seconds spent training, resumed time included."""
    cfg, info, net, bundle, work = job.cfg, job.info, job.net, job.bundle, job.work
    device, r, steps_per_epoch = info.device, job.arch.r, job.steps_per_epoch
    local_batch = job.batch // info.world
    model = net
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(net, cfg, job.lr)
    scheduler = make_scheduler(optimizer, cfg, job.lr, cfg.epochs * steps_per_epoch, steps_per_epoch)
    start_epoch, start_step, train_seconds, resumed_sums = 0, 0, 0.0, None
    if state is not None:
        check_state_dict(net, state["model"], str(work.state_file))
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, start_step = state["epoch"], state["step"]
        train_seconds = float(state.get("train_seconds", 0.0))
        resumed_sums = state.get("epoch_sums")
    say(f"fine-tuning {job.arch.summary()} at {r} px: {cfg.epochs} epoch(s) x {steps_per_epoch} steps, batch "
        f"{job.batch}{f' ({local_batch}/process x {info.world})' if info.distributed else ''}, lr {job.lr:.4g} "
        f"(cosine, warmup {cfg.warmup_epochs:g} epoch), teacher {job.recipe['teacher']}"
        f"{f' (kd ratio {job.kd_ratio:g})' if job.teacher is not None else ''}")
    sampler = DistributedSampler(bundle.train, num_replicas=info.world, rank=info.rank, shuffle=True,
                                 seed=derive_seed(cfg.seed, "finetune-data") % (2 ** 31), drop_last=True)

    def checkpoint(epoch: int, step: int, sums: list[float] | None, seconds: float) -> None:
        if info.is_main:
            work.save_train_state({
                "version": STATE_VERSION, "stage": "finetune", "config": cfg.to_dict(), "epoch": epoch, "step": step,
                "done": False, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(), "before": before,
                "teacher_accuracy": teacher_acc, "train_seconds": seconds,
                "epoch_sums": list(sums) if sums is not None else None})
        barrier(info)

    if state is None:
        checkpoint(0, 0, None, 0.0)
    with Progress(cfg.progress and info.is_main, console) as progress:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            first = start_step if epoch == start_epoch else 0
            indices = list(sampler)[first * local_batch: steps_per_epoch * local_batch]
            loader = DataLoader(bundle.train, batch_size=local_batch, sampler=indices, collate_fn=collate_batch,
                                drop_last=True)
            task = progress.task(f"finetune ep {epoch + 1}/{cfg.epochs}", steps_per_epoch, first)
            sums = list(resumed_sums) if (first and resumed_sums and info.is_main) else [0.0, 0.0, 0.0]
            t0, seen = time.time(), 0
            set_train_mode(net, cfg.bn_mode)
            for step, (x, y) in enumerate(loader, start=first):
                loss, correct = _step(job, model, optimizer, x, y, (cfg.seed, epoch, step))
                scheduler.step_update(num_updates=epoch * steps_per_epoch + step + 1)
                sums[0] += loss * len(y)
                sums[1] += correct
                sums[2] += len(y)
                seen += len(y) * info.world
                progress.update(task, loss=sums[0] / max(sums[2], 1), acc=sums[1] / max(sums[2], 1), res=r,
                                ips=seen / max(time.time() - t0, 1e-9))
                if (step + 1) % cfg.save_every == 0 and step + 1 < steps_per_epoch:
                    checkpoint(epoch, step + 1, all_reduce_sum(info, sums, device), train_seconds + time.time() - t0)
            train_seconds += time.time() - t0
            sums = all_reduce_sum(info, sums, device)
            if info.is_main:
                record = {"kind": "epoch", "stage": "finetune", "phase": None, "epoch": epoch + 1,
                          "epochs": cfg.epochs, "train_loss": sums[0] / max(sums[2], 1),
                          "train_acc": sums[1] / max(sums[2], 1), "lr": optimizer.param_groups[0]["lr"],
                          "seconds": time.time() - t0}
                if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
                    record["val_acc"] = _evaluate(net, bundle, r, device, ("val",))["val"]
                work.append_history(record)
                val_txt = f", val acc {record['val_acc']:.2%}" if "val_acc" in record else ""
                say(f"finetune epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.3f}, train acc "
                    f"{record['train_acc']:.2%}{val_txt}")
            checkpoint(epoch + 1, 0, None, train_seconds)
    return train_seconds


def _step(job: _Job, model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, key: tuple) -> tuple[float, int]:
    """One optimizer step on a batch; every random draw is derived from `key` = (seed, epoch, step)."""
    cfg, info, bundle = job.cfg, job.info, job.bundle
    if cfg.augment:
        gen = torch.Generator().manual_seed(derive_seed(*key, "augment"))
        x = augment_batch(x, gen, bundle.flip, rank=info.rank, world=info.world)
    x = prepare_batch(x, job.arch.r, bundle.mean, bundle.std).to(info.device, non_blocking=True)
    y = y.to(info.device, non_blocking=True)
    torch.manual_seed(derive_seed(*key, "dropout", info.rank))
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if job.teacher is not None:
        with torch.no_grad():
            soft = job.teacher(x)
        loss = loss + job.kd_ratio * soft_cross_entropy(logits, soft)
    loss.backward()
    if not all(torch.isfinite(p.grad).all() for p in job.net.parameters() if p.grad is not None):
        raise OFAError(f"fine-tuning diverged at epoch {key[1] + 1} step {key[2]} (non-finite gradients); "
                       f"lower --lr (now {job.lr:.4g})")
    optimizer.step()
    return float(loss.detach()), int((logits.detach().argmax(1) == y).sum())


def _finish(job: _Job, before, teacher_acc, train_seconds: float, say) -> dict[str, Any]:
    """BN recalibrated, val/test evaluated, the new folder written atomically (then its history beside it)."""
    net, r = job.net, job.arch.r
    recalibrate_bn(net, job.calib)
    after = _evaluate(net, job.bundle, r, job.info.device)
    say(f"after {job.cfg.epochs} epoch(s) (BN recalibrated): val {after['val']:.2%}, test {after['test']:.2%} "
        f"(before: test {before['test']:.2%})")
    doc = {"source": str(job.folder), "data": job.bundle.config, "classes_match": job.classes_match,
           "recipe": job.recipe, "accuracy_before": before, "accuracy_after": after,
           "teacher_test_accuracy": teacher_acc, "train_seconds": train_seconds, "notes": job.notes,
           "history": job.work.history()}
    _write_folder(job, doc)
    job.work.save_train_state({"version": STATE_VERSION, "stage": "finetune", "config": job.cfg.to_dict(),
                               "epoch": job.cfg.epochs, "step": 0, "done": True})
    atomic.write_text(job.out / "history.jsonl", job.work.history_file.read_text())
    shutil.rmtree(job.work.path, ignore_errors=True)
    say(f"wrote {job.out}")
    return _summary_from_folder(job.out)


def _write_folder(job: _Job, doc: dict[str, Any]) -> None:
    """`job.out` in the format `ofa specialize` writes: the input's arch.json, updated, plus a `finetune` section."""
    from elastic.complexity import macs, params
    from ofa.specialized import save_specialized

    arch, space, bundle = job.arch, job.out_space, job.bundle
    new = {k: v for k, v in job.meta.items() if k not in ("format", "files", "finetune")}
    new.update({"space": space.to_dict(), "n_classes": space.n_classes, "classes": list(bundle.classes or []),
                "input": {"resolution": arch.r, "channels": space.in_channels, "mean": list(bundle.mean),
                          "std": list(bundle.std)}})
    predicted = dict(new.get("predicted") or {})
    predicted.update({"macs": float(macs(space, [arch])[0]), "params": float(params(space, [arch])[0])})
    measured = dict(new.get("measured") or {})
    measured["test_accuracy"] = doc["accuracy_after"]["test"]
    if not job.classes_match:
        predicted["accuracy"] = None       # the search predicted it for the run's classes
        measured["latency_ms"] = None      # measured with the old classifier
    new.update({"predicted": predicted, "measured": measured, "finetune": doc})
    net = job.net.eval().cpu()
    save_specialized(job.out, net, new, exports=job.cfg.exports, example=job.calib[0][:4].cpu())


def _summary_from_folder(out: Path) -> dict[str, Any]:
    meta = json.loads((out / "arch.json").read_text())
    ft = meta["finetune"]
    return {"path": str(out), "source": ft["source"], "arch": meta["arch"], "epochs": ft["recipe"]["epochs"],
            "accuracy_before": ft["accuracy_before"]["test"], "accuracy_after": ft["accuracy_after"]["test"],
            "val_accuracy_before": ft["accuracy_before"]["val"], "val_accuracy_after": ft["accuracy_after"]["val"],
            "teacher": ft["recipe"]["teacher"], "kd_ratio": ft["recipe"]["kd_ratio"], "lr": ft["recipe"]["lr"],
            "head_rebuilt": ft["recipe"]["head_rebuilt"], "from_scratch": ft["recipe"]["from_scratch"],
            "teacher_test_accuracy": ft["teacher_test_accuracy"], "train_seconds": ft["train_seconds"],
            "data": ft["data"]["name"], "notes": ft["notes"]}
