"""Every CLI option fed wrong values: one `error:` line, exit 2, no traceback, nothing written, no heavy work first."""
from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ofa.cli import main
from predictors.profiles import list_devices

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _snapshot(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*")) if path.exists() else None


class HeavyWorkStarted(AssertionError):
    """Raised by the patched entry points of data loading, network building and timing."""


def _no_heavy_work(mp: pytest.MonkeyPatch) -> None:
    """Make every expensive step (reading a dataset, building a supernet or a static net, timing a net) fail loudly:
    a command given a bad value must reject it before any of them starts."""
    import ofa.data
    import predictors.measure
    from elastic.static_net import StaticNet
    from elastic.supernet import Supernet

    def heavy(what):
        def fail(*args, **kwargs):
            raise HeavyWorkStarted(f"{what} started before the bad input was rejected")
        return fail

    for name in ("_load_fashion", "_load_digits", "_load_cifar", "_load_folder"):
        mp.setattr(ofa.data, name, heavy(f"data loading ({name})"))
    mp.setattr(Supernet, "__init__", heavy("building a supernet"))
    mp.setattr(StaticNet, "__init__", heavy("building a static net"))
    mp.setattr(predictors.measure, "_Runner", heavy("timing a net"))


def _fails_cleanly(argv, capsys, target=None):
    before = _snapshot(target) if target is not None else None
    with pytest.MonkeyPatch.context() as mp:
        _no_heavy_work(mp)
        with pytest.raises(SystemExit) as exc:
            main(argv)
    cap = capsys.readouterr()
    lines = [l for l in cap.err.splitlines() if l.strip()]
    assert exc.value.code == 2, (argv, cap.err)
    assert len(lines) == 1 and lines[0].startswith("error"), (argv, cap.err)
    assert "Traceback" not in cap.err + cap.out
    if target is not None:
        assert _snapshot(target) == before, f"{argv} changed {target}"
    return lines[0]


@pytest.fixture(scope="module")
def arch_json(tmp_path_factory):
    from elastic.spaces import get_space

    sp = get_space("mbv3-w1.0-small", n_classes=10)
    p = tmp_path_factory.mktemp("cfg") / "arch.json"
    p.write_text(json.dumps({"space": sp.name, "n_classes": 10, "arch": sp.largest().to_dict()}))
    return p


def _bad_latency(text: str) -> bool:
    from elastic.errors import OFAError
    from specialize.budget import parse_latencies

    try:
        parse_latencies(text)
    except OFAError:
        return True
    except Exception:  # noqa: BLE001 - any other exception is a bug the CLI test below will show
        return True
    return False


@SETTINGS
@given(text=st.one_of(st.text(min_size=1, max_size=12),
                      st.from_regex(r"-?[0-9]{0,3}(\.[0-9]*)?(ms|us|s|m|x|MS|ns|)", fullmatch=True)))
def test_bad_latency_strings(text, tmp_path, capsys):
    assume(text.strip() and "\x00" not in text and _bad_latency(text))
    out = tmp_path / "out"
    _fails_cleanly(["specialize", "--space", "mbv3-w1.2", "--device", "pixel1", "--latency", text, "--out", str(out)],
                   capsys, tmp_path)
    assert not out.exists()


@SETTINGS
@given(name=st.text(alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_@."),
                    min_size=1, max_size=16))
def test_unknown_device_names(name, arch_json, capsys):
    known = {d["name"] for d in list_devices()}
    assume(name not in known and not os.path.exists(name) and not name.startswith("-"))
    line = _fails_cleanly(["latency", "--device", name, "--config", str(arch_json)], capsys, arch_json.parent)
    assert "device" in line


@SETTINGS
@given(stage=st.text(min_size=1, max_size=10).filter(lambda s: s not in ("full", "kernel", "depth", "expand", "all")))
def test_unknown_stage_names(stage, tmp_path, capsys):
    assume("\x00" not in stage and not stage.startswith("-"))
    run = tmp_path / "run"
    line = _fails_cleanly(["train", "--run", str(run), "--stage", stage, "--data", "digits"], capsys, tmp_path)
    assert "stage" in line and not run.exists()


# (command, option, smallest allowed value); every other required option is valid
NUMERIC = [
    ("train", "--epochs", 1), ("train", "--full-epochs", 1), ("train", "--batch-size", 1), ("train", "--save-every", 1),
    ("train", "--n-subnets", 1), ("train", "--max-steps", 1), ("train", "--elastic-max-steps", 1), ("train", "--threads", 1),
    ("train", "--subset", 1),
    ("train", "--eval-size", 1), ("train", "--workers", 0), ("train", "--eval-subnets", 0),
    ("fit-predictor", "--samples", 1), ("fit-predictor", "--folds", 2), ("fit-predictor", "--calib-images", 0),
    ("fit-predictor", "--limit", 1), ("fit-predictor", "--threads", 1),
    ("quickstart", "--samples", 20), ("profile", "--fit", 20), ("profile", "--threads", 1),
    ("profile", "--repeats", 1), ("profile", "--rounds", 1),
    ("proxyless-search", "--batch-size", 1), ("proxyless-search", "--warmup-steps", 0),
    ("proxyless-search", "--train-steps", 0),
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from elastic.spaces import get_space
    from ofa.run_dir import RunDir

    space = get_space("mbv3-w1.0-small", n_classes=10, resolutions=(16, 20))
    rd = RunDir(tmp_path_factory.mktemp("inputs") / "run")
    rd.save_space(space)
    rd.save_data_config({"name": "digits", "subset_size": 96, "eval_size": 32})
    return rd.path


@SETTINGS
@given(case=st.sampled_from(NUMERIC), below=st.integers(min_value=1, max_value=10**6))
def test_out_of_range_numbers(case, below, tiny_run, tmp_path, capsys):
    cmd, opt, least = case
    value = str(least - below)
    base = {"train": ["--run", str(tmp_path / "r"), "--data", "digits"],
            "fit-predictor": ["--run", str(tiny_run)],
            "quickstart": ["--run", str(tmp_path / "q")],
            "profile": ["--name", "never-saved"],
            "proxyless-search": ["--out", str(tmp_path / "px"), "--data", "digits"]}[cmd]
    _fails_cleanly([cmd, *base, f"{opt}={value}"], capsys, tmp_path)
    assert _snapshot(tiny_run) == [("data.json", (tiny_run / "data.json").stat().st_size),
                                  ("space.json", (tiny_run / "space.json").stat().st_size)]


@SETTINGS
@given(sub=st.text(alphabet="abcxyz_-", min_size=1, max_size=8))
def test_paths_that_do_not_exist_or_are_not_directories(sub, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a directory")
    for run in (tmp_path / "missing" / sub, tmp_path / "file.txt" / sub):
        _fails_cleanly(["fit-predictor", "--run", str(run)], capsys, tmp_path)
        _fails_cleanly(["specialize", "--run", str(run), "--device", "pixel1", "--latency", "5ms"], capsys, tmp_path)
    assert not (tmp_path / "missing").exists()


@SETTINGS
@given(source=st.text(alphabet=st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=8)
       .filter(lambda s: s not in ("train", "test")))
def test_unknown_validation_sources(source, tmp_path, capsys):
    run = tmp_path / "run"
    line = _fails_cleanly(["train", "--run", str(run), "--data", "digits", "--val-from", source], capsys, tmp_path)
    assert f"unknown validation source '{source}'; allowed: train, test" in line and not run.exists()
