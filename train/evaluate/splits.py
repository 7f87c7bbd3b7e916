"""Task options and the train / validation / test splits of an evaluation (:func:`build_splits`).

Splits (:func:`build_splits`)
    * ``archive`` (:class:`~train.evaluate.tasks.ArchiveTask`): the **archive's own split**
      (:mod:`pipeline.split`, by location): probes and kNN are fitted on ``train``, hyper-parameters
      belong to ``val`` (``build_splits(..., with_val=True)``), scores come from ``test``. ``seed`` and
      ``test_fraction`` do not apply (``softcon split STORE`` rewrites the split); an archive without
      a split is refused (:class:`~pipeline.errors.BadInput`).
    * ``bigearthnet_v2`` with ``<root>/metadata.parquet``: the official ``train`` / ``test`` splits.
    * ``train_split_ids`` **and** ``test_split_ids`` in ``task_kwargs`` (files or lists of ids, e.g.
      the official BigEarthNet split CSVs): one task per side through the task's ``split_ids``.
    * otherwise (BigEarthNet v1, EuroSAT, reBEN without metadata): a **seeded 80/20 split by
      index** of the whole task: ``numpy.random.default_rng(seed).permutation(n)``, the first
      ``round(test_fraction · n)`` (at least one item per side) are the test side; both sides keep the
      task's order. Not an official split: numbers are not comparable with published ones.

    ``fraction`` then keeps a seeded subset of the **training** side only
    (:func:`~train.evaluate.tasks.subsample`, seed ``seed``): ``fraction=0.1`` gives the
    "BigEarthNet-10 %" protocol (CROMA, Fuller et al., NeurIPS 2023: probes fitted on 10 % of the
    training split, scored on a complete held-out split; CROMA scores on BigEarthNet's official
    validation split, pass it as ``test_split_ids`` to do the same); the test and validation sides
    are always complete. A reader option ``fraction`` (``--opt fraction=0.1``) means the same.

Groups
    :func:`~train.evaluate.tasks.item_groups` gives one int per item of any returned split: the
    location index for the archive (its seasons are one group), the item index for data sets of
    independent patches. Retrieval splits queries/database by group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from train.evaluate.tasks import EvalTask, build_task, subsample

__all__ = ["base_task", "build_splits", "parse_task_options"]


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


def base_task(dataset: Dataset) -> EvalTask:
    """The task under any number of ``Subset`` wrappers."""
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


def _archive_splits(kw: Mapping[str, Any]) -> tuple[Dataset, Dataset, Dataset, str]:
    """The archive's own train / val / test (module docstring); refuses options of the old split."""
    from pipeline.errors import BadInput

    for key in ("seed", "test_fraction"):
        if key in kw:
            raise BadInput(f"task option {key!r} does not apply to the archive task: it uses the archive's own "
                           f"train/val/test split (rewrite it with `softcon split {kw.get('store', 'STORE')}`)")
    train, val, test = (build_task("archive", split=name, **kw) for name in ("train", "val", "test"))
    for name, ds in (("train", train), ("test", test)):
        if len(ds) == 0:
            raise BadInput(f"{kw.get('store')}: the archive's {name} split has no done location with a labelled "
                           "season")
    rec = test.split_record  # type: ignore[attr-defined]
    desc = (f"the archive's split by {rec.get('by')} (seed {rec.get('seed')}, val {rec.get('val')}, "
            f"test {rec.get('test')}; {len(test.locations)} test locations)")  # type: ignore[attr-defined]
    return train, val, test, desc


def _train_fraction(kw: dict[str, Any], fraction: float | None, seed: int) -> tuple[float | None, int]:
    """``(fraction, seed)`` of the training subset; pops the readers' ``fraction`` / ``fraction_seed`` from ``kw``.

    A reader's own ``fraction`` would subsample whatever it reads, the test split included; in an
    evaluation it always means the **training** side (BigEarthNet-10 %: CROMA, Fuller et al.,
    NeurIPS 2023, fit on 10 % of the training split and score on a complete held-out split).
    """
    opt, opt_seed = kw.pop("fraction", None), kw.pop("fraction_seed", None)
    if opt is not None and fraction is not None and float(opt) != float(fraction):
        raise ValueError(f"two training fractions: fraction={fraction} and task option fraction={opt}")
    return (fraction if fraction is not None else opt), (seed if opt_seed is None else int(opt_seed))


def build_splits(task: str, task_kwargs: Mapping[str, Any] | None = None, seed: int = 0,
                 test_fraction: float = 0.2, fraction: float | None = None, *,
                 with_val: bool = False) -> tuple[Dataset, Dataset, str] | tuple[Dataset, Dataset | None, Dataset, str]:
    """``(train, test, description)`` for a registered task (module docstring).

    ``with_val=True`` returns ``(train, val, test, description)``; ``val`` is the archive's
    validation split, reBEN's official ``validation`` split (with ``metadata.parquet``), the
    ``val_split_ids`` list (with split id lists), and None for tasks without one.

    ``fraction`` (or the task option ``fraction``, seed ``fraction_seed`` or ``seed``) subsamples the
    training side only; validation and test are never subsampled.
    """
    kw = dict(task_kwargs or {})
    if "split" in kw:
        raise ValueError("task_kwargs must not set 'split': evaluate builds both sides (see build_splits)")
    train_ids, test_ids = kw.pop("train_split_ids", None), kw.pop("test_split_ids", None)
    val_ids = kw.pop("val_split_ids", None)
    if (train_ids is None) != (test_ids is None):
        raise ValueError("give both train_split_ids and test_split_ids, or neither")
    if val_ids is not None and train_ids is None:
        raise ValueError("val_split_ids needs train_split_ids and test_split_ids")
    fraction, fraction_seed = _train_fraction(kw, fraction, seed)
    val: Dataset | None = None
    if task == "archive":
        train, val, test, desc = _archive_splits(kw)
    elif train_ids is not None:
        train, test = build_task(task, split_ids=train_ids, **kw), build_task(task, split_ids=test_ids, **kw)
        if val_ids is not None and with_val:
            val = build_task(task, split_ids=val_ids, **kw)
        desc = "given split id lists"
    elif task == "bigearthnet_v2" and _has_reben_metadata(kw):
        train, test = build_task(task, split="train", **kw), build_task(task, split="test", **kw)
        if with_val:
            val = build_task(task, split="validation", **kw)
        desc = "official reBEN train/test (metadata.parquet)"
    else:
        full = build_task(task, **kw)
        tr, te = _index_split(len(full), test_fraction, seed)
        train, test = Subset(full, tr), Subset(full, te)
        desc = f"seeded {round(100 * (1 - test_fraction))}/{round(100 * test_fraction)} split by index (seed {seed})"
    if fraction is not None and fraction < 1.0:
        train = subsample(train, fraction, fraction_seed)
        desc += f"; training side subsampled to {fraction:g} (seed {fraction_seed})"
    if with_val:
        return train, val, test, desc
    return train, test, desc
