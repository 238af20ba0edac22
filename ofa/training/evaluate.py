"""Accuracy of subnets: extract the static net, recalibrate its BN on training images, evaluate a split.

BN statistics accumulated while training a supernet belong to no subnet in particular, so (as in OFA) every
subnet's BN running statistics are re-estimated on a few training batches at its resolution before it is
evaluated. The supernet itself is left untouched (the extracted net is a copy).
"""
from __future__ import annotations

import random
from typing import Any, Sequence

import torch

from elastic.arch import Arch
from elastic.spaces import SpaceSpec
from ofa.data import DataBundle

# Images per evaluation batch. Measured 2026-12-04 on a main job's supernet (2 EPYC cores, 40 of its subnets at 24-32
# px, each labelled at every size in turn, `python3 bench/label_batch_size.py --run RUN`): a whole accuracy label
# (extraction, BN recalibration on 500 images, 1656 images evaluated) took 0.77 s a batch of 250, 0.80 s of 200,
# 0.83 s of 128 and 0.84 s of 500, with identical outcomes.
EVAL_BATCH = 250


def calibration_batches(bundle: DataBundle, resolution: int, n_images: int, batch_size: int = 250,
                        device: torch.device | str = "cpu", seed: int = 0) -> list[torch.Tensor]:
    """The first `n_images` of a seeded shuffle of the training split, normalized, at `resolution`."""
    n_images = min(n_images, len(bundle.train))
    out, seen = [], 0
    for x, _ in bundle.loader("train", batch_size=min(batch_size, n_images), resolution=resolution, shuffle=True,
                              seed=seed, device=device):
        out.append(x[: n_images - seen])
        seen += len(out[-1])
        if seen >= n_images:
            break
    return out


@torch.no_grad()
def correct_per_image(net: torch.nn.Module, bundle: DataBundle, split: str, resolution: int, batch_size: int = EVAL_BATCH,
                      device: torch.device | str = "cpu", limit: int | None = None) -> torch.Tensor:
    """Whether `net` classifies each image of `split` (its first `limit`) correctly, in order: a bool tensor."""
    net.eval()
    out = [net(x).argmax(1).cpu() == y
           for x, y in bundle.loader(split, batch_size=batch_size, resolution=resolution, limit=limit, device=device)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def accuracy(net: torch.nn.Module, bundle: DataBundle, split: str, resolution: int, batch_size: int = EVAL_BATCH,
             device: torch.device | str = "cpu", limit: int | None = None) -> float:
    correct = correct_per_image(net, bundle, split, resolution, batch_size, device, limit)
    return int(correct.sum()) / max(len(correct), 1)


def recalibrated(supernet, arch: Arch, bundle: DataBundle, calib_images: int = 2000,
                 device: torch.device | str = "cpu", _calib_cache: dict | None = None) -> torch.nn.Module:
    """`arch` extracted from `supernet` with its BN statistics re-estimated on `calib_images` training images
    (the same images for every subnet at a resolution; `_calib_cache` keeps them between calls)."""
    from elastic.bn_calibration import recalibrate_bn

    net = supernet.extract(arch).to(device)
    cache = {} if _calib_cache is None else _calib_cache
    if arch.r not in cache:
        cache[arch.r] = calibration_batches(bundle, arch.r, calib_images, device=device)
    recalibrate_bn(net, cache[arch.r])
    return net


def evaluate_arch(supernet, arch: Arch, bundle: DataBundle, split: str = "val", calib_images: int = 2000,
                  device: torch.device | str = "cpu", limit: int | None = None,
                  _calib_cache: dict | None = None) -> float:
    net = recalibrated(supernet, arch, bundle, calib_images, device, _calib_cache)
    return accuracy(net, bundle, split, arch.r, device=device, limit=limit)


def subnets_to_report(space: SpaceSpec, n_random: int, seed: int = 0) -> list[tuple[str, Arch]]:
    """Largest, smallest and `n_random` random subnets (seeded: the same archs at every stage end)."""
    rng = random.Random(seed)
    out = [("largest", space.largest()), ("smallest", space.smallest())]
    out += [(f"random{i}", space.sample(rng)) for i in range(n_random)]
    return out


def evaluate_subnets(supernet, space: SpaceSpec, bundle: DataBundle, archs: Sequence[tuple[str, Arch]],
                     split: str = "val", calib_images: int = 2000, device: torch.device | str = "cpu",
                     limit: int | None = None) -> list[dict[str, Any]]:
    cache: dict = {}
    rows = []
    for name, arch in archs:
        acc = evaluate_arch(supernet, arch, bundle, split, calib_images, device, limit, cache)
        rows.append({"name": name, "arch": arch.to_dict(), "summary": arch.summary(), "acc": acc})
    return rows
