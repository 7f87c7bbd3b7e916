"""Downstream evaluation of pretrained backbones: splits → features → protocols → report.

:func:`evaluate` is what ``softcon evaluate CHECKPOINT... --task ...`` and the evaluation flow call.

Splits (:func:`~train.evaluate.splits.build_splits`) and groups
    :mod:`train.evaluate.splits` says which train / validation / test sides each task gets.

Training data vs test split (archive task)
    Each checkpoint's recorded training patches (:func:`~train.evaluate.features.read_training_record`)
    are compared with the test split (:func:`~train.evaluate.features.check_training_overlap`): an
    overlap is refused (``BadInput``, exit code 2) unless ``allow_overlap``, which then records it in
    ``results["overlap"]`` and a bold warning in ``results.md``; no record → note "training data unknown".

Checkpoints and baselines
    Each entry is anything :func:`~train.evaluate.features.load_backbone_for_eval` accepts. The task
    modality is ``task_kwargs["modality"]`` or, when absent, the modality recorded in the
    checkpoints (they must agree). ``baselines=True`` adds ``random:<arch>`` for every architecture
    among the checkpoints (same seed as everything else) and ``pixels``.

Protocols: ``linear`` (:mod:`.probe`, AdamW), ``logistic`` (:mod:`.logistic`: scikit-learn logistic
regression, C chosen on the validation split, refitted on train + validation), ``knn`` (:mod:`.knn`;
k = 5 is the headline, added to any ``k`` list), ``retrieval`` (:mod:`.retrieval`, on the test split)
and ``finetune`` (:mod:`.finetune`; skipped for the pixel baseline).

Confidence intervals (``bootstrap``): every linear / logistic / kNN test metric gets a 95 %
percentile bootstrap interval over the test items, whole groups (:func:`~.tasks.item_groups`: the
archive's locations) resampled together, 1000 seeded resamples by default (:mod:`.bootstrap`);
``results.json`` keeps ``point``, ``low``, ``high``, ``n_resamples`` per metric (``intervals``),
``results.md`` shows ``value [low, high]``.

Input scaling (one for every row, baselines included): ``normalizer="auto"`` uses the scaling the
checkpoints record (``normalizer`` metadata of ``backbone.safetensors`` or a pretraining config's
``statistics`` file) when they agree, else the published SSL4EO-S12 statistics of the task's bands
(set A, the pretraining default); or pass ``"published"``, a statistics file, a
:class:`~train.data.Normalizer` or None.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.data import Normalizer
from train.evaluate.bootstrap import METHOD as BOOTSTRAP_METHOD
from train.evaluate.bootstrap import BootstrapConfig
from train.evaluate.describe import dataset_description, protocol_settings
from train.evaluate.features import (
    DEFAULT_CACHE_DIR,
    PIXELS,
    RANDOM_PREFIX,
    check_training_overlap,
    checkpoint_label,
    extract_features,
    load_backbone_for_eval,
    read_checkpoint_info,
    resolve_checkpoint,
    resolve_device,
)
from train.evaluate.finetune import finetune
from train.evaluate.knn import DEFAULT_K, HEADLINE_K, knn_evaluate
from train.evaluate.logistic import train_logistic_probe
from train.evaluate.probe import train_linear_probe
from train.evaluate.report import write_report
from train.evaluate.retrieval import (
    IMBRIACO_SEED,
    as_multi_hot,
    evaluate_retrieval,
    plot_retrieval_examples,
    query_database_split,
    rank_database,
)
from train.evaluate.splits import base_task, build_splits, parse_task_options
from train.evaluate.tasks import archive_split_patch_ids, item_groups

log = logging.getLogger(__name__)

__all__ = ["PROTOCOLS", "build_splits", "evaluate", "parse_task_options"]

PROTOCOLS: tuple[str, ...] = ("linear", "logistic", "knn", "retrieval", "finetune")

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


# ============================================================================ evaluate
def evaluate(checkpoints: Sequence[str | os.PathLike], task: str, task_kwargs: Mapping[str, Any] | None = None,
             protocols: Sequence[str] = ("linear", "logistic", "knn", "retrieval"),
             out_dir: str | os.PathLike = "output/eval",
             fraction: float | None = None, seed: int = 0, device: str = "auto", baselines: bool = True, *,
             backbone_name: str | None = None, batch_size: int = 64, num_workers: int = 0,
             cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR, resize_to: int | None = None,
             normalizer: Any = "auto", test_fraction: float = 0.2, first_layer: str = "random",
             vit_pool: str = "cls", probe_kwargs: Mapping[str, Any] | None = None,
             knn_kwargs: Mapping[str, Any] | None = None, retrieval_kwargs: Mapping[str, Any] | None = None,
             finetune_kwargs: Mapping[str, Any] | None = None, plot_examples: int = 4,
             plot_top_k: int = 5, allow_overlap: bool = False,
             logistic_kwargs: Mapping[str, Any] | None = None,
             bootstrap: BootstrapConfig | Mapping[str, Any] | bool | None = True) -> dict[str, Any]:
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
        allow_overlap: archive task: evaluate a checkpoint whose recorded training patches include
            test-split patches (refused otherwise); the report then says so in bold.
        logistic_kwargs: passed to :func:`~.logistic.train_logistic_probe` (e.g. ``Cs``).
        bootstrap: confidence intervals of the linear / logistic / kNN test metrics
            (:mod:`.bootstrap`): True (default: 1000 resamples, 95 %, seed ``seed``), a mapping of
            :class:`~.bootstrap.BootstrapConfig` fields, a config, or False / None (none).
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
    lg_kw = dict(logistic_kwargs or {})
    if bootstrap is True:
        boot: BootstrapConfig | None = BootstrapConfig(seed=seed)
    elif isinstance(bootstrap, Mapping):
        boot = BootstrapConfig(**{"seed": seed, **bootstrap})
    else:
        boot = bootstrap or None
    knn_kw.setdefault("primary_k", HEADLINE_K)
    ks = [knn_kw["k"]] if isinstance(knn_kw.get("k"), int) else list(knn_kw.get("k", DEFAULT_K))
    if knn_kw["primary_k"] not in ks:  # the headline k is always evaluated
        ks.append(int(knn_kw["primary_k"]))
    knn_kw["k"] = ks

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
    train_ds, val_ds, test_ds, split_desc = build_splits(task, kw, seed, test_fraction, fraction, with_val=True)
    if fraction is None and kw.get("fraction") is not None:  # given as a task option: same meaning
        fraction = float(kw["fraction"])
    base = base_task(train_ds)
    modality, bands = base.modality, list(base.bands)
    multilabel = bool(base.multilabel)
    classes = list(base.classes)
    norm, norm_desc = _make_normalizer(normalizer, modality, bands, infos)
    log.info("%s: %d train / %d test items (%s), %d classes, modality %s", task, len(train_ds), len(test_ds),
             split_desc, len(classes), modality)
    # -- training data of each checkpoint vs the archive's test split (refused before any feature work)
    training_data: dict[str, dict[str, Any]] = {}
    if task == "archive":
        store = kw["store"]
        training_data = check_training_overlap(
            ckpts, labels, store, archive_split_patch_ids(store, "test", kw.get("storage_options")),
            getattr(base, "manifest_hash", None), allow_overlap)
    test_groups = item_groups(test_ds)
    train_groups = item_groups(train_ds)

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
        if label in training_data:
            row["notes"] += training_data[label]["notes"]
            row["training_data"] = {k: v for k, v in training_data[label].items() if k != "notes"}
        log.info("evaluating %s (%s, %s, %d-d features)", label, model.kind, model.backbone_name, model.feature_dim)
        needs_train = any(p in protocols for p in ("linear", "logistic", "knn"))
        needs_test = needs_train or "retrieval" in protocols
        common = {"batch_size": batch_size, "device": dev, "normalizer": norm, "resize_to": resize_to,
                  "cache_dir": cache_dir, "num_workers": num_workers, "amp": dev.type == "cuda"}
        t0 = time.perf_counter()
        te_x = te_y = tr_x = tr_y = None
        if needs_test:
            te_x, te_y = extract_features(model, test_ds, cache_name=f"{task}-{_safe(label)}-test", **common)
        if needs_train:
            tr_x, tr_y = extract_features(model, train_ds, cache_name=f"{task}-{_safe(label)}-train", **common)
        va_x = va_y = None
        if "logistic" in protocols and val_ds is not None and len(val_ds) > 0:
            va_x, va_y = extract_features(model, val_ds, cache_name=f"{task}-{_safe(label)}-val", **common)
        row["feature_seconds"] = round(time.perf_counter() - t0, 3)
        if "linear" in protocols:
            kwargs = {"seed": seed, "device": dev, "bootstrap": boot, "test_groups": test_groups, **probe_kw}
            if not multilabel:
                kwargs.setdefault("num_classes", len(classes))
            res = train_linear_probe(tr_x, tr_y, te_x, te_y, **kwargs)
            row["linear"] = res.to_dict()
        if "logistic" in protocols:
            kwargs = {"seed": seed, "bootstrap": boot, "test_groups": test_groups, "train_groups": train_groups,
                      "val_x": va_x, "val_y": va_y, **lg_kw}
            if not multilabel:
                kwargs.setdefault("num_classes", len(classes))
            row["logistic"] = train_logistic_probe(tr_x, tr_y, te_x, te_y, **kwargs).to_dict()
        if "knn" in protocols:
            kwargs = {"device": dev, "bootstrap": boot, "groups": test_groups, **knn_kw}
            if not multilabel:
                kwargs.setdefault("num_classes", len(classes))
            row["knn"] = knn_evaluate(tr_x, tr_y, te_x, te_y, **kwargs)
        if "retrieval" in protocols:
            kwargs = {"bootstrap": boot, **ret_kw}
            if not multilabel:
                kwargs.setdefault("num_classes", len(classes))
            kwargs.setdefault("groups", test_groups)  # queries and database never share a location
            row["retrieval"] = evaluate_retrieval(te_x, te_y, **kwargs)
            if examples is None and plot_examples > 0 and len(test_ds) >= 2:
                y = as_multi_hot(te_y, None if multilabel else len(classes))
                q, example_db = query_database_split(len(test_ds), kwargs["groups"], kwargs.get("query_fraction", 0.2),
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
                          "batch_size": min(batch_size, 32), "num_workers": num_workers, "bootstrap": boot,
                          "test_groups": test_groups, **ft_kw}
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
        "protocol_settings": protocol_settings(probe_kw, knn_kw, ret_kw, ft_kw, protocols, lg_kw),
        "n_val": None if val_ds is None else len(val_ds),
        "bootstrap": None if boot is None else {
            "method": BOOTSTRAP_METHOD, **boot.to_dict(),
            "unit": "location (all items of a group together)" if task == "archive" else "item"},
        "dataset": dataset_description(base, norm, norm_desc),
        "normalizer": norm.to_dict() if norm is not None else None, "normalizer_source": norm_desc,
        "resize_to": resize_to,
        "allow_overlap": allow_overlap,
        "overlap": {label: {"checkpoint": rows[label]["checkpoint"], "n_test_overlap": t["n_test_overlap"],
                            "n_patches": t["n_patches"]}
                    for label, t in training_data.items() if t.get("n_test_overlap")},
        "checkpoints": rows, "files": files,
    }
    results["seconds"] = round(time.perf_counter() - t_start, 3)
    results["files"] = write_report(results, out) | files
    return results
