"""The progressive-shrinking training loop: stages, phases, epochs, steps; checkpoints and exact resume.

Every random choice is derived from (seed, stage, phase, epoch, step) rather than from a running generator
(`ofa.training.randomness.derive_seed`): the data order (a DistributedSampler seeded per phase, set_epoch per
epoch), the resolution and the subnets of a step (`ofa.training.step_archs`), the augmentation of a batch and the
dropout masks. So a run resumed from its last checkpoint (after a SIGKILL, say) replays exactly the steps an
uninterrupted run would have made, and every process of a distributed run samples the same subnets at the same
step.

`train` drives the stages; `_train_stage` -> `_train_phase` -> `_train_step` are the loops inside one stage.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from elastic.errors import OFAError
from elastic.spaces import SpaceSpec, get_space
from ofa.data import DataBundle, augment_batch, collate_batch, get_data, prepare_batch
from ofa.run_dir import RunDir
from ofa.training.distributed import DistInfo, all_reduce_sum, barrier, broadcast_object, init_distributed
from ofa.training.evaluate import evaluate_arch, evaluate_subnets, subnets_to_report
from ofa.progress import Progress
from ofa.training.kd import soft_cross_entropy
from ofa.training.optimization import make_optimizer, make_scheduler
from ofa.training.precision import MIN_FP16_SCALE, autocast, grad_scaler
from ofa.training.randomness import derive_seed, rng_state, set_rng_state
from ofa.training.step_archs import sample_step_archs
from ofa.training.train_modes import set_dropout, set_train_mode
from ofa.training.world_size import check_resume_world
from ofa.training.schedule import (STAGES, Phase, TrainConfig, default_space_name, previous_stage, stage_phases,
                                   stages_for)

STATE_VERSION = 1


# ---- the entry point --------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] | None = None,
          console=None, plan_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the stages `cfg.stage` names in run directory `cfg.run`; returns a summary dict.

    With `resume=True` the run continues from `train_state.pt` (the config stored there wins, except for
    `progress`/`device`/`threads`/`workers`). Works as one process or under torchrun (DDP). With
    `cfg.time_budget` a new run first sizes its steps to the budget (`ofa.training.time_budget`; `plan_options`
    go to its planner).
    """
    info = init_distributed(cfg.device)
    run = RunDir(cfg.run)
    run.check_creatable()   # before the data is read
    say = (log or print) if info.is_main else (lambda msg: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    state = None
    if resume:
        state = run.load_train_state()
        if state is None:
            raise OFAError(f"nothing to resume: {run.state_file} does not exist; start with `ofa train --run {cfg.run}`")
        keep = {k: getattr(cfg, k) for k in ("progress", "device", "threads", "workers", "run")}
        cfg = replace(TrainConfig.from_dict(state["config"]), **keep)
        if state.get("done"):
            say(f"run {run.path} already finished stage '{state['stage']}'; nothing to resume")
            return {"run": str(run.path), "resumed": False, "stages": []}
        say(f"resuming run {run.path}: stage {state['stage']} phase {state['phase']} epoch {state['epoch'] + 1} "
            f"step {state['step']}")
    else:
        if cfg.time_budget is not None and cfg.phase_steps:
            raise OFAError("--time-budget sizes the phases itself; leave out --phase-steps (or leave out --time-budget "
                           "for a fixed-step run)")
        old = run.load_train_state() if run.state_file.exists() else None
        if old is not None and not old.get("done"):
            raise OFAError(f"run {run.path} has an unfinished stage '{old['stage']}' (epoch {old['epoch'] + 1}); "
                           f"pass --resume to continue it, or use another --run")
    stages = stages_for(cfg.stage)

    # ---- data and space (rank 0 unpacks/caches the data first) ----
    data_kwargs = cfg.data_kwargs()
    if run.data_file.exists():
        stored = run.data_config()
        if cfg.data.get("name") is None or resume:
            data_kwargs = stored
        else:
            from ofa.data import _resolve_name

            given = {k: v for k, v in cfg.data.items() if v is not None and k != "download"}
            given["name"] = _resolve_name(given["name"], given.get("root"))[0]
            clash = {k: v for k, v in given.items() if stored.get(k) != v}
            if clash:
                raise OFAError(f"run {run.path} was trained on data {stored}; a later stage must use the same data "
                               f"(got {clash}; leave --data out to reuse the run's)")
            data_kwargs = stored
    if info.is_main:
        bundle = get_data(**data_kwargs)
    barrier(info)
    if not info.is_main:
        bundle = get_data(**data_kwargs)
    if getattr(bundle, "note", "") and not run.data_file.exists():
        say(bundle.note)
    say(f"data {bundle.summary()}")
    cfg = replace(cfg, dataset=bundle.name)
    if not resume:   # a resumed run keeps the split it stored
        cfg = cfg.with_phase_steps(len(bundle.train))
    space = _resolve_space(run, cfg, bundle, stages)
    if state is not None:
        check_resume_world(state.get("world"), info.world, cfg, space)
    if info.is_main:
        run.create()
        if not run.space_file.exists():
            run.save_space(space)
        if not run.data_file.exists():
            run.save_data_config(bundle.config)
    barrier(info)
    budget_plan = budget = None
    if cfg.time_budget is not None:   # size the steps to the budget (measured once, then stored; re-sized per stage)
        from ofa.training.time_budget import budget_run, plan_training

        if not resume:
            cfg, budget_plan = plan_training(cfg, run, space, bundle, info, say, stages, **(plan_options or {}))
        budget = budget_run(cfg, run, resume, budget_plan, info)

    summary: dict[str, Any] = {"run": str(run.path), "space": space.name, "data": bundle.config, "stages": []}
    start_stage = 0
    if state is not None:
        if state.get("next_stage"):  # killed between two stages: start the next one afresh
            start_stage, state = stages.index(state["next_stage"]), None
        else:
            start_stage = stages.index(state["stage"])
    with Progress(cfg.progress and info.is_main, console) as progress:
        for si in range(start_stage, len(stages)):
            stage_state = state if (state is not None and si == start_stage) else None
            if budget is not None and stage_state is None and stages[si] != "full":
                cfg = budget.revise(cfg, stages[si], space, info, say)
            result = _train_stage(stages[si], cfg, run, space, bundle, info, stage_state, say, progress)
            summary["stages"].append(result)
            if budget is not None:
                budget.milestone(f"stage {stages[si]}")
    if budget is not None and cfg.time_budget_scope == "train":
        from ofa.training.time_budget import report_training

        summary["time_budget"] = report_training(budget.plan, budget.used(), say)
    return summary


def _resolve_space(run: RunDir, cfg: TrainConfig, bundle: DataBundle, stages: list[str]) -> SpaceSpec:
    if run.space_file.exists():
        space = run.load_space()
        if cfg.space is not None and cfg.space != space.name:
            raise OFAError(f"run {run.path} holds a supernet of space '{space.name}', not '{cfg.space}'; "
                           "leave --space out or use another --run")
        if cfg.resolutions and tuple(sorted(set(cfg.resolutions))) != tuple(space.resolutions):
            raise OFAError(f"run {run.path} was trained at resolutions {list(space.resolutions)}, not "
                           f"{sorted(set(cfg.resolutions))}; leave --resolutions out or use another --run")
    else:
        space = get_space(cfg.space or default_space_name(bundle.native_res), n_classes=bundle.n_classes)
        if cfg.resolutions:
            res = tuple(sorted({int(r) for r in cfg.resolutions}))
            if min(res) < 8:
                raise OFAError(f"resolutions must be >= 8 pixels, got {list(res)}")
            space = replace(space, resolutions=res)
    if space.n_classes != bundle.n_classes:
        raise OFAError(f"space has {space.n_classes} classes but data '{bundle.name}' has {bundle.n_classes}")
    if stages[0] != "full" and not run.stage_weights_file(previous_stage(stages[0])).exists():
        prev = previous_stage(stages[0])
        raise OFAError(f"stage '{stages[0]}' starts from the '{prev}' stage checkpoint, which {run.path} lacks "
                       f"({run.stage_weights_file(prev).name}); run `ofa train --stage {prev} --run {run.path}` first")
    return space


def _build_model(space: SpaceSpec, cfg: TrainConfig, device: torch.device) -> nn.Module:
    from elastic.supernet import Supernet

    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = Supernet(space)
    set_dropout(model, cfg.dropout)
    if not cfg.channels_last:   # the supernet is built channels-last (elastic.static_net.MEMORY_FORMAT)
        model = model.to(memory_format=torch.contiguous_format)
    return model.to(device)


# ---- one stage: its nets, its phases, their epochs and steps ---------------------------------------------------
@dataclass
class _StageNets:
    """What a stage trains: the supernet (`net`: it, or `ddp`, its DDP wrapper) and how it is distilled."""
    model: nn.Module
    net: nn.Module
    ddp: Any
    teacher: nn.Module | None   # the full stage's net, frozen (kd teacher "full")
    inplace_kd: bool            # each step's largest subnet teaches the others (kd teacher "inplace")


@dataclass
class _PhaseRun:
    """What every step of one phase uses."""
    stage: str
    stage_idx: int
    phase: Phase
    lr: float
    steps_per_epoch: int
    n_sub: int
    sandwich: bool
    augment: bool
    optimizer: Any
    scheduler: Any
    scaler: Any


def _train_stage(stage: str, cfg: TrainConfig, run: RunDir, space: SpaceSpec, bundle: DataBundle, info: DistInfo,
                 state: dict | None, say, progress: Progress) -> dict[str, Any]:
    """Train one stage (continuing `state` when it is given): its phases in turn, then the stage-end checkpoint
    and evaluation; returns the stage's summary (its phases, lr and epochs, and its subnets' accuracies)."""
    device = info.device
    if run.stage_weights_file(stage).exists() and state is None and not cfg.overwrite:
        raise OFAError(f"stage '{stage}' is already trained in {run.path} ({run.stage_weights_file(stage).name}); "
                       "use another --run or pass --overwrite")
    model = _stage_start_model(stage, cfg, run, space, device, state, say)
    teacher, inplace_kd = _stage_teacher(stage, cfg, run, space, device, say)
    ddp = None
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=True)
    nets = _StageNets(model, ddp if ddp is not None else model, ddp, teacher, inplace_kd)

    phases = stage_phases(stage, space)
    start_phase = state["phase"] if state is not None else 1
    batch = cfg.resolved("batch_size")
    if batch % info.world:
        raise OFAError(f"--batch-size {batch} must be divisible by the number of processes ({info.world})")
    results: dict[str, Any] = {"stage": stage, "phases": []}
    t_stage = time.time()
    for phase in phases[start_phase - 1:]:
        resuming = state is not None and phase.index == start_phase
        epochs, lr = _train_phase(stage, phase, cfg, run, space, bundle, info, nets, batch,
                                  state if resuming else None, say, progress)
        if phase.index < len(phases):
            _save_phase_end(run, info, cfg, stage, phase.index + 1, model)
        state = None
        results["phases"].append({"phase": phase.name, "epochs": epochs, "lr": lr})

    # ---- stage end: weights, subnet accuracies, history ----
    model.set_active(space.largest())
    if info.is_main:
        results["eval"] = _save_stage_end(stage, cfg, run, space, bundle, info, model, len(phases), t_stage, say)
    barrier(info)
    results = broadcast_object(info, results)
    return results


def _stage_start_model(stage: str, cfg: TrainConfig, run: RunDir, space: SpaceSpec, device: torch.device,
                       state: dict | None, say) -> nn.Module:
    """The supernet a stage starts from: the resumed state's weights, else the previous stage's checkpoint (channels
    re-sorted for the expand stage), else (the full stage) fresh weights."""
    model = _build_model(space, cfg, device)
    prev = previous_stage(stage)
    if state is not None:
        from ofa.run_dir import check_state_dict

        check_state_dict(model, state["model"], str(run.state_file))
        model.load_state_dict(state["model"])
    elif prev is not None:
        run.load_into(model, prev, space)
        say(f"stage '{stage}': starting from the '{prev}' checkpoint {run.stage_weights_file(prev)}")
        if stage == "expand":
            model.sort_channels()
            say("stage 'expand': channels re-sorted by importance")
    else:
        say(f"stage 'full': training the largest subnet of {space.name} from scratch")
    return model


def _stage_teacher(stage: str, cfg: TrainConfig, run: RunDir, space: SpaceSpec, device: torch.device,
                   say) -> tuple[nn.Module | None, bool]:
    """The stage's distillation: (the full stage's net, frozen, or None; whether it distils in place)."""
    teacher = None
    inplace_kd = stage != "full" and cfg.kd_ratio > 0 and cfg.kd_teacher == "inplace"
    if inplace_kd:
        say(f"stage '{stage}': distilling in place from each step's largest subnet (kd ratio {cfg.kd_ratio})")
    elif stage != "full" and cfg.kd_ratio > 0:
        teacher = _build_model(space, cfg, device)
        run.load_into(teacher, "full", space)
        teacher.set_active(space.largest())
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        say(f"stage '{stage}': distilling from {run.stage_weights_file('full')} (kd ratio {cfg.kd_ratio})")
    return teacher, inplace_kd


def _train_phase(stage: str, phase: Phase, cfg: TrainConfig, run: RunDir, space: SpaceSpec, bundle: DataBundle,
                 info: DistInfo, nets: _StageNets, batch: int, state: dict | None, say,
                 progress: Progress) -> tuple[int, float]:
    """Train one phase of `stage` (continuing `state`'s epoch and step when it is given); returns the phase's
    epochs and learning rate."""
    device, model = info.device, nets.model
    local_batch = batch // info.world
    epochs, steps_per_epoch = cfg.steps_plan(phase, len(bundle.train))
    lr = cfg.lr_for(phase)
    optimizer = make_optimizer(model, cfg, lr)
    scheduler = make_scheduler(optimizer, cfg, lr, epochs * steps_per_epoch, steps_per_epoch)
    scaler = grad_scaler(device, cfg.precision)
    start_epoch, start_step = 0, 0
    resumed_sums = None
    if state is not None:
        if state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, start_step = state["epoch"], state["step"]
        resumed_sums = state.get("epoch_sums")
    n_sub = cfg.subnets_per_step(stage)
    sandwich = bool(cfg.resolved("sandwich")) and n_sub > 1   # (a schedule's default needs 2 subnets a step)
    ph = _PhaseRun(stage, STAGES.index(stage), phase, lr, steps_per_epoch, n_sub, sandwich,
                   bool(cfg.resolved("augment")), optimizer, scheduler, scaler)
    sampler = DistributedSampler(bundle.train, num_replicas=info.world, rank=info.rank, shuffle=True,
                                 seed=derive_seed(cfg.seed, "data", ph.stage_idx, phase.index) % (2 ** 31),
                                 drop_last=True)
    say(f"phase {phase.name}: {epochs} epoch(s) x {steps_per_epoch} steps, batch {batch}"
        f"{f' ({local_batch}/process x {info.world})' if info.distributed else ''}, lr {lr:.4g}, "
        f"{n_sub} subnet(s)/step{' (sandwich)' if sandwich else ''}, kernels {list(phase.ks)}, "
        f"expands {list(phase.e)}, depths {list(phase.d)}, resolutions {list(space.resolutions)}")

    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        first = start_step if epoch == start_epoch else 0
        indices = list(sampler)[first * local_batch: steps_per_epoch * local_batch]
        loader = DataLoader(bundle.train, batch_size=local_batch, sampler=indices, collate_fn=collate_batch,
                            num_workers=cfg.workers, drop_last=True, pin_memory=device.type == "cuda")
        task = progress.task(f"{phase.name} ep {epoch + 1}/{epochs}", steps_per_epoch, first)
        sums = [0.0, 0.0, 0.0]  # loss*n, correct, n (of the first subnet of each step)
        if first and resumed_sums and info.is_main:  # stored all-reduced: rank 0 carries them
            sums = list(resumed_sums)
        t0, seen = time.time(), 0
        set_train_mode(model, cfg.bn_mode)
        for step, (x, y) in enumerate(loader, start=first):
            res, first_loss, first_correct = _train_step(cfg, space, bundle, info, nets, ph, epoch, step, x, y)
            n = len(y)
            sums[0] += first_loss * n
            sums[1] += first_correct
            sums[2] += n
            seen += len(y) * info.world
            progress.update(task, loss=sums[0] / max(sums[2], 1), acc=sums[1] / max(sums[2], 1), res=res,
                            ips=seen / max(time.time() - t0, 1e-9))
            if (step + 1) % cfg.save_every == 0 and step + 1 < steps_per_epoch:
                _save_step_state(run, info, cfg, model, ph, epoch, step + 1, all_reduce_sum(info, sums, device))
        sums = all_reduce_sum(info, sums, device)
        _end_epoch(ph, cfg, run, space, bundle, info, model, epoch, epochs, sums, seen, t0, say)
        if epoch + 1 < epochs:
            _save_step_state(run, info, cfg, model, ph, epoch + 1, 0)
    return epochs, lr


def _train_step(cfg: TrainConfig, space: SpaceSpec, bundle: DataBundle, info: DistInfo, nets: _StageNets,
                ph: _PhaseRun, epoch: int, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[int, float, float]:
    """One optimizer step on the batch (x, y): the step's resolution and subnets, each one's loss backpropagated,
    the update; returns the resolution and the first subnet's loss and count of correct predictions."""
    device, model, optimizer, scaler = info.device, nets.model, ph.optimizer, ph.scaler
    key = (cfg.seed, ph.stage_idx, ph.phase.index, epoch, step)
    rng = random.Random(derive_seed(*key, "archs"))
    res = rng.choice(space.resolutions)
    archs = sample_step_archs(space, ph.phase, rng, ph.n_sub, ph.sandwich, res)
    x = x.to(device, non_blocking=True)   # (pinned on a GPU run: the copy overlaps)
    y = y.to(device, non_blocking=True)
    if ph.augment:   # drawn on the CPU from the step's seed, applied on the device
        gen = torch.Generator().manual_seed(derive_seed(*key, "augment"))
        x = augment_batch(x, gen, bundle.flip, rank=info.rank, world=info.world)
    x = prepare_batch(x, res, bundle.mean, bundle.std, cfg.channels_last)
    torch.manual_seed(derive_seed(*key, "dropout", info.rank))
    soft = None
    if nets.teacher is not None:
        with torch.no_grad(), autocast(device, cfg.precision):
            soft = nets.teacher(x)
    optimizer.zero_grad(set_to_none=True)
    for i, arch in enumerate(archs):
        model.set_active(arch)
        sync = nets.ddp.no_sync() if (nets.ddp is not None and i < len(archs) - 1) else contextlib.nullcontext()
        with sync:
            with autocast(device, cfg.precision):
                out = nets.net(x)
                loss = F.cross_entropy(out, y, label_smoothing=cfg.resolved("label_smoothing"))
                if soft is not None:
                    loss = loss + cfg.kd_ratio * soft_cross_entropy(out, soft)
            (loss if scaler is None else scaler.scale(loss)).backward()
        if nets.inplace_kd and i == 0:   # archs[0] is the largest (sandwich): the others' teacher
            soft = out.detach()
        if i == 0:
            head = (loss.detach().float(), (out.detach().argmax(1) == y).sum().float())
    # one host sync a step: the gradients' total norm (non-finite iff some gradient is; fp16's scaler
    # skips such steps itself) and the first subnet's loss and correct count
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads).float() if scaler is None and grads else head[0] * 0
    norm, first_loss, first_correct = torch.stack([norm, *head]).tolist()
    if not math.isfinite(norm):
        raise OFAError(f"training diverged at stage {ph.stage} epoch {epoch + 1} step {step} "
                       f"(non-finite gradients); lower --lr (now {ph.lr:.4g})")
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
        if scaler.get_scale() < MIN_FP16_SCALE:
            raise OFAError(f"training diverged at stage {ph.stage} epoch {epoch + 1} step {step} (fp16 "
                           f"gradients overflow at every loss scale); lower --lr (now {ph.lr:.4g}) or use "
                           f"--precision bf16")
    ph.scheduler.step_update(num_updates=epoch * ph.steps_per_epoch + step + 1)
    return res, first_loss, first_correct


def _end_epoch(ph: _PhaseRun, cfg: TrainConfig, run: RunDir, space: SpaceSpec, bundle: DataBundle, info: DistInfo,
               model: nn.Module, epoch: int, epochs: int, sums: list[float], seen: int, t0: float, say) -> None:
    """The epoch's history record and line (train loss and accuracy; the largest subnet's val accuracy when due)."""
    phase = ph.phase
    record = {"kind": "epoch", "stage": ph.stage, "phase": phase.index, "epoch": epoch + 1, "epochs": epochs,
              "train_loss": sums[0] / max(sums[2], 1), "train_acc": sums[1] / max(sums[2], 1),
              "lr": ph.optimizer.param_groups[0]["lr"], "seconds": time.time() - t0,
              "images_per_s": seen / max(time.time() - t0, 1e-9)}
    if info.is_main and cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == epochs):
        largest = space.largest()
        record["val_acc_largest"] = evaluate_arch(model, largest, bundle, "val",
                                                  cfg.resolved("calib_images"), info.device)
    if info.is_main:
        run.append_history(record)
        acc_txt = f", val acc (largest) {record['val_acc_largest']:.2%}" if "val_acc_largest" in record else ""
        say(f"{phase.name} epoch {epoch + 1}/{epochs}: loss {record['train_loss']:.3f}, "
            f"train acc {record['train_acc']:.2%}{acc_txt}, {record['images_per_s']:.0f} img/s")


def _save_stage_end(stage: str, cfg: TrainConfig, run: RunDir, space: SpaceSpec, bundle: DataBundle,
                    info: DistInfo, model: nn.Module, n_phases: int, t_stage: float, say) -> list[dict[str, Any]]:
    """Rank 0 at a stage's end: its weights, its subnets' accuracies (`cfg.stage_eval`), the train state saying
    what comes next; returns the accuracy rows."""
    run.save_weights(model, space, stage=stage)
    rows = []
    if cfg.stage_eval:
        archs = subnets_to_report(space, cfg.resolved("eval_subnets"), seed=cfg.seed)
        rows = evaluate_subnets(model, space, bundle, archs, cfg.eval_split, cfg.resolved("calib_images"), info.device)
        ev = {"stage": stage, "split": cfg.eval_split, "subnets": rows, "seconds": time.time() - t_stage}
        run.save_stage_eval(stage, ev)
        run.append_history({"kind": "stage_eval", "stage": stage, "phase": None, "epoch": None,
                            "split": cfg.eval_split, **{r["name"]: r["acc"] for r in rows}})
    run.save_train_state({"version": STATE_VERSION, "config": cfg.to_dict(), "stage": stage, "phase": n_phases,
                          "epoch": 0, "step": 0, "done": stage == stages_for(cfg.stage)[-1],
                          "next_stage": _next(stage, cfg), "world": info.world})
    say(f"stage '{stage}' done in {time.time() - t_stage:.0f}s" + (f"; {cfg.eval_split} accuracy (BN recalibrated): " +
        ", ".join(f"{r['name']} {r['acc']:.2%}" for r in rows) if rows else ""))
    return rows


def _next(stage: str, cfg: TrainConfig) -> str | None:
    stages = stages_for(cfg.stage)
    i = stages.index(stage)
    return stages[i + 1] if i + 1 < len(stages) else None


# ---- checkpoints inside a stage ------------------------------------------------------------------------------
def _save_step_state(run: RunDir, info: DistInfo, cfg: TrainConfig, model: nn.Module, ph: _PhaseRun, epoch: int,
                     step: int, sums: list[float] | None = None) -> None:
    """Checkpoint inside a phase (a resume trains `step` of `epoch` next): weights, optimizer, scheduler, scaler,
    RNG states and the epoch's running sums."""
    if info.is_main:
        run.save_train_state({
            "version": STATE_VERSION, "config": cfg.to_dict(), "stage": ph.stage, "phase": ph.phase.index,
            "epoch": epoch, "step": step, "done": False, "model": model.state_dict(),
            "optimizer": ph.optimizer.state_dict(), "scheduler": ph.scheduler.state_dict(), "rng": rng_state(),
            "epoch_sums": list(sums) if sums is not None else None, "world": info.world,
            "scaler": ph.scaler.state_dict() if ph.scaler is not None else None,
        })
    barrier(info)


def _save_phase_end(run: RunDir, info: DistInfo, cfg: TrainConfig, stage: str, next_phase: int, model) -> None:
    """Checkpoint between phases: a resume starts the next phase with fresh optimizer and scheduler."""
    if info.is_main:
        run.save_train_state({"version": STATE_VERSION, "config": cfg.to_dict(), "stage": stage, "phase": next_phase,
                              "epoch": 0, "step": 0, "done": False, "model": model.state_dict(),
                              "optimizer": None, "scheduler": None, "rng": rng_state(), "world": info.world})
    barrier(info)
