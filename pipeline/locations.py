"""A sampled location: stable id, lon/lat, local UTM zone and the patch centre in that CRS."""

from __future__ import annotations

from dataclasses import dataclass


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS84 UTM zone containing (lon, lat): 326xx north, 327xx south."""
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def patch_id(index: int) -> str:
    """Stable 7-digit location id, as in the released SSL4EO-S12 (e.g. ``0000200``)."""
    if index < 0 or index > 9_999_999:
        raise ValueError(f"location index {index} does not fit a 7-digit id")
    return f"{index:07d}"


@dataclass(frozen=True)
class Location:
    """One location. ``index`` is its row in the archive's ``patch`` dimension."""

    index: int
    lon: float
    lat: float
    epsg: int  # local UTM zone
    x: float  # patch centre easting in ``epsg`` (m)
    y: float  # patch centre northing in ``epsg`` (m)
    city: str = ""
    source_id: str = ""  # the source's own location id when it has one (a local SSL4EO-S12 folder name)

    @property
    def id(self) -> str:
        """The location's id: the source's own id, or the 7-digit form of ``index``."""
        return self.source_id or patch_id(self.index)
