"""Label similarity vs embedding similarity of test pairs: the mechanism SoftCon proposes.

SoftCon (Wang et al. 2024, "Multi-Label Guided Soft Contrastive Learning for Efficient Earth
Observation Pretraining", arXiv:2405.20462) replaces the one-hot target of InfoNCE by the label
similarity of the pair, so embedding similarity should *follow* label similarity; instance
contrast only pulls two views of one image together. For one (method, seed) this module draws
random pairs of test items of different locations and records, per pair, the cosine similarity of
their Dynamic World multi-hot vectors (the labels pretraining used) and of their backbone features
(the pooled features evaluation uses). Summary: Spearman's rank correlation over the pairs and the
mean embedding similarity in label-similarity bins (what the report plots).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats

from train.data import Normalizer
from train.evaluate.features import extract_features, load_backbone_for_eval, read_checkpoint_info, resolve_device
from train.evaluate.tasks import ArchiveTask
from train.study.config import StudyConfig
from train.study.plan import Unit

#: Label-similarity bin edges of the summary curve.
BINS = np.linspace(0.0, 1.0, 11)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def pair_similarities(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_pairs: int,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(label cosine, feature cosine)`` of up to ``n_pairs`` random pairs of items of different groups."""
    rng = np.random.default_rng(seed)
    n = len(features)
    i = rng.integers(0, n, 2 * n_pairs)
    j = rng.integers(0, n, 2 * n_pairs)
    keep = groups[i] != groups[j]
    i, j = i[keep][:n_pairs], j[keep][:n_pairs]
    return _cosine(labels[i], labels[j]), _cosine(features[i], features[j])


def summarise(label_sim: np.ndarray, feat_sim: np.ndarray) -> dict[str, Any]:
    """Spearman correlation and the binned curve (bin centre, mean, std and count of feature similarity)."""
    rho = float(stats.spearmanr(label_sim, feat_sim).statistic) if len(label_sim) > 2 else float("nan")
    idx = np.clip(np.digitize(label_sim, BINS) - 1, 0, len(BINS) - 2)
    curve = []
    for b in range(len(BINS) - 1):
        sel = feat_sim[idx == b]
        if sel.size:
            curve.append({"label_sim": float((BINS[b] + BINS[b + 1]) / 2), "mean": float(sel.mean()),
                          "std": float(sel.std()), "n": int(sel.size)})
    return {"spearman": rho, "n_pairs": int(len(label_sim)), "curve": curve}


def similarity_data(cfg: StudyConfig, unit: Unit) -> dict[str, Any]:
    """The similarity summary of one (method, seed) on the archive's test split (multi-hot labels)."""
    ck = unit.checkpoint
    ds = ArchiveTask(cfg.archive.store, split="test", target="multi_hot")
    bands = list(ds.bands)
    model = load_backbone_for_eval(ck, len(bands), bands, cfg.backbone, seed=unit.seed)
    record = read_checkpoint_info(ck).get("normalizer")
    if isinstance(record, dict):
        norm = Normalizer(record["mean"], record["std"], mode=record.get("mode", "softcon"),
                          bands=record.get("bands"), nan_value=record.get("nan_value", 0.0)).subset(bands)
    else:
        norm = Normalizer.published(ds.modality, bands)
    feats, labels = extract_features(model, ds, batch_size=cfg.evaluation.batch_size,
                                     device=resolve_device(cfg.evaluation.device), normalizer=norm, cache_dir=None)
    label_sim, feat_sim = pair_similarities(feats.float().numpy(), torch.as_tensor(labels).float().numpy(),
                                            ds.groups, cfg.evaluation.similarity_pairs, seed=unit.seed)
    return {"method": unit.method.name, "seed": unit.seed, "n_items": len(ds), **summarise(label_sim, feat_sim)}
