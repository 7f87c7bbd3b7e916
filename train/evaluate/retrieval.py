"""Multi-label content-based retrieval on frozen features (losses.md §5), and example plots.

Protocol (:func:`evaluate_retrieval`)
    The **test split** is cut by :func:`~train.evaluate.metrics.imbriaco_split` into 20 % queries and
    80 % database (seed 24 by default, the value of Imbriaco et al.'s code); queries and database are
    disjoint, so no self-match exists. Ranking: cosine similarity, ties by database index.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from train.evaluate.metrics import (
    imbriaco_split,
    retrieval_metrics,
    retrieval_metrics_per_query,
)

__all__ = [
    "IMBRIACO_LEVELS",
    "IMBRIACO_SEED",
    "as_multi_hot",
    "evaluate_retrieval",
    "plot_retrieval_examples",
    "rank_database",
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


def _one_split(feats: torch.Tensor, y: torch.Tensor, seed: int, query_fraction: float, ks: Sequence[int | str],
               levels: bool, chunk_size: int | None) -> dict[str, float]:
    q, d = imbriaco_split(len(feats), query_fraction, seed)
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


def evaluate_retrieval(features: torch.Tensor, labels: torch.Tensor, *, seed: int | Sequence[int] = IMBRIACO_SEED,
                       query_fraction: float = 0.2, ks: Sequence[int | str] = (20, 100, "all"),
                       imbriaco_levels: bool = True, num_classes: int | None = None,
                       chunk_size: int | None = None) -> dict[str, Any]:
    """Retrieval metrics of test-split features (module docstring).

    Returns:
        ``{"metrics": {...}, "config": {...}}``; metrics hold ``mAP@K``, ``P@K``, ``R@K``,
        ``NDCG@K``, ``ACG@K``, ``wAP@K``, ``n_queries``, ``n_valid``, ``n_database`` and the
        ``easy|medium|hard/{mAP@all,P@10}`` levels (plus ``*_std`` with several seeds).
    """
    feats = torch.as_tensor(features).float()
    y = as_multi_hot(labels, num_classes)
    seeds = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    runs = [_one_split(feats, y, s, query_fraction, ks, imbriaco_levels, chunk_size) for s in seeds]
    metrics: dict[str, float] = {}
    for key in runs[0]:
        vals = np.array([r[key] for r in runs], dtype=np.float64)
        metrics[key] = float(vals.mean()) if not np.isnan(vals).all() else math.nan
        if len(runs) > 1 and not key.startswith("n_") and not key.endswith("n_queries"):
            metrics[f"{key}_std"] = float(vals.std())
    for key in ("n_queries", "n_valid", "n_database", "levels_n_queries"):
        if key in metrics:
            metrics[key] = round(metrics[key])
    return {"metrics": metrics,
            "config": {"seeds": seeds, "query_fraction": query_fraction, "ks": list(ks),
                       "relevance": "share >= 1 label", "ap_normalizer": "retrieved (spec (a))",
                       "empty_queries": "excluded", "imbriaco_levels": IMBRIACO_LEVELS if imbriaco_levels else None,
                       "n_items": len(feats)}}


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
    colours and brightness are comparable between the query and its results."""
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
