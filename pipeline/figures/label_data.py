"""The label side of an archive as in-memory numpy arrays, for statistics and figures.

:func:`load_label_table` reads, for the **done** patches only, everything the label figures use:
``multi_hot`` and ``label_fraction`` ``(P, S, K)``, coordinates, the S2 scene cloud percentage and the
share of Dynamic World pixels without a label (``nodata_share``, streamed from ``dw_label`` with Dask,
one shard at a time), the split, the S2 L1C image ids and the label-provenance record. The vectors are
small (``P × S × K`` bytes and floats: 250 k locations take about 45 MB), the label maps are never
held whole.

Season order: the archive's season axis follows the manifest's ``reference_dates``, which need not be
chronological (the default manifest lists 2021-03, 2021-06, 2021-09, then 2020-12).
:attr:`LabelTable.season_order` sorts them by date, for analyses of change between seasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.bands import DW_CLASSES, DW_PALETTE, LABEL_NODATA
from pipeline.errors import BadInput


@dataclass
class LabelTable:
    """Label vectors and per-image context of the done patches of one archive (see the module docstring)."""

    store: str
    patch_index: np.ndarray  # (P,) archive indices of the done patches
    patch_id: np.ndarray  # (P,) str
    lon: np.ndarray  # (P,) degrees
    lat: np.ndarray  # (P,) degrees
    city: np.ndarray  # (P,) str, "" when unknown
    split: np.ndarray | None  # (P,) "train" | "val" | "test" | "" (None without a split)
    reference_dates: list[str]  # (S,) in archive order
    multi_hot: np.ndarray  # (P, S, K) uint8
    fraction: np.ndarray  # (P, S, K) float32
    cloud_pct: np.ndarray  # (P, S) float32: S2 scene cloudy-pixel percentage, NaN when unknown
    nodata_share: np.ndarray  # (P, S) float64: share of dw_label pixels without a class
    s2_image_id: np.ndarray  # (P, S) str: S2 L1C system:index ("" when none)
    classes: tuple[str, ...]
    provenance: dict[str, Any] | None
    published: dict[str, Any] | None  # the archive's "published_labels" attribute, if any
    own_thresholds: dict[str, float]  # presence_threshold / min_valid_fraction of the computed vectors
    n_patches_total: int

    @property
    def palette(self) -> list[str]:
        return [DW_PALETTE[DW_CLASSES.index(c)] for c in self.classes]

    @property
    def season_order(self) -> np.ndarray:
        """Season indices sorted by reference date (chronological)."""
        return np.argsort(np.asarray(self.reference_dates, dtype=str), kind="stable")

    @property
    def labelled(self) -> np.ndarray:
        """``(P, S)`` bool: at least one class present (the archive's rule for a labelled image)."""
        return self.multi_hot.any(axis=-1)

    @property
    def dominant(self) -> np.ndarray:
        """``(P,)`` the class with the largest mean fraction over the labelled seasons; -1 when none is."""
        lab = self.labelled
        mean = np.where(lab[..., None], self.fraction, 0.0).sum(axis=1)
        out = mean.argmax(axis=1)
        out[~lab.any(axis=1)] = -1
        return out

    def class_index(self, name: str) -> int:
        """Index of a class name; :class:`BadInput` naming the known classes otherwise."""
        if name not in self.classes:
            raise BadInput(f"class {name!r}: unknown; choose among {', '.join(self.classes)}")
        return self.classes.index(name)


def own_thresholds(provenance: dict[str, Any] | None, manifest_labels: dict[str, Any] | None) -> dict[str, float]:
    """Thresholds the archive's *computed* vectors (``label_fraction``) were made with: the current
    provenance record's, else the latest record in its history that has them (an import of published
    labels records none), else the manifest's ``labels`` section (defaults of
    :class:`pipeline.manifest.LabelsConfig`).
    """
    from pipeline.manifest import LabelsConfig

    records = [] if provenance is None else [provenance] + list(reversed(provenance.get("history", [])))
    for r in records:
        if r.get("presence_threshold") is not None and r.get("min_valid_fraction") is not None:
            return {"presence_threshold": float(r["presence_threshold"]),
                    "min_valid_fraction": float(r["min_valid_fraction"])}
    cfg = LabelsConfig.model_validate(manifest_labels or {})
    return {"presence_threshold": float(cfg.presence_threshold), "min_valid_fraction": float(cfg.min_valid_fraction)}


def _nodata_share(group, done: np.ndarray) -> np.ndarray:
    import dask
    import dask.array as da

    arr = group["dw_label"]
    unit = int((getattr(arr, "shards", None) or arr.chunks)[0])
    dw = da.from_zarr(arr, chunks=(unit,) + tuple(arr.shape[1:]))[done]
    share = (dw == LABEL_NODATA).mean(axis=(-2, -1))
    with dask.config.set(scheduler="threads"):
        return np.asarray(share.compute(), dtype=np.float64)


def _strings(values: Any) -> np.ndarray:
    return np.asarray([str(v) for v in np.asarray(values).ravel()], dtype=object).reshape(np.shape(values))


def load_label_table(store: str, storage_options: dict | None = None, nodata: bool = True) -> LabelTable:
    """Read the label vectors and context of the done patches of ``store`` (see the module docstring).

    Args:
        store: archive path or fsspec URL.
        storage_options: fsspec options of a URL.
        nodata: also compute :attr:`LabelTable.nodata_share` (reads every label map once); NaN otherwise.

    Raises:
        BadInput: no softcon archive at ``store`` (one line naming the path).
    """
    from pipeline.archive import Archive
    from pipeline.labels import read_label_provenance
    from pipeline.split import SPLIT_NAMES, read_split
    from pipeline.store import MODALITY_ORDER, STATUS_DONE, archive_exists

    if not archive_exists(store, storage_options):
        raise BadInput(f"{store}: no softcon archive there; check the path")
    group = Archive.of(store, storage_options).open()
    status = np.asarray(group["status"][:])
    done = np.flatnonzero(status == STATUS_DONE)
    classes = tuple(str(c) for c in group.attrs.get("class_names", DW_CLASSES))
    modalities = [str(m) for m in group["modality"][:]] if "modality" in group else list(MODALITY_ORDER)
    s2 = next((m for m in ("s2_l1c", "s2_l2a") if m in modalities and m in group.attrs.get("band_names", {})), None)
    cloud_all = np.asarray(group["cloud_pct"][:], dtype=np.float32)
    ids_all = np.asarray(group["image_id"][:])
    n_seasons = int(group["multi_hot"].shape[1])
    cloud = cloud_all[done][:, :, modalities.index(s2)] if s2 else np.full((done.size, n_seasons), np.nan, np.float32)
    l1c = modalities.index("s2_l1c") if "s2_l1c" in modalities else None
    image_ids = _strings(ids_all[done][:, :, l1c]) if l1c is not None else np.full((done.size, n_seasons), "", object)
    split = None
    try:
        found = read_split(store, storage_options)
    except Exception:  # noqa: BLE001 - a damaged split only hides the split column here
        found = None
    if found is not None:
        split = np.asarray([SPLIT_NAMES.get(int(c), "") for c in found[0][done]], dtype=object)
    provenance = read_label_provenance(group)
    manifest = group.attrs.get("manifest", {})
    return LabelTable(
        store=str(store),
        patch_index=done,
        patch_id=_strings(np.asarray(group["patch_id"][:])[done]),
        lon=np.asarray(group["lon"][:], dtype=np.float64)[done],
        lat=np.asarray(group["lat"][:], dtype=np.float64)[done],
        city=_strings(np.asarray(group["city"][:])[done]) if "city" in group else np.full(done.size, "", object),
        split=split,
        reference_dates=[str(d) for d in group["reference_date"][:]] if "reference_date" in group
        else [str(s) for s in range(n_seasons)],
        multi_hot=np.asarray(group["multi_hot"][:])[done],
        fraction=np.asarray(group["label_fraction"][:])[done],
        cloud_pct=cloud,
        nodata_share=_nodata_share(group, done) if nodata and done.size else np.full((done.size, n_seasons), np.nan),
        s2_image_id=image_ids,
        classes=classes,
        provenance=provenance,
        published=group.attrs.get("published_labels"),
        own_thresholds=own_thresholds(provenance, manifest.get("labels") if isinstance(manifest, dict) else None),
        n_patches_total=int(status.size),
    )
