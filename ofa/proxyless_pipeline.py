"""The `ofa proxyless-search` pipeline: the original ProxylessNAS search from scratch on a dataset, then train the
found net (`proxyless_search(...) -> summary`).

An over-parameterized net (MBConv k3/5/7 x e3/6 + zero candidates per searchable block of the space) is trained
with binarized paths, alternating weight steps (train split) and architecture steps (val split) under the
device's expected-latency loss (specialize.proxyless.search_standalone); the argmax net (meeting the budget) is
then built as a plain StaticNet and trained from scratch, and its test accuracy and predicted latency are
reported. Everything lands in `out`: `result.json` (search + training numbers, per-step history) and the trained
net (`model/`, loadable with `ofa.load` when the found net is an arch of the space; otherwise
`model.safetensors` + `net_spec.json`).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from elastic.errors import OFAError


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise OFAError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not vals:
        raise OFAError(f"{what} must list at least one value, got {text!r}")
    return vals


def _cycle(bundle, split: str, batch_size: int, resolution: int, seed: int,
           device: torch.device | None = None) -> Iterator:
    epoch = 0
    while True:
        for x, y in bundle.loader(split, batch_size=batch_size, resolution=resolution, shuffle=True,
                                  seed=seed + 1000 * epoch, device=device):
            yield x, (y if device is None else y.to(device, non_blocking=True))
        epoch += 1


def train_static(net: torch.nn.Module, batches: Iterator, steps: int, lr: float, weight_decay: float = 4e-5,
                 label_smoothing: float = 0.1, log: Callable[[int, float], None] | None = None) -> list[float]:
    """Train a static net from scratch for `steps` SGD steps (timm optimizer, cosine schedule with warmup)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    opt = create_optimizer_v2(net, "sgd", lr=lr, weight_decay=weight_decay, momentum=0.9)
    sched = CosineLRScheduler(opt, t_initial=max(steps, 1), warmup_t=max(1, steps // 20), warmup_lr_init=lr * 0.1)
    losses = []
    net.train()
    for step in range(steps):
        x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y, label_smoothing=label_smoothing)
        loss.backward()
        opt.step()
        sched.step_update(step + 1)
        losses.append(float(loss.detach()))
        if log is not None:
            log(step, losses[-1])
    return losses


def proxyless_search(*, space: str = "proxyless-w1.3-small", data: str | None = None, device: str = "pixel1",
                     budget: str = "8ms", resolution: int | None = None, kernels: str = "3,5,7", expands: str = "3,6",
                     zero: bool = True, batch_size: int = 64, warmup_steps: int = 100, search_steps: int = 300,
                     arch_every: int = 1, weight_lr: float = 0.05, arch_lr: float = 0.02, form: str = "mul",
                     beta: float = 0.6, lam: float = 0.1, estimator: str = "two_path", one_sided: bool = True,
                     budget_rounds: int = 3,
                     budget_steps: int = 50, train_steps: int = 500, train_lr: float = 0.1,
                     subset: int | None = None, eval_size: int | None = None, out: str | Path | None = None,
                     seed: int = 0, threads: int | None = None, compute_device: str | None = None,
                     progress: Callable[[str, int, int, dict], None] | None = None) -> dict[str, Any]:
    """Run the standalone search and train the found net; returns (and writes to `out`) the result dict.

    `device` is the latency profile; `compute_device` (auto, cpu, cuda, cuda:N) where the search and the training
    run. The saved net is on the CPU."""
    from elastic.spaces import get_space
    from elastic.static_net import StaticNet
    from ofa import atomic
    from ofa.data import get_data
    from ofa.training.distributed import pick_device
    from ofa.training.evaluate import accuracy
    from predictors.latency import get_latency_predictor
    from specialize.budget import parse_latency
    from specialize.proxyless import OpLatencyTable, OverParamNet, StandaloneConfig, search_standalone

    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = pick_device(compute_device)
    torch.manual_seed(seed)
    target = parse_latency(budget)
    if batch_size < 1 or train_steps < 0:
        raise OFAError("--batch-size must be >= 1 and --train-steps >= 0")
    cfg = StandaloneConfig(target=target, warmup_steps=warmup_steps, search_steps=search_steps,
                           arch_every=arch_every, weight_lr=weight_lr, arch_lr=arch_lr, form=form, beta=beta,
                           lam=lam, estimator=estimator, one_sided=one_sided, budget_rounds=budget_rounds,
                           budget_steps=budget_steps,
                           seed=seed)
    ks, es = _ints(kernels, "--kernels"), _ints(expands, "--expands")
    bad_k = [k for k in ks if k % 2 == 0 or k < 1]
    if bad_k:
        raise OFAError(f"--kernels must be odd positive sizes, got {list(ks)}")
    bundle = get_data(data, subset_size=subset, eval_size=eval_size, split_seed=seed)
    sp = get_space(space, n_classes=bundle.n_classes)
    if sp.family != "proxyless":
        raise OFAError(f"proxyless-search runs on a ProxylessNAS space (proxyless-w1.3, proxyless-w1.3-small), "
                       f"not {space}")
    r = int(resolution or max(sp.resolutions))
    predictor = get_latency_predictor(device, sp)
    net = OverParamNet(sp, r, ks, es, zero).to(dev)
    table = OpLatencyTable(sp, predictor, r, net.choices)
    cheapest = table.fixed + sum(float(lat.min()) for lat in table.op_latency)
    if cheapest > target:
        raise OFAError(f"latency budget {budget} cannot be met on {device}: the fastest net of these candidates at "
                       f"{r}px costs {cheapest:.3g} {table.unit}; raise the budget or lower --resolution")
    t0 = time.time()
    result = search_standalone(net, table, _cycle(bundle, "train", batch_size, r, seed, dev),
                               _cycle(bundle, "val", batch_size, r, seed + 7, dev), cfg, progress)
    search_s = time.time() - t0
    del net
    static = StaticNet(result.net_spec, arch=result.arch).to(dev)
    t1 = time.time()
    losses = train_static(static, _cycle(bundle, "train", batch_size, r, seed + 13, dev), train_steps, train_lr,
                          log=(lambda s, l: progress("train", s, train_steps, {"ce": l})) if progress else None)
    train_s = time.time() - t1
    test_acc = accuracy(static, bundle, "test", r, device=dev) if train_steps > 0 else None
    static = static.cpu()
    summary = {
        "space": sp.name, "device": device, "budget": budget, "target": target, "unit": table.unit, "resolution": r,
        "data": bundle.config, "candidates": {"kernels": list(ks), "expands": list(es), "zero": zero},
        "search": {**result.to_dict(), "config": asdict(cfg), "seconds": search_s},
        "predicted_latency": predictor.predict_net(result.net_spec),
        "train": {"steps": train_steps, "lr": train_lr, "final_loss": losses[-1] if losses else None,
                  "seconds": train_s},
        "test_accuracy": test_acc,
        "history": result.history,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        static.eval()
        if result.arch is not None:
            from ofa.specialized import save_specialized

            save_specialized(out / "model", static, {
                "space": sp.to_dict(), "arch": result.arch.to_dict(), "n_classes": sp.n_classes, "device": device,
                "budget": budget, "predicted": {"latency_ms": summary["predicted_latency"]},
                "measured": {"test_accuracy": test_acc}, "note": result.note,
                "provenance": {"backend": "proxyless-standalone", "data": bundle.config, "seed": seed}})
            summary["model"] = str(out / "model")
        else:
            atomic.save_safetensors(out / "model.safetensors", static.state_dict())
            atomic.write_json(out / "net_spec.json", {"blocks": summary["search"]["blocks"], "resolution": r,
                                                      "space": sp.to_dict()})
            summary["model"] = str(out / "model.safetensors")
        atomic.write_json(out / "result.json", summary)
    return summary


__all__ = ["proxyless_search", "train_static"]
