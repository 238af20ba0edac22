"""ofa.informative_images: labels from the images a pilot disagreed on equal the full accuracy but for the
pilot-agreed images a later subnet classifies otherwise; the pilot is measured once and stored."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from elastic.errors import OFAError
from elastic.spaces import get_space
from ofa.accuracy_data import collect, plan_subnets
from ofa.informative_images import FILE_NAME, InformativeImages, informative_evaluator
from ofa.run_dir import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")


def test_informative_images_are_those_the_pilot_disagrees_on():
    space = get_space("mbv3-w1.0-small", n_classes=10)
    pilot = plan_subnets(space, 3)
    correct = np.array([[1, 1, 0, 1, 0, 1],
                        [1, 0, 0, 1, 1, 1],
                        [1, 1, 0, 0, 0, 1]], dtype=bool)
    found = InformativeImages.from_outcomes(pilot, correct)
    assert found.indices.tolist() == [1, 3, 4] and found.always_right == 2 and found.n_images == 6
    assert found.fraction == 0.5
    assert [found.pilot_accuracy[a] for a in pilot] == pytest.approx([4 / 6, 4 / 6, 3 / 6])
    assert found.estimate(2) == pytest.approx(4 / 6)      # 2 always right + 2 of the informative ones
    again = InformativeImages.from_dict(json.loads(json.dumps(found.to_dict())))
    assert again.indices.tolist() == [1, 3, 4] and again.pilot_accuracy == found.pilot_accuracy
    assert again.digest() == found.digest()


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    """A run directory holding an untrained supernet (its subnets disagree on many images)."""
    from elastic.supernet import Supernet

    space = get_space("mbv3-w1.0-small", n_classes=10, resolutions=(16, 20))
    rd = RunDir(tmp_path_factory.mktemp("informative") / "run")
    rd.create()
    rd.save_space(space)
    rd.save_data_config({"name": "digits", "subset_size": 96, "eval_size": 64})
    torch.manual_seed(0)
    rd.save_weights(Supernet(space), space)
    return rd


def _copy(rd: RunDir, where) -> RunDir:
    import shutil

    return RunDir(shutil.copytree(rd.path, where / "run"))


def test_later_labels_differ_from_the_full_accuracy_only_by_pilot_agreed_images(random_run, tmp_path):
    from ofa.training.evaluate import correct_per_image, recalibrated

    random_run = _copy(random_run, tmp_path)
    space = random_run.load_space()
    archs = plan_subnets(space, 10, seed=0)
    pilot, later = archs[:6], archs[6:]
    evaluate, images = informative_evaluator(random_run.path, pilot, calib_images=32, limit=None)
    assert images() is None                                  # nothing measured yet
    labels = [evaluate(a) for a in archs]
    found = images()
    assert (random_run.path / "predictors" / FILE_NAME).exists() and 0 < found.fraction < 1
    sup, data, cache = random_run.load_supernet(), random_run.load_data(), {}
    agreed_right = np.ones(found.n_images, dtype=bool)
    agreed_wrong = np.ones(found.n_images, dtype=bool)
    for a in pilot:
        c = correct_per_image(recalibrated(sup, a, data, 32, "cpu", cache), data, "val", a.r).numpy()
        agreed_right &= c
        agreed_wrong &= ~c
    assert agreed_right.sum() == found.always_right
    for a, label in zip(archs, labels):
        c = correct_per_image(recalibrated(sup, a, data, 32, "cpu", cache), data, "val", a.r).numpy()
        if a in pilot:
            assert label == pytest.approx(c.mean())
        else:   # exact: the full accuracy, less the always-right images it misses, plus the always-wrong it gets
            off = (-(agreed_right & ~c).sum() + (agreed_wrong & c).sum()) / found.n_images
            assert label == pytest.approx(c.mean() - off)
    # a second evaluator reads the stored pilot: same labels, nothing re-measured
    again, images2 = informative_evaluator(random_run.path, pilot, calib_images=32, limit=None)
    assert images2().indices.tolist() == found.indices.tolist()
    assert [again(a) for a in later] == pytest.approx(labels[6:])
    with pytest.raises(OFAError, match="holds another pilot"):
        informative_evaluator(random_run.path, archs[:5], calib_images=32, limit=None)[1]()


def test_collect_with_informative_labels_resumes(random_run, tmp_path):
    random_run = _copy(random_run, tmp_path)
    space = random_run.load_space()
    pilot = plan_subnets(space, 4, seed=0)
    evaluate, images = informative_evaluator(random_run.path, pilot, calib_images=32, limit=None)
    csv_path = tmp_path / "acc.csv"
    first = collect(space, csv_path, 4, evaluate, seed=0, progress=False)
    more = collect(space, csv_path, 9, evaluate, seed=0, resume=True, progress=False)
    assert more.archs[:4] == first.archs and len(more) == 9
    assert more.accuracies[:4] == pytest.approx([images().pilot_accuracy[a] for a in pilot], abs=1e-6)


def test_uncapped_labels_use_the_split_beyond_the_runs_eval_cap(random_run, tmp_path):
    """`uncapped`: the pilot sees the whole carved validation split (digits: 216 images here), not the run's
    64-image `eval_size` cap, and the capped images are its first ones."""
    random_run = _copy(random_run, tmp_path)
    space = random_run.load_space()
    capped, whole = random_run.load_data(), random_run.load_data(uncapped=True)
    assert len(capped.val) == 64 < len(whole.val)
    assert torch.equal(whole.val.labels[:64], capped.val.labels)
    pilot = plan_subnets(space, 3, seed=0)
    evaluate, images = informative_evaluator(random_run.path, pilot, calib_images=32, limit=None, uncapped=True)
    evaluate(pilot[0])
    assert images().n_images == len(whole.val)
