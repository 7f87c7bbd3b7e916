"""Tests for train.evaluate.metrics: classification metrics against sklearn, retrieval metrics
against a slow per-query reference written here from the metrics' definitions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, ndcg_score
from sklearn.metrics import hamming_loss as sk_hamming_loss

from train.evaluate import (
    average_precision,
    hamming_loss,
    imbriaco_split,
    mean_average_precision,
    overall_accuracy,
    retrieval_metrics,
    retrieval_metrics_per_query,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------
def _cls_case(seed: int, n: int = 120, c: int = 6):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(n, c)), 1)  # one decimal: many ties
    targets = (rng.random((n, c)) < 0.3).astype(int)
    targets[:, 2] = 0  # a class with no positives
    scores[:, 4] = np.round(scores[:, 4])  # a class with heavy ties
    targets[0, 5] = 1
    return scores, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn(seed):
    scores, targets = _cls_case(seed)
    ap = average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
    assert ap.shape == (6,)
    assert math.isnan(ap[2])
    for c in range(6):
        if c == 2:
            continue
        assert ap[c].item() == pytest.approx(average_precision_score(targets[:, c], scores[:, c]), abs=1e-12)
    has_pos = targets.sum(0) > 0
    macro = average_precision_score(targets[:, has_pos], scores[:, has_pos], average="macro")
    assert mean_average_precision(scores, targets, "macro") == pytest.approx(macro, abs=1e-12)
    micro = average_precision_score(targets, scores, average="micro")
    assert mean_average_precision(scores, targets, "micro") == pytest.approx(micro, abs=1e-12)
    rows = targets.sum(1) > 0
    samples = average_precision_score(targets[rows], scores[rows], average="samples")
    assert mean_average_precision(scores, targets, "samples") == pytest.approx(samples, abs=1e-12)


def test_average_precision_1d_float32_and_all_tied():
    y = np.array([0, 1, 1, 0, 1])
    s = np.array([0.1, 0.9, 0.3, 0.3, 0.8], dtype=np.float32)
    assert float(average_precision(s, y)) == pytest.approx(average_precision_score(y, s))
    same = np.zeros(5)
    assert float(average_precision(same, y)) == pytest.approx(0.6)  # one threshold: AP = prevalence
    assert math.isnan(float(average_precision(s, np.zeros(5))))
    assert math.isnan(mean_average_precision(np.ones((3, 2)), np.zeros((3, 2))))
    with pytest.raises(ValueError):
        mean_average_precision(s, y, average="weighted")
    with pytest.raises(ValueError):
        average_precision(np.zeros((3, 2)), np.zeros((3, 3)))


def test_overall_accuracy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7))
    y = rng.integers(0, 7, 50)
    expected = accuracy_score(y, logits.argmax(1))
    assert overall_accuracy(torch.from_numpy(logits), torch.from_numpy(y)) == pytest.approx(expected)
    assert overall_accuracy(logits, np.eye(7)[y]) == pytest.approx(expected)  # one-hot targets
    assert overall_accuracy(logits.argmax(1), y) == pytest.approx(expected)  # predicted ids
    assert overall_accuracy(np.array([0, 1, 2]), np.array([0, 1, 1])) == pytest.approx(2 / 3)


def test_hamming_loss():
    rng = np.random.default_rng(1)
    pred = rng.random((40, 9)) < 0.4
    target = rng.random((40, 9)) < 0.3
    expected = sk_hamming_loss(target.astype(int), pred.astype(int))
    assert hamming_loss(torch.from_numpy(pred), torch.from_numpy(target)) == pytest.approx(expected)
    probs = rng.random((40, 9))
    expected = sk_hamming_loss(target.astype(int), (probs > 0.5).astype(int))
    assert hamming_loss(probs, target.astype(np.float32), threshold=0.5) == pytest.approx(expected)
    assert hamming_loss(np.ones((2, 2)), np.ones((2, 2))) == 0.0


# ----------------------------------------------------------------------------------------------
# Retrieval: slow reference, one query at a time, plain Python on float64
# ----------------------------------------------------------------------------------------------
def reference_metrics(qe, ql, de, dl, ks, relevance="share", thr=0.5, exclude_self=False,
                      ap_normalizer="retrieved", ndcg_gain="graded"):
    """Per-query values of every metric, straight from the definitions (see train.evaluate.metrics)."""
    qe = np.asarray(qe, dtype=np.float64)
    de = np.asarray(de, dtype=np.float64)
    qe = qe / np.maximum(np.linalg.norm(qe, axis=1, keepdims=True), 1e-12)
    de = de / np.maximum(np.linalg.norm(de, axis=1, keepdims=True), 1e-12)
    ql, dl = np.asarray(ql) > 0, np.asarray(dl) > 0
    out = {}
    n_rel_all = []
    for qi in range(len(qe)):
        items = [j for j in range(len(de)) if not (exclude_self and j == qi)]
        sim = {j: float(qe[qi] @ de[j]) for j in items}
        ranking = sorted(items, key=lambda j: (-sim[j], j))  # ties: lower database index first
        inter = {j: int(np.sum(ql[qi] & dl[j])) for j in items}

        def is_rel(j):
            if relevance == "share":
                return inter[j] >= 1
            union = int(np.sum(ql[qi] | dl[j]))
            return union > 0 and inter[j] / union >= thr - 1e-6

        def gain(j):
            return 2.0 ** inter[j] - 1.0 if ndcg_gain == "graded" else float(is_rel(j))

        n_rel = sum(is_rel(j) for j in items)
        n_rel_all.append(n_rel)
        ideal = sorted((gain(j) for j in items), reverse=True)
        for k in ks:
            name = str(k)
            kk = min(len(de) if k == "all" else k, len(items))
            top = ranking[:kk]
            rels = [is_rel(j) for j in top]
            r_k = sum(rels)
            ap_sum, wap_sum, hits, shared = 0.0, 0.0, 0, 0
            for pos, j in enumerate(top, start=1):
                shared += inter[j]
                if rels[pos - 1]:
                    hits += 1
                    ap_sum += hits / pos
                    wap_sum += shared / pos
            z = {"retrieved": r_k, "min": min(kk, n_rel), "relevant": n_rel}[ap_normalizer]
            dcg = sum(gain(j) / math.log2(pos + 1) for pos, j in enumerate(top, start=1))
            idcg = sum(g / math.log2(pos + 1) for pos, g in enumerate(ideal[:kk], start=1))
            vals = {
                "mAP": ap_sum / z if z > 0 else 0.0,
                "P": r_k / kk if kk else 0.0,
                "R": r_k / n_rel if n_rel else 0.0,
                "NDCG": dcg / idcg if idcg > 0 else 0.0,
                "ACG": shared / kk if kk else 0.0,
                "wAP": wap_sum / r_k if r_k else 0.0,
            }
            for m, v in vals.items():
                out.setdefault(f"{m}@{name}", []).append(v)
    return {k: np.array(v) for k, v in out.items()}, np.array(n_rel_all)


def _gauss_case(seed, nq=30, nd=45, dim=6, c=5, p=0.25):
    g = torch.Generator().manual_seed(seed)
    qe, de = torch.randn(nq, dim, generator=g), torch.randn(nd, dim, generator=g)
    ql = (torch.rand(nq, c, generator=g) < p).int()
    dl = (torch.rand(nd, c, generator=g) < p).int()
    ql[0] = 0  # a query without labels: never has a relevant item
    return qe, ql, de, dl


def _tie_case(seed, nq=30, nd=45, c=4, p=0.3):
    """Embeddings with four entries of ±0.5 in 8 dims: unit norm and exact dot products, so many
    exact ties; some database rows are duplicated.
    """
    g = torch.Generator().manual_seed(seed)

    def draw(n):
        e = torch.zeros(n, 8)
        for i in range(n):
            cols = torch.randperm(8, generator=g)[:4]
            e[i, cols] = 0.5 * (torch.randint(0, 2, (4,), generator=g) * 2 - 1).float()
        return e

    qe, de = draw(nq), draw(nd)
    de[10:15] = de[0]
    ql = (torch.rand(nq, c, generator=g) < p).int()
    dl = (torch.rand(nd, c, generator=g) < p).int()
    ql[1] = 0
    return qe, ql, de, dl


def _check(qe, ql, de, dl, ks, **kw):
    ours, n_rel = retrieval_metrics_per_query(qe, ql, de, dl, ks=ks, **kw)
    ref_kw = {k: v for k, v in kw.items() if k in ("relevance", "exclude_self", "ap_normalizer", "ndcg_gain")}
    if "jaccard_threshold" in kw:
        ref_kw["thr"] = kw["jaccard_threshold"]
    ref, ref_nrel = reference_metrics(qe, ql, de, dl, ks, **ref_kw)
    np.testing.assert_array_equal(n_rel.numpy(), ref_nrel)
    assert set(ours) == set(ref)
    for name in ref:
        np.testing.assert_allclose(ours[name].numpy(), ref[name], rtol=0, atol=1e-12, err_msg=name)
    return ours, n_rel


CASES = [
    ("gauss", {}),
    ("ties", {}),
    ("ties", {"relevance": "jaccard", "jaccard_threshold": 0.5}),
    ("gauss", {"relevance": "jaccard", "jaccard_threshold": 0.4}),
    ("ties", {"ap_normalizer": "min"}),
    ("gauss", {"ap_normalizer": "relevant", "ndcg_gain": "binary"}),
    ("ties", {"ndcg_gain": "binary", "relevance": "jaccard", "jaccard_threshold": 1.0}),
]


@pytest.mark.parametrize("kind,kw", CASES)
@pytest.mark.parametrize("seed,ks", [(0, (1, 5, 20, 45, 100, "all")), (1, (3, 10))])
def test_retrieval_matches_reference(kind, kw, seed, ks):
    # ks=(3, 10): top-K shorter than the database, so IDCG must look beyond the retrieved items.
    qe, ql, de, dl = (_gauss_case if kind == "gauss" else _tie_case)(seed)
    if seed == 1:  # float64 similarity path
        qe, de = qe.double(), de.double()
    ours, n_rel = _check(qe, ql, de, dl, ks=ks, chunk_size=7, **kw)
    assert bool((n_rel == 0).any())  # the case exercises queries without relevant items


@pytest.mark.parametrize("kind", ["gauss", "ties"])
@pytest.mark.parametrize("kw", [{}, {"ap_normalizer": "min"}, {"relevance": "jaccard"}])
def test_retrieval_exclude_self(kind, kw):
    qe, ql, de, dl = (_gauss_case if kind == "gauss" else _tie_case)(3, nq=40, nd=40)
    if kind == "gauss":
        de, dl = qe, ql
    else:
        de, dl = qe.clone(), ql.clone()
        qe[5] = qe[6]  # duplicate pair: each must still drop only itself
    _check(qe, ql, de, dl, ks=(3, 39, 40, 60, "all"), exclude_self=True, chunk_size=9, **kw)


def test_exclude_self_index_tensor():
    qe, ql, de, dl = _gauss_case(4, nq=10, nd=30)
    de[:10], dl[:10] = qe, ql  # queries are database items 0..9, but in reverse order below
    qe, ql = qe.flip(0), ql.flip(0)
    ours, _ = retrieval_metrics_per_query(qe, ql, de, dl, ks=(5, "all"), exclude_self=torch.arange(9, -1, -1))
    sub = torch.ones(30, dtype=torch.bool)
    for i, j in enumerate(range(9, -1, -1)):
        keep = sub.clone()
        keep[j] = False
        one, _ = retrieval_metrics_per_query(qe[i : i + 1], ql[i : i + 1], de[keep], dl[keep], ks=(5, "all"))
        for name in one:
            assert ours[name][i].item() == pytest.approx(one[name][0].item(), abs=1e-12), name
    none = torch.full((10,), -1)
    a, _ = retrieval_metrics_per_query(qe, ql, de, dl, ks=(5,), exclude_self=none)
    b, _ = retrieval_metrics_per_query(qe, ql, de, dl, ks=(5,))
    for name in a:
        assert torch.equal(a[name], b[name])


@pytest.mark.parametrize("kind", ["gauss", "ties"])
def test_chunked_equals_unchunked(kind):
    qe, ql, de, dl = (_gauss_case if kind == "gauss" else _tie_case)(5, nq=33, nd=50)
    full, _ = retrieval_metrics_per_query(qe, ql, de, dl, ks=(4, 50, "all"), chunk_size=33)
    for cs in (1, 5, 32, 1000, None):
        part, _ = retrieval_metrics_per_query(qe, ql, de, dl, ks=(4, 50, "all"), chunk_size=cs)
        for name in full:
            torch.testing.assert_close(part[name], full[name], rtol=0, atol=1e-12)


def test_ndcg_matches_sklearn():
    qe, ql, de, dl = _gauss_case(6, nq=25, nd=60, c=6, p=0.35)
    ours, n_rel = retrieval_metrics_per_query(qe, ql, de, dl, ks=(5, 20, "all"))
    qn = torch.nn.functional.normalize(qe, dim=1).double().numpy()
    dn = torch.nn.functional.normalize(de, dim=1).double().numpy()
    sim = qn @ dn.T  # continuous scores: no ties, so sklearn's tie averaging does not apply
    inter = ql.double().numpy() @ dl.double().numpy().T
    valid = n_rel.numpy() > 0
    for k, name in ((5, "5"), (20, "20"), (None, "all")):
        # sklearn's gain is linear in y_true, so pass 2^I - 1 to get the spec's graded gain.
        graded = ndcg_score(2.0 ** inter[valid] - 1.0, sim[valid], k=k)
        assert ours[f"NDCG@{name}"][valid].mean().item() == pytest.approx(graded, abs=1e-12)
        alone, _ = retrieval_metrics_per_query(qe, ql, de, dl, ks=(k or "all",))  # K < D on its own
        assert alone[f"NDCG@{name}"][valid].mean().item() == pytest.approx(graded, abs=1e-12)
    binary, _ = retrieval_metrics_per_query(qe, ql, de, dl, ks=(10,), ndcg_gain="binary")
    expected = ndcg_score((inter[valid] > 0).astype(float), sim[valid], k=10)
    assert binary["NDCG@10"][valid].mean().item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 11, 12])
def test_top_indices_tie_break(k):
    from train.evaluate.metrics.retrieval import _top_indices

    rows = [
        [0.5, -0.0, 0.0, -0.5, 0.5, float("-inf"), -1.0, 1.0, -0.0, 1e-30, -1e-30, 0.25],
        [0.0, 0.3, 0.3, 0.3, 0.9, 0.3, 0.9, 0.0, 0.3, 0.3, 0.1, 0.9],  # ties inside and at the cut
        [0.3] * 12,
        list(np.linspace(1, -1, 12)),  # no ties: fast path only
    ]
    for dtype in (torch.float32, torch.float64):
        got = _top_indices(torch.tensor(rows, dtype=dtype), k).tolist()
        for vals, ours in zip(rows, got):  # Python compares -0.0 == 0.0 like torch
            assert ours == sorted(range(12), key=lambda j: (-vals[j], j))[:k]


def test_hand_computed_example():
    # Database on a circle: query at angle 0 ranks items 0, 1, 2, 3 in that order; item 4 ties item 1.
    ang = torch.tensor([0.0, 0.5, 1.0, 1.5, 0.5])
    de = torch.stack([ang.cos(), ang.sin()], 1)
    dl = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
    qe = torch.tensor([[1.0, 0.0]])
    ql = torch.tensor([[1, 1, 0]])
    # ranking 0, 1, 4 (tie with 1, higher index), 2, 3 -> I = 1, 1, 1, 2, 0; all but item 3 relevant
    res = retrieval_metrics(qe, ql, de, dl, ks=(2, 4, 10))
    assert res["P@2"] == 1.0 and res["P@4"] == 1.0 and res["P@10"] == pytest.approx(4 / 5)  # K clipped to 5
    assert res["R@2"] == 0.5 and res["R@10"] == 1.0
    assert res["mAP@4"] == 1.0
    assert res["ACG@4"] == pytest.approx(5 / 4) and res["ACG@10"] == pytest.approx(5 / 5)
    assert res["wAP@4"] == pytest.approx((1 + 1 + 1 + 5 / 4) / 4)
    dcg = 1 + 1 / math.log2(3) + 1 / math.log2(4) + 3 / math.log2(5)
    idcg = 3 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)
    assert res["NDCG@4"] == pytest.approx(dcg / idcg)
    assert res["n_queries"] == 1 and res["n_valid"] == 1
    r_min = retrieval_metrics(qe, ql, de, dl, ks=(2,), ap_normalizer="relevant")
    assert r_min["mAP@2"] == pytest.approx(2 / 4)


def test_empty_query_policies():
    qe, ql, de, dl = _gauss_case(7)
    ks = (5, "all")
    per, n_rel = retrieval_metrics_per_query(qe, ql, de, dl, ks=ks)
    valid = n_rel > 0
    assert 0 < int(valid.sum()) < len(valid)
    ex = retrieval_metrics(qe, ql, de, dl, ks=ks)
    zero = retrieval_metrics(qe, ql, de, dl, ks=ks, empty_queries="zero")
    for name, v in per.items():
        assert ex[name] == pytest.approx(v[valid].mean().item())
        assert zero[name] == pytest.approx(v.mean().item())
    for name in ("mAP@5", "P@5", "R@5", "wAP@5", "NDCG@5"):
        assert per[name][~valid].abs().max().item() == 0.0  # share relevance: no gain at all
    assert ex["n_valid"] == int(valid.sum()) and ex["n_queries"] == len(valid)
    nothing = retrieval_metrics(qe, torch.zeros_like(ql), de, dl, ks=(5,))
    assert math.isnan(nothing["mAP@5"]) and nothing["n_valid"] == 0


def test_retrieval_input_validation():
    qe, ql, de, dl = _gauss_case(8)
    with pytest.raises(ValueError):
        retrieval_metrics(qe, ql, de, dl, ks=(0,))
    with pytest.raises(ValueError):
        retrieval_metrics(qe, ql, de, dl, ks=("top",))
    with pytest.raises(ValueError):
        retrieval_metrics(qe, ql, de, dl, exclude_self=True)  # Q != D
    with pytest.raises(ValueError):
        retrieval_metrics(qe, ql, de, dl, relevance="overlap")
    with pytest.raises(ValueError):
        retrieval_metrics(qe, ql, de, dl, relevance="jaccard", jaccard_threshold=0.0)
    with pytest.raises(ValueError):
        retrieval_metrics(qe, ql, de[:, :3], dl)
    with pytest.raises(ValueError):
        retrieval_metrics(qe, ql, de, dl, ap_normalizer="eps")
    with pytest.raises(ValueError):
        retrieval_metrics(qe, ql, de, dl, empty_queries="drop")


def test_retrieval_accepts_numpy_and_half():
    qe, ql, de, dl = _gauss_case(9)
    a = retrieval_metrics(qe.numpy(), ql.numpy().astype(bool), de.numpy(), dl.numpy().astype(bool), ks=(5,))
    b = retrieval_metrics(qe, ql, de, dl, ks=(5,))
    assert a == b
    h = retrieval_metrics(qe.half(), ql, de.half(), dl, ks=(5,))
    assert set(h) == set(b)
    # float64 embeddings give float64 similarities: same ranking here (no near-ties)
    assert retrieval_metrics(qe.double(), ql, de, dl, ks=(5,)) == pytest.approx(b, abs=1e-12)


def test_imbriaco_split():
    q, d = imbriaco_split(101, query_fraction=0.2, seed=24)
    assert len(q) == 20 and len(d) == 81
    assert torch.equal(torch.sort(torch.cat([q, d])).values, torch.arange(101))
    assert torch.equal(q, torch.sort(q).values) and torch.equal(d, torch.sort(d).values)
    q2, d2 = imbriaco_split(101, query_fraction=0.2, seed=24)
    assert torch.equal(q, q2) and torch.equal(d, d2)
    assert not torch.equal(q, imbriaco_split(101, 0.2, seed=0)[0])
    with pytest.raises(ValueError):
        imbriaco_split(3, query_fraction=0.1)
    with pytest.raises(ValueError):
        imbriaco_split(10, query_fraction=1.0)
