"""The GPU path's CPU-checkable parts: compute-device names, batched augmentation, mixed precision with its
scaler in the checkpoint, the world size a run was saved with, and the sharded accuracy dataset's merge."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from elastic.errors import OFAError
from ofa.cli import main
from ofa.data import augment_batch
from ofa.run_dir import RunDir
from ofa.training import TrainConfig, train
from ofa.training.distributed import parse_compute_device, pick_device
from ofa.training.world_size import check_resume_world, world_dependence

SPACE = "mbv3-w1.0-small"
TINY = dict(space=SPACE, resolutions=[16], data={"name": "digits", "subset_size": 64, "eval_size": 32},
            schedule="quick", batch_size=16, seed=5, progress=False, calib_images=32, eval_every=0, threads=1,
            stage_eval=False)


# ---- compute devices ---------------------------------------------------------------------------------------
def test_compute_device_names_are_checked_the_same_everywhere():
    assert [parse_compute_device(d) for d in (None, "auto", "CPU", "cuda", "cuda:1")] == \
        ["auto", "auto", "cpu", "cuda", "cuda:1"]
    for bad in ("pixel1", "cuda:", "cuda:x", "gpu", "cuda:-1"):
        with pytest.raises(OFAError, match="allowed: auto, cpu, cuda, cuda:N"):
            parse_compute_device(bad)
    with pytest.raises(OFAError, match="unknown compute device 'cuda:x'"):
        TrainConfig(run="x", device="cuda:x")   # the config and the process group accept the same names
    assert TrainConfig(run="x", device="cuda:1").device == "cuda:1"
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(OFAError, match="no CUDA GPU is available"):
            pick_device("cuda:1")
        assert pick_device("auto") == torch.device("cpu")
    else:
        n = torch.cuda.device_count()
        assert pick_device(f"cuda:{n - 1}") == torch.device(f"cuda:{n - 1}")
        with pytest.raises(OFAError, match=f"has {n} GPU"):
            pick_device(f"cuda:{n}")
        with pytest.raises(OFAError, match="names one GPU, but this machine runs 2 processes"):
            pick_device("cuda:0", local_rank=1, local_world=2)


def test_compute_device_option_and_the_deprecated_device_spelling(capsys):
    with pytest.raises(SystemExit) as err:   # a latency profile is no compute device: one line, exit 2
        main(["train", "--run-dir", "x", "--compute-device", "pixel1"])
    assert err.value.code == 2 and "unknown compute device 'pixel1'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:   # the old spelling still reaches the check, with a note
        main(["fit-predictor", "--run", "x", "--device", "cuda:q"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and "--device` is deprecated, write --compute-device" in msg
    assert "unknown compute device 'cuda:q'" in msg
    with pytest.raises(SystemExit) as err:
        main(["train", "--run-dir", "x", "--compute-device", "cpu", "--device", "cuda"])
    assert err.value.code == 2 and "disagree" in capsys.readouterr().err


# ---- augmentation -------------------------------------------------------------------------------------------
def _augment_per_image(x, gen, flip, rank=0, world=1):
    """The per-image loop the batched version replaced (the reference it must equal)."""
    h = x.shape[-1]
    pad = max(1, h // 8)
    global_n = x.shape[0] * world
    shifts = torch.randint(-pad, pad + 1, (global_n, 2), generator=gen)[rank::world] + pad
    flips = (torch.rand(global_n, generator=gen) < 0.5)[rank::world]
    padded = F.pad(x, (pad, pad, pad, pad))
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        img = padded[i, :, dy:dy + h, dx:dx + h]
        out[i] = img.flip(-1) if flip and bool(flips[i]) else img
    return out


@pytest.mark.parametrize("flip,rank,world", [(True, 0, 1), (False, 0, 1), (True, 1, 2), (True, 2, 3)])
def test_batched_augmentation_equals_the_per_image_loop(flip, rank, world):
    x = torch.rand(24, 3, 20, 20)
    got = augment_batch(x, torch.Generator().manual_seed(7), flip, rank=rank, world=world)
    want = _augment_per_image(x, torch.Generator().manual_seed(7), flip, rank=rank, world=world)
    assert torch.equal(got, want)
    assert not torch.equal(got, x)   # it did move the images
    # the shares of a distributed batch are the rows of the one-process global batch
    if world > 1:
        full = torch.cat([x] * world).view(world, *x.shape).transpose(0, 1).reshape(-1, *x.shape[1:])
        one = augment_batch(full, torch.Generator().manual_seed(7), flip)
        assert torch.equal(one[rank::world], got)


# ---- layout, mixed precision and the state of a resumed run ------------------------------------------------
def test_channels_last_is_an_option_of_the_model_and_the_batches():
    from elastic.spaces import get_space
    from ofa.data import prepare_batch
    from ofa.training.loop import _build_model

    space = get_space(SPACE)
    conv = lambda m: next(p for p in m.parameters() if p.ndim == 4)  # noqa: E731
    cl = torch.channels_last
    assert conv(_build_model(space, TrainConfig(run="r"), torch.device("cpu"))).is_contiguous(memory_format=cl)
    nchw = conv(_build_model(space, TrainConfig(run="r", channels_last=False), torch.device("cpu")))
    assert nchw.is_contiguous() and not nchw.is_contiguous(memory_format=cl)
    x = torch.rand(4, 3, 8, 8)
    assert prepare_batch(x, 12, (0.5,) * 3, (0.25,) * 3).is_contiguous(memory_format=cl)
    flat = prepare_batch(x, 12, (0.5,) * 3, (0.25,) * 3, channels_last=False)
    assert flat.is_contiguous() and torch.equal(flat, prepare_batch(x, 12, (0.5,) * 3, (0.25,) * 3))
    with pytest.raises(OFAError, match="unknown precision 'fp8'; allowed: fp32, bf16, fp16"):
        TrainConfig(run="r", precision="fp8")


@pytest.fixture(scope="module")
def fp16_runs(tmp_path_factory):
    """An uninterrupted fp16 run (full stage, 2 epochs of 1 step, 12 px) and a snapshot of its run directory as
    it was after the first epoch's checkpoint, as a kill there would leave it (tests copy it). (CPU autocast is
    slow, NCHW above all: 12 px, channels-last.)"""
    root = tmp_path_factory.mktemp("scale")
    ref, killed = root / "ref", root / "snapshot"
    saved = []
    original = RunDir.save_train_state

    def capture(self, state, *args, **kwargs):
        original(self, state, *args, **kwargs)
        if not saved and not state.get("done") and state.get("epoch") == 1:
            shutil.copytree(self.path, killed)
            saved.append(state)

    RunDir.save_train_state = capture
    try:
        train(TrainConfig(run=str(ref), stage="full", epochs=2, max_steps=1, precision="fp16", augment=True,
                          **{**TINY, "resolutions": [12], "batch_size": 8}), log=lambda m: None)
    finally:
        RunDir.save_train_state = original
    assert saved, "no mid-epoch checkpoint was written"
    return ref, killed, saved[0]


def test_fp16_scaler_and_world_size_are_checkpointed_and_resume_is_exact(fp16_runs, tmp_path):
    from safetensors.torch import load_file

    ref, snapshot, state = fp16_runs
    killed = tmp_path / "killed"
    shutil.copytree(snapshot, killed)
    assert state["world"] == 1 and state["config"]["precision"] == "fp16"
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    train(TrainConfig(run=str(killed), **TINY), resume=True, log=lambda m: None)
    a = load_file(str(RunDir(ref).stage_weights_file("full")))
    b = load_file(str(RunDir(killed).stage_weights_file("full")))
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed fp16 weights differ: {diff[:5]}"
    # The resumed run uses the stored scaler. These first steps overflow fp16 at the scaler's opening scales
    # (65536, then 32768 at the checkpoint), so the scaler skips them and the parameters stay as they were; from a
    # stored scale of 16 the resumed step does not overflow and moves them (a fresh scaler, 65536, would not).
    from elastic.spaces import get_space
    from elastic.supernet import Supernet

    assert state["scaler"]["scale"] == 32768.0
    params = [n for n, _ in Supernet(get_space(SPACE)).named_parameters()]
    assert all(torch.equal(b[k], state["model"][k]) for k in params)
    small = tmp_path / "small"
    shutil.copytree(snapshot, small)
    rd = RunDir(small)
    st = torch.load(rd.state_file, weights_only=True)
    st["scaler"]["scale"] = 16.0
    rd.save_train_state(st)
    train(TrainConfig(run=str(small), **TINY), resume=True, log=lambda m: None)
    c = load_file(str(rd.stage_weights_file("full")))
    assert sum(not torch.equal(c[k], st["model"][k]) for k in params) > len(params) // 2


def test_resume_on_another_world_size_only_where_exact(fp16_runs, tmp_path):
    _, killed, _ = fp16_runs
    from elastic.spaces import get_space

    space = get_space(SPACE)
    cfg = TrainConfig(run="r")
    assert len(world_dependence(cfg, space)) == 2   # train-mode BN and the space's dropout 0.1
    assert world_dependence(TrainConfig(run="r", bn_mode="frozen", dropout=0.0), space) == []
    check_resume_world(2, 2, cfg, space)      # same world: fine
    check_resume_world(None, 4, cfg, space)   # an old run that did not record it: not refused
    check_resume_world(2, 1, TrainConfig(run="r", bn_mode="frozen", dropout=0.0), space)
    with pytest.raises(OFAError, match=r"saved by 2 process\(es\) and would resume on 1.*BatchNorm.*dropout 0.1"):
        check_resume_world(2, 1, cfg, space)
    # end to end: a state saved by 2 processes (train-mode BN) refuses a 1-process resume, in one line
    run = tmp_path / "two"
    shutil.copytree(killed, run)
    rd = RunDir(run)
    st = torch.load(rd.state_file, weights_only=True)
    st["world"] = 2
    rd.save_train_state(st)
    with pytest.raises(OFAError, match="saved by 2 process"):
        train(TrainConfig(run=str(run), **TINY), resume=True, log=lambda m: None)


# ---- merging the shards of a multi-process accuracy dataset --------------------------------------------------
def test_shards_merge_in_plan_order_once_each_and_survive_a_torn_line(tmp_path):
    from elastic.spaces import get_space
    from ofa.accuracy_data import collect, merge_shards, plan_subnets, read_dataset, shard_path

    space = get_space(SPACE, resolutions=(16, 20))
    plan = plan_subnets(space, 9, seed=1)
    acc = {a: (i + 1) / 10 for i, a in enumerate(plan)}
    one = tmp_path / "one" / "acc.csv"
    collect(space, one, 9, acc.__getitem__, seed=1, progress=False)

    many = tmp_path / "many" / "acc.csv"
    collect(space, many, 3, acc.__getitem__, seed=1, progress=False)   # rows 0-2 already merged
    lines = one.read_text().splitlines(keepends=True)   # header + 9 rows, in plan order
    shard_path(many, 0).write_text(lines[0] + lines[4] + lines[6] + lines[8])
    shard_path(many, 1).write_text(lines[0] + lines[5] + lines[7] + lines[3] + lines[9][:25])   # torn last row
    assert merge_shards(many, space) == 5
    assert not shard_path(many, 0).exists() and not shard_path(many, 1).exists()
    got = read_dataset(many, space)
    assert [int(r["index"]) for r in got.rows] == list(range(8))   # the torn row (index 8) is left to measure
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(got.rows) == strip(read_dataset(one, space).rows[:8])
    # a resume measures only what is missing and ends equal to the one-process dataset
    calls = []
    collect(space, many, 9, lambda a: calls.append(a) or acc[a], seed=1, resume=True, progress=False)
    assert calls == [plan[8]]
    assert strip(read_dataset(many, space).rows) == strip(read_dataset(one, space).rows)


def test_profile_refuses_parallel_timing_on_the_cpu(monkeypatch, capsys):
    from ofa.training.distributed import DistInfo, ObjectChannel

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as err:
        main(["profile", "--device", "cpu", "--fit", "20", "--test", "3"])
    assert err.value.code == 2 and "must run as one process" in capsys.readouterr().err
    one = ObjectChannel(DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu")))
    assert one.map_shards([3, 1, 2], lambda part: [10 * v for v in part]) == [30, 10, 20]

    class TwoRanks(ObjectChannel):   # rank 0 of 2, with rank 1's share as rank 1 would compute it
        def __init__(self, items, fn):
            self.info, self.group = DistInfo(rank=0, world=2, local_rank=0, device=torch.device("cpu")), None
            self.other = fn(items[1::2])

        def gather(self, obj):
            return [obj, self.other]

    items, fn = list(range(7)), (lambda part: [v * v for v in part])
    assert TwoRanks(items, fn).map_shards(items, fn) == [v * v for v in items]
