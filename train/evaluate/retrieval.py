"""Multi-label content-based retrieval on frozen features (Imbriaco et al. 2022 protocol), and example plots.

Protocol (:func:`evaluate_retrieval`)
    The **test split** is cut by :func:`~train.evaluate.metrics.imbriaco_split` into 20 % queries and
    80 % database (seed 24 by default, the value of Imbriaco et al.'s code); queries and database are
    disjoint, so no self-match exists. Ranking: cosine similarity, ties by database index.

    **Correlated items** (``groups``, :func:`query_database_split`): the split is drawn over
    **groups** instead of items: 20 % of the groups are query groups, all their items are queries,
    and the database holds the items of the other groups. For the curated archive a group is a
    location, so no season of a query's own location is in its database: retrieving "the same place
    in another season" would otherwise score as a near-perfect match without testing the features'
    semantics. With one group per item (``groups=None``, BigEarthNet, EuroSAT) this is exactly the
    item split above. Our choice, over a database drawn from the training split: queries and
    database both stay in the held-out test split (the backbone never saw either), all data sets
    share one protocol, and one fixed database per seed keeps the standard metrics. Several seeds
    give more query groups on a small test split.

    * Primary metrics (§5.4) from :func:`~train.evaluate.metrics.retrieval_metrics`: relevance
      "shares ≥ 1 label", AP normaliser (a) = relevant items retrieved (``"retrieved"``), queries with
      no relevant database item excluded; ``mAP/P/R/NDCG/ACG/wAP@K`` for K in ``ks`` (default 20, 100
      and the full ranking ``"all"``).
    * Imbriaco levels (§5.2): relevance = Jaccard similarity of the label sets ≥ 0.4 / 0.6 / 0.8
      (``easy/``, ``medium/``, ``hard/``), queries without a "hard" match dropped from all three;
      reported ``mAP@all`` and ``P@10``. Deviations from their code, stated: AP is the step-wise
      full-ranking AP (normaliser N_rel), not their trapezoidal AP, and P@10 divides by 10, not by
      ``min(rank of the last positive, 10)``.
    * Several seeds: each metric is the mean over seeds and ``<metric>_std`` the (population) std.

    Single-label targets are one-hot encoded, so relevance means "same class".

Plots (:func:`plot_retrieval_examples`)
    One row per query: the query, then its top-k results; a green frame marks a relevant result,
    red a wrong one. Images are shown as RGB (``B4, B3, B2`` when the data set has them) or a false
    colour composite (S1: ``VV, VH, VV − VH`` in dB), each display channel stretched to its 2–98 %
    percentiles over all tiles of the figure (one stretch, so tiles are comparable).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from train.evaluate.bootstrap import METHOD, BootstrapConfig, percentile_interval, resample_counts
from train.evaluate.metrics import (
    retrieval_metrics,
    retrieval_metrics_per_query,
)

__all__ = [
    "IMBRIACO_LEVELS",
    "IMBRIACO_SEED",
    "as_multi_hot",
    "evaluate_retrieval",
    "plot_retrieval_examples",
    "query_database_split",
    "rank_database",
    "retrieval_intervals",
]

#: Jaccard-similarity thresholds of Imbriaco et al.'s easy / medium / hard levels.
IMBRIACO_LEVELS: dict[str, float] = {"easy": 0.4, "medium": 0.6, "hard": 0.8}
#: numpy seed of the query/database split in Imbriaco et al.'s code.
IMBRIACO_SEED = 24


def as_multi_hot(labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """``(N, C)`` labels unchanged (as float); ``(N,)`` class ids → one-hot."""
    y = torch.as_tensor(labels)
    if y.ndim == 2:
        return (y > 0).float()
    c = num_classes if num_classes is not None else int(y.max()) + 1
    return F.one_hot(y.long(), c).float()


def query_database_split(n: int, groups: Sequence[int] | np.ndarray | None = None, query_fraction: float = 0.2,
                         seed: int = IMBRIACO_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and database of ``n`` items, never sharing a group (module docstring).

    The rule of :func:`~train.evaluate.metrics.imbriaco_split` applied to the distinct groups (sorted
    by value): ``numpy.random.RandomState(seed).permutation(n_groups)``, the first
    ``round(query_fraction · n_groups)`` are query groups; their items are the queries, all other
    items the database. One difference (our choice): a small test split whose rounded share is 0 (or
    all) groups still gets one query group (one database group), so two groups suffice.
    ``groups=None`` means one group per item; then the split equals ``imbriaco_split(n,
    query_fraction, seed)`` whenever that one is defined.

    Returns:
        ``(query_idx, db_idx)``: sorted, disjoint int64 tensors of item indices covering ``range(n)``.
    """
    if not 0.0 < query_fraction < 1.0:
        raise ValueError("query_fraction must lie in (0, 1)")
    g = np.arange(n, dtype=np.int64) if groups is None else np.asarray(groups).astype(np.int64, copy=False)
    if g.shape != (n,):
        raise ValueError(f"groups must hold one value per item ({n}), got shape {g.shape}")
    uniq, inverse = np.unique(g, return_inverse=True)
    n_groups = len(uniq)
    if n_groups < 2:
        raise ValueError(f"retrieval needs items of at least two groups (locations); got {n_groups}")
    n_q = min(max(round(query_fraction * n_groups), 1), n_groups - 1)
    q_groups = np.random.RandomState(seed).permutation(n_groups)[:n_q]
    is_query = np.isin(inverse.reshape(-1), q_groups)
    return torch.from_numpy(np.flatnonzero(is_query)).long(), torch.from_numpy(np.flatnonzero(~is_query)).long()


def _one_split(feats: torch.Tensor, y: torch.Tensor, seed: int, query_fraction: float, ks: Sequence[int | str],
               levels: bool, chunk_size: int | None, groups: np.ndarray | None = None) -> dict[str, float]:
    q, d = query_database_split(len(feats), groups, query_fraction, seed)
    out = retrieval_metrics(feats[q], y[q], feats[d], y[d], ks=ks, relevance="share",
                            ap_normalizer="retrieved", empty_queries="exclude", chunk_size=chunk_size)
    res = {k: float(v) for k, v in out.items()}
    res["n_database"] = len(d)
    if levels:
        _, n_hard = retrieval_metrics_per_query(feats[q], y[q], feats[d], y[d], ks=(1,), relevance="jaccard",
                                                jaccard_threshold=IMBRIACO_LEVELS["hard"], chunk_size=chunk_size)
        keep = q[n_hard > 0]
        res["levels_n_queries"] = len(keep)
        for name, t in IMBRIACO_LEVELS.items():
            if len(keep) == 0:
                res[f"{name}/mAP@all"] = math.nan
                res[f"{name}/P@10"] = math.nan
                continue
            lv = retrieval_metrics(feats[keep], y[keep], feats[d], y[d], ks=("all", 10), relevance="jaccard",
                                   jaccard_threshold=t, ap_normalizer="relevant", empty_queries="exclude",
                                   chunk_size=chunk_size)
            res[f"{name}/mAP@all"] = float(lv["mAP@all"])
            res[f"{name}/P@10"] = float(lv["P@10"])
    return res


def _query_mean_intervals(per_query: dict[str, np.ndarray], valid: np.ndarray, groups: np.ndarray | None,
                          config: BootstrapConfig) -> dict[str, dict[str, Any]]:
    """Intervals of query means (over the ``valid`` queries), resampling queries by ``groups``."""
    valid = valid.astype(np.float64)
    replicates: dict[str, list[np.ndarray]] = {k: [] for k in per_query}
    for counts in resample_counts(len(valid), groups, config.n_resamples, config.seed):
        w = counts * valid
        total = w.sum(1)
        for k, v in per_query.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                replicates[k].append((w @ v) / total)
    out = {}
    for k, v in per_query.items():
        r = np.concatenate(replicates[k])
        low, high = percentile_interval(r, config.confidence)
        point = float((v * valid).sum() / valid.sum()) if valid.sum() else math.nan
        out[k] = {"point": point, "low": low, "high": high, "n_resamples": config.n_resamples,
                  "n_valid": int(np.isfinite(r).sum())}
    return out


def retrieval_intervals(feats: torch.Tensor, y: torch.Tensor, seed: int, query_fraction: float,
                        ks: Sequence[int | str], chunk_size: int | None, groups: np.ndarray | None,
                        config: BootstrapConfig) -> dict[str, Any]:
    """Percentile bootstrap intervals of the retrieval metrics over the queries of one split.

    The database stays fixed (as the model does for the probes); the queries are resampled, whole
    query groups at a time (a location's seasons together). A replicate is the mean of the per-query
    values over the resampled queries that have a relevant database item, i.e. exactly how
    :func:`~train.evaluate.metrics.retrieval_metrics` averages ("exclude" empty queries). Imbriaco's
    easy/medium/hard levels get theirs the same way, over the queries the levels use.
    """
    q, d = query_database_split(len(feats), groups, query_fraction, seed)
    values, n_rel = retrieval_metrics_per_query(feats[q], y[q], feats[d], y[d], ks=ks, relevance="share",
                                                ap_normalizer="retrieved", chunk_size=chunk_size)
    q_groups = None if groups is None else np.asarray(groups)[q.numpy()]
    metrics = _query_mean_intervals({k: v.numpy() for k, v in values.items()}, (n_rel > 0).numpy(), q_groups, config)
    # Imbriaco's levels: the queries with a "hard" relevant item, Jaccard relevance, AP over the relevant items
    _, n_hard = retrieval_metrics_per_query(feats[q], y[q], feats[d], y[d], ks=(1,), relevance="jaccard",
                                            jaccard_threshold=IMBRIACO_LEVELS["hard"], chunk_size=chunk_size)
    keep = (n_hard > 0).numpy()
    if keep.any():
        qk = q[torch.from_numpy(keep)]
        for name, t in IMBRIACO_LEVELS.items():
            lv, lv_rel = retrieval_metrics_per_query(feats[qk], y[qk], feats[d], y[d], ks=("all", 10),
                                                     relevance="jaccard", jaccard_threshold=t,
                                                     ap_normalizer="relevant", chunk_size=chunk_size)
            level = _query_mean_intervals({k: lv[k].numpy() for k in ("mAP@all", "P@10")}, (lv_rel > 0).numpy(),
                                          None if q_groups is None else q_groups[keep], config)
            metrics.update({f"{name}/{k}": v for k, v in level.items()})
    return {"method": METHOD + "; queries resampled, database fixed", "n_resamples": config.n_resamples,
            "confidence": config.confidence, "seed": config.seed,
            "resampled": "query items" if groups is None else "query groups",
            "n_units": len(np.unique(q_groups)) if q_groups is not None else len(q), "metrics": metrics}


def evaluate_retrieval(features: torch.Tensor, labels: torch.Tensor, *, seed: int | Sequence[int] = IMBRIACO_SEED,
                       query_fraction: float = 0.2, ks: Sequence[int | str] = (20, 100, "all"),
                       imbriaco_levels: bool = True, num_classes: int | None = None,
                       chunk_size: int | None = None,
                       groups: Sequence[int] | np.ndarray | None = None,
                       bootstrap: BootstrapConfig | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Retrieval metrics of test-split features (module docstring).

    ``groups`` (one int per item, e.g. :func:`train.evaluate.tasks.item_groups`): queries and
    database never share a group (:func:`query_database_split`); None = every item its own group.
    ``bootstrap`` adds ``"intervals"`` of the first seed's split (:func:`retrieval_intervals`).

    Returns:
        ``{"metrics": {...}, "config": {...}}``; metrics hold ``mAP@K``, ``P@K``, ``R@K``,
        ``NDCG@K``, ``ACG@K``, ``wAP@K``, ``n_queries``, ``n_valid``, ``n_database`` and the
        ``easy|medium|hard/{mAP@all,P@10}`` levels (plus ``*_std`` with several seeds).
    """
    feats = torch.as_tensor(features).float()
    y = as_multi_hot(labels, num_classes)
    seeds = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    g = None if groups is None else np.asarray(groups)
    runs = [_one_split(feats, y, s, query_fraction, ks, imbriaco_levels, chunk_size, g) for s in seeds]
    n_groups = len(feats) if g is None else len(np.unique(g))
    metrics: dict[str, float] = {}
    for key in runs[0]:
        vals = np.array([r[key] for r in runs], dtype=np.float64)
        metrics[key] = float(vals.mean()) if not np.isnan(vals).all() else math.nan
        if len(runs) > 1 and not key.startswith("n_") and not key.endswith("n_queries"):
            metrics[f"{key}_std"] = float(vals.std())
    for key in ("n_queries", "n_valid", "n_database", "levels_n_queries"):
        if key in metrics:
            metrics[key] = round(metrics[key])
    out: dict[str, Any] = {"metrics": metrics}
    cfg = BootstrapConfig.coerce(bootstrap)
    if cfg is not None and len(feats) >= 2:
        out["intervals"] = retrieval_intervals(feats, y, seeds[0], query_fraction, ks, chunk_size, g, cfg)
    return {**out,
            "config": {"seeds": seeds, "query_fraction": query_fraction, "ks": list(ks),
                       "relevance": "share >= 1 label", "ap_normalizer": "retrieved (spec (a))",
                       "empty_queries": "excluded", "imbriaco_levels": IMBRIACO_LEVELS if imbriaco_levels else None,
                       "n_items": len(feats),
                       "split": "by item" if n_groups == len(feats)
                       else "by group (queries and database never share a group)",
                       "n_groups": n_groups}}


def rank_database(features: torch.Tensor, query_idx: Sequence[int] | torch.Tensor,
                  db_idx: Sequence[int] | torch.Tensor, k: int = 5) -> torch.Tensor:
    """Top-``k`` database items per query by cosine similarity (ties: lower database position first).

    Returns:
        ``(len(query_idx), min(k, len(db_idx)))`` int64 tensor of **indices into ``features``**
        (i.e. data set indices, not positions in ``db_idx``).
    """
    f = F.normalize(torch.as_tensor(features).float(), dim=1)
    q = torch.as_tensor(query_idx, dtype=torch.long)
    d = torch.as_tensor(db_idx, dtype=torch.long)
    sim = f[q] @ f[d].T
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]
    return d[order]


# ============================================================================ plotting
def _base_dataset(dataset):
    while hasattr(dataset, "dataset") and not hasattr(dataset, "bands"):
        dataset = dataset.dataset
    return dataset


def _display_channels(dataset, rgb_bands: Sequence[str | int] | None) -> tuple[list[int] | None, str]:
    bands = list(getattr(_base_dataset(dataset), "bands", []) or [])
    if rgb_bands is not None:
        idx = [bands.index(b) if isinstance(b, str) else int(b) for b in rgb_bands]
        return idx, "custom"
    if all(b in bands for b in ("B4", "B3", "B2")):
        return [bands.index(b) for b in ("B4", "B3", "B2")], "rgb"
    if bands == ["VV", "VH"]:
        return None, "sar"
    return [0, 1, 2] if len(bands) >= 3 or not bands else [0, 0, 0], "first"


def _composite(image: torch.Tensor, channels: list[int] | None) -> np.ndarray:
    """``(3, H, W)`` display channels in data units."""
    x = torch.as_tensor(image).float().numpy()
    if channels is None:  # S1 false colour: VV, VH, VV - VH
        return np.stack([x[0], x[1], x[0] - x[1]])
    return x[[c if c < x.shape[0] else 0 for c in channels]]


def _stretch(composites: list[np.ndarray]) -> list[np.ndarray]:
    """One 2–98 % percentile stretch per display channel, shared by every tile of the figure, so
    colours and brightness are comparable between the query and its results.
    """
    stack = np.stack(composites)  # (n, 3, H, W)
    out = np.empty_like(stack)
    for c in range(stack.shape[1]):
        band = stack[:, c]
        finite = band[np.isfinite(band)]
        lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        out[:, c] = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return [np.nan_to_num(t.transpose(1, 2, 0)) for t in out]


def plot_retrieval_examples(dataset, query_idx: Sequence[int], ranked_db_idx, relevance, path_png: str | Path,
                            rgb_bands: Sequence[str | int] | None = None, title: str | None = None,
                            tile_inches: float = 1.6) -> Path:
    """Save a grid: each row a query (first column) and its ranked results.

    Args:
        dataset: the data set the indices refer to (items ``{"image", "id", ...}``).
        query_idx: ``(Q,)`` data set indices of the queries.
        ranked_db_idx: ``(Q, k)`` data set indices of the results, best first (:func:`rank_database`).
        relevance: ``(Q, k)`` booleans, True = relevant (green frame), False = wrong (red frame).
        path_png: output file.
        rgb_bands: band names (or channel indices) for R, G, B; default: module docstring.
        title: figure title.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    ranked = np.asarray(torch.as_tensor(ranked_db_idx))
    rel = np.asarray(torch.as_tensor(relevance)).astype(bool)
    query_idx = [int(i) for i in query_idx]
    if ranked.ndim != 2 or ranked.shape != rel.shape or ranked.shape[0] != len(query_idx):
        raise ValueError("ranked_db_idx and relevance must both be (n_queries, k)")
    channels, _ = _display_channels(dataset, rgb_bands)
    nq, k = ranked.shape
    fig = Figure(figsize=(tile_inches * (k + 1), tile_inches * nq + (0.4 if title else 0)))
    axes = fig.subplots(nq, k + 1, squeeze=False)
    cells = [[(q, None)] + [(int(ranked[r, j]), bool(rel[r, j])) for j in range(k)]
             for r, q in enumerate(query_idx)]
    items = {idx: dataset[idx] for row in cells for idx, _ in row}
    shown = dict(zip(items, _stretch([_composite(it["image"], channels) for it in items.values()])))
    for r, row in enumerate(cells):
        for c, (idx, ok) in enumerate(row):
            ax = axes[r, c]
            item = items[idx]
            ax.imshow(shown[idx], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "#1f4e9c" if ok is None else ("#1a9c3c" if ok else "#d62728")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5 if ok is None else 4)
            label = "query" if ok is None else f"#{c}"
            ax.set_title(f"{label}\n{str(item.get('id', idx))[-18:]}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
