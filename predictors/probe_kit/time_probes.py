#!/usr/bin/env python3
"""Time the probe networks of this folder with ONNX Runtime and write timings.csv (needs python3, numpy and
onnxruntime only; part of the probe kit written by `ofa profile probes`).

Every probe gets its own session and `--warmup` untimed runs; then `--rounds` rounds visit all probes in
turn, each turn `--turn-warmup` untimed runs and `--repeats` timed ones. A probe's latency is the median over
rounds of each round's fastest run: a run disturbed by something else on the device is slow, never fast, and
spreading each probe's runs over the whole session lets slow drifts (heat, other load) hit all probes alike.

    python3 time_probes.py                          # all probes, 1 thread, CPU provider -> timings.csv
    python3 time_probes.py --threads 4 --provider CPUExecutionProvider --out timings_4t.csv
    python3 time_probes.py --only p000,p001 --rounds 5
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

MANIFEST_VERSION = 1


def parse_args(argv=None):
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=here, help="probe folder (default: this script's folder)")
    ap.add_argument("--out", type=Path, default=None, help="CSV to write (default: DIR/timings.csv)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    ap.add_argument("--provider", default="CPUExecutionProvider",
                    help="onnxruntime execution provider, e.g. CPUExecutionProvider, CUDAExecutionProvider")
    ap.add_argument("--warmup", type=int, default=10, help="untimed runs per probe after its session is built")
    ap.add_argument("--rounds", type=int, default=20, help="rounds over all probes")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per probe per round")
    ap.add_argument("--turn-warmup", type=int, default=2, help="untimed runs at the start of each probe's turn")
    ap.add_argument("--only", default=None, help="comma-separated probe ids (default: all)")
    args = ap.parse_args(argv)
    for name in ("threads", "rounds", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.turn_warmup < 0:
        ap.error("--warmup and --turn-warmup must be >= 0")
    return args


def load(folder: Path, only):
    path = folder / "manifest.json"
    if not path.is_file():
        sys.exit(f"error: no manifest.json in {folder}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != "ofa-probes" or manifest.get("version") != MANIFEST_VERSION:
        sys.exit(f"error: {path} is not a version-{MANIFEST_VERSION} probe manifest")
    probes = manifest["probes"]
    if only:
        wanted = [s.strip() for s in only.split(",") if s.strip()]
        known = {p["id"] for p in probes}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            sys.exit(f"error: unknown probe id(s) {', '.join(unknown)}")
        probes = [p for p in probes if p["id"] in wanted]
    for p in probes:
        data = (folder / p["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != p["sha256"]:
            sys.exit(f"error: {p['file']} does not match its checksum in manifest.json")
    return manifest, probes


def session(path: Path, threads: int, provider: str):
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        sys.exit(f"error: provider {provider} is not available; this onnxruntime has "
                 f"{', '.join(ort.get_available_providers())}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=[provider])


def main(argv=None) -> None:
    args = parse_args(argv)
    folder = args.dir.resolve()
    manifest, probes = load(folder, args.only)
    rng = np.random.default_rng(0)
    runs = []
    for i, p in enumerate(probes):
        sess = session(folder / p["file"], args.threads, args.provider)
        feed = {sess.get_inputs()[0].name: rng.standard_normal(p["input_shape"]).astype(np.float32)}
        for _ in range(args.warmup):
            sess.run(None, feed)
        runs.append((p, sess, feed, []))
        print(f"\rloaded {i + 1}/{len(probes)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for rd in range(args.rounds):
        for p, sess, feed, best in runs:
            for _ in range(args.turn_warmup):
                sess.run(None, feed)
            fastest = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                sess.run(None, feed)
                fastest = min(fastest, time.perf_counter() - t0)
            best.append(fastest * 1e3)
        print(f"\rround {rd + 1}/{args.rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out = args.out or folder / "timings.csv"
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["network", "latency_ms", "batch", "space", "manifest", "provider", "threads", "rounds"])
        for p, _, _, best in runs:
            w.writerow([p["id"], f"{float(np.median(best)):.6g}", manifest["batch"], manifest["space"]["name"],
                        manifest["id"], args.provider, args.threads, args.rounds])
    os.replace(tmp, out)
    print(f"wrote {len(runs)} timings to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
