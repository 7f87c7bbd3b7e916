"""Split selection (from :mod:`pipeline.split_selection`) and the training-data record.

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
from pathlib import Path
from typing import Any

from pipeline.errors import BadInput
from pipeline.split_selection import (
    ALL_SPLITS,
    SPLIT_NAMES,
    check_split_names,
    select_split_patches,
)

__all__ = [
    "ALL_SPLITS",
    "SPLIT_NAMES",
    "TRAINING_DATA_FILE",
    "check_split_names",
    "select_split_patches",
    "training_data_json",
    "write_training_data",
]

#: File of a run folder that records what the run trained on.
TRAINING_DATA_FILE = "training_data.json"


def training_data_json(record: dict[str, Any]) -> str:
    """The one JSON text of a training-data record: ``training_data.json`` and the exported
    backbone's safetensors metadata key ``training_data`` hold exactly this string.
    """
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
