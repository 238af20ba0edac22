"""int8 deployment of a specialized (or fine-tuned) network folder: `model.int8.onnx` beside `model.onnx`.

`export_int8(folder)` quantizes the folder's `model.onnx` with ONNX Runtime's static post-training quantization
(`predictors.quantize`: QDQ, int8 weights per channel, uint8 activations), calibrated on training images of the
data the net was trained on (`calib_images` of them, the first of a seeded shuffle of the training split; never
validation or test images). Where the all-int8 net loses more than `tolerance` points of validation accuracy,
the parts that cost most (stem, a block, the head, every h-swish, every SE) are measured one by one on validation
images and the worst stay in float, as long as each buys at least `min_gain` points. Test accuracy is then
measured once (int8 beside the fp32 ONNX model, on the same images, with 95% intervals), and batch-1 latency of
both models side by side. `arch.json` gets `measured.int8_test_accuracy`, `measured.int8_latency_ms` and an
`int8` section with everything (settings, the validation choice, test figures, latency, int8 kernel coverage).

Nothing is written before every check passed: a missing or stale `model.onnx` (weights changed since it was
exported: its recorded weight digest differs), too few calibration images or a runtime without int8 kernels
is a one-line OFAError and leaves the folder as it was. `load_onnx(folder, precision)` opens either model in
ONNX Runtime, refusing a stale one.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from elastic.errors import OFAError

INT8_FILE = "model.int8.onnx"
FP32_FILE = "model.onnx"
DEFAULT_CALIB_IMAGES = 300
MIN_CALIB_IMAGES = 100
DEFAULT_FLOAT_PARTS = "auto"
DEFAULT_TOLERANCE = 0.5      # points of validation accuracy the all-int8 net may lose before parts stay float
MIN_GAIN = 0.1               # points a part left in float must buy on validation
MAX_FLOAT_PARTS = 3
VAL_IMAGES = 2000            # validation images the float-part choice is made on (at most)


# --------------------------------------------------------------------------------------------- checks
def fresh_export(folder: Path, meta: dict[str, Any], file: str = FP32_FILE) -> Path:
    """The path of `file` in `folder` if it exists and was exported from the folder's current weights."""
    from ofa.specialization import file_digest

    path = folder / file
    remedy = f"`ofa export {folder} --format {'onnx' if file == FP32_FILE else 'onnx-int8'}`"
    if not path.is_file():
        raise OFAError(f"'{folder}' has no {file}; write it with {remedy}")
    record = (meta.get("exports") or {}).get(file)
    if not isinstance(record, dict) or "sha256" not in record or "weights_sha256" not in record:
        raise OFAError(f"'{path}' has no recorded digest in arch.json (written by an older ofa or by hand), so it "
                       f"cannot be checked against the weights; re-export it with {remedy}")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise OFAError(f"'{folder}' has no model.safetensors to check {file} against")
    if file_digest(weights) != record["weights_sha256"]:
        raise OFAError(f"'{path}' is stale: model.safetensors changed since it was exported (e.g. fine-tuned); "
                       f"re-export it with {remedy}")
    if file_digest(path) != record["sha256"]:
        raise OFAError(f"'{path}' is not the file that was exported (its SHA-256 differs from arch.json's); "
                       f"re-export it with {remedy}")
    return path


def _resolution(meta: dict[str, Any]) -> int:
    r = (meta.get("input") or {}).get("resolution") or (meta.get("arch") or {}).get("r") or meta.get("image_size")
    if not isinstance(r, int) or r < 1:
        raise OFAError("arch.json says no input resolution (input.resolution); re-specialize the network")
    return r


def _data_of(folder: Path, meta: dict[str, Any], data: Any):
    """The bundle to calibrate and evaluate with: `data` when given, else the data the net was trained on."""
    from ofa.imagefolder import has_images, load_data_arg

    n_classes = meta.get("n_classes")
    if data is not None:
        return load_data_arg(data, n_classes=n_classes)
    config = (meta.get("finetune") or {}).get("data") or (meta.get("provenance") or {}).get("data")
    if not isinstance(config, dict) or "name" not in config or not has_images(config):
        raise OFAError(f"'{folder / 'arch.json'}' names no training images to calibrate on (provenance.data); "
                       "give the data the net was trained on with --data")
    if config["name"] == "imagefolder":
        from ofa.imagefolder import bundle_from_config

        return bundle_from_config(config)
    from ofa.data import data_from_config

    return data_from_config(config)


def calibration_images(bundle, resolution: int, n_images: int = DEFAULT_CALIB_IMAGES, seed: int = 0,
                       batch_size: int = 100) -> list[np.ndarray]:
    """`n_images` training images (the first of a seeded shuffle), prepared as the net's input, in batches."""
    from ofa.training.evaluate import calibration_batches

    if not isinstance(n_images, int) or n_images < MIN_CALIB_IMAGES:
        raise OFAError(f"int8 calibration needs at least {MIN_CALIB_IMAGES} images, got {n_images!r} "
                       "(min/max ranges from fewer clip the test images' activations)")
    available = len(bundle.train)
    if available < n_images:
        raise OFAError(f"int8 calibration asked for {n_images} training images but {bundle.name}'s training split "
                       f"has {available}; ask for {MIN_CALIB_IMAGES}-{available}"
                       if available >= MIN_CALIB_IMAGES else
                       f"int8 calibration needs at least {MIN_CALIB_IMAGES} training images but {bundle.name}'s "
                       f"training split has {available}")
    batches = calibration_batches(bundle, resolution, n_images, batch_size=batch_size, seed=seed)
    return [b.contiguous().numpy() for b in batches]


# --------------------------------------------------------------------------------------------- evaluation
def _session(model: bytes | Path, threads: int | None = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])


def predictions(models: Sequence[bytes], bundle, split: str, resolution: int, limit: int | None = None,
                threads: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    """Argmax predictions of each ONNX model on a split (the same batches for all), and the labels."""
    sessions = [_session(m, threads) for m in models]
    names = [s.get_inputs()[0].name for s in sessions]
    preds: list[list[np.ndarray]] = [[] for _ in models]
    labels = []
    for x, y in bundle.loader(split, batch_size=250, resolution=resolution, limit=limit):
        feed = x.contiguous().numpy()
        for i, s in enumerate(sessions):
            preds[i].append(s.run(None, {names[i]: feed})[0].argmax(1))
        labels.append(y.numpy())
    return [np.concatenate(p) for p in preds], np.concatenate(labels)


def _ci95(p: float, n: int) -> list[float]:
    half = 1.96 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))
    return [max(0.0, p - half), min(1.0, p + half)]


def paired_figures(pred_fp32: np.ndarray, pred_int8: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracies with 95% intervals, the drop (points, fp32 minus int8) with its paired 95% interval."""
    c32 = (pred_fp32 == labels).astype(float)
    c8 = (pred_int8 == labels).astype(float)
    n = len(labels)
    d = c32 - c8
    half = 1.96 * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return {"images": n, "fp32_accuracy": float(c32.mean()), "fp32_ci95": _ci95(float(c32.mean()), n),
            "int8_accuracy": float(c8.mean()), "int8_ci95": _ci95(float(c8.mean()), n),
            "drop_points": 100 * float(d.mean()),
            "drop_ci95_points": [100 * (float(d.mean()) - half), 100 * (float(d.mean()) + half)],
            "argmax_agreement": float((pred_fp32 == pred_int8).mean())}


# --------------------------------------------------------------------------------------------- the choice
def choose_float_parts(fp32: bytes, prepared, calib: list[np.ndarray], bundle, resolution: int,
                       tolerance: float = DEFAULT_TOLERANCE, min_gain: float = MIN_GAIN,
                       max_parts: int = MAX_FLOAT_PARTS, val_images: int = VAL_IMAGES,
                       candidates: Sequence[str] | None = None,
                       progress: bool = False) -> tuple[list[str], bytes, dict[str, Any]]:
    """Parts to leave in float, chosen on validation images; returns (parts, the int8 model, the record).

    All-int8 first; if it loses more than `tolerance` points, each part alone in float (of `candidates`, default
    all of the net's) is scored, and the parts are added worst-first while each raises validation accuracy by
    `min_gain` points, at most `max_parts`."""
    from predictors.quantize import part_names, quantize

    def val_accuracy(model: bytes) -> float:
        (p,), y = predictions([model], bundle, "val", resolution, limit=val_images)
        return float((p == y).mean())

    (p32,), y = predictions([fp32], bundle, "val", resolution, limit=val_images)
    fp32_acc = float((p32 == y).mean())
    best = quantize(fp32, calib, prepared=prepared)
    best_acc = val_accuracy(best)
    record: dict[str, Any] = {"split": "val", "images": int(len(y)), "tolerance_points": tolerance,
                              "min_gain_points": min_gain, "fp32_accuracy": fp32_acc, "all_int8_accuracy": best_acc,
                              "single_part_accuracy": {}, "steps": []}
    chosen: list[str] = []
    if 100 * (fp32_acc - best_acc) > tolerance:
        for part in (part_names(prepared) if candidates is None else candidates):
            if progress:
                print(f"    int8: scoring '{part}' in float on {len(y)} validation images")
            record["single_part_accuracy"][part] = val_accuracy(quantize(fp32, calib, [part], prepared=prepared))
        order = sorted(record["single_part_accuracy"], key=lambda k: -record["single_part_accuracy"][k])
        for part in order:
            if len(chosen) >= max_parts or 100 * (fp32_acc - best_acc) <= tolerance:
                break
            model = quantize(fp32, calib, chosen + [part], prepared=prepared)
            acc = val_accuracy(model)
            kept = 100 * (acc - best_acc) >= min_gain
            record["steps"].append({"part": part, "accuracy": acc, "kept": kept})
            if kept:
                chosen, best, best_acc = chosen + [part], model, acc
    record["chosen"] = chosen
    record["chosen_accuracy"] = best_acc
    return chosen, best, record


# --------------------------------------------------------------------------------------------- the export
def export_int8(folder: str | Path, *, data: Any = None, bundle=None, calib_images: int = DEFAULT_CALIB_IMAGES,
                seed: int = 0, float_parts: str | Sequence[str] | None = None, tolerance: float | None = None,
                evaluate: bool = True, measure: bool = True, threads: int | None = None, profile=None,
                progress: bool = False) -> dict[str, Any]:
    """Write `folder/model.int8.onnx` and its figures into `folder/arch.json`; returns the `int8` section.

    `float_parts`: "auto" (chosen on validation, see the module docstring; the default, `DEFAULT_FLOAT_PARTS`),
    "none", or part names ("stem", "block3", "head", "hswish", "se"; a list or comma-separated). `bundle` /
    `data` replace the data the net was trained on. Latency is timed with `threads` intra-op threads (default:
    the measured `profile`'s, else 1), fp32 and int8 interleaved in one session.
    """
    import onnxruntime as ort

    from ofa import atomic
    from ofa.specialization import file_digest
    from ofa.specialized import read_meta
    from predictors.quantize import int8_coverage, prepare, quantize, require_int8_runtime, saturating_cpu

    t0 = time.perf_counter()
    float_parts = DEFAULT_FLOAT_PARTS if float_parts is None else float_parts
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    folder, meta = read_meta(folder)
    fp32_path = fresh_export(folder, meta)
    require_int8_runtime()
    resolution = _resolution(meta)
    if bundle is None:
        bundle = _data_of(folder, meta, data)
    calib = calibration_images(bundle, resolution, calib_images, seed=seed)
    fp32 = fp32_path.read_bytes()
    prepared = prepare(fp32)
    if float_parts == "auto":
        parts, model, choice = choose_float_parts(fp32, prepared, calib, bundle, resolution, tolerance,
                                                  progress=progress)
    else:
        given = float_parts.split(",") if isinstance(float_parts, str) else list(float_parts)
        parts = [p.strip() for p in given if p.strip() and p.strip() != "none"]
        model = quantize(fp32, calib, parts, prepared=prepared)
        choice = {"split": None, "chosen": parts, "given": True}
    section: dict[str, Any] = {
        "file": INT8_FILE,
        "quantization": {"tool": "onnxruntime.quantization.quantize_static", "onnxruntime": ort.__version__,
                         "format": "QDQ", "activations": "uint8, per tensor",
                         "weights": f"int8 ({'7' if saturating_cpu() else '8'}-bit range), per output channel",
                         "calibration": "MinMax", "calib_images": sum(len(b) for b in calib),
                         "calib_split": "train", "calib_seed": seed, "float_parts": parts},
        "float_part_choice": choice,
        "coverage": {k: v for k, v in int8_coverage(model).items() if k != "ops"},
    }
    if evaluate:
        (p32, p8), y = predictions([fp32, model], bundle, "test", resolution)
        section["test"] = paired_figures(p32, p8, y)
    if measure:
        from predictors.measure import measure_modules

        n_threads = threads or (int(profile.extra.get("threads", 1)) if profile is not None
                                and profile.extra.get("device", "cpu") == "cpu" else 1)
        shape = (int((meta.get("input") or {}).get("channels") or 3), resolution, resolution)
        ms = measure_modules([fp32, model], [shape, shape], threads=n_threads, rounds=15)
        section["latency"] = {"fp32_ms": float(ms[0]), "int8_ms": float(ms[1]), "ratio": float(ms[1] / ms[0]),
                              "threads": n_threads, "batch": 1, "runtime": f"onnxruntime {ort.__version__}",
                              "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    section["seconds"] = time.perf_counter() - t0

    atomic.write_bytes(folder / INT8_FILE, model)   # the fp32 files are not touched
    meta.setdefault("exports", {})[INT8_FILE] = {"sha256": file_digest(folder / INT8_FILE),
                                                  "weights_sha256": meta["exports"][FP32_FILE]["weights_sha256"],
                                                  "source_sha256": meta["exports"][FP32_FILE]["sha256"]}
    meta["files"] = list(dict.fromkeys(list(meta.get("files") or []) + [INT8_FILE]))
    measured = dict(meta.get("measured") or {})
    measured["int8_test_accuracy"] = section["test"]["int8_accuracy"] if evaluate else None
    measured["int8_latency_ms"] = section["latency"]["int8_ms"] if measure else None
    meta["measured"] = measured
    meta["int8"] = section
    atomic.write_json(folder / "arch.json", meta)
    if progress:
        test = section.get("test") or {}
        acc = (f"test {100 * test['int8_accuracy']:.2f}% int8 vs {100 * test['fp32_accuracy']:.2f}% fp32"
               if evaluate else "")
        lat = (f", {section['latency']['int8_ms']:.2f} vs {section['latency']['fp32_ms']:.2f} ms"
               if measure else "")
        print(f"  int8 -> {folder / INT8_FILE}: {acc}{lat}; float parts: {', '.join(parts) or 'none'}")
    return section


def load_onnx(path: str | Path, precision: str = "fp32", threads: int | None = None):
    """An ONNX Runtime session of a specialized folder's `model.onnx` (fp32) or `model.int8.onnx` (int8), after
    checking that it was made from the folder's current weights. Input `input`: float32 NCHW images normalized
    with arch.json's `input.mean` / `input.std` at `input.resolution` px, any batch size; output `logits`."""
    from ofa.specialized import read_meta
    from predictors.quantize import check_precision

    precision = check_precision(precision)
    folder, meta = read_meta(path)
    return _session(fresh_export(folder, meta, INT8_FILE if precision == "int8" else FP32_FILE), threads)
