"""Files a user may hand us, damaged field by field: every loader answers with an OFAError (one line, exit 2 in the
CLI) or loads something usable, never another exception. Also the other user-causable failures found by reading
(an export that does not match PyTorch, an evaluate callback returning percentages, warnings of a predictor fit)."""
from __future__ import annotations

import copy
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from elastic.errors import OFAError
from elastic.spaces import get_space

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
WRONG = [None, "x", "", -1, 0, 3.5, 1e308, -1e9, True, [], [1, "a"], {}, {"a": 1}, "DELETE"]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _paths(obj, prefix=()):
    """Every key / index path of a JSON document (the first 3 items of each list)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _damage(doc, data):
    """`doc` with one field (drawn by hypothesis) replaced by a wrong value or deleted."""
    paths = list(_paths(doc))
    if data.draw(st.booleans(), label="top-level field"):   # half the draws: a field of the document itself
        paths = [p for p in paths if len(p) == 1]
    path = data.draw(st.sampled_from(paths), label="field")
    value = data.draw(st.sampled_from(WRONG), label="value")
    out = copy.deepcopy(doc)
    cur = out
    for p in path[:-1]:
        cur = cur[p]
    if value == "DELETE":
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return out


def _only_ofa_errors(fn, *args):
    try:
        fn(*args)
    except OFAError as exc:
        assert "\n" not in str(exc).strip()


@FUZZ
@given(data=st.data())
def test_damaged_space_json(data):
    from elastic.spaces import space_from_dict

    space = get_space("mbv3-w1.0-small", n_classes=10, resolutions=(24, 32))
    doc = _damage(space.to_dict(), data)

    def load(d):
        sp = space_from_dict(d)
        sp.net_spec(sp.largest()), sp.net_spec(sp.smallest())

    _only_ofa_errors(load, doc)


def test_space_json_limits_are_named():
    from elastic.spaces import space_from_dict

    good = get_space("mbv3-w1.0-small", n_classes=10).to_dict()
    for field, value, match in (("ks_choices", [3, 9], "not a subset"), ("ks_choices", [], "non-empty list"),
                                ("resolutions", [4], r"resolutions\[0\] must be an integer in 8"),
                                ("n_classes", "10", "n_classes must be an integer"), ("name", ["x"], "'name' field")):
        with pytest.raises(OFAError, match=match):
            space_from_dict({**good, field: value})
    assert space_from_dict({**good, "resolutions": [32.0, 24]}).resolutions == (24, 32)


@pytest.fixture(scope="module")
def predictor_files(tmp_path_factory):
    from predictors.accuracy import AccuracyPredictor

    sp = get_space("mbv3-w1.0-small", n_classes=10)
    rng = random.Random(0)
    archs = [sp.sample(rng) for _ in range(24)]
    accs = [0.5 + 0.01 * sum(a.d) + 0.001 * sum(a.ks) for a in archs]
    out = {}
    for kind, hp in (("ridge", {}), ("mlp", {"steps": 20, "hidden": [16]})):
        d = tmp_path_factory.mktemp(kind)
        AccuracyPredictor.fit(sp, archs, accs, kind=kind, **hp).save(d)
        out[kind] = d
    return out, archs[:3]


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["ridge", "mlp"]))
def test_damaged_accuracy_predictor_file(predictor_files, tmp_path, data, kind):
    from predictors.accuracy import AccuracyPredictor

    dirs, archs = predictor_files
    src = dirs[kind]
    doc = _damage(json.loads((src / "accuracy_predictor.json").read_text()), data)
    dest = tmp_path / f"damaged-{kind}"
    dest.mkdir(exist_ok=True)
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    (dest / "accuracy_predictor.json").write_text(json.dumps(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # "refit differs from the saved predictions": a valid load
        _only_ofa_errors(lambda: AccuracyPredictor.load(dest).predict(archs))


@FUZZ
@given(data=st.data(), source=st.sampled_from(["pixel1", "note10"]))
def test_damaged_latency_profile(tmp_path, data, source):
    from predictors.latency import get_latency_predictor

    doc = json.loads((ROOT / "predictors" / "profiles" / f"{source}.json").read_text())
    path = tmp_path / f"{source}-damaged.json"
    path.write_text(json.dumps(_damage(doc, data)))
    space = get_space("mbv3-w1.2")
    _only_ofa_errors(lambda: get_latency_predictor(str(path), space).predict([space.largest(), space.smallest()]))


def test_profile_error_and_extra_must_be_objects(tmp_path):
    from predictors.profiles import load_profile

    doc = json.loads((ROOT / "predictors" / "profiles" / "pixel1.json").read_text())
    for field, value in (("error", "x"), ("error", -1), ("extra", [1, "a"]), ("extra", 3.5)):
        path = tmp_path / f"{field}.json"
        path.write_text(json.dumps({**doc, field: value}))
        with pytest.raises(OFAError, match=f"'{field}' must be a JSON object"):
            load_profile(str(path))


@FUZZ
@given(data=st.data(), name=st.sampled_from(["note10_lat-8ms_top1-71.4_finetune-25.json", "proxyless_cpu.config.json"]))
def test_damaged_net_config(data, name):
    from predictors.net_config import netspec_from_json

    doc = json.loads((DATA / "latency" / "published_nets" / name).read_text())
    _only_ofa_errors(netspec_from_json, _damage(doc, data))


@FUZZ
@given(data=st.data())
def test_damaged_data_json(data):
    from ofa.data import data_from_config

    _only_ofa_errors(data_from_config, _damage({"name": "digits", "subset_size": 96, "eval_size": 32, "split_seed": 0,
                                                "val_size": 0.2, "image_size": 32, "val_from": "train"}, data))


def test_an_export_that_disagrees_with_pytorch_is_an_ofa_error(tmp_path, monkeypatch):
    """ONNX Runtime computing something else than PyTorch (here: its outputs shifted) was a RuntimeError."""
    import onnxruntime as ort

    from elastic.supernet import Supernet
    from ofa.export import export_onnx

    sp = get_space("mbv3-w1.0-small", n_classes=10)
    net = Supernet(sp).extract(sp.smallest(24)).eval()
    real_run = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a, **k: [real_run(self, *a, **k)[0] + 5.0])
    with pytest.raises(OFAError, match="ONNX export computes outputs 5.00e\\+00 away from PyTorch's"):
        export_onnx(net, tmp_path / "bad.onnx", 24)


def test_evaluate_returning_percentages_is_an_ofa_error(tmp_path):
    from ofa.accuracy_data import collect, read_dataset

    sp = get_space("mbv3-w1.0-small", n_classes=10)
    csv_path = tmp_path / "acc.csv"
    with pytest.raises(OFAError, match="returned accuracy 87.5 for subnet 0; accuracies are fractions"):
        collect(sp, csv_path, 3, lambda arch: 87.5, progress=False)
    assert len(read_dataset(csv_path, sp)) == 0


def test_predictor_fit_hides_only_convergence_warnings(monkeypatch):
    """The GP's optimizer chatter (ConvergenceWarning) is silenced during a fit; any other warning reaches the user."""
    from sklearn.exceptions import ConvergenceWarning

    import predictors.accuracy as acc_mod

    real = acc_mod.make_sklearn_model   # (predictors.accuracy_models', looked up in predictors.accuracy)

    def noisy(*args, **kwargs):
        model = real(*args, **kwargs)
        fit = model.fit

        def fit_and_warn(x, y):
            warnings.warn("optimizer did not converge", ConvergenceWarning)
            warnings.warn("something the user must see", UserWarning)
            return fit(x, y)

        model.fit = fit_and_warn
        return model

    monkeypatch.setattr(acc_mod, "make_sklearn_model", noisy)
    sp = get_space("mbv3-w1.0-small", n_classes=10)
    rng = random.Random(0)
    archs = [sp.sample(rng) for _ in range(12)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        acc_mod.AccuracyPredictor.fit(sp, archs, np.linspace(0.6, 0.9, 12), kind="ridge")
    kinds = [w.category for w in seen]
    assert UserWarning in kinds and ConvergenceWarning not in kinds


@FUZZ
@given(data=st.data())
def test_damaged_training_config_in_train_state(data):
    """train_state.pt's "config" (read back on --resume), damaged field by field."""
    from ofa.training import TrainConfig

    doc = TrainConfig(run="/tmp/never-written", schedule="quick", data={"name": "digits"}).to_dict()

    def load(d):
        cfg = TrainConfig.from_dict(d)
        for name in ("batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing", "eval_size",
                     "calib_images", "elastic_max_steps", "augment", "sandwich", "elastic_lr_scale"):
            cfg.resolved(name)
        cfg.base_lr()

    _only_ofa_errors(load, _damage(doc, data))
