"""Few-shot device profiles (`ofa profile fit`): learning curves on simulated devices and on published nets.

Part A, devices simulated on this machine (space mbv3-w1.0: 1-10 ms networks at one thread; sub-ms timings do
not reproduce here, see NUMBERS.md), unlike the prior in kind:
  ort1    ONNX Runtime fp32, 1 thread: the prior's own device (the `cpu` profile is fit on it, as `ofa profile`
          does: 100 random subnets, 20 more to check it);
  ort2    ONNX Runtime fp32, 2 threads (wall clock);
  int8    ONNX Runtime, the subnets quantized to int8 (`predictors.quantize`, static QDQ), 1 thread;
  torch1  PyTorch eager, 1 thread (per-op dispatch overhead the ONNX graphs do not have; since 2026-12-06 timed
          with freed memory kept in the process, as `measure_modules` does for PyTorch on the CPU).
Per device one interleaved timing session holds the 40 stratified probes (`ofa profile probes`' choice, seed 0),
40 random validation subnets and 100 random fresh test subnets. For k = 3, 5, 10, 20, 40 timed probes (20
random k-subsets, always with the smallest and the largest probe; k = 40 is the one full set), a profile is fit
with no prior and with the `cpu` prior (ort1 gets no prior: it is the prior's device) and scored on the fresh
subnets: MAPE, share within 10%, Kendall tau, Spearman rho. The candidate models and the choice rule
(`predictors.fewshot`) were fixed before any of these timings; the validation subnets are scored beside the
fresh ones, to show what a choice made on them would have seen. Also: the same 20 archs with two draws of
random weights timed in the ort1 session (latency does not depend on the weights).

Part B, published devices (no timing): note10 as prior for pixel1 and back.
  B1  the published nets (tests/data/latency/published_nets, latency = the figure in the name): leave-one-out,
      the profile fit on the others with the other device as prior;
  B2  model against model on >= 100 fresh nets: the shipped pixel1 profile plays the device, note10 the prior
      (and back), on mbv3-w1.2 at 160-224 px (inside both profiles' domains); same curves as part A.

    cpuslot python3 bench/device_fewshot.py export            # archs + ONNX / int8 files into --work
    cpuslot -x python3 bench/device_fewshot.py time --device ort1    (then ort2, int8, torch1)
    python3 bench/device_fewshot.py analyze                   # -> bench/results/device_fewshot.json (+ .png)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elastic.arch import Arch  # noqa: E402
from elastic.spaces import get_space  # noqa: E402
from predictors.fewshot import fit_timings  # noqa: E402
from predictors.metrics import latency_quality  # noqa: E402
from predictors.latency import LatencyPredictor, get_latency_predictor  # noqa: E402
from predictors.layer_regression import LayerRegression, fit_relative  # noqa: E402
from predictors.layers import net_features  # noqa: E402
from predictors.net_config import load_net_config  # noqa: E402
from predictors.probes import stratified_archs  # noqa: E402
from predictors.atomic_files import write_json_atomic  # noqa: E402
from predictors.profiles import Profile, load_profile  # noqa: E402

SPACE = "mbv3-w1.0"
KS = (3, 5, 10, 20, 40)
REPS = 20
DEVICES = ("ort1", "ort2", "int8", "torch1")
RESULTS = ROOT / "bench" / "results"
PUBLISHED = ROOT / "tests" / "data" / "latency" / "published_nets"


# ---- the networks -------------------------------------------------------------------------------------------
def arch_sets(space) -> dict[str, list[Arch]]:
    """probes (stratified), dev and fresh (uniform random), priorfit (100 + 20 uniform random), all distinct."""
    seen = set()

    def distinct(archs):
        out = []
        for a in archs:
            key = space.canonical(a)
            if key not in seen:
                seen.add(key)
                out.append(a)
        return out

    def uniform(n, seed):
        rng = random.Random(seed)
        out = []
        while len(out) < n:
            out += distinct([space.sample(rng)])
        return out

    sets = {"probes": distinct(stratified_archs(space, 40, seed=0))}
    sets["dev"] = uniform(40, 101)
    sets["fresh"] = uniform(100, 102)
    # as `ofa profile` draws them: the largest and the smallest first, then random; 100 to fit, 20 to check
    sets["priorfit"] = [space.largest(), space.smallest()] + uniform(118, 103)
    return sets


def export(work: Path) -> None:
    import torch

    from predictors.measure import build_module, export_onnx
    from predictors.quantize import quantize_for_timing

    torch.set_num_threads(1)
    space = get_space(SPACE)
    sets = arch_sets(space)
    work.mkdir(parents=True, exist_ok=True)
    (work / "archs.json").write_text(json.dumps({k: [a.to_dict() for a in v] for k, v in sets.items()}))
    jobs = [(k, i, a) for k in ("probes", "dev", "fresh", "priorfit") for i, a in enumerate(sets[k])]
    jobs += [("weights2", i, a) for i, a in enumerate(sets["fresh"][:20])]
    t0 = time.perf_counter()
    for j, (kind, i, arch) in enumerate(jobs):
        f = work / f"{kind}_{i:03d}.onnx"
        q = work / f"{kind}_{i:03d}.int8.onnx"
        if f.exists() and (kind in ("priorfit", "weights2") or q.exists()):
            continue
        net = space.net_spec(arch)
        torch.manual_seed(1000 + i if kind == "weights2" else i)
        x = torch.randn(1, 3, arch.r, arch.r)
        data = export_onnx(build_module(net), x)
        f.write_bytes(data)
        if kind in ("probes", "dev", "fresh"):
            q.write_bytes(quantize_for_timing(data, x.numpy()))
        print(f"\r{j + 1}/{len(jobs)} exported ({time.perf_counter() - t0:.0f} s)", end="", flush=True)
    print()


def _load(work: Path):
    space = get_space(SPACE)
    sets = {k: [Arch.from_dict(a) for a in v] for k, v in json.loads((work / "archs.json").read_text()).items()}
    return space, sets


def time_device(work: Path, device: str, rounds: int, tag: str = "") -> None:
    import torch

    from predictors.measure import build_module, measure_modules

    space, sets = _load(work)
    order = [("probes", i) for i in range(40)] + [("dev", i) for i in range(40)] + [("fresh", i) for i in range(100)]
    if device == "ort1" and not tag:
        order += [("weights2", i) for i in range(20)]
    def arch_of(kind: str, i: int) -> Arch:   # weights2: the first fresh archs with other random weights
        return sets["fresh" if kind == "weights2" else kind][i]

    shapes = [(3, arch_of(k, i).r, arch_of(k, i).r) for k, i in order]
    if device == "torch1":
        models = []
        for k, i in order:
            torch.manual_seed(1000 + i if k == "weights2" else i)
            models.append(build_module(space.net_spec(arch_of(k, i))))
        runtime, threads = "torch", 1
    else:
        suffix = ".int8.onnx" if device == "int8" else ".onnx"
        models = [(work / f"{k}_{i:03d}{suffix}").read_bytes() for k, i in order]
        runtime, threads = "onnxruntime", (2 if device == "ort2" else 1)
    t0 = time.perf_counter()
    ms = measure_modules(models, shapes, runtime=runtime, threads=threads, rounds=rounds,
                         progress=lambda i, n: print(f"\r{device}: {i}/{n}", end="", flush=True))
    print(f"\n{device}: {len(order)} nets timed in {time.perf_counter() - t0:.0f} s")
    out = {"device": device, "runtime": runtime, "threads": threads, "rounds": rounds, "seconds": time.perf_counter() - t0,
           "date": time.strftime("%Y-%m-%d %H:%M"), "ms": {f"{k}_{i:03d}": float(v) for (k, i), v in zip(order, ms)}}
    if device == "ort1" and not tag:   # the prior's own fitting session, as `ofa profile` times it
        pf = sets["priorfit"]
        pms = measure_modules([(work / f"priorfit_{i:03d}.onnx").read_bytes() for i in range(len(pf))],
                              [(3, a.r, a.r) for a in pf], rounds=rounds)
        out["priorfit_ms"] = [float(v) for v in pms]
    write_json_atomic(work / f"timings_{device}{'_' + tag if tag else ''}.json", out)


# ---- fitting and scoring ------------------------------------------------------------------------------------
def fit_prior(space, sets, pms: list[float]) -> Profile:
    """The `cpu` profile: the per-layer regression fit on 100 subnets (as `ofa profile`), checked on 20 more."""
    nets = [space.net_spec(a) for a in sets["priorfit"]]
    F = np.stack([net_features(n) for n in nets])
    y = np.asarray(pms)
    n_fit = len(nets) - 20
    coef = fit_relative(F[:n_fit], y[:n_fit])
    q = latency_quality(y[n_fit:], F[n_fit:] @ coef, within=(0.10,))
    return Profile(name="cpu", kind="measured", unit="ms", families=("mbv3",), space=SPACE,
                   regression=LayerRegression(coef), error={"summary": "bench prior", "test": q})


def evaluate(pred: LatencyPredictor, nets, ms) -> dict:
    from scipy.stats import spearmanr

    p = np.array([pred.predict_net(n) for n in nets])
    q = latency_quality(np.asarray(ms), p, within=(0.10,))
    q["spearman"] = float(spearmanr(p, ms).statistic)
    return q


def evaluate_pairs(pred, real) -> dict:
    """The same scores for one measurement taken as the prediction of another."""
    from scipy.stats import spearmanr

    q = latency_quality(np.asarray(real), np.asarray(pred), within=(0.10,))
    q["spearman"] = float(spearmanr(pred, real).statistic)
    return q


def curve(probe_nets, probe_ms, dev_nets, dev_ms, fresh_nets, fresh_ms, prior, seed=0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    n = len(probe_nets)
    for k in KS:
        reps = 1 if k >= n else REPS
        per = []
        for r in range(reps):
            idx = np.arange(n) if k >= n else np.r_[0, 1, 2 + rng.choice(n - 2, k - 2, replace=False)]
            prof = fit_timings([probe_nets[i] for i in idx], [probe_ms[i] for i in idx], "bench", prior=prior)
            pred = LatencyPredictor(prof)
            per.append({"model": prof.error["chosen"], "loo": prof.error["loo"],
                        "dev": evaluate(pred, dev_nets, dev_ms) if dev_nets else None,
                        "fresh": evaluate(pred, fresh_nets, fresh_ms)})
        rows.append({"k": k, "reps": reps, "runs": per, "summary": summarize(per)})
    return rows


def summarize(per: list[dict]) -> dict:
    out = {}
    for split in ("fresh", "dev", "loo"):
        if per[0].get(split) is None:
            continue
        for m in ("mape_pct", "within_10pct", "kendall_tau", "spearman"):
            vals = np.array([r[split][m] for r in per if m in r[split]])
            if len(vals):
                out[f"{split}_{m}"] = {"mean": float(vals.mean()), "p10": float(np.percentile(vals, 10)),
                                       "p90": float(np.percentile(vals, 90))}
    models: dict[str, int] = {}
    for r in per:
        models[r["model"]] = models.get(r["model"], 0) + 1
    out["models"] = models
    return out


def analyze(work: Path) -> dict:
    space, sets = _load(work)
    nets = {k: [space.net_spec(a) for a in v] for k, v in sets.items()}
    res: dict = {"space": SPACE, "ks": list(KS), "reps": REPS, "part_a": {}, "part_b": {}}
    timings = {d: json.loads((work / f"timings_{d}.json").read_text()) for d in DEVICES
               if (work / f"timings_{d}.json").exists()}
    prior = None
    if "ort1" in timings:
        prior = fit_prior(space, sets, timings["ort1"]["priorfit_ms"])
        res["prior"] = {"fit_on": len(sets["priorfit"]) - 20, "test": prior.error["test"]}
        t = timings["ort1"]["ms"]
        a = np.array([t[f"fresh_{i:03d}"] for i in range(20)])
        b = np.array([t[f"weights2_{i:03d}"] for i in range(20)])
        res["weights"] = {"n": 20, "ratio_mean": float((b / a).mean()), "abs_diff_pct_mean": float(100 * np.abs(b / a - 1).mean()),
                          "abs_diff_pct_max": float(100 * np.abs(b / a - 1).max())}
    for d, t in timings.items():
        ms = {k: [t["ms"][f"{k}_{i:03d}"] for i in range(len(sets[k]))] for k in ("probes", "dev", "fresh")}
        entry = {"settings": {k: t[k] for k in ("runtime", "threads", "rounds", "seconds", "date")},
                 "fresh_range_ms": [min(ms["fresh"]), max(ms["fresh"])]}
        entry["no_prior"] = curve(nets["probes"], ms["probes"], nets["dev"], ms["dev"], nets["fresh"], ms["fresh"], None)
        if prior is not None and d != "ort1":
            entry["prior_cpu"] = curve(nets["probes"], ms["probes"], nets["dev"], ms["dev"], nets["fresh"],
                                       ms["fresh"], prior)
            entry["prior_alone"] = evaluate(LatencyPredictor(prior), nets["fresh"], ms["fresh"])
        rep = work / f"timings_{d}_rep.json"
        if rep.exists():   # a second session of the same nets: how far one measurement is from another
            r = json.loads(rep.read_text())
            again = [r["ms"][f"fresh_{i:03d}"] for i in range(len(sets["fresh"]))]
            full = LatencyPredictor(fit_timings(nets["probes"], ms["probes"], "bench", prior=None))
            entry["repeat_session"] = {"date": r["date"], "session2_vs_session1": evaluate_pairs(again, ms["fresh"]),
                                       "k40_no_prior_vs_session2": evaluate(full, nets["fresh"], again)}
        res["part_a"][d] = entry
    res["part_b"] = published_part()
    return res


def published_part() -> dict:
    out = {}
    # B1: the published nets, leave one out
    for dev, prior_name in (("pixel1", "note10"), ("note10", "pixel1")):
        files = sorted(PUBLISHED.glob(f"{dev}_lat-*.json"))
        nets = [load_net_config(f) for f in files]
        ms = [float(re.search(r"lat-(\d+)ms", f.name).group(1)) for f in files]
        prior = load_profile(prior_name)
        rows = []
        for i in range(len(nets)):
            keep = [j for j in range(len(nets)) if j != i]
            prof = fit_timings([nets[j] for j in keep], [ms[j] for j in keep], "b1", prior=prior)
            p = LatencyPredictor(prof).predict_net(nets[i])
            rows.append({"net": files[i].stem, "published_ms": ms[i], "pred_ms": p, "err_pct": 100 * (p - ms[i]) / ms[i],
                         "model": prof.error["chosen"], "fit_on": len(keep),
                         "prior_alone_ms": LatencyPredictor(prior).predict_net(nets[i])})
        out[f"B1_{dev}_from_{prior_name}"] = rows
    # B2: model against model, mbv3-w1.2 at 160-224 px
    space = replace(get_space("mbv3-w1.2"), resolutions=(160, 176, 192, 208, 224))
    probes = [space.net_spec(a) for a in stratified_archs(space, 40, seed=0)]
    rng = random.Random(5)
    fresh = [space.net_spec(space.sample(rng)) for _ in range(100)]
    for dev, prior_name in (("pixel1", "note10"), ("note10", "pixel1")):
        device = get_latency_predictor(dev)
        pms = [device.predict_net(n) for n in probes]
        fms = [device.predict_net(n) for n in fresh]
        prior = load_profile(prior_name)
        out[f"B2_{dev}_from_{prior_name}"] = {
            "prior": curve(probes, pms, [], [], fresh, fms, prior),
            "no_prior": curve(probes, pms, [], [], fresh, fms, None),
            "prior_alone": evaluate(LatencyPredictor(prior), fresh, fms),
        }
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for c, (d, e) in enumerate(res["part_a"].items()):
        for key, style in (("no_prior", "--"), ("prior_cpu", "-")):
            if key not in e:
                continue
            ks = [r["k"] for r in e[key]]
            axes[0].plot(ks, [100 * r["summary"]["fresh_within_10pct"]["mean"] for r in e[key]], style, marker="o",
                         color=f"C{c}", label=f"{d} {'prior cpu' if key == 'prior_cpu' else 'no prior'}")
            axes[1].plot(ks, [r["summary"]["fresh_kendall_tau"]["mean"] for r in e[key]], style, marker="o",
                         color=f"C{c}")
    for ax, title in zip(axes, ("fresh nets within 10% (%)", "Kendall tau on fresh nets")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(KS, [str(k) for k in KS])
        ax.set_xlabel("timed probes")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def report(res: dict) -> None:
    for d, e in res["part_a"].items():
        print(f"{d}: fresh nets {e['fresh_range_ms'][0]:.2f}-{e['fresh_range_ms'][1]:.2f} ms")
        if "prior_alone" in e:
            q = e["prior_alone"]
            print(f"  prior alone: MAPE {q['mape_pct']:.1f}%, within 10% {100 * q['within_10pct']:.0f}%, tau {q['kendall_tau']:.3f}")
        if "repeat_session" in e:
            a_, b_ = e["repeat_session"]["session2_vs_session1"], e["repeat_session"]["k40_no_prior_vs_session2"]
            print(f"  second session vs first: within 10% {100 * a_['within_10pct']:.0f}%, tau {a_['kendall_tau']:.3f}; "
                  f"k=40 profile vs second session: {100 * b_['within_10pct']:.0f}%, tau {b_['kendall_tau']:.3f}")
        for key in ("no_prior", "prior_cpu"):
            for r in e.get(key, []):
                s = r["summary"]
                print(f"  {key:9s} k={r['k']:2d}: fresh MAPE {s['fresh_mape_pct']['mean']:5.1f}%  within10 "
                      f"{100 * s['fresh_within_10pct']['mean']:5.1f}% [{100 * s['fresh_within_10pct']['p10']:.0f}-"
                      f"{100 * s['fresh_within_10pct']['p90']:.0f}]  tau {s['fresh_kendall_tau']['mean']:.3f}  rho "
                      f"{s['fresh_spearman']['mean']:.3f}  models {s['models']}")
    for name, v in res["part_b"].items():
        if name.startswith("B1"):
            print(name, [(r["net"].split("_")[1], round(r["err_pct"], 1), r["model"]) for r in v])
        else:
            for key in ("no_prior", "prior"):
                for r in v[key]:
                    s = r["summary"]
                    print(f"{name} {key:8s} k={r['k']:2d}: within10 {100 * s['fresh_within_10pct']['mean']:5.1f}% "
                          f"tau {s['fresh_kendall_tau']['mean']:.3f} MAPE {s['fresh_mape_pct']['mean']:.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phase", choices=("export", "time", "analyze"))
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "device-fewshot")
    ap.add_argument("--device", choices=DEVICES)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--tag", default="", help="time: a second session of the same nets (timings_DEVICE_TAG.json), "
                                              "for the measurement-vs-measurement ceiling")
    args = ap.parse_args()
    if args.phase == "export":
        export(args.work)
    elif args.phase == "time":
        if args.device is None:
            ap.error("time needs --device")
        time_device(args.work, args.device, args.rounds, args.tag)
    else:
        res = analyze(args.work)
        res["machine"] = "2-core shared VM, no GPU"
        res["command"] = "python3 bench/device_fewshot.py export|time|analyze"
        write_json_atomic(RESULTS / "device_fewshot.json", res)
        plot(res, RESULTS / "device_fewshot.png")
        report(res)


if __name__ == "__main__":
    main()
