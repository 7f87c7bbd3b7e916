"""A local copy of SSL4EO-S12 in its distributed layout, read with rasterio (no network).

Layout (shared specs, softcon.md §1.5; the released dataset and rico-hdl's sample)::

    <root>/{s1|s2a|s2c}/{location:07d}/{acquisition folder}/{band}.tif
                                                           /metadata.json

``s2c`` holds Sentinel-2 L1C (13 bands, ``s2_l1c``), ``s2a`` L2A (12 bands, no B10, ``s2_l2a``) and
``s1`` Sentinel-1 GRD (VV, VH in dB, ``s1_grd``). Band files are named without zero padding
(``B1.tif``, ``B8A.tif``). Each band is stored at its native resolution over the same ~2.64 km
square: 264 px (10 m), 132 px (20 m) or 44 px (60 m), in EPSG:4326.

**Season assignment (our rule).** SSL4EO-S12 stores up to four acquisitions per location and
modality, searched independently per seasonal window, and does not record which window each came
from. The reader knows the season reference dates (``reference_dates``, the manifest's
``seasons.reference_dates``; by default SSL4EO-S12's own 2021-03-20, 2021-06-21, 2021-09-22,
2020-12-21, in the manifest's order) and assigns the acquisition folders of one location and
modality to the seasons **one-to-one**, so that the total distance between the acquisitions and the
reference dates of their seasons is smallest (an optimal assignment, solved with
``scipy.optimize.linear_sum_assignment`` on the acquisitions × seasons distance matrix):

* distance = days between the acquisition date (UTC) and the nearest anniversary of the reference
  date, i.e. a cyclic day-of-year distance (0–183 days) that ignores the years. Our choice: the
  released data were searched around one shifted copy of the reference dates per location, so the
  acquisition year says nothing about the season (a 2020-01-05 scene is near the 12-21 season);
* one-to-one and minimal in total (our choice, instead of each acquisition to its nearest date):
  SSL4EO-S12 shifts all four search dates of a location by one random offset, so a location's images
  are about three months apart but may lie half-way between two reference dates (e.g. Feb 3, May 5,
  Aug 6, Nov 6). Nearest-date-per-image can then put two images into one season and leave another
  empty, failing a valid location; the optimal one-to-one assignment keeps the images in time order,
  rotated onto the seasons they are closest to as a whole (Feb 3 → 12-21, May 5 → 03-20, …);
* more acquisitions than seasons: each season still gets one, and the acquisitions left over are
  not used; fewer: the seasons left without one raise :class:`NoImageFound` naming the location
  folder;
* ties (our rule, deterministic): among the assignments of equal minimal total, the earliest
  acquisition (time order, then folder name) gets the first-listed season it can have in such an
  assignment, then the next acquisition, and so on; an acquisition is left unused only when no
  season is left for it in such an assignment (so, of equally near competitors, the earlier is used).

The acquisition time is the first ``YYYYMMDDTHHMMSS`` stamp of the folder name (S2: sensing time;
S1: start time), else ``system:time_start`` from ``metadata.json``. A window passed to ``fetch`` is
one of the reader's seasons when its reference date has the same month and day as one of
``reference_dates`` (years are ignored, as in the distance); any other window is a caller error
(``ValueError``). The window's start and end are **not** used to select or filter acquisitions
(SSL4EO-S12's per-location shift is unknown for the released data). No cloud filter is applied
either: the released data were already filtered at download.

**Pixels.** The local reader returns each patch's *native* pixels resampled to ``grid.size`` ×
``grid.size`` (264 for the default manifest): there is **no reprojection to the UTM patch grid**,
since SSL4EO-S12 patches are already on their own grid (the centre crop of each band in lon/lat).
This is the dataset's own load-time convention (softcon.md §1.4: every band resized to 264 × 264).
Each band is read with rasterio's ``out_shape=(grid.size, grid.size)`` and the manifest's
``patch.resampling`` (``Resampling.bilinear`` by default; ``nearest``/``cubic`` accepted), i.e.
GDAL's RasterIO resampling. That differs slightly from SSL4EO's OpenCV ``INTER_LINEAR_EXACT``
and from torchgeo (nearest). Bands already at ``grid.size`` are returned unchanged.
The native CRS and bounds are recorded in :attr:`SeasonSample.extra` (``<modality>_crs``,
``<modality>_bounds``: the finest band read; ``native_crs``/``native_bounds``: the footprint the
label map is warped onto).

**Band sizes.** Every band file must hold the patch at its native resolution: the patch extent
(``grid.size`` × ``grid.resolution`` metres, 2640 m for 264 px at 10 m) divided by the band's native
resolution (S2: 10/20/60 m per band, S1: 10 m), i.e. 264, 132 and 44 px for the SSL4EO grid, as the
real files are. When that quotient is not a whole number (our rule) either rounding, down or up, is
accepted. Any other height or width raises :class:`CorruptData` naming the file, the expected and
the found size; such a file is never resampled.

**Sentinel-1 no-data.** The archive stores NaN for S1 no-data. A pixel of an S1 band file is no-data
(→ NaN) when it equals the file's GeoTIFF nodata tag, when it is not finite (NaN, or −inf = linear 0
in dB) or when it is exactly 0.0: 0 is the value masked Earth Engine pixels get when unmasked (the
SSL4EO-S12 no-data value, as this project's Earth Engine source writes it), and a measured
backscatter of exactly 0.000… dB does not occur in GEE's continuous dB values (our choice). The real
sample has no nodata tag and no such pixels. Bands at ``grid.size`` are returned as read; others
are resampled by GDAL's warper with NaN as the source and destination nodata, so no-data never
leaks into neighbouring pixels.

**Metadata.** ``image_id`` = the acquisition folder name (the GEE ``system:index``); ``acquired`` =
the UTC date of the acquisition time; ``cloud_pct`` = ``CLOUDY_PIXEL_PERCENTAGE`` of
``metadata.json`` for S2 (NaN when the file or the key is absent), NaN for S1.

**Errors.** A location folder that is absent or holds no acquisition folder, or a season left
without an acquisition by the assignment → :class:`NoImageFound` naming the season and the folder.
A missing, unreadable, wrongly typed or wrongly sized band file, or an unparsable ``metadata.json``
→ :class:`CorruptData` naming the file.

**Locations without data.** :func:`list_local_locations` skips a location folder none of whose
modality folders holds a band file (empty folders, or acquisition folders without ``.tif`` files)
and logs a warning naming its folders; it is never dropped silently.

**Labels.** With ``labels`` (a GeoTIFF path or a :class:`~pipeline.sources.landcover.LandCoverLabels`)
the label map is that land-cover map warped onto the native footprint at ``grid.size`` pixels;
without, ``label`` is ``None``.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.warp import reproject
from scipy.optimize import linear_sum_assignment

from pipeline.bands import MODALITY_BANDS, MODALITY_DTYPES, S2_NATIVE_RESOLUTION_M
from pipeline.grid import PatchGrid
from pipeline.locations import Location, utm_epsg
from pipeline.seasons import SeasonWindow
from pipeline.sources.base import CorruptData, ModalityImage, NoImageFound, SeasonSample, check_modalities
from pipeline.sources.landcover import LandCoverLabels, RasterGrid

#: Modality name → folder name in the SSL4EO-S12 layout.
MODALITY_DIRS: dict[str, str] = {"s2_l1c": "s2c", "s2_l2a": "s2a", "s1_grd": "s1"}
#: Accepted ``resampling`` values (the manifest's ``patch.resampling``).
RESAMPLING: dict[str, Resampling] = {
    "bilinear": Resampling.bilinear, "nearest": Resampling.nearest, "cubic": Resampling.cubic,
}
#: SSL4EO-S12's season reference dates (its downloader's search dates), in the manifest's default order.
SSL4EO_REFERENCE_DATES: tuple[dt.date, ...] = (
    dt.date(2021, 3, 20), dt.date(2021, 6, 21), dt.date(2021, 9, 22), dt.date(2020, 12, 21),
)
#: Native ground sampling distance (m) of the Sentinel-1 GRD bands in SSL4EO-S12.
S1_NATIVE_RESOLUTION_M: int = 10
_STAMP = re.compile(r"(\d{8}T\d{6})")
_LOCATION_DIR = re.compile(r"^\d{7}$")

log = logging.getLogger(__name__)


def acquisition_time(folder: Path) -> dt.datetime:
    """UTC acquisition time of an acquisition folder: name stamp, else ``system:time_start``."""
    m = _STAMP.search(folder.name)
    if m:
        try:
            return dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            pass
    meta = read_metadata(folder)
    start = meta.get("system:time_start")
    if isinstance(start, (int, float)) and not isinstance(start, bool):
        return dt.datetime.fromtimestamp(start / 1000.0, tz=dt.timezone.utc)
    raise CorruptData(f"cannot tell the acquisition time of {folder}: no YYYYMMDDTHHMMSS stamp in the "
                      "folder name and no system:time_start in metadata.json")


def read_metadata(folder: Path) -> dict:
    """``metadata.json`` of an acquisition folder; ``{}`` when absent, CorruptData when unparsable."""
    path = folder / "metadata.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise CorruptData(f"cannot read {path}: {err}") from None
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise CorruptData(f"{path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise CorruptData(f"{path} does not hold a JSON object")
    return meta


def list_acquisitions(location_dir: Path) -> list[Path]:
    """Acquisition folders of one location and modality, oldest first (ties: folder name)."""
    folders = [p for p in location_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    keyed = [(acquisition_time(p), p.name, p) for p in folders]
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [p for _, _, p in keyed]


def cyclic_day_distance(day: dt.date, reference: dt.date) -> int:
    """Days from ``day`` to the nearest anniversary of ``reference`` (0–183; the years are ignored).

    The anniversary of 29 February in a non-leap year is 28 February.
    """
    distances = []
    for year in (day.year - 1, day.year, day.year + 1):
        if reference.month == 2 and reference.day == 29 and not calendar.isleap(year):
            anniversary = dt.date(year, 2, 28)
        else:
            anniversary = reference.replace(year=year)
        distances.append(abs((day - anniversary).days))
    return min(distances)


def season_distances(times: Sequence[dt.datetime], reference_dates: Sequence[dt.date]) -> np.ndarray:
    """Acquisitions × seasons matrix of :func:`cyclic_day_distance` (days, int64) of the UTC dates."""
    dist = np.zeros((len(times), len(reference_dates)), dtype=np.int64)
    for i, when in enumerate(times):
        for j, ref in enumerate(reference_dates):
            dist[i, j] = cyclic_day_distance(when.date(), ref)
    return dist


def _min_total(dist: np.ndarray, rows: list[int], cols: list[int]) -> int:
    """Smallest total of a one-to-one assignment of ``rows`` to ``cols`` (min(len) pairs; 0 if none)."""
    if not rows or not cols:
        return 0
    sub = dist[np.ix_(rows, cols)]
    r, c = linear_sum_assignment(sub)
    return int(sub[r, c].sum())


def optimal_assignment(dist: np.ndarray) -> dict[int, int]:
    """Column (season) → row (acquisition) of a one-to-one assignment of minimal total ``dist``.

    ``min(rows, columns)`` pairs. Rows are taken to be in time order, columns in the listed order.
    Ties (our rule): rows are fixed one after the other, each to the first column, else to "unused",
    that still allows an assignment of the minimal total and full size (checked by solving the rest
    with ``linear_sum_assignment``); the result is thus the lexicographically first optimal one.
    """
    n_rows, n_cols = dist.shape
    n_pairs = min(n_rows, n_cols)
    best = _min_total(dist, list(range(n_rows)), list(range(n_cols)))
    chosen: dict[int, int] = {}
    fixed_total = 0
    free_cols = list(range(n_cols))
    for row in range(n_rows):
        later_rows = list(range(row + 1, n_rows))
        options: list[int | None] = [*free_cols, None]  # None: this acquisition is not used
        picked = False
        for col in options:
            cols_left = [c for c in free_cols if c != col]
            size = len(chosen) + (col is not None) + min(len(later_rows), len(cols_left))
            if size != n_pairs:
                continue
            cost = 0 if col is None else int(dist[row, col])
            if fixed_total + cost + _min_total(dist, later_rows, cols_left) == best:
                if col is not None:
                    chosen[col] = row
                    fixed_total += cost
                    free_cols.remove(col)
                picked = True
                break
        if not picked:  # cannot happen: some option always extends to an optimal assignment
            raise AssertionError(f"no optimal assignment found for row {row} of {dist.tolist()}")
    return chosen


def assign_seasons(folders: list[Path], reference_dates: Sequence[dt.date]) -> dict[int, Path]:
    """Season index → acquisition folder, one-to-one with minimal total distance (module docstring).

    The folders are put in time order (then folder name), the distances are
    :func:`cyclic_day_distance` and ties follow :func:`optimal_assignment`. Seasons left without an
    acquisition (fewer folders than seasons) are absent from the result; surplus folders are unused.
    """
    keyed = sorted(((acquisition_time(f), f.name, f) for f in folders), key=lambda t: (t[0], t[1]))
    ordered = [f for _, _, f in keyed]
    dist = season_distances([t for t, _, _ in keyed], reference_dates)
    return {season: ordered[row] for season, row in sorted(optimal_assignment(dist).items())}


def native_resolution_m(modality: str, band: str) -> int:
    """Native pixel size (m) of one band: S2 per band (10/20/60 m), S1 10 m."""
    if modality == "s1_grd":
        return S1_NATIVE_RESOLUTION_M
    return S2_NATIVE_RESOLUTION_M[band]


def expected_band_sizes(grid: PatchGrid, resolution_m: float) -> tuple[int, ...]:
    """Accepted pixel counts per side of a band of ``resolution_m`` covering the patch of ``grid``.

    The patch extent (``grid.size`` × ``grid.resolution``) over the band's resolution: one size when
    that is a whole number (264/132/44 px for the 264 px / 10 m grid), else the sizes rounded down
    and up (our rule: either rounding is accepted).
    """
    exact = grid.size * grid.resolution / resolution_m
    nearest = round(exact)
    if abs(exact - nearest) < 1e-6:
        return (int(nearest),)
    return (math.floor(exact), math.ceil(exact))


def s1_nodata_mask(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """True where an S1 dB value is no-data: the file's nodata tag, not finite, or exactly 0.0.

    Rule (see the module docstring): NaN and −inf (linear 0) are not measurements; 0.0 is the value
    SSL4EO-S12 / Earth Engine write for masked pixels (our choice to treat it as no-data).
    """
    mask = ~np.isfinite(values)
    mask |= values == 0.0
    if nodata is not None and not math.isnan(nodata):
        mask |= values == nodata
    return mask


def _band_path(folder: Path, band: str) -> Path:
    return folder / f"{band}.tif"


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

    def _read_band(self, path: Path, out: np.ndarray, modality: str, band: str,
                   grid: PatchGrid) -> tuple[tuple[int, int], Any, tuple]:
        """Read one band into ``out`` (size × size, resampled); return its native shape, CRS and bounds.

        The file must have its native size for the patch (:func:`expected_band_sizes`), else
        CorruptData; S1 no-data becomes NaN (:func:`s1_nodata_mask`).
        """
        if not path.is_file():
            raise CorruptData(f"ssl4eo_local: missing band file {path}")
        size = out.shape[-1]
        expected = out.dtype
        resolution = native_resolution_m(modality, band)
        sizes = expected_band_sizes(grid, resolution)
        try:
            with rasterio.open(path) as src:
                dtype = np.dtype(src.dtypes[0])
                if expected.kind == "u" and dtype.kind not in "ui":
                    raise CorruptData(f"ssl4eo_local: {path} holds {dtype}, expected integer DN for {modality}")
                if expected.kind == "f" and dtype.kind != "f":
                    raise CorruptData(f"ssl4eo_local: {path} holds {dtype}, expected float dB for {modality}")
                native = (src.height, src.width)
                if native[0] not in sizes or native[1] not in sizes:
                    wanted = " or ".join(f"{n}x{n}" for n in sizes)
                    raise CorruptData(
                        f"ssl4eo_local: {path} has the wrong size: expected {wanted} px (a {resolution} m band over "
                        f"the {grid.size * grid.resolution:g} m patch), found {native[0]}x{native[1]} px")
                resampling = RESAMPLING[self.resampling] if native != (size, size) else Resampling.nearest
                if modality == "s1_grd":
                    _read_s1(src, out, resampling)
                elif dtype == expected:  # straight into the patch array: no temporary, no copy
                    src.read(1, out=out, resampling=resampling)
                else:
                    arr = src.read(1, out_shape=(size, size), resampling=resampling)
                    if expected.kind == "u":
                        arr = np.clip(arr, 0, np.iinfo(expected).max)
                    out[...] = arr.astype(expected, copy=False)
                crs, bounds = src.crs, tuple(float(v) for v in src.bounds)
        except CorruptData:
            raise
        except (RasterioError, OSError, ValueError) as err:
            raise CorruptData(f"ssl4eo_local: cannot read {path}: {err}") from None
        return native, crs, bounds

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
                native, crs, bounds = self._read_band(_band_path(folder, band), data[k], name, band, grid)
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
                path = _band_path(folder, band)
                if path.is_file():
                    try:
                        with rasterio.open(path) as src:
                            return src.crs.to_string(), tuple(float(v) for v in src.bounds)
                    except RasterioError as err:
                        raise CorruptData(f"ssl4eo_local: cannot read {path}: {err}") from None
        return None


def _read_s1(src: Any, out: np.ndarray, resampling: Resampling) -> None:
    """One S1 band of the open file ``src`` into ``out`` (float32 dB) with every no-data pixel NaN.

    At ``out``'s size the native pixels are copied; otherwise they are resampled by GDAL's warper with
    NaN as source and destination nodata, so that no-data pixels do not enter the interpolation.
    """
    values = src.read(1).astype(np.float32, copy=False)
    values[s1_nodata_mask(values, src.nodata)] = np.nan
    if values.shape == out.shape:
        out[...] = values
        return
    height, width = values.shape
    # Both grids in the file's pixel coordinates (they cover the same square); the CRS is a placeholder,
    # the same on both sides, so GDAL only rescales.
    src_transform = Affine.scale(1.0, 1.0)
    dst_transform = Affine.scale(width / out.shape[1], height / out.shape[0])
    out[...] = np.nan
    reproject(values, out, src_transform=src_transform, dst_transform=dst_transform,
              src_crs="EPSG:3857", dst_crs="EPSG:3857", src_nodata=np.nan, dst_nodata=np.nan,
              resampling=resampling)


# --------------------------------------------------------------------------- locations on disk
def _first_s2_band(root: Path, location_id: str) -> Path | None:
    for name in ("s2_l1c", "s2_l2a", "s1_grd"):
        loc_dir = root / MODALITY_DIRS[name] / location_id
        if not loc_dir.is_dir():
            continue
        for folder in list_acquisitions(loc_dir):
            for band in MODALITY_BANDS[name]:
                path = _band_path(folder, band)
                if path.is_file():
                    return path
    return None


def list_local_locations(root: str | Path) -> list[Location]:
    """The locations of a local SSL4EO-S12 copy, sorted by id.

    ``index`` = position in that order (the archive row), ``source_id`` = the 7-digit folder id; lon/lat = centre of the bounds of the first
    S2 band file found (L1C, then L2A, then S1 as a fallback), assumed in EPSG:4326 or transformed
    to it; ``epsg`` = the UTM zone of that centre; x/y = the centre projected with pyproj.

    A location folder none of whose modality folders holds a band file (all empty, or acquisition
    folders without ``.tif`` files) has no usable acquisition: it is skipped with a warning naming
    its folders (our rule: it is not an archive row, but never dropped silently).
    """
    root = Path(root)
    ids: set[str] = set()
    for sub in MODALITY_DIRS.values():
        d = root / sub
        if d.is_dir():
            ids.update(p.name for p in d.iterdir() if p.is_dir() and _LOCATION_DIR.match(p.name))
    out: list[Location] = []
    for loc_id in sorted(ids):
        path = _first_s2_band(root, loc_id)
        if path is None:
            folders = [str(root / sub / loc_id) for sub in MODALITY_DIRS.values() if (root / sub / loc_id).is_dir()]
            log.warning("ssl4eo_local: skipping location %s: no band file in any of its folders %s",
                        loc_id, ", ".join(folders))
            continue
        try:
            with rasterio.open(path) as src:
                west, south, east, north = src.bounds
                crs = src.crs
        except RasterioError as err:
            raise CorruptData(f"ssl4eo_local: cannot read {path}: {err}") from None
        cx, cy = (west + east) / 2.0, (south + north) / 2.0
        if crs is not None and not crs.is_geographic:
            cx, cy = pyproj.Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True).transform(cx, cy)
        lon, lat = float(cx), float(cy)
        if not (math.isfinite(lon) and math.isfinite(lat)):
            raise CorruptData(f"ssl4eo_local: {path} has no usable footprint")
        epsg = utm_epsg(lon, lat)
        x, y = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
        out.append(Location(index=len(out), lon=lon, lat=lat, epsg=epsg, x=float(x), y=float(y), source_id=loc_id))
    return out
