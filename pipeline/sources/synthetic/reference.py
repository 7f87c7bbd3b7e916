"""A finer, CORINE-like reference land-cover product of the synthetic world (19 classes).

Dynamic World's 9 classes merge structure the synthetic world holds (:mod:`.world`): deciduous and
evergreen trees, crop calendars and pasture, kinds of open water, built density, permanent and
seasonal snow. This module exposes that structure as a second land-cover product with its own, finer
nomenclature, in the spirit of CORINE Land Cover (the nomenclature behind BigEarthNet's labels,
Sumbul et al. 2019, "BigEarthNet: A Large-Scale Benchmark Archive for Remote Sensing Image
Understanding", IGARSS; CLC nomenclature: European Environment Agency, "CORINE Land Cover product
user manual"). It is a transfer task: pretraining never reads it, evaluation does
(``ArchiveTask(target="reference")``).

Every pixel of the patch gets exactly one class from the world's variables, for one season (the
reference is the *truth* of the world: no label noise, no clouds). Mapping (first matching row wins;
``lc`` = static Dynamic World cover of :attr:`World.lc <pipeline.sources.synthetic.world.World.lc>`,
``lc_s`` = the season's cover of :func:`~pipeline.sources.synthetic.world.seasonal_cover`):

====  =======================  ====================================================================
 id   class                    world variables
====  =======================  ====================================================================
 17   permanent snow and ice   ``lc == SNOW`` (above the snowline)
 18   seasonal snow            ``lc_s == SNOW`` and ``lc != SNOW`` (winter snow, frozen lakes)
 12   lakes                    ``water_kind == WATER_LAKE``
 13   rivers                   ``water_kind == WATER_RIVER``
 14   sea                      ``water_kind == WATER_SEA`` (coast half-plane; sea > river > lake)
 11   inland wetland           ``lc == FLOODED``
 15   dense urban              ``lc == BUILT`` and built share of the 250 m square around ≥ 0.6
 16   sparse urban             ``lc == BUILT`` otherwise (villages, the city's fringe)
  5   double cropping          crop parcel with two canopy peaks a year (``parcel_peak[:, 1]`` set)
  4   winter cereals           crop parcel with ``parcel_winter`` (sown in autumn, green in winter)
  3   summer crops             any other crop parcel (one summer canopy peak)
  6   pasture                  ``farmland`` and ``lc == GRASS`` (the non-crop agricultural parcels)
  7   natural grassland        ``lc == GRASS`` outside farmland
  8   shrubland                ``lc == SHRUB``
  9   bare rock                ``lc == BARE`` and ``place.sandiness < 0.5``
 10   sand and dunes           ``lc == BARE`` and ``place.sandiness ≥ 0.5``
  0   evergreen forest         ``lc == TREES`` and ``decid < 1/3``
  1   deciduous forest         ``lc == TREES`` and ``decid > 2/3``
  2   mixed forest             ``lc == TREES`` otherwise
====  =======================  ====================================================================

The thresholds (1/3, 2/3; 0.6 over 250 m; 0.5 sandiness) are ours. The class fractions of a
(patch, season) are the pixel shares of each class over the whole patch (float64, summing to 1);
:mod:`pipeline.reference` turns them into the archive's ``reference_fraction`` and
``reference_multi_hot``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.sources import signatures as sig
from pipeline.sources.synthetic.world import WATER_LAKE, WATER_RIVER, WATER_SEA, World

#: The reference nomenclature, in class-index order.
REFERENCE_CLASSES: tuple[str, ...] = (
    "evergreen forest", "deciduous forest", "mixed forest",
    "summer crops", "winter cereals", "double cropping", "pasture",
    "natural grassland", "shrubland", "bare rock", "sand and dunes",
    "inland wetland", "lakes", "rivers", "sea",
    "dense urban", "sparse urban", "permanent snow and ice", "seasonal snow",
)
R = {name: i for i, name in enumerate(REFERENCE_CLASSES)}

#: Trees with a deciduous share below / above these are evergreen / deciduous forest (ours).
EVERGREEN_BELOW, DECIDUOUS_ABOVE = 1.0 / 3.0, 2.0 / 3.0
#: Built pixels whose surrounding square of this side has at least this built share are dense urban (ours).
URBAN_WINDOW_M, DENSE_URBAN_SHARE = 250.0, 0.6
#: Bare ground of places at least this sandy is sand and dunes, else bare rock (ours).
SAND_FROM = 0.5


def built_density(lc: np.ndarray, resolution_m: float) -> np.ndarray:
    """Share of built pixels in the ``URBAN_WINDOW_M`` square around each pixel (edges: nearest)."""
    width = max(1, int(round(URBAN_WINDOW_M / resolution_m)) | 1)  # odd, so the window is centred
    return ndimage.uniform_filter((lc == sig.BUILT).astype(np.float32), size=width, mode="nearest")


def reference_map(world: World, season_lc: np.ndarray, resolution_m: float) -> np.ndarray:
    """The reference class of every pixel for one season (the table of the module docstring).

    Args:
        world: The static world of the location.
        season_lc: The season's Dynamic World cover (:func:`~pipeline.sources.synthetic.world.seasonal_cover`).
        resolution_m: Pixel size in metres (sets the built-density window).

    Returns:
        (H, W) uint8 class indices into :data:`REFERENCE_CLASSES`; every pixel has one.
    """
    lc = world.lc
    out = np.full(lc.shape, 255, np.uint8)

    def put(mask: np.ndarray, name: str) -> None:
        out[mask & (out == 255)] = R[name]

    put(lc == sig.SNOW, "permanent snow and ice")
    put(season_lc == sig.SNOW, "seasonal snow")
    put(world.water_kind == WATER_LAKE, "lakes")
    put(world.water_kind == WATER_RIVER, "rivers")
    put(world.water_kind == WATER_SEA, "sea")
    put(lc == sig.FLOODED, "inland wetland")
    built = lc == sig.BUILT
    if built.any():
        dense = built_density(lc, resolution_m) >= DENSE_URBAN_SHARE
        put(built & dense, "dense urban")
        put(built, "sparse urban")
    crops = lc == sig.CROPS
    if crops.any():
        pid = world.parcel
        double = ~np.isnan(world.parcel_peak[:, 1])
        put(crops & double[pid], "double cropping")
        put(crops & world.parcel_winter[pid], "winter cereals")
        put(crops, "summer crops")
    grass = lc == sig.GRASS
    put(grass & world.farmland, "pasture")
    put(grass, "natural grassland")
    put(lc == sig.SHRUB, "shrubland")
    sandy = world.place.sandiness >= SAND_FROM
    put(lc == sig.BARE, "sand and dunes" if sandy else "bare rock")
    trees = lc == sig.TREES
    put(trees & (world.decid < EVERGREEN_BELOW), "evergreen forest")
    put(trees & (world.decid > DECIDUOUS_ABOVE), "deciduous forest")
    put(trees, "mixed forest")
    if (out == 255).any():  # a Dynamic World class the table does not cover: a bug in this module
        raise AssertionError(f"reference_map: classes {np.unique(lc[out == 255]).tolist()} left unmapped")
    return out


def reference_fraction(ref_map: np.ndarray) -> np.ndarray:
    """Pixel share of each reference class (float64, length ``len(REFERENCE_CLASSES)``, sums to 1)."""
    counts = np.bincount(ref_map.ravel(), minlength=len(REFERENCE_CLASSES)).astype(np.float64)
    return counts / counts.sum()
