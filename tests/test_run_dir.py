"""ofa.run_dir / ofa.atomic: atomic writes, validated loads, clear errors on damaged or foreign files."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn as nn

from elastic.errors import OFAError
from elastic.spaces import get_space
from ofa import atomic
from ofa.run_dir import RunDir


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a" / "f.json"
    atomic.write_json(p, {"x": 1})
    atomic.write_json(p, {"x": 2})
    assert p.read_text().strip().replace(" ", "").replace("\n", "") == '{"x":2}'
    assert os.listdir(p.parent) == ["f.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    atomic.write_bytes(p, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OFAError, match="could not write .*disk full.*unchanged"):
        atomic.write_bytes(p, b"new")
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_weights_round_trip_and_validation(tmp_path):
    space = get_space("mbv3-w1.0-small", n_classes=10)
    run = RunDir(tmp_path / "run")
    run.save_space(space)
    net = _net()
    run.save_weights(net, space, stage="full")
    assert run.trained_stages() == ["full"] and run.weights_file.exists()
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    run.load_into(other, "full")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    assert run.load_space() == space

    # missing keys / wrong shapes
    with pytest.raises(OFAError, match="lacks 2 weight"):
        run.load_into(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)), "full")
    with pytest.raises(OFAError, match="has shape"):
        run.load_into(nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5)), "full")
    # the space.json of another space
    run.save_space(get_space("proxyless-w1.3-small", n_classes=10))
    with pytest.raises(OFAError, match="space 'mbv3-w1.0-small'"):
        run.load_into(other, "full")
    run.save_space(space)
    # truncated and random-byte files
    data = run.stage_weights_file("full").read_bytes()
    run.stage_weights_file("full").write_bytes(data[: len(data) // 2])
    with pytest.raises(OFAError, match="not a readable safetensors"):
        run.load_into(other, "full")
    run.stage_weights_file("full").write_bytes(os.urandom(300))
    with pytest.raises(OFAError, match="not a readable safetensors"):
        run.load_into(other, "full")
    with pytest.raises(OFAError, match="has no .kernel. stage checkpoint"):
        run.load_into(other, "kernel")


def test_space_json_and_data_config_errors(tmp_path):
    run = RunDir(tmp_path / "nope")
    with pytest.raises(OFAError, match="not a run directory"):
        run.load_space()
    with pytest.raises(OFAError, match="no data.json"):
        run.data_config()
    run.path.mkdir()
    run.space_file.write_text("{not json")
    with pytest.raises(OFAError, match="not valid JSON"):
        run.load_space()
    run.space_file.write_text('{"name": "resnet-9000"}')
    with pytest.raises(OFAError, match="unknown space 'resnet-9000'"):
        run.load_space()
    run.save_data_config({"name": "digits", "split_seed": 3})
    assert run.data_config() == {"name": "digits", "split_seed": 3}


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_train_state_loads_weights_only_and_rejects_pickles(tmp_path):
    run = RunDir(tmp_path)
    run.save_train_state({"stage": "full", "config": {"seed": 1}, "model": {"w": torch.ones(2)}, "rng": [1, 2]})
    st = run.load_train_state()
    assert st["stage"] == "full" and torch.equal(st["model"]["w"], torch.ones(2))
    with open(run.state_file, "wb") as fh:
        torch.save({"stage": "full", "config": {}, "evil": _Evil()}, fh)
    with pytest.raises(OFAError, match="not a readable training state"):
        run.load_train_state()
    run.state_file.write_bytes(pickle.dumps({"stage": "x"}, protocol=2)[:10])
    with pytest.raises(OFAError, match="not a readable training state"):
        run.load_train_state()
    run.save_train_state({"what": 1})
    with pytest.raises(OFAError, match="not an ofa training state"):
        run.load_train_state()


def test_history_replaces_redone_epochs(tmp_path):
    run = RunDir(tmp_path)
    run.append_history({"kind": "epoch", "stage": "full", "phase": 1, "epoch": 1, "loss": 2.0})
    run.append_history({"kind": "epoch", "stage": "full", "phase": 1, "epoch": 2, "loss": 1.5})
    run.append_history({"kind": "epoch", "stage": "full", "phase": 1, "epoch": 2, "loss": 1.4})
    h = run.history()
    assert [r["epoch"] for r in h] == [1, 2] and h[1]["loss"] == 1.4
