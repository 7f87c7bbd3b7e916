"""Training-data records of checkpoints and the check that none was trained on the test split.

Training-data records and the overlap check (:func:`read_training_record`, :func:`check_training_overlap`)
    A pretraining run records the archive patches it trained on: ``<run_dir>/training_data.json``
    and the same JSON under the key ``training_data`` of the exported backbone's safetensors metadata
    (``{"archive", "archive_manifest_hash", "splits", "split_record", "n_patches", "patch_ids"}``).
    Before evaluating on an archive, every checkpoint's recorded ``patch_ids`` are compared with the
    ``patch_id`` of the archive's **test** split when the record names the same archive (same
    ``manifest_hash``; when either hash is missing, the same archive path). Any overlap refuses the
    evaluation (:class:`~pipeline.errors.BadInput` naming the checkpoint and the number of patches)
    unless ``allow_overlap``; checkpoints without a record (external weights) get the note
    "training data unknown"; the random-init and pixel baselines were trained on nothing and get no note.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.store_target import is_url
from train.checkpoints import (
    CHECKPOINT_DIR,
    TRAINING_DATA_FILE,
    TRAINING_DATA_KEY,
    read_metadata,
)
from train.evaluate.backbones import PIXELS, RANDOM_PREFIX, resolve_checkpoint

__all__ = ["TRAINING_DATA_FILE", "TRAINING_DATA_KEY", "check_training_overlap", "read_training_record"]


def _run_dir_of(path: Path) -> Path | None:
    """The pretraining run folder of one of its own weight files (``<run>/backbone*.safetensors``,
    ``<run>/checkpoints/epoch-*.safetensors``), else None: a foreign file in some folder must not
    borrow that folder's record.
    """
    if path.suffix != ".safetensors":
        return None
    if path.parent.name == CHECKPOINT_DIR and path.name.startswith("epoch-"):
        return path.parent.parent
    if path.name.startswith("backbone"):
        return path.parent
    return None


def _parse_training_record(text: str, where: str) -> dict[str, Any]:
    from pipeline.errors import BadInput

    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInput(f"{where}: training-data record is not valid JSON ({err.msg})") from err
    if not isinstance(record, Mapping) or not isinstance(record.get("patch_ids"), list):
        raise BadInput(f"{where}: training-data record has no 'patch_ids' list")
    return dict(record)


def read_training_record(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The training-data record of a checkpoint (module docstring), or None when it has none.

    A run folder: its ``training_data.json``, else the record in the weight file it resolves to. A
    weight file: the ``training_data`` key of its safetensors metadata, else (for a run's own files
    only, see :func:`_run_dir_of`) the run folder's ``training_data.json``. Baselines: None. A
    malformed record raises :class:`~pipeline.errors.BadInput` naming the file.
    """
    text = os.fspath(checkpoint)
    if text == PIXELS or text.startswith(RANDOM_PREFIX):
        return None
    p = Path(text)
    if p.is_dir() and (p / TRAINING_DATA_FILE).is_file():
        return _parse_training_record((p / TRAINING_DATA_FILE).read_text(), str(p / TRAINING_DATA_FILE))
    p = Path(resolve_checkpoint(p))
    if p.suffix == ".safetensors":
        meta = read_metadata(p)
        if meta.get(TRAINING_DATA_KEY):
            return _parse_training_record(meta[TRAINING_DATA_KEY], f"{p} (metadata '{TRAINING_DATA_KEY}')")
    run_dir = _run_dir_of(p)
    if run_dir is not None and (run_dir / TRAINING_DATA_FILE).is_file():
        return _parse_training_record((run_dir / TRAINING_DATA_FILE).read_text(), str(run_dir / TRAINING_DATA_FILE))
    return None


def _same_archive(record: Mapping[str, Any], store: str, manifest_hash: str | None) -> bool:
    """Same manifest hash; when either side has none, the same archive path (our rule)."""
    recorded = record.get("archive_manifest_hash")
    if recorded and manifest_hash:
        return str(recorded) == str(manifest_hash)
    a, b = str(record.get("archive") or ""), str(store)
    if not a:
        return False
    if is_url(a) or is_url(b):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def check_training_overlap(checkpoints: Sequence[str], labels: Sequence[str], store: str | os.PathLike,
                           test_patch_ids: Sequence[str], manifest_hash: str | None,
                           allow_overlap: bool = False) -> dict[str, dict[str, Any]]:
    """Compare each checkpoint's recorded training patches with the test split of ``store``.

    Args:
        checkpoints: resolved checkpoints (:func:`resolve_checkpoint`), baselines included.
        labels: their display labels (same order).
        store: the evaluated archive.
        test_patch_ids: ``patch_id`` of every patch of the archive's test split.
        manifest_hash: the archive's ``manifest_hash`` attribute.
        allow_overlap: evaluate overlapping checkpoints anyway (else refuse).

    Returns:
        label → ``{"status", "archive", "n_patches", "n_test_overlap", "notes"}`` where ``status`` is
        ``"baseline"`` (random init / pixels: trained on nothing), ``"unknown"`` (no record; note
        "training data unknown"), ``"other_archive"`` (recorded, another archive: no overlap
        possible) or ``"recorded"`` (``n_test_overlap`` = recorded patches in the test split).

    Raises:
        BadInput: a checkpoint trained on test patches of this archive, without ``allow_overlap``
            (one line: the checkpoint and how many of its training patches are in the test split).
    """
    from pipeline.errors import BadInput

    test = {str(i) for i in test_patch_ids}
    out: dict[str, dict[str, Any]] = {}
    for label, ck in zip(labels, checkpoints):
        entry: dict[str, Any] = {"status": "baseline", "archive": None, "n_patches": None,
                                 "n_test_overlap": None, "notes": []}
        if ck == PIXELS or ck.startswith(RANDOM_PREFIX):
            out[label] = entry
            continue
        record = read_training_record(ck)
        if record is None:
            entry["status"] = "unknown"
            entry["notes"].append("training data unknown (no training-data record): cannot check whether it "
                                  "was trained on test patches")
        elif not _same_archive(record, str(store), manifest_hash):
            entry.update(status="other_archive", archive=record.get("archive"),
                         n_patches=len(record["patch_ids"]))
            entry["notes"].append(f"trained on another archive ({record.get('archive')}): no overlap with "
                                  "this test split")
        else:
            trained = {str(i) for i in record["patch_ids"]}
            n = len(trained & test)
            entry.update(status="recorded", archive=record.get("archive"), n_patches=len(trained), n_test_overlap=n)
            if n and not allow_overlap:
                raise BadInput(f"checkpoint {ck}: {n} of its {len(trained)} training patches are in the test "
                               f"split of {store}; its scores would not be held out (evaluate a checkpoint "
                               "trained on the train split, or pass --allow-overlap)")
            if n:
                entry["notes"].append(f"OVERLAP: trained on {n} patches of the test split (--allow-overlap)")
        out[label] = entry
    return out

