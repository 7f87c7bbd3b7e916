"""Embeddings of held-out archive patches from a pretraining run, and how they relate to the labels.

:func:`embed_split` runs a run's exported backbone (or its latest checkpoint) over the items of one
split of the archive it was trained on (by default the **test** split, which pretraining never saw):
each item is a labelled (location, season) image (:class:`train.evaluate.tasks.ArchiveTask`), scaled
with the normalisation the checkpoint records (else the published SSL4EO-S12 statistics), pooled
features of the frozen backbone in eval mode.

SoftCon trains the similarity of two images' embeddings to follow the similarity of their label
vectors (Wang et al., "Multi-Label Guided Soft Contrastive Learning for Efficient Earth Observation
Pretraining", IEEE TGRS 2024, arXiv:2405.20462). :func:`similarity_pairs` returns, for pairs of
distinct items, the cosine similarity of their multi-hot vectors and of their embeddings, and the
Spearman rank correlation between the two; :func:`nearest_neighbours` the most similar items of a few
queries, seasons of the query's own location left out (they would be near-duplicates).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.archive import Archive
from pipeline.errors import BadInput


@dataclass
class SplitEmbeddings:
    """Features of the items of one archive split, with their labels (row ``i`` is item ``i``)."""

    features: np.ndarray  # (N, D) float32
    multi_hot: np.ndarray  # (N, K) uint8
    fraction: np.ndarray  # (N, K) float32
    patch_index: np.ndarray  # (N,) archive patch (location) index
    season: np.ndarray  # (N,) season index
    ids: list[str]  # "<patch_id>_s<season>"
    classes: tuple[str, ...]
    store: str
    split: str
    checkpoint: str

    @property
    def dominant(self) -> np.ndarray:
        """``(N,)`` class with the largest label fraction of each item."""
        return self.fraction.argmax(axis=1)


def run_archive(run_dir: str | Path) -> str:
    """The archive a run was trained on (``archive`` of its ``training_data.json``); BadInput when unknown."""
    from train.data import TRAINING_DATA_FILE

    path = Path(run_dir) / TRAINING_DATA_FILE
    if not path.is_file():
        raise BadInput(f"{path}: not found; pass the archive explicitly")
    try:
        archive = json.loads(path.read_text()).get("archive")
    except json.JSONDecodeError as err:
        raise BadInput(f"{path}: not valid JSON ({err.msg})") from err
    if not archive:
        raise BadInput(f"{path}: names no archive; pass the archive explicitly")
    return str(archive)


def _normalizer(recorded: Any, modality: str, bands: Sequence[str]):
    from train.data import Normalizer

    if isinstance(recorded, Mapping):
        return Normalizer(recorded["mean"], recorded["std"], mode=recorded.get("mode", "softcon"),
                          bands=recorded.get("bands"), nan_value=recorded.get("nan_value", 0.0)).subset(list(bands))
    if recorded:
        return Normalizer.from_file(recorded, modality, list(bands))
    return Normalizer.published(modality, list(bands))


def embed_split(run_dir: str | Path, store: str | None = None, split: str = "test", max_items: int = 512,
                device: str = "cpu", batch_size: int = 32) -> SplitEmbeddings:
    """Backbone features of (at most ``max_items``, evenly spaced) labelled images of ``split``.

    Args:
        run_dir: pretraining run folder (or a backbone / checkpoint file).
        store: archive; default: the one named by the run's ``training_data.json``.
        split: ``train``, ``val`` or ``test`` of the archive's split.
        max_items: cap on the images embedded (CPU time).
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: images per forward pass.

    Raises:
        BadInput: the run or the archive cannot be used (no record of the archive, an empty split).
    """
    from train.evaluate.features import (
        extract_features,
        load_backbone_for_eval,
        read_checkpoint_info,
    )
    from train.evaluate.tasks import ArchiveTask

    run_dir = Path(run_dir)
    store = store or run_archive(run_dir if run_dir.is_dir() else run_dir.parent)
    info = read_checkpoint_info(run_dir)
    modality = info.get("modality") or "s2_l1c"
    task = ArchiveTask(store, modality=modality, split=split, target="multi_hot")
    if len(task) == 0:
        raise BadInput(f"{store}: the {split} split has no labelled image to embed")
    keep = np.unique(np.linspace(0, len(task) - 1, min(max_items, len(task))).round().astype(int))
    from torch.utils.data import Subset

    subset = Subset(task, keep.tolist())
    bands = list(task.bands)
    model = load_backbone_for_eval(run_dir, len(bands), bands)
    feats, labels = extract_features(model, subset, batch_size=batch_size, device=device,
                                     normalizer=_normalizer(info.get("normalizer"), modality, bands), cache_dir=None)
    patch = task.groups[keep]
    seasons = np.asarray([int(task.ids[i].rsplit("_s", 1)[1]) for i in keep])
    frac = np.asarray(Archive.of(store).open()["label_fraction"][:])[patch, seasons]
    return SplitEmbeddings(features=feats.numpy().astype(np.float32), multi_hot=labels.numpy().astype(np.uint8),
                           fraction=frac.astype(np.float32), patch_index=patch, season=seasons,
                           ids=[task.ids[i] for i in keep], classes=tuple(task.classes), store=str(store),
                           split=split, checkpoint=str(info["path"]))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """``(N, N)`` cosine similarities of the rows of ``x`` (0 for an all-zero row)."""
    u = _unit_rows(x)
    return u @ u.T


def project_2d(features: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str]:
    """``(N, 2)`` projection of standardised features and the method used: ``pca``, or ``umap`` when
    asked and the ``umap-learn`` package is installed (PCA otherwise).
    """
    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    if method == "umap":
        try:
            import umap  # type: ignore[import-not-found]

            n = max(2, min(15, len(x) - 1))
            return umap.UMAP(n_components=2, n_neighbors=n, random_state=seed).fit_transform(x), "umap"
        except ImportError:
            pass
    if len(x) < 2:
        return np.zeros((len(x), 2)), "pca"
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    if xy.shape[1] < 2:
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    return xy, "pca"


def similarity_pairs(emb: SplitEmbeddings, max_pairs: int = 20000, seed: int = 0) -> dict[str, Any]:
    """Label similarity (cosine of multi-hot vectors) and embedding similarity (cosine) of item pairs.

    Pairs of distinct items from different locations (seasons of one location are near-duplicates),
    at most ``max_pairs`` drawn at random (seeded). Returns ``label_sim``, ``embedding_sim`` (M,),
    ``spearman`` (rank correlation; NaN for fewer than 3 pairs) and ``n_pairs``.
    """
    from scipy.stats import spearmanr

    i, j = np.triu_indices(len(emb.ids), k=1)
    other = emb.patch_index[i] != emb.patch_index[j]
    i, j = i[other], j[other]
    if len(i) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(i), max_pairs, replace=False)
        i, j = i[pick], j[pick]
    lab = _unit_rows(emb.multi_hot)
    fea = _unit_rows(emb.features)
    label_sim = (lab[i] * lab[j]).sum(axis=1)
    emb_sim = (fea[i] * fea[j]).sum(axis=1)
    rho = float(spearmanr(label_sim, emb_sim).statistic) if len(i) >= 3 and np.ptp(label_sim) > 0 else float("nan")
    return {"label_sim": label_sim, "embedding_sim": emb_sim, "spearman": rho, "n_pairs": int(len(i))}


def nearest_neighbours(emb: SplitEmbeddings, queries: Sequence[int], k: int = 4) -> np.ndarray:
    """``(Q, k)`` item indices of the ``k`` most similar items (cosine) to each query item, excluding
    the query's own location; -1 pads when fewer exist.
    """
    sim = cosine_matrix(emb.features)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for r, q in enumerate(queries):
        s = sim[q].copy()
        s[emb.patch_index == emb.patch_index[q]] = -np.inf
        order = np.argsort(-s, kind="stable")
        order = order[np.isfinite(s[order])][:k]
        out[r, :len(order)] = order
    return out
