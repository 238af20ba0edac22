"""The progressive-shrinking training loop: stages, phases, epochs, steps; checkpoints and exact resume.

Every random choice is derived from (seed, stage, phase, epoch, step) rather than from a running generator:
the data order (a DistributedSampler seeded per phase, set_epoch per epoch), the resolution and the subnets of a
step, the augmentation of a batch and the dropout masks. So a run resumed from its last checkpoint (after a
SIGKILL, say) replays exactly the steps an uninterrupted run would have made, and every process of a
distributed run samples the same subnets at the same step.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import random
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec, get_space
from ofa.data import DataBundle, _collate, augment_batch, get_data, prepare_batch
from ofa.run_dir import RunDir
from ofa.training.distributed import DistInfo, all_reduce_sum, barrier, broadcast_object, init_distributed
from ofa.training.evaluate import evaluate_arch, evaluate_subnets, subnets_to_report
from ofa.progress import Progress
from ofa.training.kd import soft_cross_entropy
from ofa.training.precision import MIN_FP16_SCALE, autocast, grad_scaler
from ofa.training.world_size import check_resume_world
from ofa.training.schedule import (STAGES, Phase, TrainConfig, default_space_name, previous_stage, stage_phases,
                                   stages_for)

STATE_VERSION = 1


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from a tuple of plain values (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_step_archs(space: SpaceSpec, phase: Phase, rng: random.Random, n: int, sandwich: bool,
                      resolution: int) -> list[Arch]:
    """The subnets trained at one step (all at the step's resolution)."""
    if phase.stage == "full":
        return [space.largest(r=resolution)]
    largest = Arch(ks=(max(phase.ks),) * space.n_blocks, e=(max(phase.e),) * space.n_blocks,
                   d=tuple(max(space.depth_choices(s)) for s in range(space.n_stages)), r=resolution)
    smallest = Arch(ks=(min(phase.ks),) * space.n_blocks, e=(min(phase.e),) * space.n_blocks,
                    d=tuple(min(x for x in space.depth_choices(s) if x in phase.d) if any(
                        x in phase.d for x in space.depth_choices(s)) else max(space.depth_choices(s))
                        for s in range(space.n_stages)), r=resolution)
    out = [largest, smallest] if sandwich else []
    while len(out) < n:
        out.append(space.sample(rng, ks=phase.ks, e=phase.e, d=phase.d, r=(resolution,)))
    return out[:n]


# ---- RNG states in weights_only-loadable form --------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    py = random.getstate()
    npst = np.random.get_state()
    out = {"python": [py[0], list(py[1]), py[2]], "numpy": [npst[0], torch.from_numpy(npst[1].astype(np.int64)),
                                                              int(npst[2]), int(npst[3]), float(npst[4])],
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():   # one state per GPU of this process
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")   # restored where the same GPUs are there (every step reseeds them anyway)
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---- model helpers -------------------------------------------------------------------------------------------
def _set_train_mode(model: nn.Module, bn_mode: str) -> None:
    model.train()
    if bn_mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _set_dropout(model: nn.Module, p: float | None) -> None:
    if p is None:
        return
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
    if hasattr(model, "dropout") and isinstance(getattr(model, "dropout"), float):
        model.dropout = p


def _make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float):
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.resolved("weight_decay"),
                               momentum=cfg.momentum)


def _make_scheduler(optimizer, cfg: TrainConfig, lr: float, total_steps: int, steps_per_epoch: int):
    from timm.scheduler import CosineLRScheduler

    warmup = min(int(round(cfg.resolved("warmup_epochs") * steps_per_epoch)), total_steps // 4)
    if total_steps <= 1:  # timm warns that a 1-step cosine does nothing; that is expected in tiny runs
        import logging

        logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)
    return CosineLRScheduler(optimizer, t_initial=max(total_steps, 1), lr_min=lr * cfg.min_lr_ratio,
                             warmup_t=warmup, warmup_lr_init=lr * 0.1 if warmup else 0.0, warmup_prefix=False,
                             t_in_epochs=False)


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
    _set_dropout(model, cfg.dropout)
    if not cfg.channels_last:   # the supernet is built channels-last (elastic.static_net.MEMORY_FORMAT)
        model = model.to(memory_format=torch.contiguous_format)
    return model.to(device)


def _train_stage(stage: str, cfg: TrainConfig, run: RunDir, space: SpaceSpec, bundle: DataBundle, info: DistInfo,
                 state: dict | None, say, progress: Progress) -> dict[str, Any]:
    device = info.device
    if run.stage_weights_file(stage).exists() and state is None and not cfg.overwrite:
        raise OFAError(f"stage '{stage}' is already trained in {run.path} ({run.stage_weights_file(stage).name}); "
                       "use another --run or pass --overwrite")
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

    ddp = None
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=True)
    net = ddp if ddp is not None else model

    phases = stage_phases(stage, space)
    start_phase = state["phase"] if state is not None else 1
    batch = cfg.resolved("batch_size")
    if batch % info.world:
        raise OFAError(f"--batch-size {batch} must be divisible by the number of processes ({info.world})")
    local_batch = batch // info.world
    stage_idx = STAGES.index(stage)
    results: dict[str, Any] = {"stage": stage, "phases": []}
    t_stage = time.time()
    for phase in phases[start_phase - 1:]:
        resuming = state is not None and phase.index == start_phase
        epochs, steps_per_epoch = cfg.steps_plan(phase, len(bundle.train))
        lr = cfg.lr_for(phase)
        optimizer = _make_optimizer(model, cfg, lr)
        scheduler = _make_scheduler(optimizer, cfg, lr, epochs * steps_per_epoch, steps_per_epoch)
        scaler = grad_scaler(device, cfg.precision)
        start_epoch, start_step = 0, 0
        resumed_sums = None
        if resuming:
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
        augment = bool(cfg.resolved("augment"))
        sampler = DistributedSampler(bundle.train, num_replicas=info.world, rank=info.rank, shuffle=True,
                                     seed=derive_seed(cfg.seed, "data", stage_idx, phase.index) % (2 ** 31),
                                     drop_last=True)
        say(f"phase {phase.name}: {epochs} epoch(s) x {steps_per_epoch} steps, batch {batch}"
            f"{f' ({local_batch}/process x {info.world})' if info.distributed else ''}, lr {lr:.4g}, "
            f"{n_sub} subnet(s)/step{' (sandwich)' if sandwich else ''}, kernels {list(phase.ks)}, "
            f"expands {list(phase.e)}, depths {list(phase.d)}, resolutions {list(space.resolutions)}")

        def checkpoint(epoch: int, step: int, sums: list[float] | None = None) -> None:
            if info.is_main:
                run.save_train_state({
                    "version": STATE_VERSION, "config": cfg.to_dict(), "stage": stage, "phase": phase.index,
                    "epoch": epoch, "step": step, "done": False, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                    "epoch_sums": list(sums) if sums is not None else None, "world": info.world,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                })
            barrier(info)

        for epoch in range(start_epoch, epochs):
            sampler.set_epoch(epoch)
            first = start_step if epoch == start_epoch else 0
            indices = list(sampler)[first * local_batch: steps_per_epoch * local_batch]
            loader = DataLoader(bundle.train, batch_size=local_batch, sampler=indices, collate_fn=_collate,
                                num_workers=cfg.workers, drop_last=True, pin_memory=device.type == "cuda")
            task = progress.task(f"{phase.name} ep {epoch + 1}/{epochs}", steps_per_epoch, first)
            sums = [0.0, 0.0, 0.0]  # loss*n, correct, n (of the first subnet of each step)
            if first and resumed_sums and info.is_main:  # stored all-reduced: rank 0 carries them
                sums = list(resumed_sums)
            t0, seen = time.time(), 0
            _set_train_mode(model, cfg.bn_mode)
            for step, (x, y) in enumerate(loader, start=first):
                key = (cfg.seed, stage_idx, phase.index, epoch, step)
                rng = random.Random(derive_seed(*key, "archs"))
                res = rng.choice(space.resolutions)
                archs = sample_step_archs(space, phase, rng, n_sub, sandwich, res)
                x = x.to(device, non_blocking=True)   # (pinned on a GPU run: the copy overlaps)
                y = y.to(device, non_blocking=True)
                if augment:   # drawn on the CPU from the step's seed, applied on the device
                    gen = torch.Generator().manual_seed(derive_seed(*key, "augment"))
                    x = augment_batch(x, gen, bundle.flip, rank=info.rank, world=info.world)
                x = prepare_batch(x, res, bundle.mean, bundle.std, cfg.channels_last)
                torch.manual_seed(derive_seed(*key, "dropout", info.rank))
                soft = None
                if teacher is not None:
                    with torch.no_grad(), autocast(device, cfg.precision):
                        soft = teacher(x)
                optimizer.zero_grad(set_to_none=True)
                for i, arch in enumerate(archs):
                    model.set_active(arch)
                    sync = ddp.no_sync() if (ddp is not None and i < len(archs) - 1) else contextlib.nullcontext()
                    with sync:
                        with autocast(device, cfg.precision):
                            out = net(x)
                            loss = F.cross_entropy(out, y, label_smoothing=cfg.resolved("label_smoothing"))
                            if soft is not None:
                                loss = loss + cfg.kd_ratio * soft_cross_entropy(out, soft)
                        (loss if scaler is None else scaler.scale(loss)).backward()
                    if inplace_kd and i == 0:   # archs[0] is the largest (sandwich): the others' teacher
                        soft = out.detach()
                    if i == 0:
                        head = (loss.detach().float(), (out.detach().argmax(1) == y).sum().float())
                # one host sync a step: the gradients' total norm (non-finite iff some gradient is; fp16's scaler
                # skips such steps itself) and the first subnet's loss and correct count
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                norm = torch.nn.utils.get_total_norm(grads).float() if scaler is None and grads else head[0] * 0
                norm, first_loss, first_correct = torch.stack([norm, *head]).tolist()
                if not math.isfinite(norm):
                    raise OFAError(f"training diverged at stage {stage} epoch {epoch + 1} step {step} "
                                   f"(non-finite gradients); lower --lr (now {lr:.4g})")
                n = len(y)
                sums[0] += first_loss * n
                sums[1] += first_correct
                sums[2] += n
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                    if scaler.get_scale() < MIN_FP16_SCALE:
                        raise OFAError(f"training diverged at stage {stage} epoch {epoch + 1} step {step} (fp16 "
                                       f"gradients overflow at every loss scale); lower --lr (now {lr:.4g}) or use "
                                       f"--precision bf16")
                scheduler.step_update(num_updates=epoch * steps_per_epoch + step + 1)
                seen += len(y) * info.world
                progress.update(task, loss=sums[0] / max(sums[2], 1), acc=sums[1] / max(sums[2], 1), res=res,
                                ips=seen / max(time.time() - t0, 1e-9))
                if (step + 1) % cfg.save_every == 0 and step + 1 < steps_per_epoch:
                    checkpoint(epoch, step + 1, all_reduce_sum(info, sums, device))
            sums = all_reduce_sum(info, sums, device)
            record = {"kind": "epoch", "stage": stage, "phase": phase.index, "epoch": epoch + 1, "epochs": epochs,
                      "train_loss": sums[0] / max(sums[2], 1), "train_acc": sums[1] / max(sums[2], 1),
                      "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - t0,
                      "images_per_s": seen / max(time.time() - t0, 1e-9)}
            if info.is_main and cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == epochs):
                largest = space.largest()
                record["val_acc_largest"] = evaluate_arch(model, largest, bundle, "val",
                                                          cfg.resolved("calib_images"), device)
            if info.is_main:
                run.append_history(record)
                acc_txt = f", val acc (largest) {record['val_acc_largest']:.2%}" if "val_acc_largest" in record else ""
                say(f"{phase.name} epoch {epoch + 1}/{epochs}: loss {record['train_loss']:.3f}, "
                    f"train acc {record['train_acc']:.2%}{acc_txt}, {record['images_per_s']:.0f} img/s")
            if epoch + 1 < epochs:
                checkpoint(epoch + 1, 0)
        if phase.index < len(phases):
            _save_phase_end(run, info, cfg, stage, phase.index + 1, model)
        state = None
        results["phases"].append({"phase": phase.name, "epochs": epochs, "lr": lr})

    # ---- stage end: weights, subnet accuracies, history ----
    model.set_active(space.largest())
    if info.is_main:
        run.save_weights(model, space, stage=stage)
        rows = []
        if cfg.stage_eval:
            archs = subnets_to_report(space, cfg.resolved("eval_subnets"), seed=cfg.seed)
            rows = evaluate_subnets(model, space, bundle, archs, cfg.eval_split, cfg.resolved("calib_images"), device)
            ev = {"stage": stage, "split": cfg.eval_split, "subnets": rows, "seconds": time.time() - t_stage}
            run.save_stage_eval(stage, ev)
            run.append_history({"kind": "stage_eval", "stage": stage, "phase": None, "epoch": None,
                                "split": cfg.eval_split, **{r["name"]: r["acc"] for r in rows}})
        run.save_train_state({"version": STATE_VERSION, "config": cfg.to_dict(), "stage": stage, "phase": len(phases),
                              "epoch": 0, "step": 0, "done": stage == stages_for(cfg.stage)[-1],
                              "next_stage": _next(stage, cfg), "world": info.world})
        say(f"stage '{stage}' done in {time.time() - t_stage:.0f}s" + (f"; {cfg.eval_split} accuracy (BN recalibrated): " +
            ", ".join(f"{r['name']} {r['acc']:.2%}" for r in rows) if rows else ""))
        results["eval"] = rows
    barrier(info)
    results = broadcast_object(info, results)
    return results


def _next(stage: str, cfg: TrainConfig) -> str | None:
    stages = stages_for(cfg.stage)
    i = stages.index(stage)
    return stages[i + 1] if i + 1 < len(stages) else None


def _save_phase_end(run: RunDir, info: DistInfo, cfg: TrainConfig, stage: str, next_phase: int, model) -> None:
    """Checkpoint between phases: a resume starts the next phase with fresh optimizer and scheduler."""
    if info.is_main:
        run.save_train_state({"version": STATE_VERSION, "config": cfg.to_dict(), "stage": stage, "phase": next_phase,
                              "epoch": 0, "step": 0, "done": False, "model": model.state_dict(),
                              "optimizer": None, "scheduler": None, "rng": rng_state(), "world": info.world})
    barrier(info)
