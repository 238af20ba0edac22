"""Faults proven harmless: SIGKILL mid-collection, damaged run files, disk full / permission denied mid-checkpoint,
no unpickling of user files."""
from __future__ import annotations

import ast
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from elastic.errors import OFAError
from ofa import atomic
from ofa.cli import main
from ofa.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def _make_run(path: Path, weights: bool = True) -> RunDir:
    from elastic.spaces import get_space
    from elastic.supernet import Supernet

    torch.manual_seed(0)
    space = get_space("mbv3-w1.0-small", n_classes=10, resolutions=(16, 20))
    rd = RunDir(path)
    rd.save_space(space)
    rd.save_data_config({"name": "digits", "subset_size": 96, "eval_size": 32})
    if weights:
        rd.save_weights(Supernet(space), space)
    return rd


def _one_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    cap = capsys.readouterr()
    lines = [l for l in cap.err.splitlines() if l.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:"), cap.err
    assert "Traceback" not in cap.err + cap.out
    return lines[0]


def _temps(path: Path) -> list[Path]:
    return [p for p in path.rglob(".*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


FIT = ["--kinds", "ridge", "--folds", "2", "--holdout", "0", "--calib-images", "16", "--limit", "16",
       "--compute-device", "cpu", "--threads", "1"]


def test_sigkill_during_accuracy_collection_then_resume(tmp_path, capsys):
    from ofa.accuracy_data import dataset_paths, plan_subnets, read_dataset

    rd = _make_run(tmp_path / "run")
    csv_path, _ = dataset_paths(rd.path)
    argv = ["fit-predictor", "--run", str(rd.path), "--samples", "9", *FIT]
    proc = subprocess.Popen([sys.executable, "-m", "ofa", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if csv_path.exists() and len(csv_path.read_text().splitlines()) >= 3:  # header + 2 rows
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    kept = read_dataset(csv_path)
    assert 2 <= len(kept) < 9
    main(argv + ["--resume", "--json"])
    assert json.loads(capsys.readouterr().out)["n_rows"] == 9
    data = read_dataset(csv_path)
    space = rd.load_space()
    assert data.archs == plan_subnets(space, 9)          # none missing, none twice, in plan order
    assert data.archs[:len(kept)] == kept.archs and data.accuracies[:len(kept)] == kept.accuracies
    assert not _temps(rd.path)


def test_damaged_run_files_are_one_line_errors(tmp_path, capsys):
    rd = _make_run(tmp_path / "run")
    good = rd.weights_file.read_bytes()
    argv = ["fit-predictor", "--run", str(rd.path), "--samples", "9", *FIT]
    rd.weights_file.write_bytes(good[: len(good) // 3])
    assert "not a readable safetensors" in _one_error(argv, capsys)
    rd.weights_file.write_bytes(os.urandom(4096))
    assert "safetensors" in _one_error(argv + ["--resume"], capsys)
    rd.weights_file.write_bytes(good)
    from elastic.spaces import get_space

    own = rd.space_file.read_bytes()
    rd.space_file.write_text(json.dumps(get_space("proxyless-w1.3-small", n_classes=10).to_dict()))
    assert "space" in _one_error(argv + ["--resume"], capsys)
    rd.space_file.write_bytes(own)
    rd.weights_file.unlink()
    assert "no supernet weights" in _one_error(argv + ["--resume"], capsys)
    # a run without a fitted predictor cannot be specialized yet: the message names the missing step
    assert "fit-predictor" in _one_error(["specialize", "--run", str(rd.path), "--device", "pixel1", "--latency",
                                          "5ms"], capsys)


def test_arch_json_with_a_missing_field(tmp_path, capsys):
    from elastic.spaces import get_space

    sp = get_space("mbv3-w1.0-small", n_classes=10)
    arch = sp.largest().to_dict()
    for doc in ({"space": sp.name, "arch": {k: v for k, v in arch.items() if k != "ks"}},
                {"arch": arch}, {"space": sp.name, "n_classes": 10}):
        p = tmp_path / "arch.json"
        p.write_text(json.dumps(doc))
        _one_error(["latency", "--device", "pixel1", "--config", str(p)], capsys)
    # and as a specialized folder for ofa.load
    from ofa.specialized import load

    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "arch.json").write_text(json.dumps({"format": "ofa-specialized/1", "space": sp.to_dict()}))
    with pytest.raises(OFAError, match="missing field"):
        load(tmp_path / "net")


def test_damaged_supernet_via_subprocess(tmp_path):
    rd = _make_run(tmp_path / "run")
    rd.weights_file.write_bytes(rd.weights_file.read_bytes()[:1000])
    out = subprocess.run([sys.executable, "-m", "ofa", "fit-predictor", "--run", str(rd.path), "--samples", "9", *FIT],
                         capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert "Traceback" not in out.stderr


def _fail_mid_write(monkeypatch, name: str, err: int):
    """Make the next atomic write of `name` write half its bytes and then fail with OSError(err)."""
    real_fdopen = os.fdopen

    class Half:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(err, os.strerror(err))

        def __getattr__(self, k):
            return getattr(self.fh, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

    def fdopen(fd, *a, **k):
        fh = real_fdopen(fd, *a, **k)
        return Half(fh) if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(f".{name}.") else fh

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs /proc to name file descriptors")
def test_disk_full_mid_checkpoint_keeps_previous(tmp_path, monkeypatch):
    from elastic.supernet import Supernet

    rd = _make_run(tmp_path / "run")
    before = rd.weights_file.read_bytes()
    space = rd.load_space()
    other = Supernet(space)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    _fail_mid_write(monkeypatch, "supernet.safetensors", errno.ENOSPC)
    with pytest.raises(OFAError, match="No space left"):
        rd.save_weights(other, space)
    rd.save_train_state({"stage": "full", "config": {}, "step": 1})  # other files still write
    monkeypatch.undo()
    assert rd.weights_file.read_bytes() == before
    rd.load_supernet()
    assert not _temps(rd.path)


def test_permission_denied_keeps_previous(tmp_path, monkeypatch):
    rd = _make_run(tmp_path / "run")
    rd.save_train_state({"stage": "full", "config": {}, "step": 1})
    before = rd.state_file.read_bytes()

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    with pytest.raises(OFAError, match="Permission denied"):
        rd.save_train_state({"stage": "full", "config": {}, "step": 2})
    monkeypatch.undo()
    assert rd.state_file.read_bytes() == before and rd.load_train_state()["step"] == 1


def test_read_only_directory_is_a_clear_error(tmp_path, monkeypatch):
    """The rename into a directory that refuses writes fails as a read-only one does (EACCES at os.replace, after
    the temp file is written: injected, so that it also fails as root, which ignores directory permissions)."""
    rd = _make_run(tmp_path / "run")
    before = rd.weights_file.read_bytes()
    real_replace = os.replace
    attempts = []

    def refuse(src, dst, *a, **k):
        if Path(dst).parent == rd.path:
            attempts.append(Path(src))
            assert Path(src).is_file() and Path(src).stat().st_size > 1000   # the whole temp file was written
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OFAError, match=r"could not write .*supernet.safetensors: Permission denied"):
        rd.save_weights(rd.load_supernet(), rd.load_space())
    monkeypatch.undo()
    assert attempts and not any(t.exists() for t in attempts) and not _temps(rd.path)
    assert rd.weights_file.read_bytes() == before


def test_run_directory_under_a_file_is_a_clear_error(tmp_path, capsys):
    """A real OS refusal, no patching: the run directory's parent is a regular file."""
    (tmp_path / "notes.txt").write_text("a file, not a directory")
    rd = RunDir(tmp_path / "notes.txt" / "run")
    from elastic.spaces import get_space

    with pytest.raises(OFAError, match="could not write"):
        rd.save_space(get_space("mbv3-w1.0-small", n_classes=10))
    line = _one_error(["train", "--run", str(rd.path), "--data", "digits", "--subset", "32", "--epochs", "1",
                       "--no-progress"], capsys)
    assert "notes.txt" in line
    assert (tmp_path / "notes.txt").read_text() == "a file, not a directory"


def _unsafe_loads(tree: ast.AST) -> list[str]:
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
        kw = {k.arg: k.value for k in node.keywords}
        true = lambda v: isinstance(v, ast.Constant) and v.value is True  # noqa: E731
        if owner == "torch" and name == "load" and not true(kw.get("weights_only")):
            bad.append(f"torch.load without weights_only=True (line {node.lineno})")
        if owner in ("pickle", "cPickle", "dill", "joblib") and name in ("load", "loads"):
            bad.append(f"{owner}.{name} (line {node.lineno})")
        if owner in ("np", "numpy") and name == "load" and "allow_pickle" in kw and not (
                isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False):
            bad.append(f"np.load allow_pickle (line {node.lineno})")
    return bad


def test_scanner_catches_unsafe_loads():
    src = "torch.load(p)\ntorch.load(p, weights_only=False)\npickle.load(f)\nnp.load(p, allow_pickle=True)\n" \
          "torch.load(p, weights_only=True)\n"
    assert len(_unsafe_loads(ast.parse(src))) == 4


def test_product_never_unpickles_user_files():
    files = [p for pkg in ("elastic", "predictors", "specialize", "ofa") for p in (ROOT / pkg).rglob("*.py")]
    assert len(files) > 20
    found = {str(p.relative_to(ROOT)): b for p in files if (b := _unsafe_loads(ast.parse(p.read_text())))}
    assert found == {}


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_in_train_state_is_refused(tmp_path, capsys):
    rd = _make_run(tmp_path / "run")
    marker = tmp_path / "pwned"
    torch.save({"stage": "full", "config": {}, "payload": _Evil(str(marker))}, rd.state_file)
    line = _one_error(["train", "--run", str(rd.path), "--resume", "--no-progress"], capsys)
    assert "train_state.pt is not a readable training state" in line
    assert not marker.exists()


# Run `ofa` in a child that SIGKILLs itself halfway through writing the second specialized folder's arch.json (its
# last file): the kill lands inside a write every time, not wherever a polling parent happens to catch it.
_KILL_MID_WRITE = """
import os, signal, sys
from pathlib import Path
real = Path.write_text
seen = []
def write_text(self, data, *a, **k):
    if self.name == "arch.json" and ".tmp-" in self.parent.name:
        seen.append(self)
        if len(seen) == 2:
            with open(self, "w") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, data, *a, **k)
Path.write_text = write_text
from ofa.cli import main
main(sys.argv[1:])
"""


def test_sigkill_during_specialize_then_rerun(tmp_path, capsys):
    from elastic.complexity import macs
    from ofa.accuracy_data import plan_subnets
    from ofa.specialized import load
    from predictors.accuracy import fit_accuracy_predictor

    rd = _make_run(tmp_path / "run")
    space = rd.load_space()
    archs = plan_subnets(space, 16, seed=1)
    accs = [0.4 + 0.01 * sum(a.d) + 0.002 * sum(a.e) for a in archs]   # a smooth synthetic target
    fit_accuracy_predictor(space, archs, accs, kinds=["ridge"], folds=2, holdout=0.0).save(rd.path / "predictors")
    m = macs(space, [space.smallest(), space.largest()])
    budgets = f"{m[0] * 1.5 / 1e6:.1f}M,{m[1] * 0.6 / 1e6:.1f}M"
    argv = ["specialize", "--run", str(rd.path), "--device", "flops", "--macs", budgets, "--no-measure", "--json"]
    base = rd.path / "specialized"
    proc = subprocess.run([sys.executable, "-c", _KILL_MID_WRITE, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the torn write is on disk: a hidden temp folder whose arch.json is half a JSON document ...
    hidden = [p for p in base.iterdir() if p.name.startswith(".")]
    assert len(hidden) == 1 and ".tmp-" in hidden[0].name and (hidden[0] / "model.safetensors").is_file()
    torn = (hidden[0] / "arch.json").read_text()
    assert torn and not torn.rstrip().endswith("}")
    with pytest.raises(OFAError):
        load(hidden[0])
    # ... and never visible: the one folder in place is the first budget's, complete
    visible = [p for p in base.iterdir() if not p.name.startswith(".")]
    assert len(visible) == 1
    net = load(visible[0])
    assert net(torch.zeros(1, space.in_channels, net.arch.r, net.arch.r)).shape == (1, 10)
    main(argv)
    docs = json.loads(capsys.readouterr().out)["results"]
    assert len(docs) == 2
    for d in docs:
        net = load(d["path"])
        assert net(torch.zeros(1, space.in_channels, net.arch.r, net.arch.r)).shape == (1, 10)
    # the rerun removed the dead process's temp folder: only the two results are left
    assert sorted(p.name for p in base.iterdir()) == sorted(Path(d["path"]).name for d in docs)
