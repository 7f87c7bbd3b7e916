"""Multi-label retrieval metrics (§5.1, §5.2, §6), in torch and device-agnostic.

:func:`retrieval_metrics` (means over queries) and :func:`retrieval_metrics_per_query`
(one value per query), plus :func:`imbriaco_split`. Queries are processed in chunks: for each
chunk we build the chunk × database similarity and label-intersection matrices, take the
top-K by ``torch.topk`` and gather relevance at the retrieved indices, so the full Q × D matrix
never exists.

Retrieval conventions (read these before comparing numbers with another code base):

* Ranking: cosine similarity of L2-normalised embeddings, computed in float64 when either
  embedding matrix is float64 and in float32 otherwise (half precision is upcast). **Ties** in
  similarity are broken by database index, lower index first (the order a stable sort gives).
  Exact: ``topk`` on the similarities, ties inside the top K re-sorted by index, and rows where
  a tie straddles the cut-off re-ranked by a full stable sort. ``-0.0`` equals ``+0.0``.
* ``I_k`` = number of labels shared by the query and the k-th result.
  Relevance ``rel_k``: ``"share"`` means ``I_k >= 1``; ``"jaccard"`` means
  ``J = I / |y_q ∪ y_d| >= jaccard_threshold``, evaluated as ``I >= (t − 1e-6)·|y_q ∪ y_d|`` so
  that float rounding cannot drop an exact match such as 2/5 >= 0.4 (two empty label sets have
  J = 0). ``N_rel`` is the number of relevant database items, ``R_K`` the number
  of relevant items in the top K.
* K larger than the database is clipped: with ``D_q`` the database size seen by query q (D, or
  D − 1 when the query itself is excluded) every ``/K`` below divides by ``min(K, D_q)``. Keys keep
  the requested K (``"P@100"`` even when D = 50). ``"all"`` in ``ks`` means K = D (full ranking).
* ``P@K = R_K / K``; ``R@K = R_K / N_rel``.
* ``mAP@K``: ``AP@K = (1/Z) Σ_{k≤K} rel_k · R_k / k`` with normaliser ``Z`` set by
  ``ap_normalizer``: ``"retrieved"`` (default, spec (a), §5.4): Z = R_K, the relevant items
  retrieved (a query with R_K = 0 scores 0); ``"min"`` (spec (b), GLDv2): Z = min(K, N_rel);
  ``"relevant"`` (spec (c)): Z = N_rel. For K = "all", (a) equals (c).
* ``ACG@K = (1/K) Σ_{k≤K} I_k`` (raw shared-label counts whatever ``relevance`` is, as Imbriaco).
* ``NDCG@K = DCG@K / IDCG@K``, ``DCG@K = Σ_{k≤K} g_k / log2(1 + k)``; ``ndcg_gain="graded"``
  (default, spec): g = 2^I − 1; ``"binary"``: g = rel. IDCG uses the ideal ordering of the **whole
  database** (not only of the retrieved top K, which OML does and which is optimistic).
* ``wAP@K = (1/R_K) Σ_{k≤K} rel_k · ACG@k`` (ACG on the prefix, Zhao et al. 2015); 0 when R_K = 0.
  No eps is added (OML and TU-Berlin add 1e-6 to the denominator).
* Queries with no relevant item in the database (N_rel = 0): ``empty_queries="exclude"``
  (default, as Imbriaco) drops them from **every** mean; ``"zero"`` keeps them and every 0/0 is
  scored 0 (their AP, P, R and wAP are 0; ACG and NDCG are computed as defined, NDCG = 0 when
  IDCG = 0). The counts are returned as ``n_queries`` and ``n_valid``.
* ``exclude_self=True`` requires the query set to be the database (same order): query i is
  removed from its own ranking, from ``N_rel`` and from the ideal ordering. A 1-D integer tensor
  gives the database index of each query instead (−1: not in the database).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from train.evaluate.metrics.classification import _tensor

__all__ = ["RETRIEVAL_METRICS", "imbriaco_split", "retrieval_metrics", "retrieval_metrics_per_query"]

#: Metric names produced by :func:`retrieval_metrics` (each suffixed with ``@K``).
RETRIEVAL_METRICS = ("mAP", "P", "R", "NDCG", "ACG", "wAP")

# Default memory budget for the chunk × database working matrices (elements per matrix).
_CHUNK_ELEMENTS = 1 << 24
_JACCARD_SLACK = 1e-6


def _top_indices(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` best database items per row, ordered by (sim desc, index asc).

    Fast path: ``topk`` with one extra item, then ties inside the top k are put in index order by
    two sorts of the small ``(c, k)`` block. Rows where a tie straddles the cut (item k+1 equals
    item k, so ``topk`` may have kept the wrong members of the tied group) are redone with a full
    stable sort of the row.
    """
    d = sim.shape[1]
    fetch = min(k + 1, d)
    vals, idx = sim.topk(fetch, dim=1, largest=True, sorted=True)
    straddle = vals[:, k] == vals[:, k - 1] if fetch > k else None
    vals, idx = vals[:, :k], idx[:, :k]
    by_index = idx.argsort(dim=1)
    vals, idx = vals.gather(1, by_index), idx.gather(1, by_index)
    idx = idx.gather(1, vals.argsort(dim=1, descending=True, stable=True))
    if straddle is not None and bool(straddle.any()):
        rows = torch.nonzero(straddle).squeeze(1)
        idx[rows] = torch.sort(sim[rows], dim=1, descending=True, stable=True).indices[:, :k]
    return idx


def _parse_ks(ks, d: int) -> list[tuple[str, int]]:
    if isinstance(ks, (int, str)):
        ks = (ks,)
    out = []
    for k in ks:
        if isinstance(k, str):
            if k != "all":
                raise ValueError(f"K must be a positive int or 'all', got {k!r}")
            out.append(("all", d))
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > 0:
            out.append((str(int(k)), int(k)))
        else:
            raise ValueError(f"K must be a positive int or 'all', got {k!r}")
    if not out:
        raise ValueError("ks is empty")
    return out


def _self_index(exclude_self, q: int, d: int, device) -> torch.Tensor | None:
    if exclude_self is False or exclude_self is None:
        return None
    if exclude_self is True:
        if q != d:
            raise ValueError("exclude_self=True needs the queries to be the database (Q == D)")
        return torch.arange(q, device=device)
    idx = _tensor(exclude_self).to(device=device, dtype=torch.int64)
    if idx.shape != (q,) or bool(((idx < -1) | (idx >= d)).any()):
        raise ValueError("exclude_self index tensor must have shape (Q,) with values in [-1, D)")
    return idx


def retrieval_metrics_per_query(
    query_emb,
    query_labels,
    db_emb,
    db_labels,
    ks: Sequence[int | str] = (10, 50, 100),
    relevance: Literal["share", "jaccard"] = "share",
    jaccard_threshold: float = 0.5,
    exclude_self: bool | torch.Tensor = False,
    chunk_size: int | None = None,
    ap_normalizer: Literal["retrieved", "min", "relevant"] = "retrieved",
    ndcg_gain: Literal["graded", "binary"] = "graded",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-query retrieval metrics; conventions in the module docstring.

    Returns:
        ``(values, n_rel)``: ``values`` maps ``"<metric>@<K>"`` to a float64 ``(Q,)`` tensor on
        the CPU (0/0 scored 0), ``n_rel`` is the int64 ``(Q,)`` number of relevant database items
        (``n_rel > 0`` marks the queries :func:`retrieval_metrics` averages by default).
    """
    qe, de = _tensor(query_emb), _tensor(db_emb)
    device = qe.device
    de = de.to(device)
    yq = (_tensor(query_labels).to(device) > 0).float()
    yd = (_tensor(db_labels).to(device) > 0).float()
    if qe.ndim != 2 or de.ndim != 2 or qe.shape[1] != de.shape[1]:
        raise ValueError(f"embeddings must be (Q, d) and (D, d), got {tuple(qe.shape)}, {tuple(de.shape)}")
    if yq.ndim != 2 or yd.ndim != 2 or yq.shape[0] != qe.shape[0] or yd.shape[0] != de.shape[0]:
        raise ValueError("labels must be (Q, C) and (D, C) multi-hot matrices matching the embeddings")
    if yq.shape[1] != yd.shape[1]:
        raise ValueError("query and database labels have a different number of classes")
    if relevance not in ("share", "jaccard"):
        raise ValueError(f"relevance must be 'share' or 'jaccard', got {relevance!r}")
    if relevance == "jaccard" and not 0.0 < jaccard_threshold <= 1.0:
        raise ValueError("jaccard_threshold must lie in (0, 1]")
    if ap_normalizer not in ("retrieved", "min", "relevant"):
        raise ValueError(f"ap_normalizer must be 'retrieved', 'min' or 'relevant', got {ap_normalizer!r}")
    if ndcg_gain not in ("graded", "binary"):
        raise ValueError(f"ndcg_gain must be 'graded' or 'binary', got {ndcg_gain!r}")
    nq, nd = qe.shape[0], de.shape[0]
    if nd == 0:
        raise ValueError("empty database")
    klist = _parse_ks(ks, nd)
    self_idx = _self_index(exclude_self, nq, nd, device)

    sim_dtype = torch.float64 if torch.float64 in (qe.dtype, de.dtype) else torch.float32
    q = F.normalize(qe.to(sim_dtype), dim=1)
    d = F.normalize(de.to(sim_dtype), dim=1)
    n_lab_d, n_lab_q = yd.sum(1), yq.sum(1)
    jac_t = max(jaccard_threshold - _JACCARD_SLACK, 0.5 * jaccard_threshold)
    kmax = min(max(k for _, k in klist), nd)
    if chunk_size is None:  # ~16M elements per (c, D) matrix; the (c, K) float64 arrays count 8x
        chunk_size = max(1, min(4096, _CHUNK_ELEMENTS // (nd + 8 * kmax)))
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    f64 = torch.float64
    r = torch.arange(1, kmax + 1, device=device, dtype=f64)
    disc = 1.0 / torch.log2(r + 1.0)

    values = {f"{m}@{name}": torch.empty(nq, dtype=f64) for name, _ in klist for m in RETRIEVAL_METRICS}
    n_rel_all = torch.empty(nq, dtype=torch.int64)

    for a in range(0, nq, chunk_size):
        b = min(a + chunk_size, nq)
        sim = q[a:b] @ d.T
        inter = yq[a:b] @ yd.T  # shared-label counts, exact small integers
        if relevance == "share":
            rel = inter > 0.5
        else:
            # J >= t  <=>  I >= t * |y_q ∪ y_d|; an empty union (I = 0) is never relevant.
            bound = (n_lab_q[a:b, None] + n_lab_d[None, :]).sub_(inter).clamp_min_(1.0).mul_(jac_t)
            rel = inter >= bound
            del bound
        d_eff = torch.full((b - a,), nd, device=device, dtype=f64)
        if self_idx is not None:
            cols = self_idx[a:b]
            rows = torch.nonzero(cols >= 0).squeeze(1)
            cols = cols[rows]
            sim[rows, cols] = -math.inf  # ranked last, after every real item
            inter[rows, cols] = 0.0
            rel[rows, cols] = False
            d_eff[rows] -= 1.0
        n_rel = rel.view(torch.uint8).sum(1, dtype=torch.int64)
        top = _top_indices(sim, kmax)
        del sim
        i_top = inter.gather(1, top).to(f64)
        rel_top = rel.gather(1, top).to(f64)
        if ndcg_gain == "graded":
            gain = torch.exp2(i_top) - 1.0
            ideal = torch.exp2(inter.topk(kmax, dim=1, sorted=True).values.to(f64)) - 1.0
        else:
            gain = rel_top
            ideal = (r[None, :] <= n_rel[:, None]).to(f64)
        del inter, rel

        cum_rel = rel_top.cumsum(1)
        ap_sum = (rel_top * cum_rel / r).cumsum(1)
        cum_i = i_top.cumsum(1)
        wap_sum = (rel_top * cum_i / r).cumsum(1)
        dcg = (gain * disc).cumsum(1)
        idcg = (ideal * disc).cumsum(1)
        n_rel_f = n_rel.to(f64)

        for name, k in klist:
            j = min(k, nd) - 1
            keff = d_eff.clamp(max=float(k)).clamp_min(1.0)
            rk = cum_rel[:, j]
            if ap_normalizer == "retrieved":
                z = rk
            elif ap_normalizer == "min":
                z = torch.minimum(keff, n_rel_f)
            else:
                z = n_rel_f
            res = {
                "mAP": torch.where(z > 0, ap_sum[:, j] / z.clamp_min(1.0), 0.0),
                "P": rk / keff,
                "R": torch.where(n_rel_f > 0, rk / n_rel_f.clamp_min(1.0), 0.0),
                "NDCG": torch.where(idcg[:, j] > 0, dcg[:, j] / idcg[:, j].clamp_min(1e-300), 0.0),
                "ACG": cum_i[:, j] / keff,
                "wAP": torch.where(rk > 0, wap_sum[:, j] / rk.clamp_min(1.0), 0.0),
            }
            for m, v in res.items():
                values[f"{m}@{name}"][a:b] = v.cpu()
        n_rel_all[a:b] = n_rel.cpu()
    return values, n_rel_all


def retrieval_metrics(
    query_emb,
    query_labels,
    db_emb,
    db_labels,
    ks: Sequence[int | str] = (10, 50, 100),
    relevance: Literal["share", "jaccard"] = "share",
    jaccard_threshold: float = 0.5,
    exclude_self: bool | torch.Tensor = False,
    chunk_size: int | None = None,
    ap_normalizer: Literal["retrieved", "min", "relevant"] = "retrieved",
    ndcg_gain: Literal["graded", "binary"] = "graded",
    empty_queries: Literal["exclude", "zero"] = "exclude",
) -> dict[str, float]:
    """Multi-label retrieval metrics averaged over queries (P@K, R@K, AP@K, ACG@K, NDCG@K, wAP@K as in
    Zhao et al. 2015, "Deep semantic ranking based hashing", and Imbriaco et al. 2022).

    Args:
        query_emb, db_emb: ``(Q, d)`` and ``(D, d)`` embeddings (L2-normalised here).
        query_labels, db_labels: ``(Q, C)`` and ``(D, C)`` multi-hot labels.
        ks: cut-offs; ints or ``"all"`` (K = D). K > D is clipped to D.
        relevance: ``"share"`` (≥ 1 shared label) or ``"jaccard"`` (J ≥ ``jaccard_threshold``).
        exclude_self: ``True`` when queries are the database (query i is database item i),
            or a ``(Q,)`` tensor of database indices (−1 for none) to drop from each ranking.
        chunk_size: queries per chunk; the default keeps chunk × (D + 8·K) at about 16M
            elements (a few hundred MB of working memory, whatever Q and D are).
        ap_normalizer: ``Z`` of AP@K: ``"retrieved"`` = R_K (default, spec (a)),
            ``"min"`` = min(K, N_rel) (spec (b)), ``"relevant"`` = N_rel (spec (c)).
        ndcg_gain: ``"graded"`` (2^I − 1, default) or ``"binary"`` (rel).
        empty_queries: ``"exclude"`` (default) drops queries with N_rel = 0 from every mean;
            ``"zero"`` keeps them (0/0 scored 0).

    Returns:
        ``{"mAP@K", "P@K", "R@K", "NDCG@K", "ACG@K", "wAP@K" for each K, "n_queries", "n_valid"}``
        as floats (``n_*`` as ints); metrics are ``NaN`` when no query is averaged.
    """
    if empty_queries not in ("exclude", "zero"):
        raise ValueError(f"empty_queries must be 'exclude' or 'zero', got {empty_queries!r}")
    values, n_rel = retrieval_metrics_per_query(
        query_emb, query_labels, db_emb, db_labels, ks=ks, relevance=relevance,
        jaccard_threshold=jaccard_threshold, exclude_self=exclude_self, chunk_size=chunk_size,
        ap_normalizer=ap_normalizer, ndcg_gain=ndcg_gain,
    )
    valid = n_rel > 0
    keep = valid if empty_queries == "exclude" else torch.ones_like(valid)
    out: dict[str, float] = {}
    for name, v in values.items():
        out[name] = float(v[keep].mean()) if bool(keep.any()) else math.nan
    out["n_queries"] = int(n_rel.numel())
    out["n_valid"] = int(valid.sum())
    return out


def imbriaco_split(n: int, query_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random query/database split of ``n`` test items (Imbriaco et al. 2022, "Toward Multi-Label Image Retrieval
    for Remote Sensing", IEEE TGRS; github.com/RImbriaco/OML).

    ``round(query_fraction · n)`` items become queries and the rest the database, from
    ``numpy.random.RandomState(seed).permutation(n)`` (OML used numpy's legacy generator with seed
    24; whether its exact call matches this one is unverified). Both index tensors are sorted and
    disjoint and together cover ``range(n)``.
    """
    if not 0.0 < query_fraction < 1.0:
        raise ValueError("query_fraction must lie in (0, 1)")
    n_q = int(round(query_fraction * n))
    if n_q < 1 or n_q > n - 1:
        raise ValueError(f"n={n} with query_fraction={query_fraction} leaves an empty query set or database")
    perm = np.random.RandomState(seed).permutation(n)
    q = torch.from_numpy(np.sort(perm[:n_q])).long()
    d = torch.from_numpy(np.sort(perm[n_q:])).long()
    return q, d
