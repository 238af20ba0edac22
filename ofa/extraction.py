"""`ofa extract`: the network of one known arch of a run's supernet, as a specialized-net folder.

The original's `set_active_subnet(ks, e, d)` + `get_active_subnet()` as a command. The arch is `{ks, e, d, r}`
(as ours, or OFA's with `r` as a one-element list), or an original `net_config` (`{name, image_size,
net_config}` or a bare one) that is a subnet of the run's space; as a JSON text or a file. The folder is written
by the same code as `ofa specialize`'s (`ofa.specialization.write_subnet`): `ofa.load`, `--export` and
`ofa latency --config DIR/arch.json` work on it alike.

BN statistics are recalibrated on the run's data (or `data`) unless `recalibrate=False`; without images they
stay the supernet's own and the result says so.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from elastic.arch import Arch
from elastic.errors import OFAError
from elastic.spaces import SpaceSpec


def parse_arch(value: Any, space: SpaceSpec) -> Arch:
    """An Arch of `space` from an Arch, a dict, a JSON text or a JSON file (ks/e/d/r or an OFA net_config)."""
    from elastic.ofa_compat import arch_from_ofa_config

    data = value
    if isinstance(value, Arch):
        return space.validate(value)
    if isinstance(value, (str, Path)):
        text = str(value).strip()
        if not text.startswith("{"):
            path = Path(text).expanduser()
            if not path.is_file():
                raise OFAError(f"--arch '{value}' is neither a JSON object nor an existing file")
            text = path.read_text()
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OFAError(f"--arch is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise OFAError(f"--arch must be a JSON object (ks, e, d, r or an OFA net_config), got {type(data).__name__}")
    if "net_config" in data or "first_conv" in data:
        return arch_from_ofa_config(space, data)
    if "arch" in data and isinstance(data["arch"], dict):   # an arch.json of ours
        data = data["arch"]
    if isinstance(data.get("r"), list) and len(data["r"]) == 1:  # OFA writes the resolution as [r]
        data = {**data, "r": data["r"][0]}
    return space.validate(Arch.from_dict(data))


def default_folder(run_path: Path, arch: Arch) -> Path:
    digest = hashlib.sha1(arch.to_json().encode()).hexdigest()[:8]
    return run_path / "extracted" / f"r{arch.r}-{digest}"


def extract(run: str | Path, arch: Any, *, out: str | Path | None = None, recalibrate: bool | None = None,
            data: Any = None, calib_images: int = 2000, evaluate: bool = True, export: Any = (), seed: int = 0,
            workers: int | None = None, eval_images: int | None = None, progress: bool = False,
            compute_device: str | None = None):
    """Write the subnet `arch` of run `run` to `out` (default RUN/extracted/r<R>-<hash>); returns a `Specialized`.

    recalibrate: None recalibrates when images are at hand (the run's data or `data`), True demands them,
    False keeps the supernet's BN statistics. evaluate: measure test accuracy when images are at hand (on a
    seeded `eval_images` of the test split of `data` when given). compute_device (auto, cpu, cuda, cuda:N; default
    auto): where the extraction, recalibration and evaluation run; the net is saved from the CPU.
    """
    from elastic.complexity import macs, params
    from ofa.export import parse_exports
    from ofa.imagefolder import load_data_arg
    from ofa.run_dir import RunDir
    from ofa.specialization import Specialized, file_digest, run_data, write_subnet

    exports = parse_exports(export) if isinstance(export, str) else parse_exports(",".join(export))
    if isinstance(calib_images, bool) or not isinstance(calib_images, int) or calib_images < 1:
        raise OFAError(f"calibration images must be an integer >= 1, got {calib_images!r}")
    rd = RunDir(run)
    sp = rd.load_space()
    a = parse_arch(arch, sp)
    folder = Path(out).expanduser() if out is not None else default_folder(rd.path, a)
    if eval_images is not None and (isinstance(eval_images, bool) or not isinstance(eval_images, int) or eval_images < 1):
        raise OFAError(f"evaluation images must be an integer >= 1, got {eval_images!r}")
    bundle = load_data_arg(data, n_classes=sp.n_classes, workers=workers, progress=progress, eval_size=eval_images)
    if bundle is None and (recalibrate is not False or evaluate):
        bundle = run_data(rd)
        if bundle is not None:
            bundle.progress = progress
    if recalibrate and bundle is None:
        raise OFAError(f"--recalibrate needs images and run {rd.path} has none: give --data imagefolder:PATH "
                       "(train/ and val/ folders of class sub-folders)")
    pred_acc = None
    if (rd.path / "predictors" / "accuracy_predictor.json").exists():
        from predictors.accuracy import AccuracyPredictor

        pred_acc = float(AccuracyPredictor.load(rd.path / "predictors").predict([a])[0])
    result = Specialized(device=None, budget=None, arch=a, predicted_accuracy=pred_acc, predicted_latency_ms=None,
                         macs=float(macs(sp, [a])[0]), params=float(params(sp, [a])[0]), search_seconds=0.0)
    from ofa.training.distributed import pick_device

    supernet = rd.load_supernet().to(pick_device(compute_device))
    provenance = {"run": str(rd.path), "supernet_sha256": file_digest(rd.weights_file),
                  "data": bundle.config if bundle is not None else rd.data_config(), "seed": seed}
    write_subnet(supernet, sp, result, folder, bundle=bundle, calib_images=0 if recalibrate is False else calib_images,
                 evaluate=evaluate, exports=exports, backend="extract", provenance=provenance, seed=seed,
                 described=rd.data_config())
    return result


__all__ = ["default_folder", "extract", "parse_arch"]
