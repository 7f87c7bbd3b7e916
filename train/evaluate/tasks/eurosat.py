"""EuroSAT (multi-spectral) as a downstream task."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import rasterio

from train.evaluate.tasks.bands import assemble_bands
from train.evaluate.tasks.base import EvalTask, _list_dirs, read_id_list
from train.evaluate.tasks.nomenclature import (
    EUROSAT_CLASSES,
    EUROSAT_FILE_BANDS,
)

_EUROSAT_NAME = re.compile(r"^([A-Za-z]+)_(\d+)$")


class EuroSAT(EvalTask):
    """EuroSAT MS: ``<root>/<Class>/<Class>_<n>.tif``, 13 bands in EuroSAT order (B8A last), 64 × 64.

    ``root`` may also be the folder that contains ``EuroSAT_MS``. The label is the index of the
    folder name in :data:`EUROSAT_CLASSES` (all 10 classes, sorted), so indices do not depend on
    which folders are present. ``split_ids`` takes file stems (``AnnualCrop_1``) or file names.
    """

    task_name = "eurosat"
    classes = EUROSAT_CLASSES
    multilabel = False
    allowed_modalities = ("s2_l1c", "s2_l2a")

    def __init__(self, root: str | os.PathLike, modality: str = "s2_l1c",
                 split_ids: str | os.PathLike | Iterable[str] | None = None, size: int = 64,
                 fraction: float = 1.0, fraction_seed: int = 0):
        super().__init__(modality, fraction, fraction_seed)
        root = Path(root)
        self.root = root / "EuroSAT_MS" if (root / "EuroSAT_MS").is_dir() else root
        self.size = size
        wanted = read_id_list(split_ids)
        if wanted is not None:
            wanted = frozenset(Path(w).stem for w in wanted)
        items = []
        for cls in _list_dirs(self.root):
            if cls not in EUROSAT_CLASSES:
                raise ValueError(f"{self.root / cls}: not a EuroSAT class folder (classes: {EUROSAT_CLASSES})")
            for f in (self.root / cls).glob("*.tif"):
                m = _EUROSAT_NAME.match(f.stem)
                if m is None or m.group(1) != cls:
                    raise ValueError(f"{f}: expected a file named {cls}_<n>.tif")
                if wanted is None or f.stem in wanted:
                    items.append((EUROSAT_CLASSES.index(cls), int(m.group(2)), f))
        if not items:
            raise FileNotFoundError(f"no EuroSAT GeoTIFFs under {self.root}")
        self._set_items(sorted(items))

    def _item_id(self, item) -> str:
        return item[2].stem

    def _label_of(self, item) -> int:
        return item[0]

    def _load_image(self, item) -> np.ndarray:
        with rasterio.open(item[2]) as src:
            data = src.read()
        if data.shape[0] != len(EUROSAT_FILE_BANDS):
            raise ValueError(f"{item[2]}: {data.shape[0]} bands, expected {len(EUROSAT_FILE_BANDS)}")
        arrays = dict(zip(EUROSAT_FILE_BANDS, data))
        return assemble_bands(arrays, self.bands, {}, self.size)
