"""ofa.data: splits, determinism, formats, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from elastic.errors import OFAError
from ofa.data import augment_batch, data_from_config, get_data, prepare_batch


def _labels(ds):
    return np.array([int(ds[i][1]) for i in range(len(ds))])


def test_digits_splits_are_disjoint_seeded_and_rebuildable():
    b = get_data("digits")
    assert b.n_classes == 10 and b.native_res == 8
    assert len(b.train) + len(b.val) + len(b.test) == 1797
    x, y = b.train[0]
    assert x.shape == (3, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grayscale -> 3 identical channels
    # disjoint: no val image equals a train image index-wise (compare raw pixel bytes)
    tr = {bytes(b.train.images[i].numpy()) for i in range(len(b.train))}
    te = {bytes(b.test.images[i].numpy()) for i in range(len(b.test))}
    va = [bytes(b.val.images[i].numpy()) for i in range(len(b.val))]
    assert sum(v in tr for v in va) < 0.05 * len(va)  # digits has a few exact duplicates, no more
    assert len(te & tr) < 0.05 * len(te)
    again = data_from_config(b.config)
    assert torch.equal(again.val.images, b.val.images) and torch.equal(again.train.labels, b.train.labels)
    other = get_data("digits", split_seed=1)
    assert not torch.equal(other.val.images, b.val.images)
    assert torch.equal(other.test.images, b.test.images)  # the test split never depends on the split seed


def test_val_from_test_is_a_disjoint_half_of_the_test_split_and_rebuildable():
    plain = get_data("digits")
    b = get_data("digits", val_from="test")
    assert len(b.train) == len(plain.train) + len(plain.val)  # no training image is held out
    assert len(b.val) + len(b.test) == len(plain.test) and abs(len(b.val) - len(b.test)) <= 1
    whole = {bytes(plain.test.images[i].numpy()): i for i in range(len(plain.test))}
    val_ids = {whole[bytes(b.val.images[i].numpy())] for i in range(len(b.val))}
    test_ids = {whole[bytes(b.test.images[i].numpy())] for i in range(len(b.test))}
    assert not val_ids & test_ids and len(val_ids | test_ids) == len(plain.test)   # disjoint, covering
    assert b.config["val_from"] == "test" and "val_from" not in plain.config       # old configs unchanged
    again = data_from_config(b.config)
    assert torch.equal(again.val.images, b.val.images) and torch.equal(again.test.images, b.test.images)
    other = get_data("digits", val_from="test", split_seed=1)
    assert not torch.equal(other.val.images, b.val.images)
    assert "val (from test)" in b.summary()
    capped = get_data("digits", val_from="test", val_size=100, eval_size=60)
    assert (len(capped.val), len(capped.test)) == (60, 60)
    with pytest.raises(OFAError, match="unknown validation source 'dev'; allowed: train, test"):
        get_data("digits", val_from="dev")
    with pytest.raises(OFAError, match="val_size 359 must leave images for both splits of 359 test images"):
        get_data("digits", val_from="test", val_size=359)


def test_subset_and_eval_size_and_loader_resolution():
    b = get_data("digits", subset_size=100, eval_size=50)
    assert len(b.train) == 100 and len(b.val) == 50 and len(b.test) == 50
    xs, ys = zip(*b.loader("train", batch_size=32, resolution=24))
    assert xs[0].shape == (32, 3, 24, 24) and sum(len(y) for y in ys) == 100
    x = torch.cat(xs)
    assert abs(float(x.mean())) < 0.3 and 0.6 < float(x.std()) < 1.4  # normalized


def test_fashion_mnist_from_system_files():
    try:
        b = get_data("fashion-mnist", subset_size=512, eval_size=256)
    except OFAError as exc:
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    assert (len(b.train), len(b.val), len(b.test)) == (512, 256, 256)
    assert b.native_res == 28 and b.n_classes == 10
    counts = np.bincount(_labels(b.val), minlength=10)
    assert counts.min() > 5  # a shuffled split, all classes present
    assert b.config["name"] == "fashion-mnist"


def test_default_data_says_which(monkeypatch, tmp_path):
    import ofa.data as data

    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": [tmp_path / "none"]})
    b = get_data(None, root=tmp_path / "cache", eval_size=10)
    assert b.name == "digits" and "digits" in b.note


def test_bad_names_and_missing_cifar_are_clear_errors(tmp_path):
    with pytest.raises(OFAError, match="unknown data 'mnist-ish'"):
        get_data("mnist-ish")
    with pytest.raises(OFAError, match="cifar10 not found.*--download"):
        get_data("cifar10", root=tmp_path)
    with pytest.raises(OFAError, match="val_size"):
        get_data("digits", val_size=5000)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    b = get_data(str(tmp_path), image_size=16, val_size=2)
    assert b.n_classes == 2 and b.classes == ["cat", "dog"]
    assert (len(b.train), len(b.val), len(b.test)) == (10, 2, 12)
    x, y = b.train[0]
    assert x.shape == (3, 16, 16)
    assert data_from_config(b.config).config == b.config


def test_augment_distributed_share_equals_single_process_draws():
    x = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).reshape(4, 3, 8, 8)
    full = augment_batch(x, torch.Generator().manual_seed(5), flip=True)
    r0 = augment_batch(x[0::2], torch.Generator().manual_seed(5), flip=True, rank=0, world=2)
    r1 = augment_batch(x[1::2], torch.Generator().manual_seed(5), flip=True, rank=1, world=2)
    assert torch.equal(full[0::2], r0) and torch.equal(full[1::2], r1)
    assert not torch.equal(full, x)
    y = prepare_batch(torch.rand(2, 3, 8, 8), 24, (0.5,) * 3, (0.25,) * 3)
    assert y.shape == (2, 3, 24, 24)
