"""Several CPU processes (gloo): launches on two "nodes" (two local torchrun agents with a rendezvous on
localhost) for fit-predictor and train, the accuracy dataset shared out over the ranks and merged by rank 0, a
rank killed mid-collection and the collection resumed by one process, and a training run resumed on another
number of processes where that stays exact."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ofa.accuracy_data import collect_from_run, dataset_paths, read_dataset, shard_path
from ofa.run_dir import RunDir
from ofa.training import TrainConfig, train

SPACE = "mbv3-w1.0-small"
FIT = ["--kinds", "ridge", "--folds", "3", "--holdout", "0.25", "--calib-images", "32", "--limit", "32",
       "--compute-device", "cpu", "--threads", "1", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(*args: str) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes 2 --node_rank i --nproc_per_node 1 -m ofa ARGS` for i = 0, 1, run side by side (retried
    on another port when the free one was taken before torchrun bound it)."""
    for _ in range(3):
        port = str(_free_port())
        procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                                   str(i), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port",
                                   port, "-m", "ofa", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=ENV) for i in (0, 1)]
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        if all(o.returncode == 0 for o in outs) or not any("address already in use" in o.stderr.lower() for o in outs):
            return outs
    return outs


def _rows(csv_path) -> list[dict]:
    """The dataset's rows without the wall time each measurement took."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_dataset(csv_path).rows]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory with an untrained supernet (accuracies near chance are all the sharding needs)."""
    from elastic.spaces import get_space
    from elastic.supernet import Supernet

    torch.manual_seed(0)
    space = get_space(SPACE, n_classes=10, resolutions=(16, 20))
    rd = RunDir(tmp_path_factory.mktemp("ranks") / "run")
    rd.save_space(space)
    rd.save_data_config({"name": "digits", "subset_size": 96, "eval_size": 32})
    rd.save_weights(Supernet(space), space)
    return rd.path


@pytest.fixture(scope="module")
def one_process_rows(tiny_run, tmp_path_factory):
    """The 14-subnet dataset one process collects (what every multi-process collection must equal)."""
    run = tmp_path_factory.mktemp("one") / "run"
    shutil.copytree(tiny_run, run)
    collect_from_run(run, 14, calib_images=32, limit=32, device="cpu", threads=1, progress=False)
    return _rows(dataset_paths(run)[0])


@pytest.mark.slow
def test_fit_predictor_on_two_nodes_equals_one_process(tiny_run, one_process_rows, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    outs = _two_nodes("fit-predictor", "--run-dir", str(run), "--samples", "12", "--json", *FIT)
    assert all(o.returncode == 0 for o in outs), outs[0].stderr[-3000:] + outs[1].stderr[-3000:]
    assert '"n_rows": 12' in outs[0].stdout and outs[1].stdout.strip() == ""   # rank 0 alone fits and reports
    csv_path = dataset_paths(run)[0]
    assert _rows(csv_path) == one_process_rows[:12]
    assert not list(csv_path.parent.glob("*.rank*.csv"))   # the shards were merged and removed
    assert (run / "predictors" / "accuracy_predictor.json").exists()


@pytest.mark.slow
def test_a_rank_killed_mid_collection_resumes_on_one_process(tiny_run, one_process_rows, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "ofa", "fit-predictor", "--run-dir", str(run), "--samples", "14",
                               *FIT], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
                                   "RANK": str(r), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}) for r in (0, 1)]
    csv_path = dataset_paths(run)[0]
    shard1 = shard_path(csv_path, 1)
    deadline, killed = time.time() + 300, False
    while time.time() < deadline and procs[1].poll() is None:
        if shard1.exists() and len(shard1.read_text().splitlines()) >= 2:   # header + one measured subnet
            os.kill(procs[1].pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    procs[1].wait(timeout=60)
    try:   # rank 0 loses its peer: it fails on its own, or is killed as torchrun would kill it
        procs[0].wait(timeout=120)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].wait()
    assert killed, f"rank 1 ended before it could be killed: {procs[1].stderr.read()[-2000:]}"
    assert procs[0].returncode != 0
    # nothing merged yet; each rank's rows are in its shard, dealt round robin (rank r: plan indices r, r+2, ...)
    assert _rows(csv_path) == []
    shards = {r: [int(x["index"]) for x in read_dataset(shard_path(csv_path, r)).rows] for r in (0, 1)}
    assert shards[1] and all(i % 2 == 1 for i in shards[1]) and all(i % 2 == 0 for i in shards[0])
    # one process resumes: it merges the shards, measures only what is missing, and ends equal
    data = collect_from_run(run, 14, resume=True, calib_images=32, limit=32, device="cpu", threads=1, progress=False)
    assert len(data) == 14 and _rows(csv_path) == one_process_rows
    assert not shard1.exists()


@pytest.mark.slow
def test_train_resumed_on_two_nodes_equals_one_process(tmp_path):
    """A 1-process kernel stage (frozen BN, no dropout: independent of the process count) is captured at its first
    checkpoint and resumed by two processes on two "nodes": the weights equal the uninterrupted 1-process run's."""
    common = dict(space=SPACE, resolutions=[16, 20], data={"name": "digits", "subset_size": 96, "eval_size": 32},
                  schedule="quick", batch_size=16, seed=11, progress=False, calib_images=32, eval_every=0,
                  threads=1, stage_eval=False)
    base, one = tmp_path / "base", tmp_path / "one"
    train(TrainConfig(run=str(base), stage="full", epochs=1, max_steps=1, **common), log=lambda m: None)
    shutil.copytree(base, one)
    snapshot = tmp_path / "snapshot"
    original = RunDir.save_train_state

    def capture(self, state, *args, **kwargs):
        original(self, state, *args, **kwargs)
        if not snapshot.exists() and state.get("stage") == "kernel" and not state.get("done"):
            shutil.copytree(self.path, snapshot)

    RunDir.save_train_state = capture
    try:
        train(TrainConfig(run=str(one), stage="kernel", epochs=1, max_steps=3, save_every=1, bn_mode="frozen",
                          dropout=0.0, **common), log=lambda m: None)
    finally:
        RunDir.save_train_state = original
    st = RunDir(snapshot).load_train_state()
    assert st["world"] == 1 and (st["epoch"], st["step"]) == (0, 1)

    outs = _two_nodes("train", "--run-dir", str(snapshot), "--resume", "--compute-device", "cpu", "--threads", "1",
                      "--no-progress")
    assert all(o.returncode == 0 for o in outs), outs[0].stderr[-3000:] + outs[1].stderr[-3000:]
    assert "resuming run" in outs[0].stderr
    a = load_file(str(RunDir(one).stage_weights_file("kernel")))
    b = load_file(str(RunDir(snapshot).stage_weights_file("kernel")))
    start = load_file(str(RunDir(base).stage_weights_file("full")))
    assert a.keys() == b.keys()
    assert max(float((a[k] - start[k]).abs().max()) for k in a if a[k].is_floating_point()) > 1e-3
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-5, f"resumed on 2 processes, the weights differ from 1 process by {worst}"
    assert RunDir(snapshot).load_train_state()["world"] == 2
