"""Datasets for supernet training: train / val / test splits, held in memory where they are small.

`get_data(name)` returns a `DataBundle`: `train` (also the source of BN-recalibration images), `val` (carved from
the training set with a seeded, deterministic permutation; used for evaluation during training and predictor
fitting), `test` (kept for final reports), the number of classes, the native image size and `config` (a plain
dict: `get_data(**config)` rebuilds exactly the same splits; run directories store it as `data.json`).

Supported names: `fashion-mnist` (the IDX .gz files in /usr/share/datasets/fashion-mnist, a cache directory, or a
torchvision download when asked), `digits` (scikit-learn's 8x8 digits, always available), `cifar10`, `cifar100`
(torchvision; downloaded only with `download=True`), or a path to an ImageFolder tree (`train/` + `test/` or `val/`
sub-folders, or one tree from which a test split is carved). Grayscale images become 3 channels.

`val_from="test"` carves the validation split from the test split instead (a development set drawn like the test
images; the reported test split is the disjoint rest, and the whole training set trains). Use it where the test
split is not distributed like the training set -- Fashion-MNIST's test split scores lower than a split carved from
its training set, by 0.6 points for our subnets and 0.2-2.1 for scikit-learn models (bench/data_shift.py) -- so
that what is fit on the validation split (the accuracy predictor) predicts test accuracy.

Items are float tensors in [0, 1] of shape (3, H, W) at the native size. The network's input resolution is a
per-batch choice, as in OFA: `prepare_batch` normalizes and resizes a batch with `F.interpolate`.
"""
from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from elastic.errors import OFAError

DATASETS = ("fashion-mnist", "digits", "cifar10", "cifar100")
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
# name -> (val images carved from train, channel mean, channel std, horizontal flips are label-preserving)
_DEFAULTS: dict[str, tuple[int | float, tuple[float, ...], tuple[float, ...], bool]] = {
    "fashion-mnist": (5000, (0.286,) * 3, (0.353,) * 3, True),
    "digits": (0.15, (0.305,) * 3, (0.378,) * 3, False),
    "cifar10": (5000, (0.491, 0.482, 0.447), (0.247, 0.243, 0.262), True),
    "cifar100": (5000, (0.507, 0.487, 0.441), (0.267, 0.256, 0.276), True),
    "folder": (0.1, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("OFA_DATA_DIR") or Path.home() / ".cache" / "ofa" / "datasets")


class ImageTensorDataset(Dataset):
    """Images held as one uint8 tensor (N, H, W) or (N, H, W, C); items are float (3, H, W) in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(1)
        elif images.ndim == 4 and images.shape[-1] in (1, 3):
            images = images.permute(0, 3, 1, 2)
        self.images = images.contiguous()
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]) if x.shape[-3] == 1 else x

    def __getitem__(self, i: int):
        return self._convert(self.images[i]), int(self.labels[i])

    def __getitems__(self, idx: Sequence[int]):  # batched fetch used by DataLoader
        idx_t = torch.as_tensor(list(idx), dtype=torch.long)
        return [(self._convert(self.images[idx_t]).contiguous(), self.labels[idx_t])]

    def subset(self, idx: Sequence[int] | np.ndarray) -> "ImageTensorDataset":
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return ImageTensorDataset(self.images[idx_t], self.labels[idx_t])


def collate_batch(batch):
    """The `collate_fn` of the data loaders (`ResizedLoader` here, the trainers'): stacks (image, label) pairs into
    (images, int64 labels); a batch `ImageTensorDataset.__getitems__` fetched whole passes through."""
    if len(batch) == 1 and isinstance(batch[0][1], torch.Tensor) and batch[0][1].ndim == 1:
        return batch[0]  # already a batch, from __getitems__
    xs, ys = zip(*batch)
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)


def subset(ds: Dataset, idx: Sequence[int] | np.ndarray) -> Dataset:
    """The items `idx` of `ds`: an `ImageTensorDataset` is sliced, any other dataset (an ImageFolder, whose
    loader already yields RGB images and int labels) is wrapped in torch's `Subset`."""
    return ds.subset(idx) if isinstance(ds, ImageTensorDataset) else Subset(ds, [int(i) for i in idx])


@dataclass
class DataBundle:
    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    n_classes: int
    native_res: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    config: dict[str, Any]
    source: str = ""
    classes: list[str] = field(default_factory=list)

    def split(self, name: str) -> Dataset:
        if name not in ("train", "val", "test"):
            raise OFAError(f"unknown data split '{name}'; allowed: train, val, test")
        return getattr(self, name)

    def loader(self, split: str, batch_size: int = 256, resolution: int | None = None, shuffle: bool = False,
               seed: int = 0, limit: int | None = None, device: torch.device | str | None = None) -> "ResizedLoader":
        """Batches of (normalized images at `resolution`, labels); `limit` caps the number of images. With
        `device` the images are moved there (from pinned memory, for a GPU) before they are normalized and
        resized; the labels stay on the CPU."""
        ds = self.split(split)
        if limit is not None and limit < len(ds):
            ds = subset(ds, range(limit))
        return ResizedLoader(self, ds, batch_size, resolution, shuffle, seed, device)

    def summary(self) -> str:
        val = "val" if self.config.get("val_from", "train") == "train" else "val (from test)"
        return (f"{self.name}: {len(self.train)} train / {len(self.val)} {val} / {len(self.test)} test images, "
                f"{self.n_classes} classes, {self.native_res}px ({self.source})")


class ResizedLoader:
    """Iterates a split in batches, normalized and resized to one resolution (re-iterable)."""

    def __init__(self, bundle: DataBundle, ds: Dataset, batch_size: int, resolution: int | None, shuffle: bool,
                 seed: int, device: torch.device | str | None = None):
        self.bundle, self.ds, self.batch_size = bundle, ds, batch_size
        self.resolution, self.shuffle, self.seed = resolution, shuffle, seed
        self.device = None if device is None else torch.device(device)

    def __len__(self) -> int:
        return (len(self.ds) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(self.ds), generator=gen).tolist() if self.shuffle else list(range(len(self.ds)))
        on_gpu = self.device is not None and self.device.type == "cuda"
        loader = DataLoader(self.ds, batch_size=self.batch_size, sampler=order, collate_fn=collate_batch,
                            pin_memory=on_gpu)
        for x, y in loader:
            if self.device is not None:
                x = x.to(self.device, non_blocking=True)
            yield prepare_batch(x, self.resolution, self.bundle.mean, self.bundle.std), y


def prepare_batch(x: torch.Tensor, resolution: int | None, mean: Sequence[float], std: Sequence[float],
                  channels_last: bool = True) -> torch.Tensor:
    """Normalize a batch of [0, 1] images and resize it to `resolution` (bilinear, as OFA resizes per batch).

    The batch comes back channels-last: the networks keep that layout (see `elastic.static_net`), where CPU
    convolutions, depthwise ones above all, run several times faster than on NCHW tensors (`channels_last=False`:
    NCHW, for a model kept in that layout). It stays on its device.
    """
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x = (x - m) / s
    if resolution is not None and x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def augment_batch(x: torch.Tensor, gen: torch.Generator, flip: bool, pad: int | None = None,
                  rank: int = 0, world: int = 1) -> torch.Tensor:
    """Random translation (zero pad + crop) and optional horizontal flip, per image, for the batch at once.

    The draws are made on the CPU for the whole global batch (`world` x this batch) from `gen`; this process takes
    the positions `rank::world`, which are exactly the images a DistributedSampler hands it, so a distributed run
    augments every image as a single process with the same global batch would. The crop and flip are one gather
    on `x`'s device (a GPU batch stays there): image i's output pixel (r, c) is padded pixel (r + dy_i, c' + dx_i)
    with c' = c, or W - 1 - c where image i is flipped. The result is in channels-last layout.
    """
    n, _, h, w = x.shape
    pad = max(1, w // 8) if pad is None else pad
    global_n = n * world
    shifts = torch.randint(-pad, pad + 1, (global_n, 2), generator=gen)[rank::world] + pad
    flips = (torch.rand(global_n, generator=gen) < 0.5)[rank::world]
    dev = x.device
    shifts, flips = shifts.to(dev), (flips & flip).to(dev)
    rows = shifts[:, :1] + torch.arange(h, device=dev)                           # (n, h)
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + shifts[:, 1:]        # (n, w)
    padded = F.pad(x, (pad, pad, pad, pad))
    picked = padded[torch.arange(n, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (n, h, w, C)
    return picked.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------
def _resolve_name(name: str | None, root: str | Path | None) -> tuple[str, str]:
    """(canonical name, note). None -> Fashion-MNIST where available, else digits."""
    if name is None:
        try:
            _find_fashion(root, download=False)
            return "fashion-mnist", "no --data given: using Fashion-MNIST"
        except OFAError:
            return "digits", "no --data given and Fashion-MNIST not found: using scikit-learn digits"
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
               "cifar-100": "cifar100"}
    key = aliases.get(key, key)
    if key in DATASETS:
        return key, ""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve()), ""
    raise OFAError(f"unknown data '{name}'; allowed: {', '.join(DATASETS)} or a path to an ImageFolder directory")


def _find_fashion(root: str | Path | None, download: bool) -> Path:
    """A root torchvision's FashionMNIST accepts: the cache (or `root`), filled from the system .gz files."""
    cache = Path(root).expanduser() if root else default_cache_dir()
    raw = cache / "FashionMNIST" / "raw"
    if all((raw / f).exists() for f in FASHION_FILES):
        return cache
    sources = [cache, cache / "FashionMNIST" / "raw"] + SYSTEM_DIRS["fashion-mnist"]
    for src in sources:
        if all((src / f"{f}.gz").exists() for f in FASHION_FILES):
            try:
                raw.mkdir(parents=True, exist_ok=True)
                for f in FASHION_FILES:
                    if not (raw / f).exists():
                        tmp = raw / f".{f}.tmp{os.getpid()}"
                        with gzip.open(src / f"{f}.gz", "rb") as fin, open(tmp, "wb") as fout:
                            shutil.copyfileobj(fin, fout)
                        os.replace(tmp, raw / f)
            except (OSError, EOFError) as exc:
                raise OFAError(f"could not unpack Fashion-MNIST from {src} into {raw}: {exc}") from None
            return cache
    if download:
        return cache
    raise OFAError(f"Fashion-MNIST not found (looked in {cache} and {', '.join(map(str, SYSTEM_DIRS['fashion-mnist']))}); "
                   "pass download=True / --download where there is internet, or use --data digits")


def _load_fashion(root, download):
    from torchvision.datasets import FashionMNIST

    where = _find_fashion(root, download)
    try:
        tr = FashionMNIST(str(where), train=True, download=download)
        te = FashionMNIST(str(where), train=False, download=download)
    except (RuntimeError, OSError) as exc:
        raise OFAError(f"could not load Fashion-MNIST from {where}: {exc}") from None
    return (ImageTensorDataset(tr.data, tr.targets), ImageTensorDataset(te.data, te.targets), 10, 28,
            list(tr.classes), str(where))


def _load_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.as_tensor(np.round(d.images * (255.0 / 16.0)).astype(np.uint8))
    full = ImageTensorDataset(images, torch.as_tensor(d.target))
    # scikit-learn's digits have no test split: a fixed 20% (seed 0) is carved out, independent of any seed
    perm = np.random.default_rng(0).permutation(len(full))
    n_test = len(full) // 5
    return full.subset(perm[n_test:]), full.subset(perm[:n_test]), 10, 8, [str(i) for i in range(10)], "scikit-learn"


def _load_cifar(name, root, download):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    where = Path(root).expanduser() if root else default_cache_dir()
    try:
        tr = cls(str(where), train=True, download=download)
        te = cls(str(where), train=False, download=download)
    except RuntimeError as exc:
        hint = "" if download else "; pass --download (download=True) where there is internet"
        raise OFAError(f"{name} not found in {where} ({exc}){hint}") from None
    except OSError as exc:  # no internet, DNS failure, ...
        raise OFAError(f"could not download {name} into {where}: {exc}") from None
    n = 10 if name == "cifar10" else 100
    return (ImageTensorDataset(torch.as_tensor(tr.data), torch.as_tensor(tr.targets)),
            ImageTensorDataset(torch.as_tensor(te.data), torch.as_tensor(te.targets)), n, 32, list(tr.classes),
            str(where))


def _load_folder(path: Path, image_size: int, split_seed: int):
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    try:
        if (path / "train").is_dir():
            test_dir = next((path / s for s in ("test", "val") if (path / s).is_dir()), None)
            tr = ImageFolder(str(path / "train"), transform=tf)
            if test_dir is None:
                raise OFAError(f"{path} has train/ but neither test/ nor val/; add one or point --data at one tree")
            te = ImageFolder(str(test_dir), transform=tf)
            if te.classes != tr.classes:
                raise OFAError(f"{test_dir} has different classes than {path / 'train'}")
            return tr, te, len(tr.classes), image_size, list(tr.classes), str(path)
        full = ImageFolder(str(path), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise OFAError(f"{path} is not a usable ImageFolder tree (class sub-folders of images): {exc}") from None
    perm = np.random.default_rng(split_seed + 1).permutation(len(full))
    n_test = max(1, len(full) // 10)
    return (subset(full, perm[n_test:]), subset(full, perm[:n_test]), len(full.classes), image_size,
            list(full.classes), str(path))


VAL_SOURCES = ("train", "test")


def get_data(name: str | None = None, *, root: str | Path | None = None, val_size: int | float | None = None,
             split_seed: int = 0, subset_size: int | None = None, eval_size: int | None = None,
             image_size: int = 32, download: bool = False, val_from: str = "train") -> DataBundle:
    """Load a dataset and carve a seeded validation split from its training set (or its test set).

    name: `fashion-mnist`, `digits`, `cifar10`, `cifar100`, an ImageFolder path, or None (Fashion-MNIST where
    available, else digits). val_size: images (int) or fraction (float) of train held out as `val`.
    val_from: `train` (default) or `test`: the split `val` is carved from (with `test`, val_size defaults to half
    of the test split, `test` keeps the rest and no training image is held out).
    subset_size: keep only this many (seeded) training images. eval_size: cap val and test at this many images.
    image_size: native size of ImageFolder images. `bundle.config` rebuilds the same splits via `get_data(**config)`.
    """
    if val_from not in VAL_SOURCES:
        raise OFAError(f"unknown validation source '{val_from}'; allowed: {', '.join(VAL_SOURCES)}")
    if isinstance(name, str) and name.startswith("imagefolder:"):  # ImageNet-style, streamed: ofa.imagefolder
        from ofa.imagefolder import get_imagefolder

        if val_from != "train":
            raise OFAError("imagefolder: data carves its validation split from train/; val_from must be 'train'")
        return get_imagefolder(name[len("imagefolder:"):], val_size=val_size, split_seed=split_seed,
                               subset_size=subset_size, eval_size=eval_size)
    canonical, note = _resolve_name(name, root)
    if canonical == "fashion-mnist":
        train, test, n_classes, res, classes, source = _load_fashion(root, download)
        key = canonical
    elif canonical == "digits":
        train, test, n_classes, res, classes, source = _load_digits()
        key = canonical
    elif canonical in ("cifar10", "cifar100"):
        train, test, n_classes, res, classes, source = _load_cifar(canonical, root, download)
        key = canonical
    else:
        train, test, n_classes, res, classes, source = _load_folder(Path(canonical), int(image_size), split_seed)
        key = "folder"
    default_val, mean, std, flip = _DEFAULTS[key]
    source_split = train if val_from == "train" else test
    if val_size is None:
        val_size = default_val if val_from == "train" else 0.5
    n = len(source_split)
    n_val = int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < n_val < n:
        raise OFAError(f"val_size {val_size!r} must leave images for both splits of {n} {val_from} images")
    perm = np.random.default_rng(split_seed).permutation(n)
    val_idx, rest_idx = perm[:n_val], perm[n_val:]
    if val_from == "train":
        train_idx, test_idx = rest_idx, np.arange(len(test))
    else:
        train_idx, test_idx = np.arange(len(train)), np.sort(rest_idx)
    if subset_size is not None:
        if subset_size < 1:
            raise OFAError(f"subset size must be >= 1, got {subset_size}")
        train_idx = train_idx[: int(subset_size)]
    if eval_size is not None:
        if eval_size < 1:
            raise OFAError(f"eval size must be >= 1, got {eval_size}")
        val_idx = val_idx[: int(eval_size)]
        test_idx = test_idx[: int(eval_size)]
    config = {"name": canonical, "root": str(root) if root else None, "val_size": val_size, "split_seed": split_seed,
              "subset_size": subset_size, "eval_size": eval_size, "image_size": int(image_size)}
    if val_from != "train":   # absent from configs of the default, so older run directories keep their digests
        config["val_from"] = val_from
    bundle = DataBundle(name=canonical if key != "folder" else Path(canonical).name, train=subset(train, train_idx),
                        val=subset(source_split, val_idx),
                        test=subset(test, test_idx), n_classes=n_classes, native_res=res, mean=mean, std=std,
                        flip=flip, config=config, source=source, classes=classes)
    bundle.note = note  # type: ignore[attr-defined]
    return bundle


def data_from_config(config: dict[str, Any]) -> DataBundle:
    """Rebuild a bundle from a stored `config` (e.g. a run directory's data.json)."""
    if not isinstance(config, dict) or "name" not in config:
        raise OFAError("data config must be a JSON object with at least a 'name' field")
    if config["name"] == "imagefolder":
        from ofa.imagefolder import bundle_from_config

        return bundle_from_config(config)
    allowed = {"name", "root", "val_size", "split_seed", "subset_size", "eval_size", "image_size", "val_from"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise OFAError(f"data config has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    types = {"name": (str,), "root": (str, type(None)), "val_size": (int, float, type(None)), "split_seed": (int,),
             "subset_size": (int, type(None)), "eval_size": (int, type(None)), "image_size": (int,), "val_from": (str,)}
    wrong = [k for k, v in config.items() if isinstance(v, bool) or not isinstance(v, types[k])]
    if wrong:
        raise OFAError(f"data config field '{wrong[0]}' = {config[wrong[0]]!r} has the wrong type; expected "
                       f"{' or '.join('null' if t is type(None) else t.__name__ for t in types[wrong[0]])}")
    for key in ("split_seed", "image_size"):
        if key in config and config[key] < (0 if key == "split_seed" else 1):
            raise OFAError(f"data config field '{key}' = {config[key]} must be {'>= 0' if key == 'split_seed' else '>= 1'}")
    return get_data(**config)
