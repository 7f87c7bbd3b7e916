"""Layout of a local SSL4EO-S12 copy: modality, location and acquisition folders, metadata, locations.

Layout of the released dataset (Wang et al. 2022, arXiv:2211.07044, distributed at
https://mediatum.ub.tum.de/1660427) and of rico-hdl's sample::

    <root>/{s1|s2a|s2c}/{location:07d}/{acquisition folder}/{band}.tif
                                                           /metadata.json

``s2c`` holds Sentinel-2 L1C (13 bands, ``s2_l1c``), ``s2a`` L2A (12 bands, no B10, ``s2_l2a``) and
``s1`` Sentinel-1 GRD (VV, VH in dB, ``s1_grd``). Band files are named without zero padding
(``B1.tif``, ``B8A.tif``). Each band is stored at its native resolution over the same ~2.64 km
square: 264 px (10 m), 132 px (20 m) or 44 px (60 m), in EPSG:4326.

The acquisition time is the first ``YYYYMMDDTHHMMSS`` stamp of the folder name (S2: sensing time;
S1: start time), else ``system:time_start`` from ``metadata.json``.

**Locations without data.** :func:`list_local_locations` skips a location folder none of whose
modality folders holds a band file (empty folders, or acquisition folders without ``.tif`` files)
and logs a warning naming its folders; it is never dropped silently.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from pathlib import Path

import pyproj
import rasterio
from rasterio.errors import RasterioError

from pipeline.bands import MODALITY_BANDS
from pipeline.locations import Location, utm_epsg
from pipeline.sources.base import CorruptData

#: Modality name → folder name in the SSL4EO-S12 layout.
MODALITY_DIRS: dict[str, str] = {"s2_l1c": "s2c", "s2_l2a": "s2a", "s1_grd": "s1"}
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



def band_path(folder: Path, band: str) -> Path:
    """The file of ``band`` in an acquisition folder (``B8A.tif``, ``VV.tif``: no zero padding)."""
    return folder / f"{band}.tif"


def first_band_file(root: Path, location_id: str) -> Path | None:
    """The first band file of a location: S2 L1C, then L2A, then S1 (acquisitions oldest first)."""
    for name in ("s2_l1c", "s2_l2a", "s1_grd"):
        loc_dir = root / MODALITY_DIRS[name] / location_id
        if not loc_dir.is_dir():
            continue
        for folder in list_acquisitions(loc_dir):
            for band in MODALITY_BANDS[name]:
                path = band_path(folder, band)
                if path.is_file():
                    return path
    return None


def list_local_locations(root: str | Path) -> list[Location]:
    """The locations of a local SSL4EO-S12 copy, sorted by id.

    ``index`` = position in that order (the archive row), ``source_id`` = the 7-digit folder id;
    lon/lat = centre of the bounds of the first S2 band file found (L1C, then L2A, then S1 as a
    fallback), assumed in EPSG:4326 or transformed to it; ``epsg`` = the UTM zone of that centre;
    x/y = the centre projected with pyproj.

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
        path = first_band_file(root, loc_id)
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
