"""Two CPU processes under torchrun (gloo, DDP) end with the weights of one process with the same global batch.

Why frozen BN and no dropout: with DDP every process normalizes its batch with its own BatchNorm statistics
(B/2 images instead of B), and draws its own dropout masks, so train-mode BN and dropout make a 2-process run a
*different* (equally valid) computation, not the same one. With BN in eval mode (`--bn-mode frozen`: running
statistics used and not updated) and dropout 0, every image's loss is independent of the others in its batch;
DDP averages the per-process mean gradients, which is exactly the 1-process mean over the global batch. So the
data sharding (DistributedSampler), the per-step subnet/resolution/augmentation draws, KD and the gradient
accumulation over several subnets (no_sync for all but the last) must all agree for this test to pass.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from ofa.run_dir import RunDir
from ofa.training import TrainConfig, train

SPACE = "mbv3-w1.0-small"
COMMON = dict(space=SPACE, resolutions=[16, 20], data={"name": "digits", "subset_size": 96, "eval_size": 32},
              schedule="quick", batch_size=16, seed=11, progress=False, eval_subnets=0, calib_images=32, eval_every=0, threads=1,
              stage_eval=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path):
    base = tmp_path / "base"
    train(TrainConfig(run=str(base), stage="full", epochs=1, max_steps=1, **COMMON), log=lambda m: None)
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(base, one)
    shutil.copytree(base, two)
    stage = dict(stage="kernel", epochs=1, max_steps=2, bn_mode="frozen", dropout=0.0, n_subnets=2)
    train(TrainConfig(run=str(one), **stage, **COMMON), log=lambda m: None)

    for _ in range(3):  # the free port can be taken by another process before torchrun binds it: retry
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "ofa", "train", "--run-dir", str(two), "--stage", "kernel",
               "--epochs", "1", "--max-steps", "2", "--bn-mode", "frozen", "--dropout", "0", "--n-subnets", "2",
               "--space", SPACE, "--resolutions", "16,20", "--schedule", "quick", "--batch-size", "16", "--seed", "11",
               "--no-progress", "--no-stage-eval", "--threads", "1", "--device", "cpu"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                             env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        if out.returncode == 0 or "address already in use" not in out.stderr.lower():
            break
    assert out.returncode == 0, out.stderr[-4000:]
    assert "8/process x 2" in out.stderr  # really sharded over two processes
    a = load_file(str(RunDir(one).stage_weights_file("kernel")))
    b = load_file(str(RunDir(two).stage_weights_file("kernel")))
    start = load_file(str(RunDir(base).stage_weights_file("full")))
    assert a.keys() == b.keys()
    moved = max(float((a[k] - start[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert moved > 1e-3  # training changed the weights...
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-5, f"2-process weights differ from 1-process weights by {worst}"  # ...identically
