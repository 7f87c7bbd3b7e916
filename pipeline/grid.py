"""The patch grid: a square of ``size`` × ``size`` pixels of ``resolution`` metres in the location's UTM CRS."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.locations import Location


@dataclass(frozen=True)
class PatchGrid:
    epsg: int
    x0: float  # west edge (m)
    y0: float  # north edge (m)
    resolution: float  # metres per pixel
    size: int  # pixels per side

    @classmethod
    def for_location(cls, location: Location, size: int, resolution: float) -> "PatchGrid":
        """Grid centred on the location, edges snapped to whole metres so every source agrees on it."""
        half = size * resolution / 2.0
        return cls(
            epsg=location.epsg,
            x0=float(round(location.x - half)),
            y0=float(round(location.y + half)),
            resolution=float(resolution),
            size=int(size),
        )

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL/rasterio affine coefficients (a, b, c, d, e, f): x = a·col + c, y = e·row + f."""
        return (self.resolution, 0.0, self.x0, 0.0, -self.resolution, self.y0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in the grid CRS."""
        extent = self.size * self.resolution
        return (self.x0, self.y0 - extent, self.x0 + extent, self.y0)
