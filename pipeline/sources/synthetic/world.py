"""The latent world of the synthetic source: static land cover and the variables that drive rendering.

Smooth multi-octave noise fields (:mod:`pipeline.sources.synthetic.fields`) are cut by quantile
thresholds into the 9 Dynamic World classes, in this order of precedence: water (lakes in low ground,
rivers as the zero-contour of a large-scale field, coasts as a noisy half-plane), permanent snow
(synthetic elevation above a latitude-dependent snowline), flooded vegetation (near water), built,
agriculture (rotated rectangular parcels, each crops or pasture), then natural cover (trees / shrub /
grass / bare from a vegetation field, aridity and a treeline).

Every share and probability is our choice. Locations carry no distance to their city, so each gets a
distance drawn from a Rayleigh(50 km) law: the radial law of the sampling offsets of SSL4EO-S12, which
draws patch centres from a Gaussian with σ = 50 km around each city (Wang et al. 2022, "SSL4EO-S12: A
Large-Scale Multi-Modal, Multi-Temporal Dataset for Self-Supervised Learning in Earth Observation",
arXiv:2211.07044). ``urbanness = exp(-d / 12 km)`` drives the built share and, inversely, the
agricultural share. Aridity peaks near 24° latitude; the snowline falls from 5000 m at 20° to ~300 m
at 75°.

The seasonal state (:func:`season_phase`, :func:`crop_canopy`, :func:`seasonal_cover`) is derived from
the window centre date, mirrored for the southern hemisphere, with an amplitude growing with latitude.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.locations import Location
from pipeline.sources import signatures as sig
from pipeline.sources.synthetic.fields import (
    ST_FIELDS,
    ST_PARCELS,
    ST_PLACE,
    ST_TEXTURE,
    normalise,
    seeded_rng,
    smooth_fields,
    top_fraction,
    zoom_to,
)

# --------------------------------------------------------------------------- the static world
#: Kinds of open water kept in :attr:`World.water_kind` (where two overlap, sea > river > lake).
WATER_NONE, WATER_LAKE, WATER_RIVER, WATER_SEA = 0, 1, 2, 3


@dataclass(frozen=True)
class Place:
    """Per-location attributes, drawn once from (seed, location index) and the latitude."""

    lat: float
    abs_lat: float
    dist_km: float  # our stand-in for the distance to the city centre
    urban: float
    aridity: float
    seasonality: float  # amplitude of the temperate seasonal cycle, 0 (tropics) … 1 (≥ 42°)
    continentality: float  # scales seasonal snow
    snowline: float  # permanent snowline (m)
    treeline: float
    turbidity: float
    sandiness: float
    snow_brightness: float
    crop_shift_days: float


@dataclass(frozen=True)
class World:
    """The static world of one location on one patch grid (arrays are read-only)."""

    place: Place
    lc: np.ndarray  # (H, W) uint8 static land cover
    elev: np.ndarray  # (H, W) float32 metres
    slope: np.ndarray  # (2, H, W) float32: dE/d(east), dE/d(north) in m/m
    snow_noise: np.ndarray  # (H, W) unit-std field for patchy seasonal snow
    parcel: np.ndarray  # (H, W) int32 parcel id (everywhere; only used on crop pixels)
    parcel_peak: np.ndarray  # (n, 2) float32 day of peak canopy (season-effective doy), NaN = none
    parcel_winter: np.ndarray  # (n,) bool winter cereal (green plateau through winter)
    parcel_vigour: np.ndarray  # (n,) float32 canopy scale
    decid: np.ndarray  # (H, W) float32 deciduous fraction of tree pixels
    water_kind: np.ndarray  # (H, W) uint8 WATER_NONE / WATER_LAKE / WATER_RIVER / WATER_SEA (sea > river > lake)
    farmland: np.ndarray  # (H, W) bool agricultural land: crop parcels and pasture
    tex: np.ndarray  # (2, H, W) float32 unit-std S2 texture: brightness, vigour
    s1_tex: np.ndarray  # (2, H, W) float32 unit-std S1 texture: VV, VH


def draw_place(seed: int, loc: Location) -> tuple[Place, dict[str, float]]:
    """Draw the per-location attributes and the land-cover shares used by :func:`build_world`.

    Args:
        seed: The world seed (``SyntheticSourceOptions.seed``).
        loc: The location; its index keys the random stream, its latitude drives climate.

    Returns:
        The :class:`Place` and a dict of scalar shares and draws (elevation, water, farming, natural cover).
    """
    r = seeded_rng(ST_PLACE, seed, loc.index)
    u = r.random(24)  # fixed number of draws: every attribute has its own slot
    alat = min(abs(float(loc.lat)), 90.0)
    dist_km = 50.0 * math.sqrt(-2.0 * math.log(1.0 - u[0]))
    urban = math.exp(-dist_km / 12.0)
    aridity = float(np.clip(0.6 * math.exp(-(((alat - 24.0) / 11.0) ** 2)) + 0.25 * r.standard_normal(), 0, 1))
    snowline = 5000.0 - 4700.0 * float(np.clip((alat - 20.0) / 55.0, 0, 1)) ** 0.8
    montane = u[1] < 0.06
    elev_base = 600.0 + 2400.0 * u[2] if montane else -300.0 * math.log(1.0 - u[2])
    elev_base = min(elev_base, max(0.0, snowline - 400.0))  # settlements lie below the snowline
    relief = 20.0 + -(40.0 + 0.35 * elev_base) * math.log(1.0 - u[3])
    humid = 1.0 - aridity
    # shares of the natural / agricultural land (ours)
    ag_share = (0.75 * humid + 0.25) * 1.1 * u[4] * (1.0 - 0.6 * urban)
    if elev_base > 1500:
        ag_share *= 0.5
    if alat > 58:
        ag_share *= 0.3
    if u[5] < 0.3:  # no farming in this patch
        ag_share = 0.0
    boreal = float(np.clip((alat - 50.0) / 10.0, 0, 1))
    tropical = float(np.clip((25.0 - alat) / 5.0, 0, 1))
    decid_share = float(np.clip(0.75 - 0.55 * boreal - 0.55 * tropical + 0.2 * (u[6] - 0.5), 0.05, 0.95))
    # natural cover (trees, grass, shrub, bare): one dominant class drawn from an aridity-driven prior,
    # a second one half of the time and a third one rarely, so that label sets vary (ours)
    prior = np.array([humid ** 2 + 0.05, 0.5, 0.1 + aridity, 0.02 + aridity ** 2])
    order = r.choice(4, size=4, replace=False, p=prior / prior.sum())
    natural = np.zeros(4)
    natural[order[0]] = 1.0
    if u[19] < 0.5:
        natural[order[1]] = 0.1 + 0.5 * u[20]
    if u[21] < 0.15:
        natural[order[2]] = 0.05 + 0.3 * u[17]
    natural /= natural.sum()
    shares = {
        "elev_base": elev_base,
        "relief": relief,
        "village": 0.06 * float(r.beta(0.6, 2.5)) * (u[18] < 0.6),
        "lake_p": 0.2 + 0.35 * float(np.clip((alat - 48.0) / 15.0, 0, 1)),
        "lake_u": u[7], "lake_frac": 0.03 + 0.35 * float(r.beta(1.2, 3.0)),
        "river_u": u[8], "river_frac": 0.01 + 0.05 * u[9],
        "coast_u": u[10], "coast_frac": 0.1 + 0.5 * u[11], "coast_angle": 2 * math.pi * u[12],
        "flood_u": u[13], "flood_frac": 0.15 + 0.35 * u[14], "flood_dist_m": 30.0 + 120.0 * u[15],
        "ag_share": float(np.clip(ag_share, 0, 0.92)),
        "crop_share": 0.3 + 0.7 * u[16],
        "trees_share": float(natural[0]),
        "bare_share": float(natural[3]),
        "shrub_frac": float(natural[2] / max(natural[1] + natural[2], 1e-6)),
        "decid_share": decid_share,
        "urban_angle": 2 * math.pi * u[22],
    }
    place = Place(
        lat=float(loc.lat), abs_lat=alat, dist_km=dist_km, urban=urban, aridity=aridity,
        seasonality=float(np.clip((alat - 12.0) / 30.0, 0, 1)),
        continentality=0.3 + 1.0 * u[23],
        snowline=snowline, treeline=snowline - 900.0,
        turbidity=0.6 * float(r.beta(1.2, 4.0)),
        sandiness=float(np.clip(aridity * 1.4 - 0.4, 0, 1)) * float(r.random()),
        snow_brightness=0.75 + 0.25 * float(r.random()),
        crop_shift_days=-25.0 * float(np.clip((45.0 - alat) / 20.0, -1, 1)) + 10.0 * float(r.standard_normal()),
    )
    return place, shares


def build_world(seed: int, loc: Location, size: int, res: float) -> World:
    """Generate the static land cover and the per-pixel variables of one location.

    Args:
        seed: The world seed.
        loc: The location.
        size: Patch size in pixels (square grid).
        res: Pixel size in metres.

    Returns:
        The read-only :class:`World`.
    """
    place, s = draw_place(seed, loc)
    extent = size * res
    rf = seeded_rng(ST_FIELDS, seed, loc.index)
    large = smooth_fields(rf, 3, size, extent, (3000.0, 1500.0, 750.0, 375.0), 0.5)
    mid = smooth_fields(rf, 7, size, extent, (1500.0, 750.0, 375.0, 190.0, 95.0), 0.6)
    fine = smooth_fields(rf, 1, size, extent, (800.0, 400.0, 200.0, 100.0, 50.0), 0.8)
    f_elev, f_river, f_coast = large
    f_lake, f_wet, f_ag, f_veg, f_shrub, f_decid, snow_noise = mid
    f_built = fine[0]

    elev = (s["elev_base"] + s["relief"] * f_elev).astype(np.float32)
    g_row, g_col = np.gradient(elev, res)
    slope = np.stack([g_col, -g_row]).astype(np.float32)  # rows run south

    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(-coords, coords, indexing="ij")  # yy grows north, xx east, in patch units

    water = np.zeros((size, size), bool)
    water_kind = np.zeros((size, size), np.uint8)
    if s["lake_u"] < s["lake_p"]:
        lake = top_fraction(f_lake - 0.6 * f_elev, s["lake_frac"])
        water |= lake
        water_kind[lake] = WATER_LAKE
    if s["river_u"] < 0.22:
        river = top_fraction(-np.abs(f_river), s["river_frac"])
        water |= river
        water_kind[river] = WATER_RIVER
    if s["coast_u"] < 0.12:
        a = s["coast_angle"]
        sea = top_fraction(3.0 * (xx * math.cos(a) + yy * math.sin(a)) + 0.6 * f_coast, s["coast_frac"])
        water |= sea
        water_kind[sea] = WATER_SEA

    flooded = np.zeros_like(water)
    if water.any():
        if s["flood_u"] < 0.45:
            dist = ndimage.distance_transform_edt(~water) * res
            flooded = top_fraction(f_wet, s["flood_frac"], (dist < s["flood_dist_m"]) & ~water)
    elif s["flood_u"] < 0.06:  # a marsh in the lowest ground
        flooded = top_fraction(f_wet - f_elev, 0.05 + 0.1 * s["flood_frac"])

    snow = (elev + 60.0 * snow_noise > place.snowline) & ~water
    land = ~(water | flooded | snow)
    n_land = int(land.sum())

    lc = np.full((size, size), sig.GRASS, np.uint8)
    lc[water] = sig.WATER
    lc[flooded] = sig.FLOODED
    lc[snow] = sig.SNOW
    built = np.zeros_like(water)
    if n_land:
        built_frac = min(0.9, 0.85 * place.urban + s["village"]) * size * size / n_land
        a = s["urban_angle"]
        toward_centre = (xx * math.cos(a) + yy * math.sin(a)) * 4.0 * place.urban
        built = top_fraction(f_built + toward_centre, built_frac, land)
    lc[built] = sig.BUILT
    rest = land & ~built
    ag = top_fraction(f_ag, s["ag_share"], rest)
    nat = rest & ~ag

    # agricultural parcels: a rotated irregular rectangular grid (ours)
    rp = seeded_rng(ST_PARCELS, seed, loc.index)
    theta = rp.uniform(0, math.pi / 2)
    field_px = rp.uniform(80.0, 600.0) / res
    aspect = rp.uniform(0.4, 1.0)
    px = xx * size
    py = yy * size
    uu = px * math.cos(theta) + py * math.sin(theta)
    vv = -px * math.sin(theta) + py * math.cos(theta)
    half = 0.75 * size
    n_cuts = int(math.ceil(2 * half / (0.5 * field_px * aspect))) + 2
    cuts_u = -half + np.cumsum(rp.uniform(0.5, 1.5, n_cuts) * field_px)
    cuts_v = -half + np.cumsum(rp.uniform(0.5, 1.5, n_cuts) * field_px * aspect)
    parcel = (np.searchsorted(cuts_u, uu) * (n_cuts + 1) + np.searchsorted(cuts_v, vv)).astype(np.int32)
    n_parcels = (n_cuts + 1) ** 2
    pu = rp.random((n_parcels, 6))
    is_crop = pu[:, 0] < s["crop_share"]
    if place.seasonality < 0.3:  # tropics: one or two crop cycles at any time of year
        peak = np.stack([pu[:, 1] * 365.0, np.where(pu[:, 2] < 0.5, (pu[:, 1] * 365.0 + 182.0) % 365.0, np.nan)], 1)
        winter = np.zeros(n_parcels, bool)
    else:
        winter = pu[:, 1] < 0.4
        p1 = np.where(winter, 150.0, 200.0) + place.crop_shift_days + 30.0 * (pu[:, 2] - 0.5)
        peak = np.stack([p1 % 365.0, np.full(n_parcels, np.nan)], 1)
    vigour = (0.75 + 0.25 * pu[:, 3]).astype(np.float32)
    parcel_tex = rp.standard_normal((2, n_parcels)).astype(np.float32)
    crops = ag & is_crop[parcel]
    lc[crops] = sig.CROPS  # the other agricultural parcels stay pasture (grass)

    # natural cover
    above_tree = np.clip((elev - place.treeline) / 300.0, 0, 1)
    veg = f_veg - 3.0 * above_tree
    trees = top_fraction(veg, s["trees_share"], nat) & (above_tree < 0.5)
    bare = top_fraction(-veg, s["bare_share"], nat & ~trees) | (nat & (above_tree >= 1) & (f_veg < 0))
    bare &= ~trees
    middle = nat & ~trees & ~bare
    shrub = top_fraction(f_shrub, s["shrub_frac"], middle)
    lc[trees] = sig.TREES
    lc[bare] = sig.BARE
    lc[shrub] = sig.SHRUB

    decid = np.clip(s["decid_share"] + 0.35 * f_decid, 0, 1).astype(np.float32)

    # texture: between-field (smooth, or per parcel on agricultural land) + within-field (10–20 m grain)
    rt = seeded_rng(ST_TEXTURE, seed, loc.index)
    coarse = smooth_fields(rt, 4, size, extent, (600.0, 300.0, 150.0), 0.7)
    half_px = max(4, -(-size // 2))
    grain = normalise(zoom_to(rt.standard_normal((4, half_px, half_px), dtype=np.float32), size, order=1))
    grain = normalise(0.8 * grain + 0.6 * rt.standard_normal((4, size, size), dtype=np.float32))  # 10 m detail
    between = coarse[:2].copy()
    between[:, ag] = parcel_tex[:, parcel[ag]]
    w_between = np.where(lc == sig.BUILT, 0.5, 1.0).astype(np.float32)
    w_fine = np.where(lc == sig.BUILT, 1.0, 0.5).astype(np.float32)
    tex = (w_between * between + w_fine * grain[:2]) / np.float32(math.sqrt(1.25))
    s1_vv = 0.6 * coarse[2] + 0.8 * grain[2]
    s1_vh = 0.8 * s1_vv + 0.6 * (0.6 * coarse[3] + 0.8 * grain[3])
    s1_tex = np.stack([s1_vv, s1_vh]).astype(np.float32)

    arrays = dict(lc=lc, elev=elev, slope=slope, snow_noise=snow_noise, parcel=parcel, decid=decid,
                  water_kind=water_kind, farmland=ag, tex=tex.astype(np.float32), s1_tex=s1_tex)
    for a in arrays.values():
        a.flags.writeable = False
    return World(place=place, parcel_peak=peak.astype(np.float32), parcel_winter=winter,
                  parcel_vigour=vigour, **arrays)


# --------------------------------------------------------------------------- seasons
def season_phase(place: Place, date: dt.date) -> tuple[float, float]:
    """(season-effective day of year, winterness 0..1) for a date; southern hemisphere mirrored."""
    doy = float(date.timetuple().tm_yday)
    doy_eff = doy if place.lat >= 0 else (doy + 182.0) % 365.0
    greenness = 0.5 - 0.5 * math.cos(2 * math.pi * (doy_eff - 20.0) / 365.25)  # 0 mid-Jan … 1 mid-Jul
    return doy_eff, place.seasonality * (1.0 - greenness)


def circ_days(a: np.ndarray, b: float | np.ndarray) -> np.ndarray:
    """Signed circular difference a − b in days, in [−182.5, 182.5)."""
    return (a - b + 182.5) % 365.0 - 182.5


def crop_canopy(world: World, doy_eff: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-parcel canopy cover c in [0, 1] and whether the parcel is past its peak (stubble)."""
    d = circ_days(np.float32(doy_eff), world.parcel_peak)  # (n, 2) now − peak: negative before the peak
    bump = np.exp(-0.5 * (np.nan_to_num(d, nan=1e3) / 32.0) ** 2)
    k = np.argmax(bump, axis=1)
    near = d[np.arange(d.shape[0]), k]
    c = bump.max(axis=1)
    plateau = world.parcel_winter & (near > -170) & (near < -50)  # sown in autumn, green through winter
    c = np.where(plateau, np.maximum(c, 0.4), c)
    return (c * world.parcel_vigour).astype(np.float32), np.nan_to_num(near, nan=-1.0) > 0


def seasonal_cover(world: World, winter: float) -> np.ndarray:
    """The land cover of the season: the static cover with seasonal snow added where it falls.

    Args:
        world: The static world.
        winter: Winterness 0..1 from :func:`season_phase`.

    Returns:
        ``world.lc`` itself when no pixel is snowy, else a copy with snowy pixels set to snow.
    """
    place = world.place
    snow_w = winter * float(np.clip((place.abs_lat - 30.0) / 25.0, 0, 1)) * place.continentality
    if snow_w <= 0:
        return world.lc
    line = place.snowline * (1.0 - 1.2 * snow_w)
    snowy = world.elev + 150.0 * world.snow_noise > line
    snowy &= world.lc != sig.BUILT
    if snow_w < 0.8:
        snowy &= world.lc != sig.WATER  # lakes freeze only in a hard winter
    if not snowy.any():
        return world.lc
    lc = world.lc.copy()
    lc[snowy] = sig.SNOW
    return lc
