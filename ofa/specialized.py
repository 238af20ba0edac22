"""A specialized network on disk: `model.safetensors` + `arch.json` (+ optional `model.onnx`, `model.ts`).

`save_specialized` writes a directory atomically (files land in a temp dir that is renamed into place);
`load` validates every field of `arch.json` and the weights' keys and shapes before building the net.
The network is a subnet of a space (`space` + `arch`) or, for networks imported from the original Once-for-All
code that are no subnet of ours, an original `net_config` with its `image_size` (`ofa import-ofa --net-config`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.spaces import space_from_dict
from elastic.static_net import StaticNet
from ofa import atomic

FORMAT = "ofa-specialized/1"
ARCH_ONLY_FORMAT = "ofa-arch/1"      # `ofa specialize` without a run: arch.json alone
REQUIRED_FIELDS = ("format", "space", "arch")
NET_CONFIG_FIELDS = ("format", "net_config", "image_size")   # a network described by an original net_config


def _missing_fields(meta: dict[str, Any]) -> list[str]:
    return [f for f in (NET_CONFIG_FIELDS if "net_config" in meta else REQUIRED_FIELDS) if f not in meta]


def _resolution(meta: dict[str, Any]) -> int:
    return int(meta["arch"]["r"]) if "net_config" not in meta else int(meta["image_size"])


def save_specialized(out_dir: str | Path, net: torch.nn.Module, meta: dict[str, Any],
                     exports: tuple[str, ...] = (), example: torch.Tensor | None = None) -> Path:
    """Write `net` and its metadata into `out_dir`, replacing it whole: everything is written (and exports checked,
    on `example` inputs when given) in a hidden temp dir next to it, then renamed into place; a failure midway
    leaves the previous folder as it was."""
    out_dir = Path(out_dir)
    meta = {"format": FORMAT, **meta}
    for field in _missing_fields(meta):
        raise ValueError(f"specialized metadata lacks '{field}'")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(out_dir)
        return _save(out_dir, net, meta, exports, example)
    except OSError as exc:  # disk full / not writable: an existing folder of that name is left as it was
        raise OFAError(f"could not write {out_dir}: {exc.strerror or exc}; "
                       "an earlier network in that folder (if any) is unchanged") from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(out_dir: Path) -> None:
    """Delete the hidden temp/old folders a killed `save_specialized` (of a process now gone) left beside `out_dir`."""
    for p in out_dir.parent.glob(f".{out_dir.name}.*"):
        parts = p.name[len(out_dir.name) + 2:].split("-")
        if p.is_dir() and len(parts) >= 2 and parts[0] in ("tmp", "old") and parts[1].isdigit() \
                and not _pid_alive(int(parts[1])):
            if parts[0] == "old" and not out_dir.exists():
                os.replace(p, out_dir)  # killed between the two renames: put the previous folder back
            else:
                shutil.rmtree(p, ignore_errors=True)


def _drop_int8_figures(meta: dict[str, Any]) -> None:
    """A saved folder has no model.int8.onnx yet (`ofa.int8_export` adds it and its figures): int8 figures carried
    over in `meta` (e.g. from the folder a net was fine-tuned from) belong to another net."""
    meta.pop("int8", None)
    if isinstance(meta.get("measured"), dict):
        meta["measured"] = {k: v for k, v in meta["measured"].items() if not k.startswith("int8_")}


def _save(out_dir: Path, net: torch.nn.Module, meta: dict[str, Any], exports: tuple[str, ...],
          example: torch.Tensor | None) -> Path:
    tmp = atomic.staging_dir(out_dir)
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        files = ["model.safetensors", "arch.json"]
        meta["exports"] = {}  # digests of the exports written below (none carried over from another folder)
        if exports:
            from ofa.export import export_model, export_record

            exported = export_model(net, tmp, exports, resolution=_resolution(meta), example=example)
            files += exported
            meta["exports"] = export_record(tmp, exported)  # digests: a later int8 step can tell a stale export
        meta["files"] = files
        _drop_int8_figures(meta)
        (tmp / "arch.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        atomic.replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_meta(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Find and validate `arch.json` for a specialized-net path (its directory, arch.json or model.safetensors)."""
    path = Path(path)
    if not path.exists():
        raise OFAError(f"no specialized network at '{path}': the path does not exist")
    folder = path if path.is_dir() else path.parent
    meta_file = folder / "arch.json"
    if not meta_file.is_file():
        raise OFAError(f"'{folder}' holds no arch.json; expected a directory written by `ofa specialize`")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OFAError(f"'{meta_file}' is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise OFAError(f"'{meta_file}' must hold a JSON object")
    missing = _missing_fields(meta)
    if missing:
        raise OFAError(f"'{meta_file}' is missing field(s) {', '.join(missing)}; required: {', '.join(REQUIRED_FIELDS)}"
                       f" (or {', '.join(NET_CONFIG_FIELDS)} for an original net_config)")
    if meta["format"] == ARCH_ONLY_FORMAT:
        raise OFAError(f"'{folder}' holds an architecture only (searched without --run), no weights to load; "
                       "specialize a trained run (`ofa specialize --run DIR`) to get a loadable network")
    if meta["format"] != FORMAT:
        raise OFAError(f"'{meta_file}' has format {meta['format']!r}; this version reads {FORMAT!r}")
    return folder, meta


def load(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a specialized network: a ready `nn.Module` in eval mode with `.arch` and `.meta`."""
    folder, meta = read_meta(path)
    try:
        if "net_config" in meta:
            from elastic.ofa_compat import netspec_from_ofa_config

            arch, spec = None, netspec_from_ofa_config(meta["net_config"], meta["image_size"])
        else:
            space = space_from_dict(meta["space"])
            arch = space.validate(Arch.from_dict(meta["arch"]))
            spec = space.net_spec(arch)
    except OFAError as exc:
        raise OFAError(f"'{folder / 'arch.json'}' is inconsistent: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise OFAError(f"'{folder / 'arch.json'}' has a malformed space or arch ({type(exc).__name__}: {exc})") from None
    net = StaticNet(spec)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise OFAError(f"'{folder}' has arch.json but no model.safetensors")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise OFAError(f"'{weights}' is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise OFAError(
            f"'{weights}' does not match arch.json: {len(missing)} missing key(s) (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise OFAError(f"'{weights}' does not match arch.json: '{key}' has shape {tuple(tensor.shape)}, "
                           f"expected {tuple(expected[key].shape)}")
    net.load_state_dict(state)
    net.arch = arch
    net.meta = meta
    return net.to(map_location).eval()
