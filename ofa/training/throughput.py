"""Measure what training and evaluation cost on this machine, for `ofa.training.time_budget` to plan with.

A few timed steps on a throwaway supernet (its own seeded weights; the run's random streams are untouched):
full-stage steps (the largest subnet) at each resolution in turn, and sandwich steps of the first and the last
elastic phase (their subnets plus the distillation teacher's forward pass); the phases between are
interpolated by the multiply-adds their steps run. Then one BN recalibration and evaluation of the largest and
the smallest subnet through `ofa.training.evaluate.evaluate_arch`, the code that stage ends and the accuracy
predictor use. Each kind of step is timed after untimed warm-up steps (the full stage's at every resolution).
"""
from __future__ import annotations

import random
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from elastic.spaces import SpaceSpec
from ofa.data import DataBundle
from ofa.training.kd import soft_cross_entropy
from ofa.training.precision import autocast
from ofa.training.schedule import TrainConfig, stage_phases
from ofa.training.time_budget import Rates

TIMED_STEPS = 3          # per kind of step (full, first elastic phase, last elastic phase), after one warm-up
EVAL_IMAGES = (250, 500)  # (calibration, validation) images of the timed evaluations


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_macs(space: SpaceSpec, phase, cfg: TrainConfig, draws: int = 12) -> float:
    """Mean multiply-adds of one step of `phase` (its subnets, plus the teacher's forward as a third of a subnet's
    forward + backward), over seeded draws of resolution and subnets."""
    from elastic.netspec import net_macs
    from ofa.training.step_archs import sample_step_archs

    rng = random.Random(0)
    n_sub = cfg.subnets_per_step(phase.stage)
    sandwich = bool(cfg.resolved("sandwich")) and n_sub > 1
    total = 0.0
    for _ in range(draws):
        r = rng.choice(space.resolutions)
        archs = sample_step_archs(space, phase, rng, n_sub, sandwich, r)
        total += sum(net_macs(space.net_spec(a)) for a in archs)
        if phase.stage != "full" and cfg.kd_ratio > 0 and cfg.kd_teacher == "full":
            total += net_macs(space.net_spec(space.largest(r=r))) / 3
    return total / draws


def measure_rates(space: SpaceSpec, bundle: DataBundle, cfg: TrainConfig, device: torch.device,
                  local_batch: int, say: Callable[[str], None] = print,
                  clock: Callable[[], float] = time.perf_counter, threads: Sequence[int] = ()) -> Rates:
    """The machine's Rates. `threads`: CPU thread counts to try on full-stage steps; the fastest is kept (set with
    torch.set_num_threads) and measured on: beside other jobs, two threads can run several times slower than one."""
    from elastic.supernet import Supernet
    from ofa.training.evaluate import calibration_batches, evaluate_arch
    from ofa.training.step_archs import sample_step_archs
    from timm.optim import create_optimizer_v2

    t_start = clock()
    say("measuring this machine for the time budget (a few training steps and subnet evaluations) ...")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(12345)
        model = Supernet(space)
        teacher = Supernet(space) if cfg.kd_ratio > 0 and cfg.kd_teacher == "full" else None
        if not cfg.channels_last:
            model = model.to(memory_format=torch.contiguous_format)
            teacher = teacher.to(memory_format=torch.contiguous_format) if teacher is not None else None
        model = model.to(device)
        if teacher is not None:
            teacher = teacher.to(device).eval()
            teacher.set_active(space.largest())
        optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=1e-4, weight_decay=cfg.resolved("weight_decay"),
                                        momentum=cfg.momentum)
        loader = bundle.loader("train", batch_size=min(local_batch, len(bundle.train)), shuffle=True, seed=7)
        batches = (b for _ in iter(int, 1) for b in loader)   # cycles: small data sets hold few batches
        smoothing = cfg.resolved("label_smoothing")

        def timed_steps(phase, n: int, warm: int = 1) -> float:
            rng = random.Random(1)
            n_sub = cfg.subnets_per_step(phase.stage)
            sandwich = bool(cfg.resolved("sandwich")) and n_sub > 1
            use_teacher = teacher is not None and phase.stage != "full"
            seconds = 0.0
            model.train()
            for i in range(warm + n):
                x, y = next(batches)
                r = space.resolutions[i % len(space.resolutions)]
                x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False).to(device)
                x = x.contiguous(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
                y = y.to(device)
                archs = sample_step_archs(space, phase, rng, n_sub, sandwich, r)
                _sync(device)
                t = clock()
                soft = None
                if use_teacher:
                    with torch.no_grad(), autocast(device, cfg.precision):
                        soft = teacher(x)
                optimizer.zero_grad(set_to_none=True)
                for arch in archs:
                    model.set_active(arch)
                    with autocast(device, cfg.precision):
                        out = model(x)
                        loss = F.cross_entropy(out, y, label_smoothing=smoothing)
                        if soft is not None:
                            loss = loss + cfg.kd_ratio * soft_cross_entropy(out, soft)
                    loss.backward()
                optimizer.step()
                _sync(device)
                if i >= warm:   # the first steps warm up (kernels for new shapes, allocations)
                    seconds += clock() - t
            return seconds / n

        full = stage_phases("full", space)[0]
        elastic = [p for s in ("kernel", "depth", "expand") for p in stage_phases(s, space)]
        t_full = timed_steps(full, TIMED_STEPS, warm=len(space.resolutions))   # warmed at every resolution
        tried = {torch.get_num_threads(): t_full}
        for n in threads:
            if n not in tried:
                torch.set_num_threads(n)
                tried[n] = timed_steps(full, TIMED_STEPS, warm=1)
        best = min(tried, key=tried.get)
        torch.set_num_threads(best)
        t_full = tried[best]
        if len(tried) > 1:
            say("  full-stage steps: " + ", ".join(f"{n} thread(s) {t:.2f} s" for n, t in sorted(tried.items()))
                + f"; training on {best}")
        t_first, t_last = timed_steps(elastic[0], TIMED_STEPS), timed_steps(elastic[-1], TIMED_STEPS)
        m_first, m_last = _step_macs(space, elastic[0], cfg), _step_macs(space, elastic[-1], cfg)
        per_phase = {}
        for p in elastic:
            if p is elastic[0] or m_first == m_last:
                per_phase[p.name] = t_first
            elif p is elastic[-1]:
                per_phase[p.name] = t_last
            else:
                w = (_step_macs(space, p, cfg) - m_last) / (m_first - m_last)
                per_phase[p.name] = t_last + w * (t_first - t_last)

        # evaluation: the fixed cost (extraction) and the cost per image, from the largest and the smallest subnet
        calib, val = EVAL_IMAGES[0], min(EVAL_IMAGES[1], len(bundle.val))
        calib = min(calib, len(bundle.train))
        per_image, fixed = [], []
        r = space.resolutions[len(space.resolutions) // 2]
        cache = {r: calibration_batches(bundle, r, calib, device=device)}   # built once per resolution, as in use
        for arch in (space.largest(r=r), space.smallest(r=r)):
            t = clock()
            model.extract(arch)
            t_extract = clock() - t
            t = clock()
            evaluate_arch(model, arch, bundle, "val", calib, device, limit=val, _calib_cache=cache)
            _sync(device)
            spent = clock() - t - t_extract
            fixed.append(t_extract)
            per_image.append(max(spent, 1e-9) / (calib + val))
    gp_eval_s = gp_features = 0
    if cfg.time_budget_scope == "quickstart":   # the job fits the accuracy predictor: what its GP's steps cost here
        from ofa.training.time_budget import GP_REF_ROWS
        from predictors.accuracy_models import feature_count, gp_likelihood_seconds

        gp_features = feature_count("gp", space)
        gp_eval_s = gp_likelihood_seconds(GP_REF_ROWS, gp_features)
    probe_s = clock() - t_start
    return Rates(batch=local_batch, full_step_s=t_full, elastic_step_s=per_phase,
                 eval_image_s=sum(per_image) / len(per_image), eval_subnet_s=sum(fixed) / len(fixed),
                 probe_s=probe_s, threads=torch.get_num_threads(), gp_eval_s=gp_eval_s, gp_features=gp_features)


__all__ = ["measure_rates"]
