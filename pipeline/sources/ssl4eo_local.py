"""A local copy of SSL4EO-S12 in its distributed layout, read with rasterio (no network).

Layout (shared specs, softcon.md §1.5; the released dataset and rico-hdl's sample)::

    <root>/{s1|s2a|s2c}/{location:07d}/{acquisition folder}/{band}.tif
                                                           /metadata.json

``s2c`` holds Sentinel-2 L1C (13 bands, ``s2_l1c``), ``s2a`` L2A (12 bands, no B10, ``s2_l2a``) and
``s1`` Sentinel-1 GRD (VV, VH in dB, ``s1_grd``). Band files are named without zero padding
(``B1.tif``, ``B8A.tif``). Each band is stored at its native resolution over the same ~2.64 km
square: 264 px (10 m), 132 px (20 m) or 44 px (60 m), in EPSG:4326.

**Season pairing (our rule).** SSL4EO-S12 stores up to four acquisitions per location and modality,
searched independently per seasonal window, and does not record which window each came from. As
third-party loaders do (softcon.md §1.3), the acquisition folders of one location and modality are
sorted by acquisition time and the *i*-th one is season *i*. The acquisition time is the first
``YYYYMMDDTHHMMSS`` stamp of the folder name (S2: sensing time; S1: start time), else
``system:time_start`` from ``metadata.json``; ties are broken by folder name. The window dates of
the manifest are **not** used to select or filter acquisitions (they are unknown for the released
data); season *i* beyond the folders present raises :class:`NoImageFound`. No cloud filter is applied
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

**Metadata.** ``image_id`` = the acquisition folder name (the GEE ``system:index``); ``acquired`` =
the UTC date of the acquisition time; ``cloud_pct`` = ``CLOUDY_PIXEL_PERCENTAGE`` of
``metadata.json`` for S2 (NaN when the file or the key is absent), NaN for S1.

**Errors.** A location or season folder that is absent → :class:`NoImageFound` naming the folder.
A missing, unreadable or wrongly typed band file, or an unparsable ``metadata.json`` →
:class:`CorruptData` naming the file.

**Labels.** With ``labels`` (a GeoTIFF path or a :class:`~pipeline.sources.landcover.LandCoverLabels`)
the label map is that land-cover map warped onto the native footprint at ``grid.size`` pixels;
without, ``label`` is ``None``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError

from pipeline.bands import MODALITY_BANDS, MODALITY_DTYPES
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
_STAMP = re.compile(r"(\d{8}T\d{6})")
_LOCATION_DIR = re.compile(r"^\d{7}$")


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
    """Acquisition folders of one location and modality, oldest first (the season order)."""
    folders = [p for p in location_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    keyed = [(acquisition_time(p), p.name, p) for p in folders]
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [p for _, _, p in keyed]


def _band_path(folder: Path, band: str) -> Path:
    return folder / f"{band}.tif"


class SSL4EOLocalSource:
    """Source protocol implementation over a local SSL4EO-S12 copy (see the module docstring)."""

    name = "ssl4eo_local"
    synthetic = False

    def __init__(self, root: str | Path, labels: str | Path | LandCoverLabels | None = None,
                 resampling: str = "bilinear"):
        if resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {sorted(RESAMPLING)}, got {resampling!r}")
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
            "season_pairing": "i-th acquisition of each modality, sorted by acquisition time",
            "grid": "native SSL4EO-S12 patch footprint (EPSG:4326) resampled to patch.size_px, not reprojected",
            "labels": None if self.labels is None else self.labels.describe(),
        }

    # ------------------------------------------------------------------ reading
    def acquisition_folder(self, modality: str, location_id: str, season: int) -> Path:
        """The folder of season ``season`` (the season-th acquisition in time order)."""
        loc_dir = self.root / MODALITY_DIRS[modality] / location_id
        if not loc_dir.is_dir():
            raise NoImageFound(f"ssl4eo_local: no {modality} folder for location {location_id}: {loc_dir}")
        folders = list_acquisitions(loc_dir)
        if season < 0 or season >= len(folders):
            raise NoImageFound(
                f"ssl4eo_local: no {modality} acquisition for season {season} in {loc_dir} "
                f"({len(folders)} acquisition folder(s); season i is the i-th in time order)")
        return folders[season]

    def _read_band(self, path: Path, out: np.ndarray, modality: str) -> tuple[tuple[int, int], Any, tuple]:
        """Read one band into ``out`` (size × size, resampled); return its native shape, CRS and bounds."""
        if not path.is_file():
            raise CorruptData(f"ssl4eo_local: missing band file {path}")
        size = out.shape[-1]
        expected = out.dtype
        try:
            with rasterio.open(path) as src:
                dtype = np.dtype(src.dtypes[0])
                if expected.kind == "u" and dtype.kind not in "ui":
                    raise CorruptData(f"ssl4eo_local: {path} holds {dtype}, expected integer DN for {modality}")
                if expected.kind == "f" and dtype.kind != "f":
                    raise CorruptData(f"ssl4eo_local: {path} holds {dtype}, expected float dB for {modality}")
                native = (src.height, src.width)
                resampling = RESAMPLING[self.resampling] if native != (size, size) else Resampling.nearest
                if dtype == expected:  # straight into the patch array: no temporary, no copy
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
        extra: dict[str, str] = {"season_pairing": "acquisition-order"}
        with rasterio.Env():  # one GDAL environment for all the band files of this season
            images, extra, footprint = self._read_modalities(location, window, modalities, size, extra)
        if footprint is None and self.labels is not None:
            footprint = self._footprint(location.id, window.season)
        if footprint is not None:
            extra["native_crs"] = footprint[0]
            extra["native_bounds"] = json.dumps(list(footprint[1]))
        label = None
        if self.labels is not None and footprint is not None:
            target = RasterGrid.from_bounds(footprint[0], footprint[1], (size, size))
            label = self.labels.label_map(target)
        return SeasonSample(images=images, label=label, extra=extra)

    def _read_modalities(self, location: Location, window: SeasonWindow, modalities: dict[str, tuple[str, ...]],
                         size: int, extra: dict[str, str]):
        images: dict[str, ModalityImage] = {}
        footprint: tuple[str, tuple] | None = None
        for name in MODALITY_BANDS:  # canonical modality order: L1C, L2A, S1
            if name not in modalities:
                continue
            folder = self.acquisition_folder(name, location.id, window.season)
            order = [b for b in MODALITY_BANDS[name] if b in set(modalities[name])]
            data = np.empty((len(order), size, size), dtype=MODALITY_DTYPES[name])
            finest: tuple[int, Any, tuple] | None = None
            for k, band in enumerate(order):
                native, crs, bounds = self._read_band(_band_path(folder, band), data[k], name)
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

    def _footprint(self, location_id: str, season: int) -> tuple[str, tuple] | None:
        """Native CRS and bounds of the first band file found for the location (labels-only requests)."""
        for name in MODALITY_BANDS:
            try:
                folder = self.acquisition_folder(name, location_id, season)
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
