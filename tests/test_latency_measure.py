"""Real measurement: `ofa profile` on this machine (small space, 1 thread, ONNX Runtime; tolerant bounds
because the CPU is shared and timings are noisy)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from elastic.errors import OFAError
from elastic.spaces import get_space
from predictors.latency import get_latency_predictor
from predictors.measure import measure_modules, measure_nets


def test_profile_cli_fits_and_ranks_fresh_subnets(tmp_path, monkeypatch, capsys):
    from ofa.cli import main

    monkeypatch.setenv("OFA_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--device", "cpu", "--space", "mbv3-w1.0-small", "--name", "here", "--fit", "20",
              "--test", "8", "--rounds", "6", "--threads", "1", "--json"])
        raise SystemExit(0)
    assert exc.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(tmp_path / "profiles" / "here.json")
    test = report["error"]["test"]
    assert test["n"] == 8
    assert test["within_20pct"] >= 7 / 8, test
    assert test["kendall_tau"] >= 0.5, test
    # the saved profile is a device name now, and predicts the same numbers batched and per net
    space = get_space("mbv3-w1.0-small")
    pred = get_latency_predictor("here", space)
    assert pred.profile.kind == "measured" and pred.profile.space == "mbv3-w1.0-small"
    archs = [space.sample(random.Random(9)) for _ in range(5)]
    np.testing.assert_allclose(pred.predict(archs), [pred.predict_net(space.net_spec(a)) for a in archs])
    # it models the family it was fit on only
    with pytest.raises(OFAError, match="models mbv3"):
        get_latency_predictor("here", get_space("proxyless-w1.3-small"))


def test_measure_rejects_bad_settings():
    net = get_space("mbv3-w1.0-small").net_spec(get_space("mbv3-w1.0-small").smallest())
    with pytest.raises(OFAError, match="unknown runtime"):
        measure_nets([net], runtime="tflite")
    with pytest.raises(OFAError, match="threads"):
        measure_nets([net], threads=0)


def test_robust_latency_removes_load_drift_within_rounds():
    from predictors.measure import robust_latency

    rng = np.random.default_rng(0)
    true = rng.uniform(3, 20, size=60)
    n_rounds = 9
    # load drifts along the visiting order (a busy neighbour process comes and goes), differently per round
    t = np.arange(60 * n_rounds).reshape(n_rounds, 60).T
    load = 1 + 0.25 * (np.sin(t / 17.0 + rng.uniform(0, 6, size=n_rounds)) > 0.3)
    T = true[:, None] * load * (1 + 0.01 * rng.standard_normal(t.shape))

    def scatter(est):  # relative error after removing a common scale (which does not change rankings)
        rel = est / true
        return np.abs(rel / np.median(rel) - 1).mean()

    assert scatter(robust_latency(T)) < 0.5 * scatter(np.median(T, axis=1))
    assert scatter(robust_latency(T)) < 0.02


def test_each_turn_is_warmed_so_interleaving_does_not_time_cold_runs(monkeypatch):
    """A network's first runs after other networks ran are slow (cold caches). Interleaved rounds must not time
    them: with the untimed runs at the start of each turn the result is the warm latency."""
    import time

    import predictors.measure as measure

    last = {"net": None}

    class ColdAfterOthers:
        def __init__(self, model, input_shape, runtime, threads, device):
            self.ms, self.round_min = [], []

        def run(self):  # 6 ms on the first run after another network, 3 ms when it ran just before
            ms = 3.0 if last["net"] is self else 6.0
            last["net"] = self
            end = time.thread_time() + ms / 1e3   # busy CPU time: what the thread clock counts, load or not
            while time.thread_time() < end:
                pass

    monkeypatch.setattr(measure, "_Runner", ColdAfterOthers)
    models, shapes = [object(), object(), object()], [(3, 8, 8)] * 3
    cold = measure_modules(models, shapes, warmup=1, repeats=1, rounds=3, clock_name="thread", turn_warmup=0)
    warm = measure_modules(models, shapes, warmup=1, repeats=1, rounds=3, clock_name="thread")
    assert np.all(cold > 5.5), cold
    assert np.all((warm > 2.9) & (warm < 4.0)), warm


def test_instances_time_separate_sessions_of_each_network_and_average_them(monkeypatch):
    """Two sessions of the same network can differ persistently (buffer placement); `instances=2` builds two
    per network, times both in the same rounds and returns their mean, in the networks' order."""
    import time

    import predictors.measure as measure

    built: list[int] = []
    # session speed per (network, instance): network i takes 2 + i ms, its second session 1 ms more

    class SessionOf:
        def __init__(self, model, input_shape, runtime, threads, device):
            self.ms, self.round_min = [], []
            self.cost = 2.0 + model + built.count(model)
            built.append(model)

        def run(self):
            end = time.thread_time() + self.cost / 1e3
            while time.thread_time() < end:
                pass

    monkeypatch.setattr(measure, "_Runner", SessionOf)
    one = measure_modules([0, 1, 2], [(3, 8, 8)] * 3, warmup=0, repeats=1, rounds=2, clock_name="thread",
                          turn_warmup=0)
    assert len(built) == 3
    built.clear()
    two = measure_modules([0, 1, 2], [(3, 8, 8)] * 3, warmup=0, repeats=1, rounds=2, clock_name="thread",
                          turn_warmup=0, instances=2)
    assert sorted(built) == [0, 0, 1, 1, 2, 2]
    np.testing.assert_allclose(one, [2.0, 3.0, 4.0], rtol=0.15)
    np.testing.assert_allclose(two, [2.5, 3.5, 4.5], rtol=0.15)
    with pytest.raises(OFAError, match="instances"):
        measure_modules([0], [(3, 8, 8)], instances=0)


_MALLOC_PROBE = """
import ctypes, json, sys
import torch
from predictors.measure import measure_modules

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def mmapped_by_malloc(mb):   # bytes glibc took from a fresh mmap to serve malloc(mb MB)
    before = libc.mallinfo2().hblkhd
    p = libc.malloc(mb << 20)
    during = libc.mallinfo2().hblkhd
    libc.free(p)
    return during - before

first = mmapped_by_malloc(20)   # glibc's default: mmapped (and its threshold rises to 20 MB once freed)
measure_modules([torch.nn.Conv2d(3, 4, 3)], [(3, 8, 8)], runtime=sys.argv[1], rounds=1, warmup=0, repeats=1,
                turn_warmup=0)
print(json.dumps({"first": first, "after": mmapped_by_malloc(30)}))
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_torch_timing_keeps_freed_memory_in_the_process(runtime):
    """Timing PyTorch on the CPU serves even a 30 MB request from the heap it keeps (no fresh mmap to page-fault
    on each inference: the cause of eager timings that did not repeat between sessions); ONNX Runtime's timing,
    which has its own arena, leaves glibc's defaults alone. Run in a fresh interpreter: the setting is
    process-wide."""
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE, runtime], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["first"] >= 20 << 20          # the probe sees an mmap where glibc makes one
    if runtime == "torch":
        assert seen["after"] == 0
    else:
        assert seen["after"] >= 30 << 20
