"""Retrieval on the curated archive splits queries and database by location (issue 11).

The seasons of one location are near-copies of each other. With queries and database drawn per item,
a query finds its own location (another season) first and retrieval looks near-perfect without
measuring anything about the features' semantics. The archive below makes that extreme: every season
of a location has identical pixels (so identical features) and each test location has a label no
other test location has, so the only relevant database items of a query are its own location's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.evaluate.features import extract_features, load_backbone_for_eval
from train.evaluate.metrics import imbriaco_split
from train.evaluate.retrieval import (
    IMBRIACO_SEED,
    evaluate_retrieval,
    query_database_split,
    rank_database,
)
from train.evaluate.run import evaluate
from train.evaluate.tasks import ArchiveTask, item_groups


@pytest.fixture(scope="module")
def same_place_archive(tmp_path_factory) -> str:
    from archive_helpers import synthetic_archive

    from pipeline.split import split_indices, write_split
    from pipeline.store import STATUS_DONE, open_group

    path = synthetic_archive(tmp_path_factory.mktemp("same-place") / "a.zarr", n_locations=12, size_px=16,
                             patches_per_shard=6)
    write_split(path, val=0.1, test=0.5, seed=0)
    group = open_group(path, "r+")
    assert (group["status"][:] == STATUS_DONE).all()
    image = group["s2_l1c"][:]
    image[:] = image[:, :1]  # every season = season 0: one place, identical pixels
    group["s2_l1c"][:] = image
    test = split_indices(path, "test")
    assert 3 <= len(test) <= 9  # one class of its own per test location (9 classes)
    multi_hot = np.zeros(group["multi_hot"].shape, np.uint8)
    multi_hot[..., 0] = 1
    for cls, p in enumerate(test):
        multi_hot[p] = 0
        multi_hot[p, :, cls] = 1
    group["multi_hot"][:] = multi_hot
    return path


def test_own_location_never_in_the_database(same_place_archive, tmp_path):
    task = ArchiveTask(same_place_archive, split="test")
    groups = item_groups(task)
    np.testing.assert_array_equal(groups, [p for p, _ in task._items])
    feats, _ = extract_features(load_backbone_for_eval("pixels", len(task.bands), task.bands), task, cache_dir=None)
    for g in np.unique(groups):  # the premise: identical features for all seasons of a location
        assert torch.equal(feats[groups == g], feats[groups == g][:1].expand(int((groups == g).sum()), -1))

    # the split evaluation uses (retrieval default seed and query fraction): the full ranking of every
    # query holds no item of the query's own location
    for seed in (IMBRIACO_SEED, 0, 1, 2):
        q, d = query_database_split(len(task), groups, 0.2, seed)
        assert len(q) > 0 and len(d) > 0
        ranked = rank_database(feats, q, d, k=len(d))
        assert ranked.shape == (len(q), len(d))
        assert (groups[ranked.numpy()] != groups[q.numpy()][:, None]).all()
        assert set(groups[q.numpy()]).isdisjoint(groups[d.numpy()])

    # through evaluate(): no query has a relevant item left (only its own location was relevant)
    res = evaluate(["pixels"], "archive", {"store": same_place_archive}, protocols=("retrieval",),
                   out_dir=tmp_path / "eval", device="cpu", baselines=False, cache_dir=None, plot_examples=2,
                   retrieval_kwargs={"ks": (1, "all"), "seed": [IMBRIACO_SEED, 0, 1]})
    metrics = res["checkpoints"]["pixels"]["retrieval"]["metrics"]
    assert metrics["n_queries"] > 0 and metrics["n_valid"] == 0
    assert res["checkpoints"]["pixels"]["retrieval"]["config"]["split"].startswith("by group")

    # the item split (today's protocol, still available with groups=None) finds the same place
    items = evaluate(["pixels"], "archive", {"store": same_place_archive}, protocols=("retrieval",),
                     out_dir=tmp_path / "items", device="cpu", baselines=False, cache_dir=None, plot_examples=0,
                     retrieval_kwargs={"ks": (1, "all"), "seed": [IMBRIACO_SEED, 0, 1], "groups": None})
    by_item = items["checkpoints"]["pixels"]["retrieval"]["metrics"]
    assert by_item["n_valid"] > 0 and by_item["P@1"] == pytest.approx(1.0)


def test_independent_items_keep_the_imbriaco_split():
    n = 57
    q0, d0 = imbriaco_split(n, 0.2, IMBRIACO_SEED)
    for groups in (None, np.arange(n), np.arange(n) * 3 + 100):  # any distinct values, sorted order
        q, d = query_database_split(n, groups, 0.2, IMBRIACO_SEED)
        assert torch.equal(q, q0) and torch.equal(d, d0)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, 6, generator=g)
    labels = (torch.rand(n, 4, generator=g) < 0.4).float()
    labels[:, 0] = 1
    plain = evaluate_retrieval(feats, labels, ks=(5, "all"))
    same = evaluate_retrieval(feats, labels, ks=(5, "all"), groups=np.arange(n))
    assert same["metrics"] == plain["metrics"] and same["config"]["split"] == "by item"


def test_group_split_keeps_groups_whole():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 15, size=80)
    for seed in range(6):
        q, d = query_database_split(80, groups, 0.2, seed)
        assert sorted(q.tolist() + d.tolist()) == list(range(80))
        assert set(groups[q.numpy()]).isdisjoint(groups[d.numpy()])
        assert len(set(groups[q.numpy()])) == round(0.2 * len(np.unique(groups)))
    # a small test split: at least one query location and one database location
    q, d = query_database_split(8, [7, 7, 7, 7, 3, 3, 3, 3], 0.2, IMBRIACO_SEED)
    assert len(q) == 4 and len(d) == 4 and {7, 3} == {[7, 7, 7, 7, 3, 3, 3, 3][int(q[0])],
                                                       [7, 7, 7, 7, 3, 3, 3, 3][int(d[0])]}
    with pytest.raises(ValueError, match="one value per item"):
        query_database_split(80, groups[:10])
    with pytest.raises(ValueError, match="two groups"):
        query_database_split(5, np.zeros(5, int))


def test_retrieval_intervals_match_a_plain_resampling_loop():
    """Retrieval gets bootstrap intervals too: queries resampled by group (database fixed); each
    replicate equals recomputing retrieval_metrics on the resampled queries, done here in a loop.
    """
    import numpy as np
    import torch

    from train.evaluate.bootstrap import BootstrapConfig, resample_counts
    from train.evaluate.metrics import retrieval_metrics
    from train.evaluate.retrieval import evaluate_retrieval, query_database_split

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(60, 8, generator=g)
    labels = (torch.rand(60, 5, generator=g) > 0.6).float()
    groups = np.repeat(np.arange(20), 3)
    cfg = BootstrapConfig(n_resamples=40, seed=3)
    out = evaluate_retrieval(feats, labels, groups=groups, ks=(10, "all"), imbriaco_levels=False, bootstrap=cfg, seed=5)
    iv = out["intervals"]["metrics"]["mAP@10"]
    assert iv["point"] == pytest.approx(out["metrics"]["mAP@10"])
    q, d = query_database_split(60, groups, 0.2, 5)
    reps = []
    counts = np.concatenate(list(resample_counts(len(q), groups[q.numpy()], cfg.n_resamples, cfg.seed)))
    for c in counts:
        idx = torch.from_numpy(np.repeat(q.numpy(), c))
        m = retrieval_metrics(feats[idx], labels[idx], feats[d], labels[d], ks=(10,), relevance="share",
                              ap_normalizer="retrieved", empty_queries="exclude")
        reps.append(float(m["mAP@10"]))
    low, high = np.quantile(reps, [0.025, 0.975])
    assert (iv["low"], iv["high"]) == pytest.approx((low, high))
    assert iv["low"] < iv["point"] < iv["high"]


def test_imbriaco_levels_have_intervals_too():
    import numpy as np
    import torch

    from train.evaluate.retrieval import evaluate_retrieval

    g = torch.Generator().manual_seed(1)
    feats = torch.randn(80, 8, generator=g)
    labels = (torch.rand(80, 4, generator=g) > 0.5).float()
    out = evaluate_retrieval(feats, labels, groups=np.repeat(np.arange(40), 2), ks=(10, "all"),
                             bootstrap={"n_resamples": 60}, seed=2)
    for level in ("easy", "medium", "hard"):
        iv = out["intervals"]["metrics"][f"{level}/mAP@all"]
        assert iv["point"] == pytest.approx(out["metrics"][f"{level}/mAP@all"])
        assert iv["low"] <= iv["point"] + 1e-9 and iv["point"] - 1e-9 <= iv["high"]
