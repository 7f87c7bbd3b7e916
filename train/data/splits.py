"""Split selection and the training-data record.

``ArchiveDataset(splits=["train"])`` keeps only the done patches of those splits of the archive (the
``split`` variable written by ``softcon split``, :mod:`pipeline.split`); ``splits="all"`` keeps every
done patch on purpose; ``None`` (the default of the class, for evaluation code that passes its own
``indices``) does not look at the split. An archive without a split is a
:class:`~pipeline.errors.BadInput` when splits are asked for. ``ArchiveDataset.training_data`` is
what a pretraining run records (``training_data.json``, :func:`write_training_data`): the archive,
its manifest hash, the splits, the split record and the ``patch_id`` of every patch used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import BadInput
from pipeline.split import SPLIT_CODES, read_split

#: Split names of the archive's ``split`` variable (:data:`pipeline.split.SPLIT_CODES`).
SPLIT_NAMES = tuple(SPLIT_CODES)
#: ``splits`` value that selects every done patch, with or without a split in the archive.
ALL_SPLITS = "all"
#: File of a run folder that records what the run trained on.
TRAINING_DATA_FILE = "training_data.json"


def _check_split_names(splits: Sequence[str] | str) -> list[str] | str:
    """``"all"`` or a non-empty list of distinct names of :data:`SPLIT_NAMES` (else :class:`BadInput`)."""
    if isinstance(splits, str):
        if splits == ALL_SPLITS:
            return ALL_SPLITS
        splits = [splits]
    names = list(splits)
    if not names:
        raise BadInput(f"splits: empty; name the splits to use ({', '.join(SPLIT_NAMES)}) "
                       f"or '{ALL_SPLITS}' for every done patch")
    unknown = [n for n in names if n not in SPLIT_NAMES]
    if unknown:
        raise BadInput(f"splits: unknown split(s) {unknown}; valid: {list(SPLIT_NAMES)} or '{ALL_SPLITS}'")
    if len(set(names)) != len(names):
        raise BadInput(f"splits: {names} names a split twice")
    return names


def select_split_patches(store: str, splits: Sequence[str] | str, storage_options: dict | None = None
                         ) -> tuple[np.ndarray | None, dict | None]:
    """``(patch indices, split record)`` of the archive's ``splits`` (e.g. ``["train"]``).

    The indices (int64, sorted) are every patch whose split code is one of ``splits``, whatever
    its status (intersect with the done patches yourself). ``splits="all"``: indices ``None`` (no
    restriction) and the record if the archive has one. An archive without a split raises
    :class:`BadInput` naming it and the command that writes one.
    """
    names = _check_split_names(splits)
    found = read_split(str(store), storage_options)
    if names == ALL_SPLITS:
        return None, (None if found is None else found[1])
    if found is None:
        raise BadInput(f"{store}: the archive has no train/val/test split; create one with "
                       f"`softcon split {store}` (or set splits: {ALL_SPLITS} to use every done patch)")
    codes, record = found
    wanted = np.array([SPLIT_CODES[n] for n in names], dtype=np.asarray(codes).dtype)
    return np.flatnonzero(np.isin(np.asarray(codes), wanted)).astype(np.int64), record


def training_data_json(record: dict[str, Any]) -> str:
    """The one JSON text of a training-data record: ``training_data.json`` and the exported
    backbone's safetensors metadata key ``training_data`` hold exactly this string."""
    return json.dumps(record, separators=(",", ":"))


def write_training_data(run_dir: str | Path, record: dict[str, Any], resume: bool = False) -> str:
    """Write ``<run_dir>/training_data.json`` (atomically) and return its text.

    On ``resume`` an existing record is kept and returned when it names the same training data
    (archive manifest hash, split hash, patch ids); a different one is a :class:`BadInput`, since
    the checkpoint was trained on other patches (the archive or its split changed since).
    """
    path = Path(run_dir) / TRAINING_DATA_FILE
    text = training_data_json(record)
    if resume and path.is_file():
        old_text = path.read_text()
        old = json.loads(old_text)

        def key(r: dict) -> tuple:
            split_hash = (r.get("split_record") or {}).get("hash")
            return r.get("archive_manifest_hash"), split_hash, r.get("splits"), r.get("patch_ids")

        if key(old) != key(record):
            raise BadInput(f"{path}: this run was trained on other patches ({old.get('n_patches')} then, "
                           f"{record.get('n_patches')} now: the archive or its split changed); "
                           "resume on the same data or start a new output_dir")
        return old_text
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return text
