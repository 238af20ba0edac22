"""Training memory of ProxylessNAS' binarized paths against a DARTS-style weighted sum, side by side.

Method: the activation memory of a training step is what the forward pass keeps for backward. Each variant's
forward runs under `torch.autograd.graph.saved_tensors_hooks`, and the bytes of every distinct storage saved
for backward are summed (`specialize.proxyless.saved_memory.saved_tensor_bytes`): deterministic, allocator-free,
the same on every run and device. Weights, gradients and optimizer state are not counted (identical for every
variant of the same over-parameterized net); saved references to the parameters themselves are left out too.

Same net, same batch, same resolution for every row:
- over-parameterized ProxylessNAS net (space proxyless-w1.3-small, MBConv k3/5/7 x e3/6 + zero per block):
  `binarized-single` (weight step: one sampled path per block), `binarized-two-path` (architecture step: two
  sampled paths, one active, gate gradients by recomputation), each against the plain net of the very same path;
  `weighted-sum` (DARTS: every candidate runs, outputs mixed by softmax(alpha)) against the largest single path;
  and the weighted sum's growth with the number of candidates per block (2, 4, 6);
- the once-for-all supernet (ProxylessNAS backend over a supernet): the binarized two-path architecture step
  (weights frozen) against a plain training step of the same active subnet.

Usage: python bench/proxyless_memory.py [--batch 32] [--res 32]   (writes bench/results/proxyless_memory.json)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from elastic.spaces import get_space
from elastic.supernet import Supernet
from specialize.proxyless.gates import mixed_ops, set_mode
from specialize.proxyless.overparam import OverParamNet
from specialize.proxyless.saved_memory import saved_tensor_bytes
from specialize.proxyless.supernet_search import SupernetAlphas, gated_forward, search_mode


def _mb(b: int) -> float:
    return round(b / 2**20, 2)


def overparam_rows(space, x, y, kernels, expands):
    net = OverParamNet(space, x.shape[-1], kernels=kernels, expands=expands, zero=True)
    net.train()

    def measure(mode: str) -> int:
        set_mode(net, mode, torch.Generator().manual_seed(0))
        b, loss = saved_tensor_bytes(lambda: F.cross_entropy(net(x), y), exclude=list(net.parameters()))
        loss.backward()
        net.zero_grad(set_to_none=True)
        return b

    out = {"candidates_per_block": max(len(m) for m in mixed_ops(net))}
    for mode in ("single", "two_path"):
        b = measure(mode)
        for m in mixed_ops(net):
            m.fix(m.last_active)
        base = measure("fixed")
        out[f"binarized_{mode}_mb"] = _mb(b)
        out[f"same_path_static_{mode}_mb"] = _mb(base)
        out[f"binarized_{mode}_ratio"] = round(b / base, 3)
    out["weighted_sum_mb"] = _mb(measure("weighted"))
    for m in mixed_ops(net):
        zero = "zero" in m.names
        m.fix(len(m) - 2 if zero else len(m) - 1)   # the largest MBConv candidate everywhere
    largest = measure("fixed")
    out["largest_path_mb"] = _mb(largest)
    out["weighted_over_largest_path"] = round(out["weighted_sum_mb"] / _mb(largest), 3)
    del net
    return out


def supernet_row(space, x, y):
    torch.manual_seed(0)
    sn = Supernet(space)
    for p in sn.parameters():
        p.requires_grad_(False)
    alphas = SupernetAlphas(space, (x.shape[-1],))
    rows = []
    params = list(sn.parameters())
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        with search_mode(sn):
            b, (logits, arch, _) = saved_tensor_bytes(lambda: gated_forward(sn, alphas, x, gen, False), params)
            F.cross_entropy(logits, y).backward()
            sn.set_active(arch)
            for p in params:   # the same subnet's plain training step (batch statistics, dropout off as well)
                p.requires_grad_(True)
            base, loss = saved_tensor_bytes(lambda: F.cross_entropy(sn(x), y), params)
            loss.backward()
            sn.zero_grad(set_to_none=True)
            for p in params:
                p.requires_grad_(False)
        rows.append({"arch": arch.summary(), "binarized_two_path_mb": _mb(b), "same_subnet_training_mb": _mb(base),
                     "ratio": round(b / base, 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space = get_space("proxyless-w1.3-small", n_classes=10)
    x, y = torch.randn(args.batch, 3, args.res, args.res), torch.randint(0, 10, (args.batch,))
    t0 = time.time()
    result = {"method": "bytes of distinct storages saved for backward (saved_tensors_hooks), per training step",
              "space": space.name, "batch": args.batch, "resolution": args.res}
    result["overparam_full"] = overparam_rows(space, x, y, (3, 5, 7), (3, 6))
    growth = []
    for kernels, expands in (((7,), (3, 6)), ((5, 7), (3, 6)), ((3, 5, 7), (3, 6))):
        r = overparam_rows(space, x, y, kernels, expands)
        growth.append({"mbconv_candidates": len(kernels) * len(expands), "weighted_sum_mb": r["weighted_sum_mb"],
                       "binarized_single_mb": r["binarized_single_mb"],
                       "binarized_two_path_mb": r["binarized_two_path_mb"], "largest_path_mb": r["largest_path_mb"]})
    result["growth_with_candidates"] = growth
    result["supernet_two_path"] = supernet_row(space, x, y)
    result["seconds"] = round(time.time() - t0, 1)

    f = result["overparam_full"]
    print(f"saved activations per training step, {space.name}, batch {args.batch}, {args.res}px "
          f"({f['candidates_per_block']} candidates per block incl. zero)")
    print(f"  binarized, weight step (1 path):      {f['binarized_single_mb']:8.1f} MB  = "
          f"{f['binarized_single_ratio']:.3f} x the same single path as a plain net")
    print(f"  binarized, arch step (2 paths, 1 on): {f['binarized_two_path_mb']:8.1f} MB  = "
          f"{f['binarized_two_path_ratio']:.3f} x the same single path as a plain net")
    print(f"  DARTS weighted sum (all paths):       {f['weighted_sum_mb']:8.1f} MB  = "
          f"{f['weighted_over_largest_path']:.2f} x the LARGEST single path ({f['largest_path_mb']:.1f} MB)")
    print("  growth with MBConv candidates per block (weighted sum | binarized single | binarized two-path):")
    for g in growth:
        print(f"    {g['mbconv_candidates']} candidates: {g['weighted_sum_mb']:8.1f} | {g['binarized_single_mb']:7.1f} | "
              f"{g['binarized_two_path_mb']:7.1f} MB")
    for r in result["supernet_two_path"]:
        print(f"  supernet arch step {r['arch'][:18]}..: {r['binarized_two_path_mb']:.1f} MB = {r['ratio']:.3f} x "
              f"a plain training step of the same subnet ({r['same_subnet_training_mb']:.1f} MB)")
    out = Path(__file__).resolve().parent / "results" / "proxyless_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"written {out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
