"""The local SSL4EO-S12 source: one season of a location read from disk, with optional land-cover labels.

A window passed to ``fetch`` is one of the reader's seasons when its reference date has the same month
and day as one of ``reference_dates`` (years are ignored, as in the cyclic distance of
:mod:`~pipeline.sources.ssl4eo_local.seasons`); any other window is a caller error (``ValueError``).
The window's start and end are **not** used to select or filter acquisitions (SSL4EO-S12's
per-location shift is unknown for the released data). No cloud filter is applied either: the released
data were already filtered at download.

**Metadata.** ``image_id`` = the acquisition folder name (the GEE ``system:index``); ``acquired`` =
the UTC date of the acquisition time; ``cloud_pct`` = ``CLOUDY_PIXEL_PERCENTAGE`` of
``metadata.json`` for S2 (NaN when the file or the key is absent), NaN for S1.

**Errors.** A location folder that is absent or holds no acquisition folder, or a season left
without an acquisition by the assignment → :class:`NoImageFound` naming the season and the folder.
A missing, unreadable, wrongly typed or wrongly sized band file, or an unparsable ``metadata.json``
→ :class:`CorruptData` naming the file.

**Labels.** With ``labels`` (a GeoTIFF path or a :class:`~pipeline.sources.landcover.LandCoverLabels`)
the label map is that land-cover map warped onto the native footprint at ``grid.size`` pixels;
without, ``label`` is ``None``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from pipeline.bands import MODALITY_BANDS, MODALITY_DTYPES
from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.seasons import SeasonWindow
from pipeline.sources.base import CorruptData, ModalityImage, NoImageFound, SeasonSample, check_modalities
from pipeline.sources.landcover import LandCoverLabels, RasterGrid
from pipeline.sources.ssl4eo_local.layout import (
    MODALITY_DIRS,
    acquisition_time,
    band_path,
    list_acquisitions,
    read_metadata,
)
from pipeline.sources.ssl4eo_local.reader import RESAMPLING, read_band
from pipeline.sources.ssl4eo_local.seasons import SSL4EO_REFERENCE_DATES, assign_seasons


class SSL4EOLocalSource:
    """Source protocol implementation over a local SSL4EO-S12 copy (see the module docstring)."""

    name = "ssl4eo_local"
    synthetic = False

    def __init__(self, root: str | Path, labels: str | Path | LandCoverLabels | None = None,
                 resampling: str = "bilinear", reference_dates: Sequence[dt.date] | None = None):
        if resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {sorted(RESAMPLING)}, got {resampling!r}")
        refs = tuple(SSL4EO_REFERENCE_DATES if reference_dates is None else reference_dates)
        if not refs:
            raise ValueError("reference_dates: at least one reference date is required")
        days = [(d.month, d.day) for d in refs]
        if len(set(days)) != len(days):
            raise ValueError(f"reference_dates must differ in month and day (seasons are cyclic): {refs}")
        self.reference_dates: tuple[dt.date, ...] = refs
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"SSL4EO-S12 root not found: {self.root}")
        if labels is not None and not isinstance(labels, LandCoverLabels):
            labels = LandCoverLabels(labels, crosswalk="auto", resampling="nearest")
        self.labels: LandCoverLabels | None = labels
        self.resampling = resampling

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "synthetic": False,
            "root": str(self.root),
            "resampling": self.resampling,
            "season_pairing": "one-to-one, minimal total cyclic day-of-year distance to the reference dates",
            "reference_dates": [d.isoformat() for d in self.reference_dates],
            "grid": "native SSL4EO-S12 patch footprint (EPSG:4326) resampled to patch.size_px, not reprojected",
            "labels": None if self.labels is None else self.labels.describe(),
        }

    # ------------------------------------------------------------------ reading
    def season_of(self, window: SeasonWindow) -> int:
        """Index into ``reference_dates`` of the window: same month and day as its reference date.

        Years are ignored, as in the cyclic distance; a window of no known season is a ValueError.
        """
        for i, ref in enumerate(self.reference_dates):
            if (ref.month, ref.day) == (window.reference.month, window.reference.day):
                return i
        raise ValueError(
            f"ssl4eo_local: season {window.season} has reference date {window.reference}, which is not one of "
            f"this source's reference_dates {[d.isoformat() for d in self.reference_dates]} "
            "(pass the manifest's seasons.reference_dates to SSL4EOLocalSource)")

    def acquisition_folder(self, modality: str, location_id: str, window: SeasonWindow) -> Path:
        """The acquisition folder assigned to ``window``'s season (:func:`assign_seasons`)."""
        loc_dir = self.root / MODALITY_DIRS[modality] / location_id
        if not loc_dir.is_dir():
            raise NoImageFound(f"ssl4eo_local: no {modality} folder for location {location_id}: {loc_dir}")
        folders = list_acquisitions(loc_dir)
        if not folders:
            raise NoImageFound(f"ssl4eo_local: no acquisition folder in {loc_dir} ({modality}, location {location_id})")
        assigned = assign_seasons(folders, self.reference_dates)
        index = self.season_of(window)
        if index not in assigned:
            found = ", ".join(f"{p.name} → {self.reference_dates[i]}" for i, p in sorted(assigned.items()))
            raise NoImageFound(
                f"ssl4eo_local: no {modality} acquisition for season {window.season} (reference "
                f"{window.reference}) in {loc_dir}: {len(folders)} acquisition(s) for "
                f"{len(self.reference_dates)} seasons, assigned one-to-one by smallest total day-of-year "
                f"distance, none left for this one ({found})")
        return assigned[index]

    def fetch(self, location: Location, window: SeasonWindow, grid: PatchGrid,
              modalities: dict[str, tuple[str, ...]]) -> SeasonSample:
        check_modalities(modalities)
        size = int(grid.size)
        extra: dict[str, str] = {"season_pairing": "min-total-day-distance"}
        with rasterio.Env():  # one GDAL environment for all the band files of this season
            images, extra, footprint = self._read_modalities(location, window, modalities, grid, extra)
        if footprint is None and self.labels is not None:
            footprint = self._footprint(location.id, window)
        if footprint is not None:
            extra["native_crs"] = footprint[0]
            extra["native_bounds"] = json.dumps(list(footprint[1]))
        label = None
        if self.labels is not None and footprint is not None:
            target = RasterGrid.from_bounds(footprint[0], footprint[1], (size, size))
            label = self.labels.label_map(target)
        return SeasonSample(images=images, label=label, extra=extra)

    def _read_modalities(self, location: Location, window: SeasonWindow, modalities: dict[str, tuple[str, ...]],
                         grid: PatchGrid, extra: dict[str, str]):
        size = int(grid.size)
        images: dict[str, ModalityImage] = {}
        footprint: tuple[str, tuple] | None = None
        for name in MODALITY_BANDS:  # canonical modality order: L1C, L2A, S1
            if name not in modalities:
                continue
            folder = self.acquisition_folder(name, location.id, window)
            order = [b for b in MODALITY_BANDS[name] if b in set(modalities[name])]
            data = np.empty((len(order), size, size), dtype=MODALITY_DTYPES[name])
            finest: tuple[int, Any, tuple] | None = None
            for k, band in enumerate(order):
                native, crs, bounds = read_band(band_path(folder, band), data[k], name, band, grid, self.resampling)
                if finest is None or native[0] * native[1] > finest[0]:
                    finest = (native[0] * native[1], crs, bounds)
            meta = read_metadata(folder)
            if name == "s1_grd":
                cloud = float("nan")
            else:
                value = meta.get("CLOUDY_PIXEL_PERCENTAGE")
                numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                cloud = float(value) if numeric else float("nan")
            images[name] = ModalityImage(data=data, bands=tuple(order), acquired=acquisition_time(folder).date(),
                                         image_id=folder.name, cloud_pct=cloud)
            if finest is not None:
                crs = finest[1].to_string() if finest[1] is not None else ""  # only for the finest band
                extra[f"{name}_crs"] = crs
                extra[f"{name}_bounds"] = json.dumps(list(finest[2]))
                if footprint is None:
                    footprint = (crs, finest[2])
        return images, extra, footprint

    def _footprint(self, location_id: str, window: SeasonWindow) -> tuple[str, tuple] | None:
        """Native CRS and bounds of the first band file found for the location (labels-only requests)."""
        for name in MODALITY_BANDS:
            try:
                folder = self.acquisition_folder(name, location_id, window)
            except NoImageFound:
                continue
            for band in MODALITY_BANDS[name]:
                path = band_path(folder, band)
                if path.is_file():
                    try:
                        with rasterio.open(path) as src:
                            return src.crs.to_string(), tuple(float(v) for v in src.bounds)
                    except RasterioError as err:
                        raise CorruptData(f"ssl4eo_local: cannot read {path}: {err}") from None
        return None
