"""ImageNet-style image folders streamed from disk, with the input pipeline of the original Once-for-All code.

`--data imagefolder:PATH` names one: `PATH/train/` + `PATH/val/` (ImageNet's layout; `test/` is accepted for
`val/`, and with all three `val/` is the validation and `test/` the test split), or one tree of class folders
that is split reproducibly. Images are decoded by DataLoader workers batch by batch, never all held in memory.

Splits: `train` (BN recalibration images), `val` (carved from train with a seeded permutation unless the folder
has both val/ and test/; what an accuracy predictor is fit on), `test` (ImageNet's val/ folder: what is reported).
With one tree, a tenth (seeded) is the test split. `val` and `test` are kept in a seeded order, so that a
`limit` or `eval_size` takes a random subset of every class rather than the first classes.

Transforms, as in the original (`ImagenetDataProvider` and its tutorial's `calib_bn`), at each resolution r:
- evaluation (`val`, `test`): resize the shorter side to ceil(r / 0.875) (bilinear), center crop r, ImageNet
  mean/std;
- BN recalibration (`train`): RandomResizedCrop(r), horizontal flip, ColorJitter(brightness 32/255, saturation
  0.5), ImageNet mean/std -- seeded per image, so the statistics do not depend on the number of workers.
  `calib="eval"` uses the evaluation transform instead.
Dataset items (`bundle.train[i]`, used by generic code such as the training loop) are the evaluation crop at
the native size (224 px) in [0, 1], as every `DataBundle` item is.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from elastic.errors import OFAError
from ofa.data import DataBundle

PREFIX = "imagefolder:"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875
NATIVE = 224
CALIB_TRANSFORMS = ("train", "eval")
EVAL_TRANSFORM_TEXT = "resize the shorter side to ceil(r / 0.875) (bilinear), center crop r, ImageNet mean/std"
CALIB_TRANSFORM_TEXT = ("RandomResizedCrop(r), horizontal flip, ColorJitter(brightness=32/255, saturation=0.5), "
                        "ImageNet mean/std, seeded per image")
CONFIG_FIELDS = {"name", "root", "val_size", "split_seed", "subset_size", "eval_size", "image_size", "calib"}
DESCRIPTION_FIELDS = {"dataset", "n_classes", "classes", "mean", "std", "resolutions", "transforms", "note"}


def eval_transform(r: int, normalize: bool = True):
    from torchvision import transforms as T

    steps = [T.Resize(int(math.ceil(r / CROP_PCT))), T.CenterCrop(r), T.ToTensor()]
    return T.Compose(steps + ([T.Normalize(MEAN, STD)] if normalize else []))


def calib_transform(r: int):
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(r), T.RandomHorizontalFlip(),
                      T.ColorJitter(brightness=32.0 / 255.0, saturation=0.5), T.ToTensor(), T.Normalize(MEAN, STD)])


class FolderImages(Dataset):
    """(path, label) samples decoded on demand; `seed` makes a random transform reproducible per image."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform, seed: int | None = None):
        self.samples, self.transform, self.seed = list(samples), transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[i]
        try:
            with open(path, "rb") as fh:
                img = Image.open(fh).convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise OFAError(f"cannot read image {path} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                           "remove or replace the file") from None
        if self.seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + i) % (2 ** 63))
            return self.transform(img), label

    def subset(self, idx: Sequence[int] | np.ndarray) -> "FolderImages":
        return FolderImages([self.samples[int(i)] for i in idx], self.transform, self.seed)

    def with_transform(self, transform, seed: int | None = None) -> "FolderImages":
        return FolderImages(self.samples, transform, seed)


class FolderLoader:
    """Batches of one split at one resolution, decoded by `workers` processes; re-iterable, reports progress."""

    def __init__(self, ds: FolderImages, batch_size: int, shuffle: bool, seed: int, workers: int, progress: bool,
                 label: str, device: torch.device | str | None = None):
        self.ds, self.batch_size, self.shuffle, self.seed = ds, batch_size, shuffle, seed
        self.workers, self.progress, self.label = workers, progress, label
        self.device = None if device is None else torch.device(device)

    def __len__(self) -> int:
        return (len(self.ds) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.ds)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist() if self.shuffle
                 else list(range(n)))
        kw: dict[str, Any] = {"num_workers": self.workers,
                              "pin_memory": self.device is not None and self.device.type == "cuda"}
        if self.workers:
            kw["prefetch_factor"] = 2
        loader = DataLoader(self.ds, batch_size=self.batch_size, sampler=order, **kw)
        t0 = last = time.perf_counter()
        seen = 0
        try:
            for x, y in loader:
                seen += len(y)
                now = time.perf_counter()
                if self.progress and (now - last > 10 or seen == n):
                    last = now
                    print(f"  {self.label}: {seen}/{n} images, {seen / max(now - t0, 1e-9):.0f} img/s",
                          file=sys.stderr, flush=True)
                if self.device is not None:
                    x = x.to(self.device, non_blocking=True)
                yield x.contiguous(memory_format=torch.channels_last), y
        except OFAError as exc:  # raised in a worker: DataLoader wraps the message in the worker's traceback
            raise OFAError(str(exc).strip().splitlines()[-1].split("OFAError: ", 1)[-1]) from None


@dataclass
class ImageFolderBundle(DataBundle):
    """A `DataBundle` whose loaders decode images from disk with the original transform at each resolution."""

    workers: int = 0
    progress: bool = False
    calib: str = "train"

    def loader(self, split: str, batch_size: int = 256, resolution: int | None = None, shuffle: bool = False,
               seed: int = 0, limit: int | None = None, device: torch.device | str | None = None) -> FolderLoader:
        ds = self.split(split)
        if limit is not None and limit < len(ds):
            ds = ds.subset(range(limit))
        r = int(resolution or self.native_res)
        if split == "train" and self.calib == "train":
            ds, what = ds.with_transform(calib_transform(r), seed=seed), "calibration transform"
        else:
            ds, what = ds.with_transform(eval_transform(r)), "evaluation transform"
        return FolderLoader(ds, batch_size, shuffle, seed, self.workers, self.progress,
                            f"{self.name} {split} at {r} px ({what})", device)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _scan(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, index = find_classes(str(folder))
        samples = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as exc:
        raise OFAError(f"{folder} is not a usable image folder (one sub-folder of images per class): "
                       f"{str(exc).splitlines()[0]}") from None
    return classes, samples


def _count(value: int | float, n: int, what: str) -> int:
    k = int(round(value * n)) if isinstance(value, float) and value < 1 else int(value)
    if not 0 < k < n:
        raise OFAError(f"{what} {value!r} must leave images for both splits of {n} images")
    return k


def get_imagefolder(root: str | Path, *, val_size: int | float | None = None, split_seed: int = 0,
                    subset_size: int | None = None, eval_size: int | None = None, image_size: int = NATIVE,
                    calib: str = "train", workers: int | None = None, progress: bool = False) -> ImageFolderBundle:
    """An ImageNet-style folder as a bundle (see the module doc for the splits); `config` rebuilds it."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise OFAError(f"image folder '{root}' does not exist or is not a directory")
    if calib not in CALIB_TRANSFORMS:
        raise OFAError(f"unknown calibration transform '{calib}'; allowed: {', '.join(CALIB_TRANSFORMS)}")
    path = path.resolve()
    rng = lambda k: np.random.default_rng(split_seed + k)  # noqa: E731
    held = [path / s for s in ("val", "test") if (path / s).is_dir()]
    if (path / "train").is_dir():
        if not held:
            raise OFAError(f"{path} has train/ but neither val/ nor test/; add one, or point at one tree of classes")
        classes, train = _scan(path / "train")
        splits = []
        for folder in held:
            cl, samples = _scan(folder)
            if cl != classes:
                raise OFAError(f"{folder} has {len(cl)} class folders, {path / 'train'} has {len(classes)}: "
                               "they must hold the same classes")
            splits.append([samples[i] for i in rng(1).permutation(len(samples))])
        if len(splits) == 2:
            val, test = splits
        else:
            test = splits[0]
            perm = rng(0).permutation(len(train))
            n_val = _count(min(10000, max(1, len(train) // 10)) if val_size is None else val_size, len(train),
                           "val_size")
            val, train = [train[i] for i in perm[:n_val]], [train[i] for i in perm[n_val:]]
    else:
        classes, everything = _scan(path)
        perm = rng(1).permutation(len(everything))
        n_test = max(1, len(everything) // 10)
        test, rest = [everything[i] for i in perm[:n_test]], [everything[i] for i in perm[n_test:]]
        n_val = _count(0.1 if val_size is None else val_size, len(rest), "val_size")
        perm = rng(0).permutation(len(rest))
        val, train = [rest[i] for i in perm[:n_val]], [rest[i] for i in perm[n_val:]]
    for value, what in ((subset_size, "subset size"), (eval_size, "eval size")):
        if value is not None and value < 1:
            raise OFAError(f"{what} must be >= 1, got {value}")
    if subset_size is not None:
        train = train[:subset_size]
    if eval_size is not None:
        val, test = val[:eval_size], test[:eval_size]
    native = eval_transform(int(image_size), normalize=False)
    config = {"name": "imagefolder", "root": str(path), "val_size": val_size, "split_seed": split_seed,
              "subset_size": subset_size, "eval_size": eval_size, "image_size": int(image_size), "calib": calib}
    return ImageFolderBundle(
        name=path.name, train=FolderImages(train, native), val=FolderImages(val, native),
        test=FolderImages(test, native), n_classes=len(classes),
        native_res=int(image_size), mean=MEAN, std=STD, flip=True, config=config, source=str(path),
        classes=list(classes), workers=default_workers() if workers is None else int(workers), progress=progress,
        calib=calib)


def has_images(config: dict[str, Any]) -> bool:
    """False for a data description without images (an imported run before `--data imagefolder:PATH`)."""
    return not (isinstance(config, dict) and config.get("name") == "imagefolder" and not config.get("root"))


def bundle_from_config(config: dict[str, Any], workers: int | None = None, progress: bool = False) -> ImageFolderBundle:
    """The bundle a stored imagefolder config (a run directory's data.json) names."""
    unknown = sorted(set(config) - CONFIG_FIELDS - DESCRIPTION_FIELDS)
    if unknown:
        raise OFAError(f"imagefolder data config has unknown field(s) {', '.join(unknown)}; "
                       f"allowed: {', '.join(sorted(CONFIG_FIELDS | DESCRIPTION_FIELDS))}")
    if not config.get("root"):
        what = config.get("dataset") or "an image dataset"
        raise OFAError(f"the run's data ({what}) is described, but no images are recorded: import the supernet "
                       "with --data imagefolder:PATH (train/ and val/ folders of class sub-folders), or give --data "
                       "to `ofa extract` / `ofa specialize`")
    return get_imagefolder(config["root"], val_size=config.get("val_size"), split_seed=int(config.get("split_seed", 0)),
                           subset_size=config.get("subset_size"), eval_size=config.get("eval_size"),
                           image_size=int(config.get("image_size", NATIVE)), calib=config.get("calib", "train"),
                           workers=workers, progress=progress)


def load_data_arg(spec: Any, *, n_classes: int | None = None, workers: int | None = None, progress: bool = False,
                  eval_size: int | None = None) -> DataBundle | None:
    """A `--data` value: `imagefolder:PATH`, anything `ofa.data.get_data` takes (a name or a folder path), or a
    `DataBundle`; with `n_classes` (the network's head) a data set of another class count is an OFAError."""
    if spec is None:
        return None
    if isinstance(spec, DataBundle):
        bundle = spec
    elif not isinstance(spec, str) or not spec.strip():
        raise OFAError("--data must be imagefolder:PATH or a dataset name (fashion-mnist, digits, cifar10, cifar100)")
    elif spec.startswith(PREFIX):
        bundle = get_imagefolder(spec[len(PREFIX):], eval_size=eval_size, workers=workers, progress=progress)
    else:
        from ofa.data import get_data

        bundle = get_data(spec, eval_size=eval_size)
    if n_classes is not None and bundle.n_classes != n_classes:
        raise OFAError(f"data {bundle.source or bundle.name} has {bundle.n_classes} classes but the network's head "
                       f"has {n_classes}: give images of the {n_classes} classes it was trained on")
    return bundle


def description(n_classes: int, resolutions: Sequence[int], classes: Sequence[str] = (),
                dataset: str | None = None) -> dict[str, Any]:
    """data.json of an imported run: what the weights were trained on and how their input is prepared."""
    return {"name": "imagefolder", "root": None, "dataset": dataset, "n_classes": int(n_classes),
            "classes": list(classes), "mean": list(MEAN), "std": list(STD), "resolutions": list(resolutions),
            "transforms": {"eval": EVAL_TRANSFORM_TEXT, "calib": CALIB_TRANSFORM_TEXT}}


def imagenet_classes() -> list[str]:
    """ImageNet-1k's class names in index order (torchvision's list; index i is the i-th sorted synset folder)."""
    from torchvision.models import MobileNet_V3_Large_Weights

    return list(MobileNet_V3_Large_Weights.IMAGENET1K_V1.meta["categories"])


__all__ = ["CROP_PCT", "FolderImages", "FolderLoader", "ImageFolderBundle", "MEAN", "PREFIX", "STD",
           "bundle_from_config", "calib_transform", "description", "eval_transform", "get_imagefolder", "has_images",
           "imagenet_classes", "load_data_arg"]
