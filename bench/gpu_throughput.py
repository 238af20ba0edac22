"""Full-stage training throughput on one device: precision (fp32 / bf16 / fp16) x layout (channels-last / NCHW).

The full stage trains the space's largest subnet. Each configuration runs the training step the trainer runs
(`ofa.training.loop`: autocast, cross-entropy with label smoothing, SGD with Nesterov momentum, fp16 through a
gradient scaler, one host sync a step) on a fixed random batch already on the device, so the figures are the
network's compute, not the data path. The configurations are timed in interleaved rounds (every round times each
once, after warm-up steps), so a clock or thermal drift hits them all alike; the median round is reported, and
ratios against fp32 channels-last are taken within this one run.

    python bench/gpu_throughput.py --out bench/results/gpu_throughput.json            # a GPU: 224 px, batch 256
    python bench/gpu_throughput.py --dry-run --out /tmp/t.json                        # CPU: tiny sizes, same code
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def build(space_name: str, resolution: int, n_classes: int, channels_last: bool, device: torch.device):
    from elastic.spaces import get_space
    from elastic.supernet import Supernet

    space = get_space(space_name, n_classes=n_classes)
    torch.manual_seed(0)
    net = Supernet(space)
    net.set_active(space.largest(r=resolution))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return net.to(memory_format=fmt).to(device).train()


def step_fn(net, x, y, precision: str, device: torch.device):
    from ofa.training.precision import autocast, grad_scaler

    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-5)
    scaler = grad_scaler(device, precision)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
        (loss if scaler is None else scaler.scale(loss)).backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads).float()
        _, value = torch.stack([norm, loss.detach().float()]).tolist()   # the trainer's one host sync a step
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        return value

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(configs, *, space: str, resolution: int, batch: int, n_classes: int, device: torch.device,
            warmup: int, steps: int, rounds: int) -> list[dict]:
    runners = []
    for precision, cl in configs:
        net = build(space, resolution, n_classes, cl, device)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 3, resolution, resolution, generator=g)
        x = x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format).to(device)
        y = torch.randint(0, n_classes, (batch,), generator=g).to(device)
        step = step_fn(net, x, y, precision, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step()
        sync(device)
        runners.append({"precision": precision, "channels_last": cl, "step": step, "round_ips": [],
                        "peak_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda"
                        else None})
    for _ in range(rounds):
        for r in runners:
            sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                r["last_loss"] = r["step"]()
            sync(device)
            r["round_ips"].append(steps * batch / (time.perf_counter() - t))
    return [{"precision": r["precision"], "channels_last": r["channels_last"],
             "images_per_s": statistics.median(r["round_ips"]), "round_images_per_s": r["round_ips"],
             "step_ms": 1000 * batch / statistics.median(r["round_ips"]), "peak_memory_gib": r["peak_gib"],
             "last_loss": r["last_loss"]} for r in runners]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script, measures nothing")
    ap.add_argument("--space", default="mbv3-w1.0")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    if a.dry_run:
        a.space, a.resolution, a.batch, a.classes, a.warmup, a.steps, a.rounds = "mbv3-w1.0-small", 32, 4, 10, 1, 1, 2
        device = torch.device("cpu")
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU here; use --dry-run to check the script on the CPU")
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    configs = [(p, cl) for p in a.precisions.split(",") for cl in (True, False)]
    rows = measure(configs, space=a.space, resolution=a.resolution, batch=a.batch, n_classes=a.classes,
                   device=device, warmup=a.warmup, steps=a.steps, rounds=a.rounds)
    base = next(r for r in rows if r["precision"] == "fp32" and r["channels_last"])["images_per_s"]
    for r in rows:
        r["vs_fp32_channels_last"] = r["images_per_s"] / base
    doc = {"what": "full-stage training throughput (largest subnet), synthetic batch on the device",
           "dry_run": a.dry_run, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
           platform.processor() or platform.machine(), "torch": torch.__version__, "space": a.space,
           "resolution": a.resolution, "batch": a.batch, "classes": a.classes, "warmup": a.warmup,
           "steps_per_round": a.steps, "rounds": a.rounds, "date": time.strftime("%Y-%m-%d"), "results": rows,
           "best": max(rows, key=lambda r: r["images_per_s"])}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2))
    for r in rows:
        print(f"{r['precision']:>4} {'channels-last' if r['channels_last'] else 'NCHW         '} "
              f"{r['images_per_s']:9.1f} img/s  x{r['vs_fp32_channels_last']:.2f}")
    return doc


if __name__ == "__main__":
    main()
