"""BigEarthNet-10 % (CROMA rule): the training side is subsampled, the test side never; the report
names the BigEarthNet version and the band convention. Real BigEarthNet v1 samples from ../shared/data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.utils.data import Subset

from train.evaluate.run import build_splits, evaluate
from train.evaluate.tasks import BigEarthNetV1


@pytest.fixture(scope="module")
def ben(shared_data) -> Path:
    return shared_data / "bigearthnet_v1"


def ids_of(ds) -> list[str]:
    """Patch names of a task or a (nested) Subset of one, in order."""
    if isinstance(ds, Subset):
        inner = ids_of(ds.dataset)
        return [inner[i] for i in ds.indices]
    return list(ds.ids)


def test_fraction_subsamples_the_training_side_only(ben):
    kw = {"root": ben, "size": 16}
    train0, test0, _ = build_splits("bigearthnet_v1", kw, seed=0)
    n_all = len(BigEarthNetV1(ben))
    assert len(train0) + len(test0) == n_all == 13

    train, test, desc = build_splits("bigearthnet_v1", kw, seed=0, fraction=0.5)
    assert ids_of(test) == ids_of(test0)  # the full test split
    assert len(train) == round(0.5 * len(train0)) and set(ids_of(train)) < set(ids_of(train0))
    assert "training side subsampled to 0.5" in desc

    # `--opt fraction=0.5` (a reader option) means the same thing: it must not shrink the test split
    train_o, test_o, desc_o = build_splits("bigearthnet_v1", {**kw, "fraction": 0.5}, seed=0)
    assert ids_of(test_o) == ids_of(test0)
    assert ids_of(train_o) == ids_of(train)
    assert "training side subsampled to 0.5" in desc_o
    with pytest.raises(ValueError, match="fraction"):
        build_splits("bigearthnet_v1", {**kw, "fraction": 0.5}, seed=0, fraction=0.2)

    # official split lists (e.g. train.csv / test.csv): the given test list stays whole
    ids = ids_of(BigEarthNetV1(ben))
    lists = {"train_split_ids": ids[:9], "test_split_ids": ids[9:]}
    for extra in ({"fraction": 0.3}, {}):
        train_l, test_l, _ = build_splits("bigearthnet_v1", {**kw, **lists, **extra}, seed=1,
                                          fraction=None if extra else 0.3)
        assert ids_of(test_l) == ids[9:]
        assert len(train_l) == 3 and set(ids_of(train_l)) <= set(ids[:9])


def test_evaluate_ben10_reports_full_test_split_version_and_intervals(ben, tmp_path):
    kw = {"root": str(ben), "modality": "s2_l1c", "size": 16}
    _, test0, _ = build_splits("bigearthnet_v1", kw, seed=0)
    out = tmp_path / "ben10"
    res = evaluate(["pixels"], "bigearthnet_v1", kw, protocols=("knn", "logistic"), out_dir=out, fraction=0.5,
                   device="cpu", baselines=False, cache_dir=None, bootstrap={"n_resamples": 200},
                   logistic_kwargs={"Cs": [0.01, 1.0]})
    assert res["n_test"] == len(test0) and res["n_train"] == 5
    row = res["checkpoints"]["pixels"]
    assert row["logistic"]["config"]["n_refit"] == 5  # the probe saw the 10 %-style subset only
    assert row["logistic"]["config"]["n_test"] == len(test0)
    assert row["knn"]["config"]["n_test"] == len(test0) and row["knn"]["metrics"]["k"] == 5
    assert res["dataset"]["dataset"].startswith("BigEarthNet v1.0")
    md = (out / "results.md").read_text()
    assert "BigEarthNet v1.0" in md and "B10 inserted as the constant 22.1 DN" in md
    assert "input scaling" in md
    saved = json.loads((out / "results.json").read_text())
    iv = saved["checkpoints"]["pixels"]["logistic"]["intervals"]
    assert iv["n_resamples"] == 200 and iv["resampled"] == "groups"
    m = iv["metrics"]["mAP_micro"]
    assert m["low"] <= m["point"] <= m["high"] and m["n_resamples"] == 200
    assert f"{100 * m['point']:.2f} [{100 * m['low']:.2f}, {100 * m['high']:.2f}]" in md
