"""Training-step speed of the elastic supernet vs the extracted static net, side by side in one process.

For each space/resolution and arch (largest, a random one): one step = forward + backward (no optimizer) at
batch 64 in train mode; the supernet (arch active) and the extracted StaticNet are timed interleaved, `--repeats`
times each after warm-up; the ratio of medians is printed (target <= 1.05), for wall time and for this process's CPU time (the
latter is the steadier figure on a shared machine). Extraction time is measured too.
Writes bench/results/elastic_speed.json.

    python3 bench/elastic_speed.py [--repeats 7] [--batch 64] [--threads 1] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from elastic import get_space
from elastic.supernet import Supernet

CASES = [("mbv3-w1.0-small", 32), ("proxyless-w1.3-small", 32), ("mbv3-w1.0", 128)]


def step_time(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one forward + backward."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    model(x).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c


def bench_pair(net: Supernet, arch, batch: int, repeats: int, warmup: int, device: torch.device) -> dict:
    net.set_active(arch)
    net.train()
    static = net.extract(arch).train()
    x = torch.randn(batch, 3, arch.r, arch.r, device=device).contiguous(memory_format=torch.channels_last)
    sup_t, sta_t, sup_c, sta_c = [], [], [], []
    for i in range(warmup + repeats):
        # alternate the order so drift and cache effects hit both equally
        order = [(net, sup_t, sup_c), (static, sta_t, sta_c)]
        for model, times, cpu in (order if i % 2 == 0 else order[::-1]):
            model.zero_grad(set_to_none=True)
            t, c = step_time(model, x, device)
            if i >= warmup:
                times.append(t)
                cpu.append(c)
    extract = []
    for _ in range(5):
        t = time.perf_counter()
        net.extract(arch)
        extract.append(time.perf_counter() - t)
    sup, sta = statistics.median(sup_t), statistics.median(sta_t)
    sup_cpu, sta_cpu = statistics.median(sup_c), statistics.median(sta_c)
    return {"supernet_ms": sup * 1e3, "static_ms": sta * 1e3, "ratio": sup / sta,
            "supernet_cpu_ms": sup_cpu * 1e3, "static_cpu_ms": sta_cpu * 1e3, "cpu_ratio": sup_cpu / sta_cpu,
            "extract_ms_median": statistics.median(extract) * 1e3, "extract_ms_min": min(extract) * 1e3,
            "supernet_all_ms": [t * 1e3 for t in sup_t], "static_all_ms": [t * 1e3 for t in sta_t]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--spaces", default=",".join(f"{s}@{r}" for s, r in CASES))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "elastic_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    results = []
    for item in args.spaces.split(","):
        name, r = item.split("@")
        space = get_space(name)
        net = Supernet(space).to(device)
        archs = {"largest": space.largest(int(r)), "random": space.sample(random.Random(0), r=[int(r)])}
        for label, arch in archs.items():
            res = bench_pair(net, arch, args.batch, args.repeats, args.warmup, device)
            res.update(space=name, r=int(r), arch=label, arch_json=arch.to_dict())
            results.append(res)
            print(f"{name:22s} r={r:>3s} {label:8s} supernet {res['supernet_ms']:8.1f} ms  static "
                  f"{res['static_ms']:8.1f} ms  ratio {res['ratio']:.3f} (CPU-time ratio {res['cpu_ratio']:.3f})  extract {res['extract_ms_median']:.1f} ms "
                  f"(min {res['extract_ms_min']:.1f})", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"batch": args.batch, "repeats": args.repeats, "threads": args.threads, "device": str(device),
               "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "results": results}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
