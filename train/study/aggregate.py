"""Collect a study's evaluation results into mean ± std over seeds, with the bootstrap intervals.

For every target (``multi_hot``: Dynamic World, in-domain; ``reference``: the 19-class reference land
cover, transfer) and method, each column is read from the ``results.json`` of every seed
(:func:`train.evaluate.run.evaluate`):

* ``logistic mAP`` / ``linear mAP``: macro mAP of the probe on the test split;
* ``kNN mAP``: macro mAP of the kNN classifier at the headline k (the first ``knn_k``);
* ``mAP@K`` / ``NDCG@K``: multi-label retrieval (queries and database from different locations);
* ``rare AP``: the logistic (else linear, else kNN) per-class AP averaged over the
  ``rare_classes`` classes least frequent in the training split (MACL's claim is about them).

``mean`` and ``std`` (sample std, ddof = 1) are over seeds; ``ci`` is the per-seed 95 % percentile
bootstrap interval (resampling locations) averaged over seeds: the uncertainty from the finite test
set, where ``std`` is the one from training randomness. Missing results (a study stopped early) are
left out and counted in ``n``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from train.study.config import StudyConfig
from train.study.plan import RESULTS_FILE, plan_units

__all__ = ["Cell", "columns", "collect", "rare_classes"]


@dataclass
class Cell:
    """One (target, method, column): the per-seed values and intervals."""

    values: list[float] = field(default_factory=list)
    lows: list[float] = field(default_factory=list)
    highs: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0 if self.values else math.nan

    @property
    def ci(self) -> tuple[float, float] | None:
        if not self.lows:
            return None
        return float(np.mean(self.lows)), float(np.mean(self.highs))


def columns(cfg: StudyConfig) -> list[tuple[str, str, str]]:
    """``(column, protocol, metric)`` of the table, for the configured protocols."""
    ev = cfg.evaluation
    out = []
    for proto, name in (("logistic", "logistic mAP"), ("linear", "linear mAP"), ("knn", "kNN mAP")):
        if proto in ev.protocols:
            out.append((name, proto, "mAP_macro"))
    if "retrieval" in ev.protocols:
        for k in ev.retrieval_k:
            out += [(f"mAP@{k}", "retrieval", f"mAP@{k}"), (f"NDCG@{k}", "retrieval", f"NDCG@{k}")]
    if ev.rare_classes and any(p in ev.protocols for p in ("logistic", "linear", "knn")):
        proto = next(p for p in ("logistic", "linear", "knn") if p in ev.protocols)
        out.append(("rare AP", proto, "per_class_ap"))
    return out


@lru_cache(maxsize=8)
def _train_frequencies(store: str, target: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    from train.evaluate.tasks import ArchiveTask

    task = ArchiveTask(store, split="train", target=target)
    labels = np.stack([task.label(i).numpy() for i in range(len(task))]) if len(task) else np.zeros((0, 1))
    return tuple(task.classes), tuple(labels.mean(0).tolist()) if len(task) else ()


def rare_classes(cfg: StudyConfig, target: str) -> list[tuple[int, str, float]]:
    """``(index, name, training frequency)`` of the ``rare_classes`` least frequent classes present in training."""
    names, freq = _train_frequencies(cfg.archive.store, target)
    present = sorted((f, i) for i, f in enumerate(freq) if f > 0)
    return [(i, names[i], f) for f, i in present[: cfg.evaluation.rare_classes]]


def _row(results: dict[str, Any]) -> dict[str, Any]:
    return next(iter(results["checkpoints"].values()))


def _value(row: dict[str, Any], proto: str, metric: str, rare: list[int]) -> tuple[float, float | None, float | None]:
    block = row.get(proto) or {}
    if metric == "per_class_ap":
        ap = np.asarray([np.nan if v is None else v for v in block.get("per_class_ap", [])], dtype=float)
        vals = ap[rare] if len(ap) and rare else np.array([np.nan])
        return (float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan), None, None
    value = block.get("metrics", {}).get(metric, math.nan)
    interval = (block.get("intervals") or {}).get("metrics", {}).get(metric)
    if interval:
        return float(value), interval.get("low"), interval.get("high")
    return float(value), None, None


def collect(cfg: StudyConfig) -> dict[str, dict[str, dict[str, Cell]]]:
    """``{target: {method: {column: Cell}}}`` from every finished evaluation of the study."""
    out: dict[str, dict[str, dict[str, Cell]]] = {}
    cols = columns(cfg)
    for target in cfg.evaluation.targets:
        rare = [i for i, _, _ in rare_classes(cfg, target)] if cfg.evaluation.rare_classes else []
        table = out.setdefault(target, {m.name: {c: Cell() for c, _, _ in cols} for m in cfg.methods})
        for unit in plan_units(cfg):
            path = unit.eval_dir(target) / RESULTS_FILE
            if not path.is_file():
                continue
            row = _row(json.loads(path.read_text()))
            for col, proto, metric in cols:
                value, low, high = _value(row, proto, metric, rare)
                if math.isnan(value):
                    continue
                cell = table[unit.method.name][col]
                cell.values.append(value)
                if low is not None and high is not None:
                    cell.lows.append(float(low))
                    cell.highs.append(float(high))
    return out
