"""Measure real latency on this machine and fit a `measured` device profile from it.

Networks are built from their NetSpec (`elastic.static_net.StaticNet`), run at batch 1 with
ONNX Runtime (default on CPU) or PyTorch (CPU or CUDA), warmed up, then timed in interleaved rounds (every
network once per round, so slow drifts of a shared machine hit all of them alike); a network's latency is
the median over all its timed runs. The per-layer regression is fit on whole-network medians (a per-layer
linear model sums to a linear model of the summed features) and checked on fresh networks it never saw.
"""
from __future__ import annotations

import io
import random
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from elastic.errors import OFAError
from elastic.netspec import NetSpec
from elastic.spaces import SpaceSpec
from predictors.allocator import keep_freed_memory
from predictors.domain import domain_of_nets
from predictors.layer_regression import LayerRegression, fit_relative
from predictors.layers import net_features
from predictors.metrics import latency_quality
from predictors.profiles import Profile

RUNTIMES = ("onnxruntime", "torch")
CLOCKS = ("auto", "wall", "thread")


def pick_clock(name: str, threads: int, device: str) -> Callable[[], float]:
    """`thread`: CPU time of the calling thread -- with one intra-op thread on CPU the whole run happens in
    this thread, so time other processes take from the core is not counted (a shared machine stays
    measurable). `wall`: elapsed time (needed for several threads or a GPU). `auto`: thread when it applies."""
    if name == "thread" or (name == "auto" and threads == 1 and device == "cpu"):
        if threads != 1 or device != "cpu":
            raise OFAError("the thread clock measures only single-threaded CPU runs; use --clock wall")
        return time.thread_time
    return time.perf_counter


def build_module(net: NetSpec):
    """A plain eval-mode nn.Module for `net` (weights random: only speed matters here)."""
    from elastic.static_net import StaticNet

    return StaticNet(net).eval()


ONNX_OPSET = 17


def export_onnx(model, x) -> bytes:
    """`model` as ONNX bytes for the example input `x` (static shape; input "x", output "y")."""
    import torch

    buf = io.BytesIO()
    # the TorchScript exporter: several times faster per network than the dynamo one (which matters when a
    # profile exports a hundred subnets); its deprecation notice is expected here
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), buf, input_names=["x"], output_names=["y"], dynamo=False,
                          opset_version=ONNX_OPSET)
    return buf.getvalue()


class _Runner:
    """Runs one eval-mode module at batch 1 with the chosen runtime; `run()` is one inference.

    `precision` "int8" (onnxruntime on CPU) times the network quantized by `predictors.quantize`; `model` may
    also be an exported ONNX model (bytes), timed as it is (onnxruntime only)."""

    def __init__(self, model, input_shape: tuple[int, int, int], runtime: str, threads: int, device: str,
                 precision: str = "fp32", batch: int = 1):
        import torch

        self.ms: list[float] = []       # every timed run
        self.round_min: list[float] = []  # fastest run of each round
        model = model if isinstance(model, bytes) else model.eval()
        x = torch.randn(batch, *input_shape)
        if runtime == "torch":
            dev = torch.device(device)
            model, x = model.to(dev), x.to(dev).contiguous(memory_format=torch.channels_last)
            sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

            def run():
                with torch.inference_mode():
                    model(x)
                sync()
            self.run = run
            if dev.type == "cuda":
                self.timed = _cuda_event_timer(model, x)
        else:
            import onnxruntime as ort

            buf = io.BytesIO(model if isinstance(model, bytes) else export_onnx(model, x))
            if precision == "int8":
                from predictors.quantize import quantize_for_timing

                buf = io.BytesIO(quantize_for_timing(buf.getvalue(), x.numpy()))
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
            sess = ort.InferenceSession(buf.getvalue(), so, providers=providers)
            feed = {sess.get_inputs()[0].name: x.numpy()}
            self.run = lambda: sess.run(None, feed)


def _cuda_event_timer(model, x) -> Callable[[Callable[[], float]], float]:
    """One timed run on the GPU, in ms, by CUDA events recorded on the stream around the forward pass (the
    host clock would also count the launch and the synchronization)."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(_clock) -> float:
        with torch.inference_mode():
            start.record()
            model(x)
            end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    return timed


def _timed_run(runner, clock: Callable[[], float]) -> float:
    """One timed run in ms: the runner's own timer (CUDA events) where it has one, else `clock` around `run()`."""
    own = getattr(runner, "timed", None)
    if own is not None:
        return own(clock)
    t0 = clock()
    runner.run()
    return (clock() - t0) * 1e3


def gpu_clock_note() -> dict[str, Any]:
    """What the GPU ran at (name, SM / memory clocks now and at most, persistence mode) via nvidia-smi, where
    there is one: timings on a GPU whose clocks float are comparable only at the same clocks. ofa never
    changes them (lock them with `nvidia-smi --lock-gpu-clocks` for stable numbers)."""
    import shutil
    import subprocess

    import torch

    note: dict[str, Any] = {"name": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if shutil.which("nvidia-smi") is None:
        note["clocks"] = "not known (no nvidia-smi)"
        return note
    # newer drivers name the last field clocks_event_reasons, older ones clocks_throttle_reasons
    for fields in ("clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,persistence_mode,clocks_event_reasons.active",
                   "clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,persistence_mode,clocks_throttle_reasons.active",
                   "clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem"):
        try:
            done = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            break
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines:
            note.update(zip(fields.split(","), (v.strip() for v in lines[0].split(","))))
            return note
    note["clocks"] = "not known (nvidia-smi gave no answer)"
    return note


def _check_settings(runtime: str, threads: int, device: str, clock_name: str, warmup: int, repeats: int,
                    rounds: int, turn_warmup: int, instances: int = 1, precision: str = "fp32",
                    batch: int = 1) -> None:
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise OFAError(f"--batch must be a positive integer, got {batch!r}")
    if runtime not in RUNTIMES:
        raise OFAError(f"unknown runtime '{runtime}'; allowed: {', '.join(RUNTIMES)}")
    if precision != "fp32":
        from predictors.quantize import check_precision, require_int8_runtime

        check_precision(precision)
        if runtime != "onnxruntime" or device != "cpu":
            raise OFAError(f"int8 latency is measured with onnxruntime on the cpu (its int8 kernels), "
                           f"not with {runtime} on {device}")
        require_int8_runtime()
    if device not in ("cpu", "cuda"):
        raise OFAError(f"can only measure device 'cpu' or 'cuda', got '{device}'")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise OFAError("device 'cuda' requested but no CUDA GPU is available here")
    if device == "cuda" and runtime == "onnxruntime":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise OFAError("this onnxruntime has no CUDA provider; use --runtime torch to measure 'cuda'")
    if not isinstance(threads, int) or threads < 1:
        raise OFAError(f"--threads must be a positive integer, got {threads!r}")
    if repeats < 1 or rounds < 1 or warmup < 0 or turn_warmup < 0:
        raise OFAError(f"measuring needs repeats >= 1, rounds >= 1 and warm-up runs >= 0, got repeats {repeats}, "
                       f"rounds {rounds}, warmup {warmup}, turn_warmup {turn_warmup}")
    if not isinstance(instances, int) or instances < 1:
        raise OFAError(f"--instances must be a positive integer, got {instances!r}")
    if clock_name not in CLOCKS:
        raise OFAError(f"unknown clock '{clock_name}'; allowed: {', '.join(CLOCKS)}")


def measure_nets(nets: Sequence[NetSpec], runtime: str = "onnxruntime", threads: int = 1, device: str = "cpu",
                 warmup: int = 5, repeats: int = 2, rounds: int = 30,
                 progress: Callable[[int, int], None] | None = None, clock_name: str = "auto",
                 turn_warmup: int = 3, instances: int = 1, precision: str = "fp32", batch: int = 1) -> np.ndarray:
    """Latency (ms) of each network of `nets` at `batch` (1: one image; else the time of one batch); see
    `measure_modules`; weights are random."""
    # checked here too so that bad settings fail before a hundred networks are built
    _check_settings(runtime, threads, device, clock_name, warmup, repeats, rounds, turn_warmup, instances, precision,
                    batch)
    return measure_modules([build_module(n) for n in nets], [(n.in_channels, n.resolution, n.resolution) for n in nets],
                           runtime, threads, device, warmup, repeats, rounds, progress, clock_name, turn_warmup,
                           instances, precision, batch)


def measure_modules(models: Sequence, input_shapes: Sequence[tuple[int, int, int]], runtime: str = "onnxruntime",
                    threads: int = 1, device: str = "cpu", warmup: int = 5, repeats: int = 2, rounds: int = 30,
                    progress: Callable[[int, int], None] | None = None, clock_name: str = "auto",
                    turn_warmup: int = 3, instances: int = 1, precision: str = "fp32", batch: int = 1) -> np.ndarray:
    """Latency (ms; at `batch` > 1 the time of one batch) of each module (its input shape (C, H, W) beside it): timed in `rounds` interleaved
    rounds; in each round a module runs `turn_warmup` untimed times, then `repeats` timed times; the result is
    the median over rounds of each round's fastest run (load-corrected, see `robust_latency`).

    PyTorch on the CPU is timed with freed memory kept in the process (`predictors.allocator`: without it the same
    networks' timings did not repeat between sessions).

    Many short rounds spread every network's runs over the whole session, so load from other processes on a
    shared machine shifts all networks alike instead of whichever happened to run during a busy second.
    The untimed runs at the start of each turn matter: right after the other networks ran, a small network's
    first runs are cold (caches, allocator) and took about 2x its steady latency on this 2-core machine
    (measured: 0.76 vs 0.38 ms), while a deployed network runs back to back. With them, an interleaved
    measurement equals one of the network alone to a few percent.

    `instances` > 1 builds that many runtime sessions of every module, all timed in the same rounds, and
    averages their latencies. At a fraction of a millisecond one session of a network differs from another
    session of the same network by about 3% (standard deviation, measured: buffer placement), which averaging
    two sessions brings down to about 2%; it costs `instances` times the measuring time.
    """
    _check_settings(runtime, threads, device, clock_name, warmup, repeats, rounds, turn_warmup, instances, precision,
                    batch)
    if len(models) != len(input_shapes):
        raise ValueError(f"{len(models)} modules but {len(input_shapes)} input shapes")
    import torch

    clock = pick_clock(clock_name, threads, device)
    if runtime == "torch" and device == "cpu":
        keep_freed_memory()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runners = []
        n_runs = len(models) * instances
        for i in range(n_runs):
            model, shape = models[i % len(models)], input_shapes[i % len(models)]
            options = {k: v for k, v in (("precision", precision), ("batch", batch)) if v not in ("fp32", 1)}
            runners.append(_Runner(model, tuple(shape), runtime, threads, device, **options))
            for _ in range(warmup):
                runners[-1].run()
            if progress:
                progress(i + 1, n_runs * (rounds + 1))
        for rd in range(rounds):
            for i, r in enumerate(runners):
                for _ in range(turn_warmup):
                    r.run()
                runs = []
                for _ in range(repeats):
                    runs.append(_timed_run(r, clock))
                r.ms.extend(runs)
                r.round_min.append(min(runs))
                if progress:
                    progress(n_runs * (rd + 1) + i + 1, n_runs * (rounds + 1))
        per_session = robust_latency(np.array([r.round_min for r in runners]))
        return per_session.reshape(instances, len(models)).mean(axis=0)
    finally:
        torch.set_num_threads(old_threads)


def robust_latency(T: np.ndarray, window: int = 8) -> np.ndarray:
    """Per-network latency from `T[net, round]` = the fastest run of each round.

    A run disturbed by another process is slow, never fast, so the fastest of a few back-to-back runs is the
    clean one. The load of a shared machine still drifts within a round; since every round visits the networks
    in the same order, the slowdown at a moment is estimated from the neighbouring networks (median over
    +-`window` of their time relative to their own median) and divided out. The result is the median over
    rounds of the load-corrected times.
    """
    T = np.asarray(T, float)
    med = np.median(T, axis=1)
    if T.shape[0] < 2 * window + 1 or T.shape[1] < 3:
        return med
    for _ in range(2):
        rel = T / med[:, None]
        load = np.empty_like(rel)
        n = T.shape[0]
        for i in range(n):
            lo, hi = max(0, i - window), min(n, i + window + 1)
            neighbours = np.r_[rel[lo:i], rel[i + 1:hi]]
            load[i] = np.median(neighbours, axis=0)
        load /= np.median(load)
        med = np.median(T / load, axis=1)
    return med


def fit_measured_profile(space: SpaceSpec, name: str = "cpu", device: str = "cpu", runtime: str = "onnxruntime",
                         threads: int = 1, n_fit: int = 100, n_test: int = 20, seed: int = 0,
                         warmup: int = 5, repeats: int = 2, rounds: int = 30,
                         progress: Callable[[int, int], None] | None = None, clock_name: str = "auto",
                         turn_warmup: int = 3, instances: int = 1, precision: str = "fp32", batch: int = 1,
                         measure: Callable[..., np.ndarray] | None = None) -> Profile:
    """Measure `n_fit + n_test` random subnets (interleaved), fit on the first, report error on the rest.
    At `batch` > 1 the profile prices the time of one batch (e.g. 64 for GPU throughput), and says so.
    `measure` replaces `measure_nets` (same arguments), e.g. to share the subnets out over several GPUs."""
    if n_fit < 20 or n_test < 3:
        raise OFAError(f"profiling needs at least 20 fitting and 3 test networks, got {n_fit} and {n_test}")
    rng = random.Random(seed)
    archs = [space.sample(rng) for _ in range(n_fit + n_test)]
    archs[0], archs[1] = space.largest(), space.smallest()  # span the range in the fitting set
    nets = [space.net_spec(a) for a in archs]
    gpu = gpu_clock_note() if device == "cuda" else None
    ms = (measure or measure_nets)(nets, runtime, threads, device, warmup, repeats, rounds, progress, clock_name,
                                   turn_warmup, instances, precision, batch)
    clock_used = "thread CPU time" if pick_clock(clock_name, threads, device) is time.thread_time else "wall time"
    if device == "cuda" and runtime == "torch":
        clock_used = "CUDA events"
    kept = runtime == "torch" and device == "cpu" and keep_freed_memory()
    if gpu is not None:
        gpu = {"before": gpu, "after": gpu_clock_note()}
    F = np.stack([net_features(n) for n in nets])
    coef = fit_relative(F[:n_fit], ms[:n_fit])
    reg = LayerRegression(coef)
    fit_q = latency_quality(ms[:n_fit], F[:n_fit] @ coef)
    test_q = latency_quality(ms[n_fit:], F[n_fit:] @ coef)
    summary = (f"MAPE {test_q['mape_pct']:.1f}%, {100 * test_q['within_10pct']:.0f}% within 10%, "
               f"tau {test_q['kendall_tau']:.2f} on {n_test} fresh subnets")
    import platform

    return Profile(
        name=name, kind="measured", unit="ms", families=(space.family,), space=space.name, regression=reg,
        description=f"{device} ({(gpu or {}).get('before', {}).get('name') or platform.processor() or platform.machine()}), "
                    f"{runtime}, {threads} thread(s), "
                    f"{'batch 1' if batch == 1 else f'time per batch of {batch}'}"
                    f"{', int8 (static QDQ)' if precision == 'int8' else ''}: per-layer model fit on "
                    f"{n_fit} measured subnets of {space.name}",
        provenance=f"measured here with `ofa profile` on {time.strftime('%Y-%m-%d')} ({clock_used}): median over "
                   f"{rounds} interleaved rounds of the fastest of {repeats} runs after {turn_warmup} untimed ones"
                   + (f", mean of {instances} runtime sessions per network" if instances > 1 else "")
                   + (", freed memory kept in the process (glibc mallopt)" if kept else ""),
        error={"summary": summary, "test": test_q, "fit": fit_q, "timed_nets": n_fit + n_test},
        batch=batch,
        domain=domain_of_nets(f"latency profile '{name}'", [space.family], [a.r for a in archs], [space.name],
                              f"{n_fit + n_test} subnets of {space.name} timed here"),
        extra={"runtime": runtime, "threads": threads, "device": device, "precision": precision, "clock": clock_used,
               **({"allocator": "glibc, freed memory kept (mallopt)"} if kept else {}),
               "n_fit": n_fit,
               "n_test": n_test, "seed": seed, "instances": instances, "measured_ms": [float(v) for v in ms],
               "archs": [a.to_dict() for a in archs], "batch": batch, **({"gpu": gpu} if gpu else {})},
    )
