"""The patch grid: a square of ``size`` × ``size`` pixels of ``resolution`` metres in the location's UTM CRS.

**Snapping rule.** Every patch grid is snapped to the pixel lattice of its UTM zone: its upper-left
corner (west edge ``x0``, north edge ``y0``) lies on a multiple of the *lattice step* in UTM metres,
where the step is the least common multiple of ``lattice_m`` (default :data:`S2_LATTICE_M` = 60 m)
and the grid resolution. Sentinel-2 L1C/L2A products are 109,800 m tiles of the UTM zone (ESA,
*Sentinel-2 Products Specification Document*, tiling grid) whose upper-left corners are multiples of
60 m, so each of their 10 m, 20 m and 60 m pixel lattices passes through those corners. BigEarthNet
v1.0 patches (1200 m squares cut from L2A tiles, Sumbul et al. 2019) show it: their B02 (10 m), B05
(20 m) and B01 (60 m) files share corners such as (404400, 5342400) in EPSG:32633 (patch 87_48 of
tile 33UUP: 87 × 1200 m east and 48 × 1200 m south of the tile corner (300000, 5400000)); other
tiles give ULX 499980 or 600000 and ULY
5900040 or 7000020, all multiples of 60 m. Dynamic World labels are computed on the 10 m lattice of
the same tiles. A patch whose corner is a multiple of 60 m therefore has its 10 m pixels on the S2 10 m
pixels, its 20 m and 60 m sub-grids (:meth:`PatchGrid.at_resolution`) on the S2 20 m and 60 m
pixels, and its label pixels on the DW pixels, with no sub-pixel shift between products.

Our choices (configurable through ``lattice_m``): the step is 60 m rather than 10 m, so that the
20 m and 60 m products share the corner too; for a resolution that does not divide 60 m the step is
its lcm with 60 m (e.g. 300 m for 25 m pixels), so the corner is always on the grid's own lattice.
The corner is the nearest lattice point (halves go east/north) to the unsnapped corner
(centre ∓ half the extent), so the patch centre moves by at most half a step (30 m) from the
sampled location in each axis; the grid still contains the location for any patch of at least one
step. :func:`snap_corner` is the one implementation of the rule: :meth:`PatchGrid.for_location`
(used by curation for every source) and the sampling footprints
(:func:`pipeline.sampling.locations_to_geodataframe`) both call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from pipeline.locations import Location

#: Default lattice (m) of patch corners: Sentinel-2 tile origins are multiples of 60 m (see the module docstring).
S2_LATTICE_M = 60.0


def _fraction(value: float, name: str) -> Fraction:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return Fraction(repr(v))  # the decimal as written: 0.1 → 1/10, not the binary float


def lattice_step(resolution: float, lattice_m: float = S2_LATTICE_M) -> float:
    """Step (m) of the corner lattice: the least common multiple of ``lattice_m`` and ``resolution``.

    Both are taken as the decimals they are written as; lcm(a/b, c/d) = lcm(a, c) / gcd(b, d) in
    lowest terms. 60 m for 10, 20 and 60 m grids with the default ``lattice_m``.
    """
    a, r = _fraction(lattice_m, "lattice_m"), _fraction(resolution, "resolution")
    step = Fraction(math.lcm(a.numerator, r.numerator), math.gcd(a.denominator, r.denominator))
    return float(step)


def snap_corner(x: Any, y: Any, size: int, resolution: float,
                lattice_m: float = S2_LATTICE_M) -> tuple[Any, Any]:
    """Upper-left corner ``(x0, y0)`` of the patch grid centred on ``(x, y)`` (UTM metres).

    ``x - half`` and ``y + half`` (``half`` = half the extent ``size × resolution``) are each moved
    to the nearest multiple of :func:`lattice_step` (halves up). Works on floats (returns floats)
    and on numpy arrays (returns float64 arrays); both give the same numbers.
    """
    step = lattice_step(resolution, lattice_m)
    half = int(size) * float(resolution) / 2.0
    x0 = np.floor((np.asarray(x, dtype=np.float64) - half) / step + 0.5) * step
    y0 = np.floor((np.asarray(y, dtype=np.float64) + half) / step + 0.5) * step
    if np.ndim(x0) == 0 and np.ndim(y0) == 0:
        return float(x0), float(y0)
    return x0, y0


def grid_record(size: int, resolution: float, lattice_m: float = S2_LATTICE_M) -> dict[str, Any]:
    """JSON description of the grid rule (stored in the archive attributes as ``patch_grid``).

    With the archive coordinates ``epsg``, ``utm_x`` and ``utm_y`` it rebuilds every patch grid:
    ``PatchGrid.for_location(location, size_px, resolution_m, lattice_m)``.
    """
    return {
        "size_px": int(size),
        "resolution_m": float(resolution),
        "lattice_m": float(lattice_m),
        "step_m": lattice_step(resolution, lattice_m),
        "crs": "the patch's epsg coordinate (local UTM zone)",
        "corner": ("upper-left corner = (utm_x - half, utm_y + half), half = size_px * resolution_m / 2, "
                   "each moved to the nearest multiple of step_m = lcm(lattice_m, resolution_m), halves up"),
    }


@dataclass(frozen=True)
class PatchGrid:
    epsg: int
    x0: float  # west edge (m)
    y0: float  # north edge (m)
    resolution: float  # metres per pixel
    size: int  # pixels per side

    @classmethod
    def for_location(cls, location: Location, size: int, resolution: float,
                     lattice_m: float = S2_LATTICE_M) -> PatchGrid:
        """Grid centred (within half a lattice step) on the location, corner snapped by :func:`snap_corner`."""
        x0, y0 = snap_corner(location.x, location.y, size, resolution, lattice_m)
        return cls(epsg=location.epsg, x0=x0, y0=y0, resolution=float(resolution), size=int(size))

    def at_resolution(self, resolution: float) -> PatchGrid:
        """The same patch at another pixel size, sharing the upper-left corner exactly.

        ``size`` = extent / ``resolution``, rounded up when not whole: the grid then reaches past the
        patch's east and south edges by less than one of its pixels. For the default lattice the 20 m
        and 60 m grids of a 10 m patch lie on the Sentinel-2 20 m and 60 m pixels (module docstring).
        """
        r = float(resolution)
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"resolution must be a finite number > 0, got {resolution!r}")
        exact = self.size * self.resolution / r
        size = round(exact) if abs(exact - round(exact)) < 1e-9 else math.ceil(exact)
        return PatchGrid(epsg=self.epsg, x0=self.x0, y0=self.y0, resolution=r, size=int(size))

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
