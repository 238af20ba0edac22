"""`ofa import-ofa`: weights published with the original Once-for-All code as our artifacts.

- A supernet checkpoint (`ofa_mbv3_d234_e346_k357_w1.0`, `..._w1.2`, `ofa_proxyless_d234_e346_k357_w1.3`, as the
  original saves it: a dict holding `state_dict`, or a bare state dict) becomes a run directory like one
  `ofa train` writes: `supernet.safetensors` (also linked as every stage's checkpoint, so the run counts as
  trained), `space.json`, `data.json` (ImageNet's 1000 classes, the original's normalization, transforms and the
  space's resolutions; the path of the images with `--data`), `imported.json` (where the weights came from)
  and, for mbv3-w1.2 with 1000 classes, OFA's published accuracy predictor under `predictors/`.
- A specialized network (`net.config` + its weights, e.g. the `init` file OFA publishes per net) becomes a
  specialized-net folder (`ofa.load`, `--export`, `ofa latency --config DIR/arch.json`).

Files are read with `torch.load(weights_only=True)` (or as safetensors) only: a checkpoint holding pickled
Python objects is refused. Every key and shape is checked before anything is written, and the output appears
whole or not at all (it is written into a hidden folder beside the target, then renamed).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from elastic.errors import OFAError
from elastic.ofa_compat import (PUBLISHED_SUPERNETS, checkpoint_layout, n_classes_of, netspec_from_ofa_config,
                                spaces_like, static_from_ofa, supernet_from_ofa)
from elastic.spaces import SPACES, get_space
from predictors.net_config import read_json_file, run_config_image_size
from ofa import atomic

IMPORT_FILE = "imported.json"
IMPORT_FORMAT = "ofa-import/1"
IMAGENET = "ImageNet-1k (ILSVRC-2012), which the published weights were trained on"


@dataclass
class ImportResult:
    path: Path
    kind: str                        # "supernet" (a run directory) or "net" (a specialized-net folder)
    n_classes: int
    space: str | None = None
    predictor: Path | None = None
    test_accuracy: float | None = None
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "space": self.space, "n_classes": self.n_classes,
                "predictor": str(self.predictor) if self.predictor else None, "test_accuracy": self.test_accuracy,
                "notes": self.notes, "provenance": self.provenance}


# ---- reading ---------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of a checkpoint file and the plain fields saved beside it (epoch, best_acc, ...).

    Read with `torch.load(weights_only=True)` (safetensors for `.safetensors`); any file that does not parse as
    tensors and plain containers is a one-line OFAError saying why.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise OFAError(f"checkpoint '{path}' does not exist or is not a file")
    container = "safetensors"
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise OFAError(f"'{p}' is not a readable safetensors file ({_first_line(exc)})") from None
    else:
        import pickle

        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            if "Weights only load failed" in str(exc) and found:
                raise OFAError(f"'{p}' holds pickled Python objects ({found.group(1)}), which are never loaded "
                               "(they could run code): only tensors and plain containers are read; re-save the "
                               "weights with torch.save(model.state_dict(), PATH)") from None
            raise OFAError(f"'{p}' is not a readable PyTorch checkpoint ({_first_line(exc)}); "
                           "is it truncated or damaged?") from None
        except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted file is the file's fault
            raise OFAError(f"'{p}' is not a readable PyTorch checkpoint (truncated or damaged: "
                           f"{type(exc).__name__}: {_first_line(exc).split('. ')[0]})") from None
        container = "state dict"
    extras: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        extras = {k: v for k, v in obj.items() if k != "state_dict" and isinstance(v, (int, float, str, bool))}
        obj, container = obj["state_dict"], "dict with state_dict"
    if not isinstance(obj, dict) or not obj:
        raise OFAError(f"'{p}' holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors, "
                       "or a dict with 'state_dict')")
    bad = next(((k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        keys = sorted(map(str, obj))[:4]
        raise OFAError(f"'{p}' is not a state dict of tensors: entry {bad[0]!r} is a {type(bad[1]).__name__} "
                       f"(keys {keys}...); the original saves {{'state_dict': ...}} or a bare state dict")
    return obj, {"container": container, **({"fields": extras} if extras else {})}


def file_facts(path: Path) -> dict[str, Any]:
    from ofa.specialization import file_digest

    return {"source": str(path.resolve()), "bytes": path.stat().st_size, "sha256": file_digest(path)}


# ---- supernets -------------------------------------------------------------------------------------
def _supernet_for(sd: dict[str, torch.Tensor], space: str | None, n_classes: int, where: str):
    """(space name, Supernet) for a state dict; a mismatch says which space the checkpoint looks like."""
    likes = spaces_like(sd)
    layout = checkpoint_layout(sd)
    if layout is not None and not layout.elastic:
        raise OFAError(f"'{where}' holds {layout.describe()}, not a supernet: import a specialized network with "
                       "--net-config NET_CONFIG --out DIR")
    if space is None:
        if not likes:
            seen = f"holds {layout.describe()}" if layout else "holds no OFA network"
            raise OFAError(f"'{where}' {seen}, which matches none of the spaces here "
                           f"({', '.join(sorted(PUBLISHED_SUPERNETS))}); pass --space NAME to see what differs")
        space = likes[0]
    elif space not in SPACES:
        get_space(space)  # the error lists the known spaces
    try:
        return space, supernet_from_ofa(space, sd, n_classes)
    except OFAError as exc:
        if likes and space not in likes:
            name = PUBLISHED_SUPERNETS.get(likes[0])
            looks = f"the {likes[0]} supernet" + (f" ({name})" if name else "")
            raise OFAError(f"'{where}' looks like a checkpoint of {looks}, not of {space}: "
                           f"pass --space {likes[0]} (first difference: {exc})") from None
        raise OFAError(f"'{where}' does not fit {space}: {exc}") from None


def _check_target(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise OFAError(f"{path} already exists; pass --overwrite to replace it with the imported {what}")


def _attach_ofa_predictor(folder: Path) -> str:
    """Save OFA's published predictor (its domain recorded in meta['domain']) into `folder`; describes it."""
    from predictors.domain import predictor_domain
    from predictors.ofa_predictor import load_ofa_predictor

    pred = load_ofa_predictor()
    pred.meta["attached_by"] = "ofa import-ofa"
    pred.save(folder)
    return predictor_domain(pred).describe()


def _data_config(sp, n_classes: int, bundle) -> dict[str, Any]:
    from ofa.imagefolder import description, imagenet_classes

    if n_classes == 1000:
        desc = description(1000, sp.resolutions, imagenet_classes(), dataset=IMAGENET)
    else:
        desc = description(n_classes, sp.resolutions, dataset=f"not ImageNet: the classifier has {n_classes} classes")
    if bundle is None:
        return desc
    if bundle.config.get("name") != "imagefolder":
        return dict(bundle.config)
    return {**desc, **bundle.config, "classes": list(bundle.classes)}


def import_supernet(checkpoint: str | Path, run: str | Path, *, space: str | None = None, data: Any = None,
                    overwrite: bool = False, workers: int | None = None, progress: bool = False) -> ImportResult:
    """Check an original supernet checkpoint against a space (named, or recognised from its shapes) and write
    it as run directory `run`. `data` ('imagefolder:PATH', ...) is recorded as the run's data after its class
    count is checked against the classifier's."""
    from ofa.imagefolder import load_data_arg
    from ofa.run_dir import STAGE_NAMES, RunDir

    src, target = Path(checkpoint).expanduser(), Path(run).expanduser()
    _check_target(target, overwrite, "supernet")
    sd, facts = read_checkpoint(src)
    n_classes = n_classes_of(sd)
    name, net = _supernet_for(sd, space, n_classes, str(src))
    sp = net.space
    bundle = load_data_arg(data, n_classes=n_classes, workers=workers, progress=progress)
    from ofa import __version__

    provenance = {"format": IMPORT_FORMAT, "kind": "supernet", **file_facts(src), **facts, "space": name,
                  "n_classes": n_classes, "keys": len(sd), "parameters": int(sum(v.numel() for v in sd.values())),
                  "layout_of": PUBLISHED_SUPERNETS.get(name),
                  "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ofa_version": __version__}
    result = ImportResult(target, "supernet", n_classes, space=name, provenance=provenance)
    tmp = atomic.staging_dir(target)
    try:
        rd = RunDir(tmp)
        rd.save_space(sp)
        rd.save_weights(net, sp)
        for stage in STAGE_NAMES:   # the published weights are the end of progressive shrinking
            rd.stage_weights_file(stage).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(rd.weights_file, rd.stage_weights_file(stage))
            except OSError:
                shutil.copyfile(rd.weights_file, rd.stage_weights_file(stage))
        rd.save_data_config(_data_config(sp, n_classes, bundle))
        atomic.write_json(tmp / IMPORT_FILE, provenance)
        if name == "mbv3-w1.2" and n_classes == 1000:
            domain = _attach_ofa_predictor(tmp / "predictors")
            result.predictor = target / "predictors"
            result.notes.append(f"attached OFA's published ImageNet accuracy predictor ({domain})")
        else:
            how = (f"`ofa fit-predictor --run {target}` measures subnets on the run's data" if bundle is not None else
                   f"import with --data imagefolder:PATH (images of its {n_classes} classes), then run "
                   f"`ofa fit-predictor --run {target}`")
            result.notes.append(f"no accuracy predictor ships for {name} with {n_classes} classes: {how}")
        atomic.replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if bundle is None:
        result.notes.append("no images recorded: `ofa specialize`/`ofa extract` keep the supernet's BN statistics "
                            "unless given --data imagefolder:PATH")
    return result


# ---- specialized networks -------------------------------------------------------------------------
def _image_size(cfg: Any, config_path: Path, image_size: int | None) -> int:
    if image_size is not None:
        return image_size
    if isinstance(cfg, dict) and "image_size" in cfg:
        size = cfg["image_size"]
    else:
        return run_config_image_size(config_path) or 224
    size = size[0] if isinstance(size, list) and size else size
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise OFAError(f"image_size in {config_path} must be an integer >= 8, got {size!r}")
    return size


def import_net(checkpoint: str | Path, out: str | Path, *, net_config: str | Path | None = None,
               image_size: int | None = None, data: Any = None, exports: tuple[str, ...] = (),
               overwrite: bool = False, workers: int | None = None, progress: bool = False) -> ImportResult:
    """An original specialized network as a specialized-net folder. `checkpoint` is its weights file, or the
    folder OFA publishes per network (`net.config`, `init`, `run.config`); `data` evaluates it on the test split."""
    from elastic.netspec import net_macs, net_params
    from ofa.imagefolder import load_data_arg
    from ofa.specialized import save_specialized
    from ofa.training.evaluate import accuracy

    src, target = Path(checkpoint).expanduser(), Path(out).expanduser()
    if src.is_dir():
        net_config = net_config or src / "net.config"
        src = src / "init"
    if net_config is None:
        raise OFAError("a specialized network needs its description: --net-config NET_CONFIG (OFA's net.config)")
    cfg_path = Path(net_config).expanduser()
    _check_target(target, overwrite, "network")
    cfg = read_json_file(cfg_path, "net_config")
    size = _image_size(cfg, cfg_path, image_size)
    spec = netspec_from_ofa_config(cfg, size)
    sd, facts = read_checkpoint(src)
    layout = checkpoint_layout(sd)
    if layout is not None and layout.elastic:
        raise OFAError(f"'{src}' holds {layout.describe()}: import it with --run DIR (no --net-config), then "
                       "extract the subnet with `ofa extract --run DIR --arch NET_CONFIG`")
    try:
        net = static_from_ofa(cfg, sd, size).eval()
    except OFAError as exc:
        raise OFAError(f"'{src}' does not fit {cfg_path}: {exc}") from None
    bundle = load_data_arg(data, n_classes=spec.n_classes, workers=workers, progress=progress)
    result = ImportResult(target, "net", spec.n_classes)
    inner = cfg["net_config"] if isinstance(cfg, dict) and "net_config" in cfg else cfg
    cost: dict[str, Any] = {}
    if bundle is not None:
        t0 = time.perf_counter()
        result.test_accuracy = accuracy(net, bundle, "test", size)
        cost = {"eval_images": len(bundle.test), "eval_seconds": time.perf_counter() - t0}
    from ofa import __version__
    from ofa.imagefolder import MEAN, STD, imagenet_classes

    classes = list(bundle.classes) if bundle is not None else (imagenet_classes() if spec.n_classes == 1000 else [])
    result.provenance = {"format": IMPORT_FORMAT, "kind": "net", **file_facts(src), **facts,
                         "net_config_file": str(cfg_path.resolve()),
                         "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ofa_version": __version__}
    meta = {"name": (cfg.get("name") if isinstance(cfg, dict) and "net_config" in cfg else None) or cfg_path.parent.name,
            "net_config": inner, "image_size": size, "n_classes": spec.n_classes, "family": spec.family,
            "predicted": {"macs": float(net_macs(spec)), "params": float(net_params(spec))},
            "measured": {"test_accuracy": result.test_accuracy, "latency_ms": None},
            "classes": classes, "input": {"resolution": size, "channels": spec.in_channels,
                                          "mean": list(bundle.mean if bundle is not None else MEAN),
                                          "std": list(bundle.std if bundle is not None else STD)},
            "bn_statistics": "the network's own, as published", "cost": cost,
            "data": bundle.config if bundle is not None else None, "provenance": result.provenance}
    save_specialized(target, net, meta, exports=exports)
    return result


__all__ = ["ImportResult", "import_net", "import_supernet", "read_checkpoint"]
