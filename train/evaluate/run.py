"""Downstream evaluation of pretrained backbones: splits → features → protocols → report.

:func:`evaluate` is what ``softcon evaluate CHECKPOINT... --task ...`` and the evaluation flow call.

Splits (:func:`build_splits`)
    * ``archive`` (:class:`~train.evaluate.tasks.ArchiveTask`): its own by-location split,
      ``split="train"`` / ``"test"``, with ``seed`` (the task's split seed; ``task_kwargs["seed"]`` wins)
      and ``test_fraction``.
    * ``bigearthnet_v2`` with ``<root>/metadata.parquet``: the official ``train`` / ``test`` splits.
    * ``train_split_ids`` **and** ``test_split_ids`` in ``task_kwargs`` (files or lists of ids, e.g.
      the official BigEarthNet split CSVs): one task per side through the task's ``split_ids``.
    * otherwise (BigEarthNet v1, EuroSAT, reBEN without metadata): a **seeded 80/20 split by
      index** of the whole task: ``numpy.random.default_rng(seed).permutation(n)``, the first
      ``round(test_fraction · n)`` (at least one item per side) are the test side; both sides keep the
      task's order. Not an official split: numbers are not comparable with published ones.

    ``fraction`` then keeps a seeded subset of the **training** side only
    (:func:`~train.evaluate.tasks.subsample`, seed ``seed``): ``fraction=0.1`` gives the
    "BigEarthNet-10 %" protocol; the test side is always complete.

Checkpoints and baselines
    Each entry is anything :func:`~train.evaluate.features.load_backbone_for_eval` accepts. The task
    modality is ``task_kwargs["modality"]`` or, when absent, the modality recorded in the
    checkpoints (they must agree). ``baselines=True`` adds ``random:<arch>`` for every architecture
    among the checkpoints (same seed as everything else) and ``pixels``.

Protocols: ``linear`` (:mod:`.probe`), ``knn`` (:mod:`.knn`), ``retrieval`` (:mod:`.retrieval`, on
the test split) and ``finetune`` (:mod:`.finetune`; skipped for the pixel baseline).

Input scaling (one for every row, baselines included): ``normalizer="auto"`` uses the scaling the
checkpoints record (``normalizer`` metadata of ``backbone.safetensors`` or a pretraining config's
``statistics`` file) when they agree, else the published SSL4EO-S12 statistics of the task's bands
(set A, the pretraining default); or pass ``"published"``, a statistics file, a
:class:`~train.data.Normalizer` or None.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from train.data import Normalizer
from train.evaluate.features import (
    DEFAULT_CACHE_DIR,
    PIXELS,
    RANDOM_PREFIX,
    checkpoint_label,
    extract_features,
    load_backbone_for_eval,
    read_checkpoint_info,
    resolve_checkpoint,
    resolve_device,
)
from train.evaluate.finetune import finetune
from train.evaluate.knn import knn_evaluate
from train.evaluate.metrics import imbriaco_split
from train.evaluate.probe import train_linear_probe
from train.evaluate.report import write_report
from train.evaluate.retrieval import (
    IMBRIACO_SEED,
    as_multi_hot,
    evaluate_retrieval,
    plot_retrieval_examples,
    rank_database,
)
from train.evaluate.tasks import EvalTask, build_task, subsample

log = logging.getLogger(__name__)

__all__ = ["PROTOCOLS", "build_splits", "evaluate", "parse_task_options"]

PROTOCOLS: tuple[str, ...] = ("linear", "knn", "retrieval", "finetune")


# ============================================================================ helpers
def parse_task_options(options: Iterable[str]) -> dict[str, Any]:
    """``["root=/data/ben", "size=120", "exclude_cloud_snow=false"]`` → a kwargs dict (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for opt in options:
        if "=" not in opt:
            raise ValueError(f"task option {opt!r} is not key=value")
        key, value = opt.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _base(dataset: Dataset) -> EvalTask:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset  # type: ignore[return-value]


def _index_split(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if n < 2:
        raise ValueError(f"cannot split {n} item(s) into train and test")
    n_test = min(max(math.floor(test_fraction * n + 0.5), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[n_test:].tolist()), sorted(perm[:n_test].tolist())


def _has_reben_metadata(kw: Mapping[str, Any]) -> bool:
    meta = kw.get("metadata", "auto")
    if meta is None or "root" not in kw:
        return False
    return (Path(kw["root"]) / "metadata.parquet" if meta == "auto" else Path(meta)).is_file()


def build_splits(task: str, task_kwargs: Mapping[str, Any] | None = None, seed: int = 0,
                 test_fraction: float = 0.2, fraction: float | None = None) -> tuple[Dataset, Dataset, str]:
    """``(train, test, description)`` for a registered task (module docstring)."""
    kw = dict(task_kwargs or {})
    if "split" in kw:
        raise ValueError("task_kwargs must not set 'split': evaluate builds both sides (see build_splits)")
    train_ids, test_ids = kw.pop("train_split_ids", None), kw.pop("test_split_ids", None)
    if (train_ids is None) != (test_ids is None):
        raise ValueError("give both train_split_ids and test_split_ids, or neither")
    if task == "archive":
        kw.setdefault("seed", seed)
        kw.setdefault("test_fraction", test_fraction)
        train, test = build_task(task, split="train", **kw), build_task(task, split="test", **kw)
        desc = f"archive by-location split (seed {kw['seed']}, test_fraction {kw['test_fraction']})"
    elif train_ids is not None:
        train, test = build_task(task, split_ids=train_ids, **kw), build_task(task, split_ids=test_ids, **kw)
        desc = "given split id lists"
    elif task == "bigearthnet_v2" and _has_reben_metadata(kw):
        train, test = build_task(task, split="train", **kw), build_task(task, split="test", **kw)
        desc = "official reBEN train/test (metadata.parquet)"
    else:
        full = build_task(task, **kw)
        tr, te = _index_split(len(full), test_fraction, seed)
        train, test = Subset(full, tr), Subset(full, te)
        desc = f"seeded {round(100 * (1 - test_fraction))}/{round(100 * test_fraction)} split by index (seed {seed})"
    if fraction is not None and fraction < 1.0:
        train = subsample(train, fraction, seed)
        desc += f"; training side subsampled to {fraction:g} (seed {seed})"
    return train, test, desc


def _normalizer_from_record(record: Any, modality: str, bands: Sequence[str]) -> Normalizer:
    """A recorded normaliser (``Normalizer.to_dict()`` mapping or statistics-file path) for ``bands``."""
    if isinstance(record, Mapping):
        norm = Normalizer(record["mean"], record["std"], mode=record.get("mode", "softcon"),
                          bands=record.get("bands"), nan_value=record.get("nan_value", 0.0))
        return norm.subset(list(bands))
    return Normalizer.from_file(record, modality, list(bands))


def _make_normalizer(normalizer: Any, modality: str, bands: Sequence[str],
                     infos: Sequence[Mapping[str, Any]] = ()) -> tuple[Normalizer | None, str]:
    """``(normalizer, description)``; ``"auto"`` = the scaling the checkpoints record, else published."""
    if normalizer is None:
        return None, "none (raw data units)"
    if isinstance(normalizer, Normalizer):
        return normalizer, "given"
    if normalizer == "auto":
        recorded = [i["normalizer"] for i in infos if i.get("normalizer") is not None]
        distinct = {json.dumps(r, sort_keys=True, default=str) for r in recorded}
        if len(distinct) == 1:
            return _normalizer_from_record(recorded[0], modality, bands), "recorded in the checkpoint"
        if len(distinct) > 1:
            log.warning("checkpoints record different input scalings; using the published statistics for all")
        normalizer = "published"
    if normalizer == "published":
        return Normalizer.published(modality, list(bands)), "published SSL4EO-S12 statistics (set A)"
    if isinstance(normalizer, (str, os.PathLike)):
        return Normalizer.from_file(normalizer, modality, list(bands)), f"statistics file {normalizer}"
    raise ValueError("normalizer must be 'auto', 'published', a statistics file, a Normalizer or None, "
                     f"got {normalizer!r}")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "x"


def _unique_labels(checkpoints: Sequence[str]) -> list[str]:
    labels, seen = [], {}
    for c in checkpoints:
        base = checkpoint_label(c)
        n = seen.get(base, 0)
        seen[base] = n + 1
        labels.append(base if n == 0 else f"{base}#{n + 1}")
    return labels


def _protocol_settings(probe_kw: Mapping, knn_kw: Mapping, ret_kw: Mapping, ft_kw: Mapping,
                       protocols: Sequence[str]) -> dict[str, str]:
    text = {
        "linear": "frozen features, z-scored with train statistics; linear head, AdamW + cosine, zero init; "
                  f"{ {k: v for k, v in probe_kw.items() if k != 'device'} or 'defaults (100 epochs, lr 1e-3, wd 1e-4, batch 256)'}; "
                  "multi-label: BCE, macro mAP drops classes without test positives; F1 at 0.5",
        "knn": "cosine kNN, votes weighted exp(cos/T) and normalised; "
               f"{ {k: v for k, v in knn_kw.items() if k != 'device'} or 'k = 10, 20, 100 (table: 20), T = 0.07'}",
        "retrieval": "test split, imbriaco_split 20 % queries / 80 % database "
                     f"(seed {ret_kw.get('seed', IMBRIACO_SEED)}); cosine ranking; relevance >= 1 shared label; "
                     "AP@K normaliser = relevant retrieved (spec (a)); queries without relevant items excluded; "
                     "hard = Jaccard >= 0.8 (step AP, not Imbriaco's trapezoid)",
        "finetune": "whole backbone + linear head, AdamW (backbone lr / head_lr), cosine, dihedral flips; "
                    f"{ {k: v for k, v in ft_kw.items() if k != 'device'} or 'defaults (3 epochs, lr 1e-4, head_lr 1e-3)'}",
    }
    return {p: text[p] for p in protocols}


# ============================================================================ evaluate
def evaluate(checkpoints: Sequence[str | os.PathLike], task: str, task_kwargs: Mapping[str, Any] | None = None,
             protocols: Sequence[str] = ("linear", "knn", "retrieval"), out_dir: str | os.PathLike = "output/eval",
             fraction: float | None = None, seed: int = 0, device: str = "auto", baselines: bool = True, *,
             backbone_name: str | None = None, batch_size: int = 64, num_workers: int = 0,
             cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR, resize_to: int | None = None,
             normalizer: Any = "auto", test_fraction: float = 0.2, first_layer: str = "random",
             vit_pool: str = "cls", probe_kwargs: Mapping[str, Any] | None = None,
             knn_kwargs: Mapping[str, Any] | None = None, retrieval_kwargs: Mapping[str, Any] | None = None,
             finetune_kwargs: Mapping[str, Any] | None = None, plot_examples: int = 4,
             plot_top_k: int = 5) -> dict[str, Any]:
    """Evaluate checkpoints (plus baselines) on one task; write ``results.json`` / ``results.md`` /
    PNGs to ``out_dir``; return the results dictionary (its ``"files"`` lists what was written).

    Args:
        checkpoints: run folders, weight files, ``"random:<arch>"``, ``"pixels"``.
        task: registered task name (``archive``, ``bigearthnet_v1``, ``bigearthnet_v2``, ``eurosat``).
        task_kwargs: task constructor arguments (``root`` / ``store``, ``modality``, ``size``, ...), plus
            optional ``train_split_ids`` / ``test_split_ids``.
        protocols: any of :data:`PROTOCOLS`.
        fraction: training-side subset (e.g. 0.1 for BigEarthNet-10 %).
        seed: split seed, training subset seed, probe / fine-tune seed, random-init seed.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        baselines: add the random-init and raw-pixel baselines.
        backbone_name: architecture of weight files that record none.
        resize_to: resize inputs (e.g. 224 for ViTs on 120 px BigEarthNet).
        normalizer: ``"auto"`` (default: what the checkpoints record, else published), ``"published"``,
            a statistics JSON, a ``Normalizer`` or None (raw units). One scaling for every row.
        probe_kwargs / knn_kwargs / retrieval_kwargs / finetune_kwargs: passed to
            :func:`~.probe.train_linear_probe`, :func:`~.knn.knn_evaluate`,
            :func:`~.retrieval.evaluate_retrieval`, :func:`~.finetune.finetune`.
        plot_examples: retrieval example queries per checkpoint (0 = no plots), each with
            ``plot_top_k`` results.
    """
    t_start = time.perf_counter()
    protocols = list(protocols)
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; valid: {PROTOCOLS}")
    dev = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probe_kw = dict(probe_kwargs or {})
    knn_kw = dict(knn_kwargs or {})
    ret_kw = dict(retrieval_kwargs or {})
    ft_kw = dict(finetune_kwargs or {})

    # -- checkpoints, modality
    ckpts = [resolve_checkpoint(c) for c in checkpoints]
    infos = [read_checkpoint_info(c) for c in ckpts]
    kw = dict(task_kwargs or {})
    recorded = sorted({i["modality"] for i in infos if i["modality"]})
    if "modality" not in kw and recorded:
        if len(recorded) > 1:
            raise ValueError(f"checkpoints were trained on different modalities {recorded}; "
                             "evaluate them separately or pass task_kwargs['modality']")
        kw["modality"] = recorded[0]
    elif "modality" in kw and recorded and recorded != [kw["modality"]]:
        log.warning("task modality %s differs from the checkpoints' %s", kw["modality"], recorded)
    if baselines:
        archs = []
        for i in infos:
            name = i["backbone"] or (backbone_name if i["kind"] == "weights" else None)
            if name and i["kind"] != "random" and name not in archs:
                archs.append(name)
        if not archs and backbone_name:
            archs.append(backbone_name)
        for a in archs:
            if f"{RANDOM_PREFIX}{a}" not in ckpts:
                ckpts.append(f"{RANDOM_PREFIX}{a}")
        if PIXELS not in ckpts:
            ckpts.append(PIXELS)
    labels = _unique_labels(ckpts)

    # -- data
    train_ds, test_ds, split_desc = build_splits(task, kw, seed, test_fraction, fraction)
    base = _base(train_ds)
    modality, bands = base.modality, list(base.bands)
    multilabel = bool(base.multilabel)
    classes = list(base.classes)
    norm, norm_desc = _make_normalizer(normalizer, modality, bands, infos)
    log.info("%s: %d train / %d test items (%s), %d classes, modality %s", task, len(train_ds), len(test_ds),
             split_desc, len(classes), modality)

    # retrieval example queries, shared by all checkpoints (chosen from the first test labels seen)
    examples: list[int] | None = None
    example_db: torch.Tensor | None = None

    rows: dict[str, dict[str, Any]] = {}
    files: dict[str, str] = {}
    for label, ck in zip(labels, ckpts):
        t_ck = time.perf_counter()
        model = load_backbone_for_eval(ck, len(bands), bands, backbone_name, first_layer=first_layer,
                                       vit_pool=vit_pool, seed=seed)
        row: dict[str, Any] = {"checkpoint": ck, "kind": model.kind, "backbone": model.backbone_name,
                               "feature_dim": model.feature_dim, "notes": list(model.notes)}
        log.info("evaluating %s (%s, %s, %d-d features)", label, model.kind, model.backbone_name, model.feature_dim)
        needs_train = any(p in protocols for p in ("linear", "knn"))
        needs_test = needs_train or "retrieval" in protocols
        common = {"batch_size": batch_size, "device": dev, "normalizer": norm, "resize_to": resize_to,
                  "cache_dir": cache_dir, "num_workers": num_workers, "amp": dev.type == "cuda"}
        t0 = time.perf_counter()
        te_x = te_y = tr_x = tr_y = None
        if needs_test:
            te_x, te_y = extract_features(model, test_ds, cache_name=f"{task}-{_safe(label)}-test", **common)
        if needs_train:
            tr_x, tr_y = extract_features(model, train_ds, cache_name=f"{task}-{_safe(label)}-train", **common)
        row["feature_seconds"] = round(time.perf_counter() - t0, 3)
        if "linear" in protocols:
            kwargs = {"seed": seed, "device": dev, **probe_kw}
            if not multilabel:
                kwargs.setdefault("num_classes", len(classes))
            res = train_linear_probe(tr_x, tr_y, te_x, te_y, **kwargs)
            row["linear"] = res.to_dict()
        if "knn" in protocols:
            kwargs = {"device": dev, **knn_kw}
            if not multilabel:
                kwargs.setdefault("num_classes", len(classes))
            row["knn"] = knn_evaluate(tr_x, tr_y, te_x, te_y, **kwargs)
        if "retrieval" in protocols:
            kwargs = dict(ret_kw)
            if not multilabel:
                kwargs.setdefault("num_classes", len(classes))
            row["retrieval"] = evaluate_retrieval(te_x, te_y, **kwargs)
            if examples is None and plot_examples > 0 and len(test_ds) >= 2:
                y = as_multi_hot(te_y, None if multilabel else len(classes))
                q, example_db = imbriaco_split(len(test_ds), kwargs.get("query_fraction", 0.2),
                                               int(np.atleast_1d(kwargs.get("seed", IMBRIACO_SEED))[0]))
                has_rel = (y[q] @ y[example_db].T > 0).any(1)
                examples = q[has_rel][:plot_examples].tolist()
            if examples and example_db is not None:
                ranked = rank_database(te_x, examples, example_db, plot_top_k)
                y = as_multi_hot(te_y, None if multilabel else len(classes))
                rel = (y[examples].unsqueeze(1) * y[ranked]).sum(2) > 0
                png = plot_retrieval_examples(test_ds, examples, ranked, rel,
                                              out / f"retrieval_examples_{_safe(label)}.png",
                                              title=f"{task}: {label} (green = shares a label)")
                files[f"retrieval examples ({label})"] = str(png)
        if "finetune" in protocols:
            if not model.trainable:
                row["finetune"] = {"skipped": "no trainable parameters (raw-pixel baseline)"}
            else:
                kwargs = {"seed": seed, "device": dev, "normalizer": norm, "resize_to": resize_to,
                          "batch_size": min(batch_size, 32), "num_workers": num_workers, **ft_kw}
                row["finetune"] = finetune(model, train_ds, test_ds, num_classes=len(classes),
                                           multilabel=multilabel, **kwargs)
                row["finetune"].pop("step_losses", None)
        row["seconds"] = round(time.perf_counter() - t_ck, 3)
        rows[label] = row
        del model

    results: dict[str, Any] = {
        "task": task,
        "task_kwargs": {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in kw.items()},
        "modality": modality, "bands": bands, "classes": classes, "multilabel": multilabel,
        "n_train": len(train_ds), "n_test": len(test_ds), "split": split_desc, "fraction": fraction,
        "seed": seed, "device": str(dev), "protocols": protocols,
        "protocol_settings": _protocol_settings(probe_kw, knn_kw, ret_kw, ft_kw, protocols),
        "normalizer": norm.to_dict() if norm is not None else None, "normalizer_source": norm_desc,
        "resize_to": resize_to,
        "checkpoints": rows, "files": files,
    }
    results["seconds"] = round(time.perf_counter() - t_start, 3)
    results["files"] = write_report(results, out) | files
    return results
