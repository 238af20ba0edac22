"""int8 vs fp32 on this CPU with ONNX Runtime: latency ratio, ranking, accuracy drop; measured side by side.

    python3 bench/int8_quality.py latency [--threads 1,2]      -> bench/results/int8_latency.json
        mbv3-w1.0 subnets (random weights) at 128-224 px, plus proxyless-w1.3 at 224 px (ReLU6, no SE: the
        contrast in kernel coverage): fp32, all-int8, h-swish left float and SE left float, each net's variants
        timed interleaved in one session; per-op-type time of one net (ONNX Runtime's profiler) says why.
    python3 bench/int8_quality.py rank [--n 100] [--space mbv3-w1.0]  -> bench/results/int8_rank_<space>.json
        Kendall tau between fp32 and int8 latency of the same random subnets (all timed interleaved).
    python3 bench/int8_quality.py accuracy --run RUN --nets DIR,DIR,...  -> bench/results/int8_accuracy.json
        specialized folders of a trained run: validation choices (7- vs 8-bit weights, calibration images, parts
        left float: made on validation images only), then test accuracy once (fp32, all-int8, the chosen float
        parts) with 95% intervals, and fp32 / int8 latency at 1 and 2 threads.
    python3 bench/int8_quality.py search --run RUN --fp32-device cpu --int8-device cpu-int8 --budgets ...
        the gain of searching under int8 latency: picks under the int8 profile vs picks under the fp32 profile
        at the budget scaled by the median int8/fp32 ratio, both timed in int8 here; -> int8_search.json

Run timing parts under `cpuslot -x` (both cores: 2-thread timing, no neighbours). Thread counts > 1 use wall time.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elastic.arch import Arch  # noqa: E402
from elastic.spaces import get_space  # noqa: E402
from predictors.atomic_files import write_json_atomic  # noqa: E402
from predictors.measure import measure_modules  # noqa: E402
from predictors.metrics import kendall_tau  # noqa: E402
from predictors.quantize import int8_coverage, prepare, quantize, quantize_for_timing, saturating_cpu  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def _onnx(spec, batch_dynamic: bool = False) -> bytes:
    """fp32 ONNX bytes of a random-weight StaticNet for `spec` (as the measuring runner exports it)."""
    import io
    import warnings

    import torch

    from elastic.static_net import StaticNet

    net = StaticNet(spec).eval()
    x = torch.randn(1, spec.in_channels, spec.resolution, spec.resolution)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buf, input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamo=False)
    return buf.getvalue()


def _at(arch: Arch, r: int) -> Arch:
    return Arch.from_dict({**arch.to_dict(), "r": r})


def machine() -> dict:
    import onnxruntime as ort

    return {"cpu": platform.processor() or platform.machine(), "onnxruntime": ort.__version__,
            "saturating_int8_cpu (7-bit weights)": saturating_cpu(), "date": time.strftime("%Y-%m-%d")}


def op_times(model: bytes, r: int, runs: int = 30) -> dict:
    """ms per run by op type, from ONNX Runtime's profiler (1 thread)."""
    import collections
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = f"{tmp}/prof"
        so.log_severity_level = 3
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, r, r)).astype(np.float32)}
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    out: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            out[e["args"]["op_name"]] += e["dur"] / runs / 1e3
    return {k: round(v, 4) for k, v in out.most_common()}


# ------------------------------------------------------------------------------------------- latency
def bench_latency(args) -> dict:
    threads = [int(t) for t in args.threads.split(",")]
    rng = random.Random(args.seed)
    space = get_space("mbv3-w1.0")
    cases = []
    for r in (128, 160, 192, 224):
        archs = [("largest", space.largest()), ("smallest", space.smallest())]
        archs += [(f"random{i}", space.sample(rng)) for i in range(args.per_resolution)]
        cases += [(space, name, _at(a, r)) for name, a in archs]
    pspace = get_space("proxyless-w1.3")
    cases += [(pspace, name, _at(a, 224)) for name, a in
              [("largest", pspace.largest()), ("smallest", pspace.smallest()), ("random0", pspace.sample(rng))]]
    variants = ("fp32", "int8", "int8 hswish float", "int8 se float")
    models, shapes, rows = [], [], []
    for i, (sp, name, arch) in enumerate(cases):
        spec = sp.net_spec(arch)
        fp32 = _onnx(spec)
        x = [np.random.default_rng(0).standard_normal((1, 3, arch.r, arch.r)).astype(np.float32)]
        pre = prepare(fp32)
        kinds = {"fp32": fp32, "int8": quantize(fp32, x, prepared=pre)}
        if sp.family == "mbv3":
            kinds["int8 hswish float"] = quantize(fp32, x, ["hswish"], prepared=pre)
            kinds["int8 se float"] = quantize(fp32, x, ["se"], prepared=pre)
        cov = int8_coverage(kinds["int8"])
        rows.append({"space": sp.name, "net": name, "r": arch.r, "arch": arch.to_dict(),
                     "coverage": {k: v for k, v in cov.items() if k != "ops"}, "index": {}})
        for k, m in kinds.items():
            rows[-1]["index"][k] = len(models)
            models.append(m)
            shapes.append((3, arch.r, arch.r))
        print(f"  quantized {i + 1}/{len(cases)}: {sp.name} {name} r{arch.r}", flush=True)
    for t in threads:
        ms = measure_modules(models, shapes, threads=t, rounds=args.rounds, clock_name="auto")
        for row in rows:
            row[f"ms_{t}t"] = {k: float(ms[j]) for k, j in row["index"].items()}
            row[f"ratio_{t}t"] = {k: float(ms[j] / ms[row["index"]["fp32"]]) for k, j in row["index"].items()
                                  if k != "fp32"}
        print(f"  timed at {t} thread(s)", flush=True)
    summary = {}
    for t in threads:
        for key in sorted({(row["space"], row["r"]) for row in rows}):
            sel = [row for row in rows if (row["space"], row["r"]) == key]
            summary[f"{key[0]} r{key[1]} {t}t"] = {
                v: {"median": float(np.median([row[f"ratio_{t}t"][v] for row in sel])),
                    "min": float(np.min([row[f"ratio_{t}t"][v] for row in sel])),
                    "max": float(np.max([row[f"ratio_{t}t"][v] for row in sel]))}
                for v in variants[1:] if v in sel[0][f"ratio_{t}t"]}
    # why: where the time goes in one 224 px net (the first random mbv3 one) and the proxyless one
    why = {}
    for row in rows:
        if row["net"] == "random0" and row["r"] == 224:
            why[row["space"]] = {k: op_times(models[j], 224) for k, j in row["index"].items()
                                 if k in ("fp32", "int8")}
    for row in rows:
        del row["index"]
    return {"machine": machine(), "threads": threads, "rounds": args.rounds, "seed": args.seed,
            "summary_int8_over_fp32": summary, "op_time_ms_224px": why, "nets": rows}


# ------------------------------------------------------------------------------------------- ranking
def bench_rank(args) -> dict:
    space = get_space(args.space)
    rng = random.Random(args.seed)
    archs = [space.sample(rng) for _ in range(args.n)]
    models, shapes = [], []
    for i, a in enumerate(archs):
        spec = space.net_spec(a)
        fp32 = _onnx(spec)
        models += [fp32, quantize_for_timing(fp32, np.random.default_rng(0).standard_normal(
            (1, 3, a.r, a.r)).astype(np.float32))]
        shapes += [(3, a.r, a.r)] * 2
        if (i + 1) % 10 == 0:
            print(f"  quantized {i + 1}/{args.n}", flush=True)
    ms = measure_modules(models, shapes, threads=1, rounds=args.rounds)
    fp32, int8 = ms[0::2], ms[1::2]
    from elastic.complexity import macs

    m = macs(space, archs)
    ratio = int8 / fp32
    by_r = {int(r): float(np.median(ratio[[a.r == r for a in archs]])) for r in sorted({a.r for a in archs})}
    # what a search would do differently: of the pairs the two latencies order differently, how far apart
    disagree = [(i, j) for i in range(len(archs)) for j in range(i + 1, len(archs))
                if (fp32[i] - fp32[j]) * (int8[i] - int8[j]) < 0]
    return {"machine": machine(), "space": space.name, "n": args.n, "seed": args.seed, "rounds": args.rounds,
            "threads": 1, "kendall_tau_fp32_int8": kendall_tau(fp32, int8),
            "kendall_tau_macs_fp32": kendall_tau(m, fp32), "kendall_tau_macs_int8": kendall_tau(m, int8),
            "ratio_int8_over_fp32": {"median": float(np.median(ratio)), "min": float(ratio.min()),
                                     "max": float(ratio.max()), "by_resolution": by_r},
            "discordant_pairs": len(disagree), "pairs": len(archs) * (len(archs) - 1) // 2,
            "archs": [a.to_dict() for a in archs], "fp32_ms": fp32.tolist(), "int8_ms": int8.tolist()}


# ------------------------------------------------------------------------------------------- accuracy
def bench_accuracy(args) -> dict:
    from ofa.imagefolder import load_data_arg
    from ofa.int8_export import calibration_images, choose_float_parts, fresh_export, paired_figures, predictions
    from ofa.specialized import read_meta

    bundle = load_data_arg(args.data) if args.data else None
    out = {"machine": machine(), "data": args.data, "nets": []}
    for path in args.nets.split(","):
        folder, meta = read_meta(path)
        fp32 = fresh_export(folder, meta).read_bytes()
        if bundle is None:
            from ofa.int8_export import _data_of

            bundle = _data_of(folder, meta, None)
        r = int(meta["input"]["resolution"])
        pre = prepare(fp32)
        row = {"folder": str(folder), "arch": meta["arch"], "r": r, "val": {}, "seed": args.seed}
        # validation: weight range and calibration size
        calib = {n: calibration_images(bundle, r, n, seed=args.seed) for n in (100, 300, 1000)}
        variants = {f"calib {n}, {'7' if rr else '8'}-bit weights": quantize(fp32, calib[n], prepared=pre,
                                                                              reduce_range=rr)
                    for n in (100, 300, 1000) for rr in (True, False)}
        preds, y = predictions([fp32, *variants.values()], bundle, "val", r)
        row["val"]["images"] = int(len(y))
        row["val"]["fp32_accuracy"] = float((preds[0] == y).mean())
        row["val"]["variants"] = {k: {"accuracy": float((p == y).mean()), "agreement": float((p == preds[0]).mean())}
                                  for k, p in zip(variants, preds[1:])}
        # validation: parts left float (the library's choice, forced to score every part with tolerance -1)
        parts, chosen, record = choose_float_parts(fp32, pre, calib[300], bundle, r, tolerance=args.tolerance,
                                                   val_images=len(bundle.val))
        row["val"]["float_part_choice"] = record
        all_int8 = quantize(fp32, calib[300], prepared=pre)
        # test, once: fp32, all-int8, the chosen parts float
        (p32, p8, pc), yt = predictions([fp32, all_int8, chosen], bundle, "test", r)
        row["test"] = {"all_int8": paired_figures(p32, p8, yt), "chosen": {**paired_figures(p32, pc, yt),
                                                                           "float_parts": parts}}
        for t in (1, 2):
            ms = measure_modules([fp32, all_int8, chosen], [(3, r, r)] * 3, threads=t, rounds=args.rounds)
            row[f"latency_{t}t_ms"] = {"fp32": float(ms[0]), "all_int8": float(ms[1]), "chosen": float(ms[2]),
                                       "ratio_all_int8": float(ms[1] / ms[0]), "ratio_chosen": float(ms[2] / ms[0])}
        row["coverage"] = {k: v for k, v in int8_coverage(all_int8).items() if k != "ops"}
        out["nets"].append(row)
        print(f"  {folder.name}: test fp32 {100 * row['test']['all_int8']['fp32_accuracy']:.2f}%, all-int8 "
              f"{100 * row['test']['all_int8']['int8_accuracy']:.2f}%, chosen ({', '.join(parts) or 'none'}) "
              f"{100 * row['test']['chosen']['int8_accuracy']:.2f}%; "
              f"1t ratio {row['latency_1t_ms']['ratio_all_int8']:.2f}",
              flush=True)
    return out


# ------------------------------------------------------------------------------------------- search gain
def bench_search(args) -> dict:
    import ofa
    from ofa.specialized import load
    from predictors.latency import get_latency_predictor
    from predictors.profiles import load_profile
    from ofa.run_dir import RunDir

    sp = RunDir(args.run).load_space()
    p32, p8 = load_profile(args.fp32_device), load_profile(args.int8_device)
    ratio = float(np.median(np.array(p8.extra["measured_ms"]) / np.array(p32.extra["measured_ms"])))
    budgets = [float(b) for b in args.budgets.split(",")]
    lat8 = get_latency_predictor(p8, sp)
    rows, nets = [], []
    for b in budgets:
        (by8,) = ofa.specialize(args.run, device=args.int8_device, latency=f"{b}ms", measure=False,
                                out_dir=Path(args.out_dir) / "int8", seed=args.seed)
        (by32,) = ofa.specialize(args.run, device=args.fp32_device, latency=f"{b / ratio:.4f}ms", measure=False,
                                 out_dir=Path(args.out_dir) / "fp32", seed=args.seed)
        rows.append({"int8_budget_ms": b, "fp32_budget_ms": b / ratio,
                     "int8_search": {"arch": by8.arch.to_dict(), "predicted_accuracy": by8.predicted_accuracy,
                                     "test_accuracy_fp32": by8.test_accuracy,
                                     "predicted_int8_ms": float(lat8.predict([by8.arch])[0])},
                     "fp32_search": {"arch": by32.arch.to_dict(), "predicted_accuracy": by32.predicted_accuracy,
                                     "test_accuracy_fp32": by32.test_accuracy,
                                     "predicted_int8_ms": float(lat8.predict([by32.arch])[0])}})
        nets += [load(by8.path).net_spec, load(by32.path).net_spec]
    from predictors.measure import measure_nets

    ms = measure_nets(nets, precision="int8", rounds=args.rounds)
    for i, row in enumerate(rows):
        row["int8_search"]["measured_int8_ms"] = float(ms[2 * i])
        row["fp32_search"]["measured_int8_ms"] = float(ms[2 * i + 1])
    return {"machine": machine(), "run": args.run, "fp32_device": p32.name, "int8_device": p8.name,
            "median_int8_over_fp32_on_profile_nets": ratio, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("latency")
    a.add_argument("--threads", default="1,2")
    a.add_argument("--per-resolution", type=int, default=4, help="random subnets per resolution (besides the "
                                                                 "largest and smallest)")
    a.add_argument("--rounds", type=int, default=12)
    a.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("rank")
    b.add_argument("--space", default="mbv3-w1.0")
    b.add_argument("--n", type=int, default=100)
    b.add_argument("--rounds", type=int, default=8)
    b.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("accuracy")
    c.add_argument("--nets", required=True, help="specialized folders (comma-separated) with model.onnx")
    c.add_argument("--data", default=None, help="data to use instead of the nets' own (e.g. fashion-mnist: full "
                                                "validation/test splits where the run capped them)")
    c.add_argument("--tolerance", type=float, default=-1.0, help="-1: score every part (the record shows them all)")
    c.add_argument("--rounds", type=int, default=20)
    c.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("search")
    d.add_argument("--run", required=True)
    d.add_argument("--fp32-device", default="cpu")
    d.add_argument("--int8-device", default="cpu-int8")
    d.add_argument("--budgets", required=True, help="int8 latency budgets, ms (comma-separated)")
    d.add_argument("--out-dir", default="/tmp/int8/search")
    d.add_argument("--rounds", type=int, default=20)
    d.add_argument("--seed", type=int, default=0)
    for p in (a, b, c, d):
        p.add_argument("--out", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = {"latency": bench_latency, "rank": bench_rank, "accuracy": bench_accuracy, "search": bench_search}[
        args.what](args)
    result["command"] = " ".join(["python3", "bench/int8_quality.py", *sys.argv[1:]])
    result["seconds"] = time.perf_counter() - t0
    name = {"latency": "int8_latency", "rank": f"int8_rank_{getattr(args, 'space', '')}", "accuracy": "int8_accuracy",
            "search": "int8_search"}[args.what]
    path = Path(args.out) if args.out else RESULTS / f"{name}.json"
    write_json_atomic(path, result)
    print(f"wrote {path} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
