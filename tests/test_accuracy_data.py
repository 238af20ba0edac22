"""Accuracy-dataset collection: the plan, resumability, no duplicates, torn-line repair (evaluator = a formula)."""
import numpy as np
import pytest

from elastic import OFAError, get_space
from ofa.accuracy_data import collect, plan_subnets, read_dataset

SPACE = get_space("mbv3-w1.0-small", n_classes=10)


def fake_accuracy(arch):
    """A deterministic stand-in for BN-recalibrated validation accuracy (bigger = better, saturating)."""
    return 0.80 + 0.1 * (1 - np.exp(-(sum(arch.d) + sum(arch.ks) / 20 + arch.r / 8) / 20))


def test_plan_is_stratified_distinct_and_a_prefix_of_longer_plans():
    short, long = plan_subnets(SPACE, 20, seed=3), plan_subnets(SPACE, 60, seed=3)
    assert long[:20] == short and len(set(long)) == 60
    assert all(SPACE.canonical(a) == a for a in long)
    rs = [a.r for a in long[2:]]
    assert {rs.count(r) for r in SPACE.resolutions} <= {19, 20}          # round robin over resolutions
    depth = [sum(a.d) for a in long[2:]]
    assert min(depth) <= 12 and max(depth) >= 17                          # small and large draws both present


def test_collect_resumes_without_duplicates_and_repairs_a_torn_line(tmp_path):
    csv = tmp_path / "predictors" / "acc_dataset.csv"
    calls = []

    def ev(arch):
        calls.append(arch)
        if len(calls) == 7:
            raise KeyboardInterrupt  # stopped mid-collection
        return fake_accuracy(arch)

    with pytest.raises(KeyboardInterrupt):
        collect(SPACE, csv, 12, ev, progress=False)
    assert len(read_dataset(csv)) == 6
    with open(csv, "a") as fh:                 # a torn last line, as after a kill mid-write
        fh.write('6,"{""ks"": [3, 3')
    with pytest.raises(OFAError, match="--resume"):
        collect(SPACE, csv, 12, fake_accuracy, progress=False)
    calls.clear()
    data = collect(SPACE, csv, 12, lambda a: (calls.append(a), fake_accuracy(a))[1], resume=True, progress=False)
    assert len(calls) == 6 and len(data) == 12
    again = read_dataset(csv, SPACE)
    assert again.archs == plan_subnets(SPACE, 12) and len(set(again.archs)) == 12
    np.testing.assert_allclose(again.accuracies, [fake_accuracy(a) for a in again.archs], atol=1e-6)
    assert csv.read_text().endswith("\n") and csv.read_text().count("\n") == 13
    # growing the dataset measures only the new subnets; other settings are refused
    calls.clear()
    collect(SPACE, csv, 15, lambda a: (calls.append(a), fake_accuracy(a))[1], resume=True, progress=False)
    assert len(calls) == 3
    with pytest.raises(OFAError, match="different settings"):
        collect(SPACE, csv, 15, fake_accuracy, resume=True, settings={"split": "test"}, progress=False)


def test_damaged_rows_are_clear_errors(tmp_path):
    csv = tmp_path / "acc_dataset.csv"
    collect(SPACE, csv, 3, fake_accuracy, progress=False)
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 2)[0] + ",1.5,0.1"  # accuracy 1.5
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(OFAError, match="line 3"):
        read_dataset(csv, SPACE)
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(OFAError, match="not an accuracy dataset"):
        read_dataset(csv)
