#!/usr/bin/env bash
# bench/gpu_check.sh [OUT_DIR] [--dry-run]
#
# The GPU checks of issue 22, sized for one lent GPU machine: at most 8 minutes in all (each step has its own
# time limit; a step that runs out leaves what it measured and the others still run). Figures land as JSON in
# OUT_DIR (default: $OUT, else bench/results/gpu_check), at most 8 files:
#   env.json         GPU, driver, torch, the packages the project imports
#   gpu_tests.json   pytest -m gpu tests/test_gpu.py: the whole chain on cuda (train fp32/bf16/fp16, resume,
#                    fit-predictor, specialize evolution + proxyless, proxyless-search), pass/fail counts
#   throughput.json  full-stage training throughput at 224 px, mbv3-w1.0 largest subnet, batch 256, 1000 classes:
#                    fp32 vs bf16 x channels-last vs NCHW (bench/gpu_throughput.py, interleaved rounds)
#   stage_all.json   a short `ofa train --stage all --schedule quick` on Fashion-MNIST at batch 256 on the GPU
#                    (bf16), its img/s per stage and stage-end accuracies, then fit-predictor (40 subnets) and
#                    specialize (pixel1, 3 and 4.5 ms) on --compute-device cuda
#   ddp.json         with 2+ GPUs: NCCL DDP on 2 GPUs equals 1 GPU (frozen BN), and fit-predictor on 2 ranks
#                    gives the 1-rank dataset; with 1 GPU: skipped, saying so
#   summary.json     every step's exit code and seconds;  log.txt  everything the steps printed
#
# Fashion-MNIST: /usr/share/datasets/fashion-mnist, else $OFA_FMNIST_DIR, else checkpoints/fashion-mnist (copy the
# four .gz files there and name that folder in the device tool's `carry`); without it the step uses digits.
# The project need not be installed: PYTHONPATH points at this checkout.
#
# --dry-run: the same steps on the CPU with tiny sizes (tests with OFA_GPU_TESTS_DEVICE=cpu, throughput at 32 px,
# --stage all on digits, DDP with 2 gloo processes): checks this script on a machine without a GPU; its figures
# measure nothing.
set -uo pipefail

DRY=0
OUTDIR=""
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) OUTDIR="$a" ;;
  esac
done
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUTDIR=${OUTDIR:-${OUT:-$REPO/bench/results/gpu_check}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
LOG="$OUTDIR/log.txt"
STEPS="$WORK/steps.jsonl"
: > "$LOG"
: > "$STEPS"
T_START=$(date +%s)

if [ "$DRY" = 1 ]; then
  DEV=cpu; export OFA_GPU_TESTS_DEVICE=cpu OMP_NUM_THREADS=1
  PREC=fp32; BATCH=16; FIT_SAMPLES=16; DATA=(--data digits --subset 128 --eval-size 64)
  TRAIN_SIZE=(--space mbv3-w1.0-small --resolutions 16,20 --max-steps 2 --threads 1)
  FIT_SIZE=(--calib-images 64 --limit 64 --threads 1); SPEC_SIZE=(--latency 3ms)
  LIMIT_TESTS=1200; LIMIT_TP=300; LIMIT_TRAIN=900; LIMIT_FIT=300; LIMIT_SPEC=300; LIMIT_DDP=600
else
  DEV=cuda; PREC=bf16; BATCH=256; FIT_SAMPLES=40
  FM=""
  for d in /usr/share/datasets/fashion-mnist "${OFA_FMNIST_DIR:-}" "$REPO/checkpoints/fashion-mnist"; do
    if [ -n "$d" ] && [ -f "$d/train-images-idx3-ubyte.gz" ]; then FM=$d; break; fi
  done
  if [ -n "$FM" ]; then DATA=(--data fashion-mnist --data-root "$WORK/fmnist"); mkdir -p "$WORK/fmnist"; cp "$FM"/*.gz "$WORK/fmnist/"
  else DATA=(--data digits); echo "Fashion-MNIST not found: the stage-all step uses digits" | tee -a "$LOG"; fi
  TRAIN_SIZE=(); FIT_SIZE=(--calib-images 1000 --limit 2000); SPEC_SIZE=(--latency 3ms,4.5ms)
  LIMIT_TESTS=140; LIMIT_TP=80; LIMIT_TRAIN=140; LIMIT_FIT=25; LIMIT_SPEC=25; LIMIT_DDP=60
fi

# step NAME LIMIT_S CMD...: run CMD with a time limit, its output into log.txt, its exit code and seconds recorded
step() {
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" >> "$LOG"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  printf '{"step": "%s", "rc": %d, "seconds": %s, "limit_s": %s}\n' "$name" "$rc" \
    "$(awk "BEGIN {print $t1 - $t0}")" "$limit" >> "$STEPS"
  echo "   $name: rc $rc" | tee -a "$LOG"
  return 0
}

# ---- 1. environment -------------------------------------------------------------------------------------
step env 30 "$PY" - "$OUTDIR/env.json" "$DRY" <<'EOF'
import importlib, json, platform, subprocess, sys
import torch
doc = {"dry_run": sys.argv[2] == "1", "python": platform.python_version(), "torch": torch.__version__,
       "cuda_available": torch.cuda.is_available(), "gpus": [], "packages": {}}
if torch.cuda.is_available():
    doc["cuda"] = torch.version.cuda
    doc["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        doc["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
for name in ("timm", "torchvision", "typer", "safetensors", "sklearn", "onnx", "onnxruntime", "rich", "yaml",
             "matplotlib", "scipy", "hypothesis"):
    try:
        doc["packages"][name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception as exc:
        doc["packages"][name] = f"MISSING ({type(exc).__name__})"
json.dump(doc, open(sys.argv[1], "w"), indent=2)
print(json.dumps(doc))
EOF
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

# ---- 2. the gpu tests -----------------------------------------------------------------------------------
step gpu_tests "$LIMIT_TESTS" "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider \
  --junitxml="$WORK/gpu_tests.xml"
"$PY" - "$WORK/gpu_tests.xml" "$OUTDIR/gpu_tests.json" <<'EOF' >> "$LOG" 2>&1
import json, sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as exc:
    json.dump({"error": f"no junit report ({exc}): the step was cut short or failed to start"}, open(sys.argv[2], "w"))
    raise SystemExit
suite = root if root.tag == "testsuite" else root.find("testsuite")
cases = []
for c in suite.iter("testcase"):
    status = "failed" if c.find("failure") is not None or c.find("error") is not None else \
        "skipped" if c.find("skipped") is not None else "passed"
    msg = next((e.get("message", "")[:500] for e in c if e.tag in ("failure", "error", "skipped")), "")
    cases.append({"test": c.get("name"), "status": status, "seconds": float(c.get("time", 0)), "message": msg})
doc = {k: sum(c["status"] == k for c in cases) for k in ("passed", "failed", "skipped")}
doc["tests"] = cases
json.dump(doc, open(sys.argv[2], "w"), indent=2)
EOF

# ---- 3. full-stage throughput -----------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  step throughput "$LIMIT_TP" "$PY" bench/gpu_throughput.py --dry-run --out "$OUTDIR/throughput.json"
else
  step throughput "$LIMIT_TP" "$PY" bench/gpu_throughput.py --out "$OUTDIR/throughput.json"
fi

# ---- 4. a short --stage all at real batch sizes, then fit-predictor and specialize on the GPU --------------
RUN="$WORK/stage_all"
step train_all "$LIMIT_TRAIN" "$PY" -m ofa train --run-dir "$RUN" --stage all --schedule quick "${DATA[@]}" \
  --batch-size "$BATCH" --compute-device "$DEV" --precision "$PREC" --no-progress "${TRAIN_SIZE[@]}"
step fit_predictor "$LIMIT_FIT" "$PY" -m ofa fit-predictor --run-dir "$RUN" --samples "$FIT_SAMPLES" --kinds ridge \
  --folds 3 --compute-device "$DEV" --no-progress "${FIT_SIZE[@]}"
step specialize "$LIMIT_SPEC" "$PY" -m ofa specialize --run "$RUN" --device pixel1 "${SPEC_SIZE[@]}" \
  --allow-extrapolation --compute-device "$DEV" --no-measure --json
"$PY" - "$RUN" "$OUTDIR/stage_all.json" "$STEPS" "$DEV" "$PREC" "$BATCH" <<'EOF' >> "$LOG" 2>&1
import json, sys
from pathlib import Path
run, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
doc = {"compute_device": sys.argv[4], "precision": sys.argv[5], "batch": int(sys.argv[6]), "stages": {},
       "steps": [json.loads(l) for l in steps.read_text().splitlines() if '"train_all"' in l or
                 '"fit_predictor"' in l or '"specialize"' in l]}
hist = run / "history.jsonl"
if hist.exists():
    for rec in map(json.loads, hist.read_text().splitlines()):
        st = doc["stages"].setdefault(rec["stage"], {"epochs": [], "eval": {}})
        if rec["kind"] == "epoch":
            st["epochs"].append({k: rec.get(k) for k in ("phase", "epoch", "images_per_s", "seconds", "train_acc",
                                                        "val_acc_largest")})
        elif rec["kind"] == "stage_eval":
            st["eval"] = {k: v for k, v in rec.items() if k not in ("kind", "stage", "phase", "epoch")}
data = run / "data.json"
doc["data"] = json.loads(data.read_text()) if data.exists() else None
rep = run / "predictors" / "accuracy_predictor.json"
if rep.exists():
    r = json.loads(rep.read_text())
    r = r.get("report", r) if isinstance(r, dict) else {}
    doc["predictor"] = {k: r.get(k) for k in ("n_rows", "chosen", "holdout", "cv") if k in r}
spec = sorted((run / "specialized").glob("*/arch.json")) if (run / "specialized").exists() else []
doc["specialized"] = [{"folder": p.parent.name, **{k: json.loads(p.read_text()).get(k) for k in ("measured", "predicted")}}
                      for p in spec]
out.write_text(json.dumps(doc, indent=2))
EOF

# ---- 5. DDP on 2 GPUs (NCCL), or 2 gloo processes in a dry run -------------------------------------------
if [ "$DRY" = 1 ] || [ "${NGPU:-0}" -ge 2 ]; then
  step ddp "$LIMIT_DDP" "$PY" - "$WORK/ddp" "$OUTDIR/ddp.json" "$DEV" <<'EOF'
import json, os, shutil, socket, subprocess, sys
from pathlib import Path
work, out, dev = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
from safetensors.torch import load_file
from ofa.accuracy_data import dataset_paths, read_dataset
from ofa.run_dir import RunDir
common = ["--space", "mbv3-w1.0-small", "--resolutions", "16,20", "--data", "digits", "--subset", "96",
          "--eval-size", "32", "--schedule", "quick", "--batch-size", "32", "--seed", "11", "--no-progress",
          "--no-stage-eval", "--threads", "1", "--compute-device", dev]
def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return str(s.getsockname()[1])
def ofa(*args, ranks=1):
    pre = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr",
           "127.0.0.1", "--master_port", port()] if ranks > 1 else [sys.executable]
    r = subprocess.run([*pre, "-m", "ofa", *args], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode:
        raise SystemExit(f"{' '.join(args[:3])} on {ranks} rank(s) failed:\n{r.stderr[-3000:]}")
base, one, two = work / "base", work / "one", work / "two"
ofa("train", "--run-dir", str(base), "--stage", "full", "--epochs", "1", "--max-steps", "1", *common)
shutil.copytree(base, one); shutil.copytree(base, two)
kernel = ["--stage", "kernel", "--epochs", "1", "--max-steps", "2", "--bn-mode", "frozen", "--dropout", "0",
          "--n-subnets", "2", *common]
ofa("train", "--run-dir", str(one), *kernel)
ofa("train", "--run-dir", str(two), *kernel, ranks=2)
a = load_file(str(RunDir(one).stage_weights_file("kernel"))); b = load_file(str(RunDir(two).stage_weights_file("kernel")))
worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
fit = ["--samples", "12", "--holdout", "0.25", "--kinds", "ridge", "--folds", "3", "--calib-images", "32", "--limit", "32",
       "--threads", "1", "--compute-device", dev, "--no-progress"]
ofa("fit-predictor", "--run-dir", str(one), *fit)
ofa("fit-predictor", "--run-dir", str(two), *fit, ranks=2)
rows = lambda p: [{k: v for k, v in r.items() if k != "seconds"} for r in read_dataset(dataset_paths(p)[0]).rows]
doc = {"backend": "nccl" if dev == "cuda" else "gloo", "ranks": 2,
       "kernel_stage_max_weight_diff_2_vs_1": worst, "fit_predictor_datasets_equal": rows(one) == rows(two)}
out.write_text(json.dumps(doc, indent=2)); print(json.dumps(doc))
EOF
else
  echo "{\"skipped\": \"this machine has ${NGPU:-0} GPU(s); NCCL DDP needs 2 or more\"}" > "$OUTDIR/ddp.json"
fi

# ---- summary --------------------------------------------------------------------------------------------
"$PY" - "$STEPS" "$OUTDIR/summary.json" "$T_START" "$DRY" <<'EOF'
import json, sys, time
steps = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
doc = {"dry_run": sys.argv[4] == "1", "total_seconds": time.time() - int(sys.argv[3]),
       "all_ok": all(s["rc"] == 0 for s in steps), "steps": steps, "date": time.strftime("%Y-%m-%d %H:%M")}
json.dump(doc, open(sys.argv[2], "w"), indent=2)
print(json.dumps(doc, indent=2))
EOF
rm -rf "$WORK"
