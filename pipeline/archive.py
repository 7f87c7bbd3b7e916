"""One handle for "where the archive lives": every reader and writer of a curated archive goes through it.

An :class:`Archive` is a path or an fsspec URL plus its storage options. It knows how to open the Zarr
v3 group (:meth:`Archive.open`), whether it is remote (:attr:`Archive.is_remote`), and reads what the
archive says about itself from its own attributes and small arrays: the :class:`ArchiveLayout`
(:attr:`Archive.layout`), band and class names, which patches are done or failed, the train/val/test
split, and the label-provenance record. Nothing here needs the manifest the archive was made from, so
training and evaluation read an archive with nothing but its address.

The writing protocol (template, shard writes, status last) stays in :mod:`pipeline.store`; the
decision whether a path may be written at all in :mod:`pipeline.store_target`. The idea follows the
"storage target" of pangeo-forge-recipes: one small object that names where the data lives and how to
reach it, passed around instead of a path and a dictionary of options.

Example:
    >>> archive = Archive("output/ssl4eo_s12_ml_mini.zarr")          # doctest: +SKIP
    >>> archive.layout.n_seasons, archive.bands("s1_grd")              # doctest: +SKIP
    (4, ('VV', 'VH'))
    >>> archive.done_patches()[:3], archive.split_patches("test")[:3]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
import zarr

from pipeline.bands import DW_CLASSES
from pipeline.store import (
    STATUS_DONE,
    STATUS_FAILED,
    ArchiveLayout,
    archive_exists,
    open_archive,
    open_group,
    storage_options_for,
    summarize,
)
from pipeline.store_target import ArchiveError, is_local

#: The command that writes a split, named in every "no split" error.
SPLIT_COMMAND = "softcon split"


@dataclass(frozen=True)
class Archive:
    """A curated archive's address: a local path or an fsspec URL, and the storage options to reach it.

    Args:
        path: A folder path or an fsspec URL (``file://``, ``s3://``, ``memory://``, …).
        storage_options: fsspec options for remote URLs (ignored for plain local paths).
    """

    path: str
    storage_options: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.fspath(self.path))

    @classmethod
    def of(cls, store: Archive | str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> Archive:
        """``store`` as an :class:`Archive` (an archive is returned as it is; options only apply to paths)."""
        if isinstance(store, Archive):
            return store
        return cls(os.fspath(store), storage_options)

    @classmethod
    def from_manifest(cls, manifest: Any) -> Archive:
        """The archive a manifest curates into (``store.path`` and ``store.storage_options``)."""
        return cls(manifest.store.path, manifest.store.storage_options or None)

    def __str__(self) -> str:
        return self.path

    # ------------------------------------------------------------------ where and how
    @property
    def is_remote(self) -> bool:
        """True for an fsspec URL other than ``file://`` (the one rule, :func:`pipeline.store_target.is_local`)."""
        return not is_local(self.path)

    @property
    def fsspec_options(self) -> dict | None:
        """The storage options as zarr and xarray are given them (None for plain local paths)."""
        return storage_options_for(self.path, dict(self.storage_options or {}))

    def open(self, mode: str = "r") -> zarr.Group:
        """The archive's root Zarr v3 group (``"r"`` to read, ``"r+"`` to update)."""
        return open_group(self.path, mode, dict(self.storage_options or {}) or None)

    def is_complete(self) -> bool:
        """True for a softcon archive whose template was completely written."""
        return archive_exists(self.path, dict(self.storage_options or {}) or None)

    def to_xarray(self, patches_per_chunk: int | None = None) -> xr.Dataset:
        """The archive as a lazy xarray Dataset (``acquired`` decoded to dates, chunks of whole shards)."""
        return open_archive(self.path, dict(self.storage_options or {}) or None, patches_per_chunk)

    # ------------------------------------------------------------------ what it says about itself
    @property
    def attrs(self) -> dict[str, Any]:
        """The root group's attributes (read now)."""
        return dict(self.open().attrs)

    @property
    def layout(self) -> ArchiveLayout:
        """Sizes and names from the archive's own attributes (no manifest needed)."""
        return ArchiveLayout.from_attrs(self.attrs)

    @property
    def band_names(self) -> dict[str, tuple[str, ...]]:
        """Modality → band names, for the modalities the archive holds."""
        return {k: tuple(v) for k, v in dict(self.attrs.get("band_names", {})).items()}

    def bands(self, modality: str) -> tuple[str, ...]:
        """The band names of one modality; :class:`ArchiveError` naming the archive when it is not stored."""
        stored = self.band_names
        if modality not in stored:
            raise ArchiveError(f"{self.path}: modality {modality!r} is not in the archive (it holds {sorted(stored)})")
        return stored[modality]

    @property
    def class_names(self) -> tuple[str, ...]:
        """The label classes of ``multi_hot`` and ``label_fraction`` (Dynamic World's nine by default)."""
        return tuple(self.attrs.get("class_names", DW_CLASSES))

    @property
    def manifest_hash(self) -> str | None:
        return self.attrs.get("manifest_hash")

    def patch_ids(self) -> list[str]:
        """The 7-digit ``patch_id`` of every patch (location), in archive order."""
        return [str(x) for x in self.open()["patch_id"][:]]

    def status(self) -> np.ndarray:
        """Per-patch status codes (:data:`pipeline.store.STATUS_NAMES`)."""
        return np.asarray(self.open()["status"][:])

    def done_patches(self) -> np.ndarray:
        """Sorted int64 indices of the patches whose every season was written."""
        return np.flatnonzero(self.status() == STATUS_DONE).astype(np.int64)

    def failed_patches(self) -> np.ndarray:
        """Sorted int64 indices of the patches that failed (their reason is in ``status_reason``)."""
        return np.flatnonzero(self.status() == STATUS_FAILED).astype(np.int64)

    def label_provenance(self) -> dict[str, Any] | None:
        """How the label vectors were made (:func:`pipeline.labels.read_label_provenance`), or None."""
        from pipeline.labels import (
            read_label_provenance,  # pipeline.labels imports pipeline.store
        )

        return read_label_provenance(self.open())

    def summary(self) -> dict[str, Any]:
        """Counts of done/failed/todo patches, failure reasons and identity (:func:`pipeline.store.summarize`)."""
        return summarize(self.path, dict(self.storage_options or {}) or None)

    def describe(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The archive summary that ``softcon inspect`` prints and the curation report writes, and the label
        statistics behind it (:func:`pipeline.labels.summary_statistics`, for the report's plots).

        The summary is :meth:`summary` with the labels' headline numbers and the split record (None without
        a split, ``{"error": …}`` when it is damaged).
        """
        from pipeline.labels import label_summary, summary_statistics

        so = dict(self.storage_options or {}) or None
        stats = summary_statistics(self.path, so)
        summary = self.summary() | label_summary(stats)
        try:
            found = self.split()
            summary["split"] = None if found is None else found[1]
        except ArchiveError as err:
            summary["split"] = {"error": " ".join(str(err).split())}
        return summary, stats

    # ------------------------------------------------------------------ the split
    def split(self) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Per-patch split codes and the split record, or None when the archive has none."""
        from pipeline.split import read_split

        return read_split(self.path, dict(self.storage_options or {}) or None)

    def require_split(self) -> tuple[np.ndarray, dict[str, Any]]:
        """Like :meth:`split`, but an archive without a split is an :class:`ArchiveError` saying how to write one."""
        found = self.split()
        if found is None:
            raise ArchiveError(f"{self.path}: the archive has no train/val/test split; write one with: "
                               f"{SPLIT_COMMAND} {self.path}")
        codes, record = found
        return np.asarray(codes), dict(record)

    def split_patches(self, name: str) -> np.ndarray:
        """Sorted int64 indices of the patches (locations) in split ``name`` (train | val | test)."""
        from pipeline.errors import BadInput
        from pipeline.split import SPLIT_CODES

        if name not in SPLIT_CODES:
            raise BadInput(f"split {name!r}: choose one of {', '.join(SPLIT_CODES)}")
        codes, _ = self.require_split()
        return np.flatnonzero(codes == SPLIT_CODES[name]).astype(np.int64)


__all__ = ["SPLIT_COMMAND", "Archive"]
