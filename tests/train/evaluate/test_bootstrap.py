"""Percentile bootstrap intervals: coverage, grouped resampling, width, the fast classification path,
and how the intervals reach the protocols and the report.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from train.evaluate.bootstrap import (
    BootstrapConfig,
    bootstrap_ci,
    bootstrap_replicates,
    classification_intervals,
    classification_replicates,
    percentile_interval,
    resample_counts,
)
from train.evaluate.knn import knn_evaluate
from train.evaluate.metrics import average_precision, weighted_average_precision
from train.evaluate.probe import classification_metrics, train_linear_probe
from train.evaluate.report import write_report


def _mean(a: np.ndarray) -> float:
    return float(a.mean())


def coverage(draw, n_draws: int, groups=None, n_resamples: int = 500) -> float:
    """Fraction of ``n_draws`` simulated test sets whose 95 % interval holds the true value."""
    hits = 0
    for i in range(n_draws):
        values, truth = draw(np.random.default_rng(1000 + i))
        _, low, high = bootstrap_ci(_mean, values, groups=groups, n_resamples=n_resamples, seed=i)
        hits += low <= truth <= high
    return hits / n_draws


def test_interval_covers_the_true_accuracy_in_about_95_percent_of_draws():
    # correct/incorrect per test item, true accuracy 0.7; 300 simulated test sets of 200 items
    cov = coverage(lambda rng: ((rng.random(200) < 0.7).astype(float), 0.7), 300)
    assert 0.90 <= cov <= 0.98  # 0.95 ± 3 binomial standard errors (0.013)


def test_grouped_resampling_covers_correlated_items_and_item_resampling_does_not():
    # 50 locations × 4 seasons: a location's seasons share its success rate (Beta(0.5, 0.5), mean 0.5;
    # intra-location correlation 0.5, so the item-level interval is too narrow by about sqrt(2.5))
    groups = np.repeat(np.arange(50), 4)

    def draw(rng):
        p = rng.beta(0.5, 0.5, 50)
        return (rng.random(200) < p[groups]).astype(float), 0.5

    grouped = coverage(draw, 200, groups=groups)
    items = coverage(draw, 200)
    assert 0.88 <= grouped <= 0.99
    assert items < grouped - 0.1  # ignoring the correlation gives too narrow intervals


def test_grouped_resampling_keeps_groups_whole():
    groups = np.array(["b", "a", "c", "a", "b", "b", "d", "c"])  # any hashable ids, any order
    seen = []
    bootstrap_replicates(lambda idx: seen.append(idx.copy()) or 0.0, np.arange(8), groups=groups,
                         n_resamples=300, seed=3)
    sizes = {g: int((groups == g).sum()) for g in set(groups)}
    for idx in seen:
        counts = np.bincount(idx, minlength=8)
        for g in sizes:
            members = counts[groups == g]
            assert np.all(members == members[0])  # a group is drawn whole (or not at all), k times
        assert sum(counts[groups == g][0] for g in sizes) == len(sizes)  # as many draws as groups
    for block in resample_counts(8, groups, 70, seed=3, chunk=32):
        assert block.shape[1] == 8 and block.shape[0] <= 32
    # the draws do not depend on how resamples are batched
    a = np.concatenate(list(resample_counts(8, groups, 70, seed=3, chunk=32)))
    b = np.concatenate(list(resample_counts(8, groups, 70, seed=3, chunk=7)))
    assert np.array_equal(a, b) and a.shape == (70, 8)


def test_interval_shrinks_with_more_items():
    rng = np.random.default_rng(5)
    widths = []
    for n in (100, 400, 1600):
        _, low, high = bootstrap_ci(_mean, (rng.random(n) < 0.7).astype(float), n_resamples=1000, seed=0)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < widths[0] / 2.5  # ~ 1/sqrt(n): a quarter for 16 × the items


def test_percentile_interval_and_config_checks():
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
    # undefined replicates are dropped
    assert percentile_interval([np.nan, 1.0, np.nan, 3.0], 0.5) == pytest.approx((1.5, 2.5))
    assert all(np.isnan(percentile_interval([np.nan, np.nan])))
    with pytest.raises(ValueError):
        BootstrapConfig(n_resamples=0)
    with pytest.raises(ValueError):
        BootstrapConfig(confidence=1.0)
    assert BootstrapConfig().n_resamples >= 500


def test_weighted_ap_equals_ap_of_the_resampled_items():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 6, (150, 5), generator=g).double()  # many ties
    t = (torch.rand(150, 5, generator=g) < 0.2).long()
    t[:, 4] = 0  # a class without positives
    counts = next(resample_counts(150, None, 25, seed=1))
    fast = weighted_average_precision(s, t, counts)
    micro = weighted_average_precision(s, t, counts, flatten=True)
    for b in range(25):
        idx = np.repeat(np.arange(150), counts[b])
        assert torch.allclose(fast[b], average_precision(s[idx], t[idx]), equal_nan=True, atol=1e-12)
        assert float(micro[b]) == pytest.approx(float(average_precision(s[idx].reshape(-1), t[idx].reshape(-1))),
                                                abs=1e-12)


@pytest.mark.parametrize("multilabel", [True, False])
def test_fast_classification_replicates_equal_classification_metrics(multilabel):
    g = torch.Generator().manual_seed(1)
    n = 60
    if multilabel:
        y = (torch.rand(n, 6, generator=g) < 0.15).float()
        y[:, 5] = 0
        s = torch.randn(n, 6, generator=g) + y
        kw = {}
    else:
        y = torch.randint(0, 4, (n,), generator=g)
        s = torch.randn(n, 5, generator=g)
        kw = {"num_classes": 5}
    groups = np.arange(n) // 3
    counts = next(resample_counts(n, groups, 20, seed=3))
    fast = classification_replicates(s, y, counts, **kw)
    for b in range(20):
        idx = np.repeat(np.arange(n), counts[b])
        slow, _ = classification_metrics(s[idx], y[idx], kw.get("num_classes"))
        for name, values in fast.items():
            assert float(values[b]) == pytest.approx(slow[name], abs=1e-12, nan_ok=True), name
    res = classification_intervals(s, y, kw.get("num_classes"), groups=groups, config={"n_resamples": 300, "seed": 4})
    full, _ = classification_metrics(s, y, kw.get("num_classes"))
    assert res["resampled"] == "groups" and res["n_units"] == 20 and res["n_resamples"] == 300
    for name, iv in res["metrics"].items():
        assert iv["point"] == pytest.approx(full[name]) and iv["n_resamples"] == 300
        assert iv["low"] <= iv["high"]
    again = classification_intervals(s, y, kw.get("num_classes"), groups=groups, config={"n_resamples": 300, "seed": 4})
    other = classification_intervals(s, y, kw.get("num_classes"), groups=groups, config={"n_resamples": 300, "seed": 5})
    assert again == res and other != res  # seeded


def test_protocols_attach_intervals():
    g = torch.Generator().manual_seed(2)
    tr_x, te_x = torch.randn(80, 6, generator=g), torch.randn(40, 6, generator=g)
    tr_y, te_y = (tr_x[:, :3] > 0).float(), (te_x[:, :3] > 0).float()
    groups = np.arange(40) // 2
    probe = train_linear_probe(tr_x, tr_y, te_x, te_y, epochs=20, bootstrap={"n_resamples": 200},
                               test_groups=groups).to_dict()
    iv = probe["intervals"]["metrics"]["mAP_macro"]
    assert iv["point"] == pytest.approx(probe["metrics"]["mAP_macro"]) and iv["low"] <= iv["point"] <= iv["high"]
    assert "intervals" not in train_linear_probe(tr_x, tr_y, te_x, te_y, epochs=2).to_dict()
    knn = knn_evaluate(tr_x, tr_y, te_x, te_y, k=(5, 20), primary_k=5, bootstrap={"n_resamples": 200}, groups=groups)
    assert knn["metrics"]["k"] == 5
    assert knn["intervals"]["metrics"]["mAP_micro"]["point"] == pytest.approx(knn["metrics"]["mAP_micro"])
    assert knn["intervals"]["n_units"] == 20


def test_markdown_table_shows_intervals_and_json_keeps_them(tmp_path):
    interval = {"method": "percentile bootstrap", "n_resamples": 1000, "confidence": 0.95, "seed": 0,
                "resampled": "groups", "n_units": 50,
                "metrics": {"mAP_macro": {"point": 0.71234, "low": 0.698, "high": 0.72612, "n_resamples": 1000,
                                          "n_valid": 1000}}}
    rows = {"run-a": {"checkpoint": "run-a", "kind": "x", "backbone": "resnet18", "feature_dim": 512, "notes": [],
                      "logistic": {"metrics": {"mAP_macro": 0.71234, "mAP_micro": 0.5}, "intervals": interval},
                      "knn": {"metrics": {"mAP_macro": 0.4}}}}
    results = {"task": "archive", "classes": ["a"], "multilabel": True, "n_train": 4, "n_test": 2,
               "protocols": ["logistic", "knn"], "checkpoints": rows,
               "bootstrap": {"method": "percentile bootstrap over test items", "n_resamples": 1000,
                             "confidence": 0.95, "seed": 0, "unit": "location"}}
    write_report(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| 71.23 [69.80, 72.61] | 50.00 |" in md  # mAP_micro has no interval: the plain value
    assert "| 40.00 |" in md and "1000 resamples" in md and "resampling unit: location" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    kept = saved["checkpoints"]["run-a"]["logistic"]["intervals"]["metrics"]["mAP_macro"]
    assert kept == {"point": 0.71234, "low": 0.698, "high": 0.72612, "n_resamples": 1000, "n_valid": 1000}
