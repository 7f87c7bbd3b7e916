"""Downstream evaluation tasks: BigEarthNet v1 / v2 (reBEN), EuroSAT and the curated archive itself.

One module per data set (:mod:`.bigearthnet`, :mod:`.eurosat`, :mod:`.archive`) on a common base (:mod:`.base`:
the item contract, id lists, subsets), with the label nomenclatures in :mod:`.nomenclature` and the band conventions
(resampling, the missing ``B10``) in :mod:`.bands`. :func:`build_task` instantiates a task by its name.
"""

from __future__ import annotations

from typing import Any

from pipeline.archive import SPLIT_COMMAND
from train.evaluate.tasks.archive import (
    ArchiveTask,
    archive_split,
    archive_split_patch_ids,
)
from train.evaluate.tasks.bands import (
    L1C_B10_MEAN_DN,
    assemble_bands,
    missing_band_fill,
    resample_bilinear,
)
from train.evaluate.tasks.base import (
    EvalTask,
    item_groups,
    read_id_list,
    subsample,
    subsample_indices,
)
from train.evaluate.tasks.bigearthnet import BigEarthNetV1, BigEarthNetV2
from train.evaluate.tasks.eurosat import EuroSAT
from train.evaluate.tasks.nomenclature import (
    BEN19_LABELS,
    BEN43_LABELS,
    BEN43_TO_BEN19,
    CLC_CODE_TO_BEN19,
    CLC_TABLE,
    EUROSAT_CLASSES,
    EUROSAT_FILE_BANDS,
    ben43_to_ben19,
    ben_labels,
    multi_hot,
    reference_map_labels,
)

#: Task name → class. ``build_task(name, **kwargs)`` passes the keyword arguments to the class.
TASKS: dict[str, type[EvalTask]] = {
    BigEarthNetV1.task_name: BigEarthNetV1,
    BigEarthNetV2.task_name: BigEarthNetV2,
    EuroSAT.task_name: EuroSAT,
    ArchiveTask.task_name: ArchiveTask,
}


def build_task(name: str, **kwargs: Any) -> EvalTask:
    """Instantiate a registered task by name (see :data:`TASKS`)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; registered: {sorted(TASKS)}")
    return TASKS[name](**kwargs)


__all__ = [
    "BEN19_LABELS",
    "BEN43_LABELS",
    "BEN43_TO_BEN19",
    "CLC_CODE_TO_BEN19",
    "CLC_TABLE",
    "EUROSAT_CLASSES",
    "EUROSAT_FILE_BANDS",
    "L1C_B10_MEAN_DN",
    "SPLIT_COMMAND",
    "TASKS",
    "ArchiveTask",
    "BigEarthNetV1",
    "BigEarthNetV2",
    "EuroSAT",
    "EvalTask",
    "archive_split",
    "archive_split_patch_ids",
    "assemble_bands",
    "ben43_to_ben19",
    "ben_labels",
    "build_task",
    "item_groups",
    "missing_band_fill",
    "multi_hot",
    "read_id_list",
    "reference_map_labels",
    "resample_bilinear",
    "subsample",
    "subsample_indices",
]
