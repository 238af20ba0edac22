"""`ofa fit-predictor` end to end on a tiny trained run: collect (resumable), fit, save, reload."""
from __future__ import annotations

import json

import pytest

from ofa.accuracy_data import dataset_paths, read_dataset
from ofa.cli import main
from predictors.accuracy import AccuracyPredictor



@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory as `ofa train` leaves it (space, data config, supernet weights), without the training:
    accuracies are near chance, which is all the pipeline test needs."""
    import torch

    from elastic.spaces import get_space
    from elastic.supernet import Supernet
    from ofa.run_dir import RunDir

    torch.manual_seed(0)
    space = get_space("mbv3-w1.0-small", n_classes=10, resolutions=(16, 20))
    rd = RunDir(tmp_path_factory.mktemp("acc") / "run")
    rd.save_space(space)
    rd.save_data_config({"name": "digits", "subset_size": 96, "eval_size": 32})
    rd.save_weights(Supernet(space), space)
    return rd.path


def test_fit_predictor_collects_resumes_and_saves(tiny_run, capsys):
    args = ["fit-predictor", "--run", str(tiny_run), "--kinds", "ridge", "--folds", "3", "--calib-images", "32",
            "--limit", "32", "--device", "cpu", "--threads", "1"]
    main(args + ["--samples", "12", "--holdout", "0.25", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["n_rows"] == 12 and report["chosen"] == "ridge" and "holdout" in report
    csv_path, meta_path = dataset_paths(tiny_run)
    data = read_dataset(csv_path)
    assert len(data) == 12 and len(set(data.archs)) == 12 and meta_path.exists()
    assert all(0.0 <= a <= 1.0 for a in data.accuracies)
    # without --resume an existing dataset is refused, with it the dataset grows by the new subnets only
    with pytest.raises(SystemExit) as err:
        main(args + ["--samples", "13", "--holdout", "0.25"])
    assert err.value.code == 2 and "--resume" in capsys.readouterr().err
    main(args + ["--samples", "13", "--holdout", "0.25", "--resume"])
    out = capsys.readouterr().out
    assert "held out" in out and "saved to" in out
    assert len(read_dataset(csv_path)) == 13
    pred = AccuracyPredictor.load(tiny_run / "predictors")
    assert pred.report["n_rows"] == 13 and pred.predict(data.archs[:4]).shape == (4,)
