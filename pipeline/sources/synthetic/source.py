"""The embedded deterministic synthetic world: a stand-in for Earth Engine that needs no network.

For one location and one seasonal window it renders what the real pipeline would download: Sentinel-2
L1C (13 bands) and L2A (12 bands) of one acquisition, Sentinel-1 GRD VV/VH (dB) of another, and the
Dynamic World (DW) label map matched to the L1C image. Every number is a pure function of
(``options.seed``, ``location.index``, season, grid), drawn from :func:`numpy.random.default_rng`
seeded with fixed-length integer tuples, so any process or thread reproduces the same arrays.

What is modelled, and where the numbers come from (shared specs, ``signatures.md``):

* **Land cover** (static per location, except seasonal snow). Smooth multi-octave noise fields, generated
  on a coarse grid and upsampled, are cut by quantile thresholds into the 9 DW classes, in this order of
  precedence: water (lakes in low ground, rivers as the zero-contour of a large-scale field, coasts as a
  noisy half-plane), permanent snow (synthetic elevation above a latitude-dependent snowline), flooded
  vegetation (near water), built, agriculture (rotated rectangular parcels, each crops or pasture),
  then natural cover (trees / shrub / grass / bare from a vegetation field, aridity and a treeline).
  *Our choices*: every share and probability. Locations carry no distance to their city, so each gets a
  distance drawn from a Rayleigh(50 km) law, the same law as the sampling offsets (softcon.md §1:
  Gaussian σ = 50 km around cities); ``urbanness = exp(-d / 12 km)`` drives the built share, and
  (inversely) the agricultural share. Aridity peaks near 24° latitude; the snowline falls from 5000 m
  at 20° to ~300 m at 75°.
* **S2 surface reflectance (L2A)**: §5 class means, §5 per-band spreads applied through two spatially
  correlated texture fields (brightness, and a vegetation-vigour component that moves visible/SWIR
  against red-edge/NIR), between-field variation per crop parcel, terrain shading from the elevation
  field. Phenology (§3) from the window centre date, mirrored for the southern hemisphere, with an
  amplitude growing with latitude: deciduous trees leaf-off, evergreen winter, grass and shrub dry/winter
  states, crops per parcel (summer crops, winter cereals, or double cropping in the tropics) between
  bare soil / stubble and peak canopy, seasonal snow cover at high latitude or elevation. The winter
  rows that §3 gives only in B4/B8/B11 are completed by us (see :mod:`pipeline.sources.signatures`).
* **S2 L1C** = T·L2A + P per band (§2b) with a per-scene haze factor on P and a per-scene B9
  transmittance (0.12–0.45, humid air lower); B10 = 10 ± 2 DN over clear sky (§1c, §2c).
  L2A is derived back from the noisy L1C with the inverse model, so over clouds L2A = (L1C − P)/T (§2b).
  20 m and 60 m bands are block-averaged to their native pixel, get their sensor noise there, and are
  resampled to the grid with the requested ``resampling`` (nearest / bilinear / cubic). Sensor noise
  σ = 5 DN + 0.4 % (ours).
* **Clouds** (§4): candidate S2 acquisitions every ``revisit_days`` with a per-location orbit phase; each
  is cloudy with probability ``cloud_probability`` (cover ~ Beta(0.7, 1.3), otherwise < 2 %).
  As Earth Engine's ``CLOUDY_PIXEL_PERCENTAGE < max`` filter followed by "most recent", the latest
  candidate under the threshold is taken, else :class:`NoImageFound`. The chosen cover is rendered
  exactly (quantile threshold of a smooth field): pixels with cloud opacity ≥ 0.5 are the cloud mask,
  their fraction is the reported ``cloud_pct``; a ~4 px semi-transparent rim (still labelled) blends
  into the surface. Cloud spectra are §4 thick low cloud, sometimes mixed with thick high cloud
  (B10 500–3000), with 7 % texture. Not modelled (ours): cloud shadows, cirrus-only scenes.
* **S1 GRD** (§5, §2d, §2e): per-class mean dB + 0.5 dB speckle bias + texture, seasonal crops VH rise,
  leaf-off trees, per-scene soil moisture and wind roughening of water (ours), then Gamma speckle in
  linear units with the spatially correlated recipe of §2e (Gamma(0.35), Gaussian σ = 1 px,
  renormalised). Its own acquisition: the most recent 6-day-revisit date in the window.
* **Dynamic World labels**: the land-cover truth of the season, with ``label_noise`` of the
  class-boundary pixels flipped to a neighbouring class, and ``LABEL_NODATA`` under the cloud mask.
  ``image_id`` equals the L1C id (method "matched").
* ``fail_rate`` simulates transient errors for a deterministic fraction of (location, season, attempt).

DN are pre-2022 (no +1000 offset), clipped to [1, 65535].
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.bands import (
    LABEL_NODATA,
    MODALITY_BANDS,
    S1_GRD_BANDS,
    S2_L1C_BANDS,
    S2_L2A_BANDS,
    S2_NATIVE_RESOLUTION_M,
)
from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.manifest import SyntheticSourceOptions
from pipeline.seasons import SeasonWindow
from pipeline.sources import signatures as sig
from pipeline.sources.base import (
    LabelMap,
    ModalityImage,
    NoImageFound,
    SeasonSample,
    TransientSourceError,
    check_modalities,
)

__all__ = ["SyntheticSource"]

MODEL_VERSION = "1"

# Random streams: the first element of every seed tuple, so that no two uses share a sequence.
_ST_PLACE, _ST_FIELDS, _ST_PARCELS, _ST_TEXTURE = 1, 2, 3, 4
_ST_S2_PHASE, _ST_S2_COVER, _ST_S2_SCENE, _ST_S2_NOISE = 11, 12, 13, 14
_ST_S1_PHASE, _ST_S1_META, _ST_S1_SCENE = 21, 22, 23
_ST_LABEL, _ST_FAIL = 31, 32

_RESAMPLING_ORDER = {"nearest": 0, "bilinear": 1, "cubic": 3}
_S2_EPOCH = dt.date(2015, 6, 27)  # first S2A acquisitions; only the phase of the revisit matters
_S1_EPOCH = dt.date(2014, 10, 3)
_S1_REVISIT_DAYS = 6
_S1_ORBIT_REF = {"S1A": dt.datetime(2014, 4, 7), "S1B": dt.datetime(2016, 4, 25)}
_S1B_END = dt.date(2021, 12, 23)
_L2A_IN_L1C = np.array([S2_L1C_BANDS.index(b) for b in S2_L2A_BANDS])
_B9_L1C, _B10_L1C = S2_L1C_BANDS.index("B9"), S2_L1C_BANDS.index("B10")
_WORLD_CACHE_SIZE = 8  # worlds are ~3 MB at 264 px; a location's seasons are fetched together
_CLOUD_EDGE_PX = 4.0  # width of the semi-transparent cloud rim (ours)


def _rng(stream: int, seed: int, *keys: int) -> np.random.Generator:
    """Generator seeded by a fixed-length tuple (stream, seed, up to 4 keys), each as two 32-bit words.

    The fixed length matters: numpy's SeedSequence pads short entropy with zeros, so variable-length
    tuples could collide.
    """
    if len(keys) > 4:
        raise ValueError("at most 4 keys")
    words: list[int] = []
    for k in (stream, seed, *keys, *([0] * (4 - len(keys)))):
        k = int(k) % (1 << 64)
        words += [k & 0xFFFFFFFF, k >> 32]
    return np.random.default_rng(words)


@functools.lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (n_out, taps) of a pixel-area-aligned 1-D resampling, edges clamped.

    Output pixel i samples the input at x = (i + 0.5)·n_in/n_out − 0.5 (the convention of GDAL and
    OpenCV resize): order 0 = nearest, 1 = linear, 3 = Keys cubic convolution (a = −0.5).
    """
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * n_in / n_out - 0.5
    if order == 0:
        idx = np.floor(x + 0.5)[:, None]
        w = np.ones_like(idx)
    elif order == 1:
        i0 = np.floor(x)
        f = (x - i0)[:, None]
        idx = i0[:, None] + np.arange(2)[None]
        w = np.concatenate([1 - f, f], axis=1)
    elif order == 3:
        i0 = np.floor(x)
        idx = i0[:, None] + np.arange(-1, 3)[None]
        d = np.abs(x[:, None] - idx)
        a = -0.5
        w = np.where(d <= 1, (a + 2) * d**3 - (a + 3) * d**2 + 1,
                     np.where(d < 2, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a, 0.0))
    else:
        raise ValueError(f"unsupported interpolation order {order}")
    idx = np.clip(idx, 0, n_in - 1).astype(np.intp)
    w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
    idx.flags.writeable = False
    w.flags.writeable = False
    return idx, w


def _zoom_to(a: np.ndarray, size: int, order: int) -> np.ndarray:
    """Resample the last two axes of a square ``a`` to ``size`` × ``size`` (separable, float32)."""
    n = a.shape[-1]
    if n == size:
        return a
    idx, w = _taps(n, size, order)
    rows = a[..., idx[:, 0], :] * w[:, 0, None]
    for t in range(1, idx.shape[1]):
        rows += a[..., idx[:, t], :] * w[:, t, None]
    out = rows[..., idx[:, 0]] * w[:, 0]
    for t in range(1, idx.shape[1]):
        out += rows[..., idx[:, t]] * w[:, t]
    return out


def _normalise(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit std along the last two axes (in place, float32)."""
    axes = (-2, -1)
    a -= a.mean(axis=axes, keepdims=True)
    a /= np.maximum(a.std(axis=axes, keepdims=True), 1e-6)
    return a


def _smooth_fields(
    rng: np.random.Generator, n: int, size: int, extent_m: float, scales_m: tuple[float, ...],
    persistence: float = 0.6,
) -> np.ndarray:
    """``n`` independent smooth random fields (n, size, size), float32, zero mean and unit std.

    Octaves of white noise with one cell per ``scale`` metres are spline-upsampled onto a grid a quarter
    of the final size, summed with weights ``persistence**k``, then bilinearly upsampled once.
    """
    mid = max(8, -(-size // 4))
    acc = np.zeros((n, mid, mid), np.float32)
    amp = 1.0
    for scale in scales_m:
        cells = int(np.clip(round(extent_m / scale), 2, mid))
        noise = rng.standard_normal((n, cells, cells), dtype=np.float32)
        acc += amp * _zoom_to(noise, mid, order=3)
        amp *= persistence
    return _normalise(_zoom_to(acc, size, order=1))


def _top(field: np.ndarray, frac: float, within: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the ``frac`` highest values of ``field`` (among ``within`` pixels)."""
    vals = field.ravel() if within is None else field[within]
    k = int(round(min(max(frac, 0.0), 1.0) * vals.size))
    if k <= 0:
        return np.zeros(field.shape, bool)
    thr = np.partition(vals, vals.size - k)[vals.size - k]
    out = field >= thr
    if within is not None:
        out &= within
    return out


# --------------------------------------------------------------------------- the static world
@dataclass(frozen=True)
class _Place:
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
class _World:
    place: _Place
    lc: np.ndarray  # (H, W) uint8 static land cover
    elev: np.ndarray  # (H, W) float32 metres
    slope: np.ndarray  # (2, H, W) float32: dE/d(east), dE/d(north) in m/m
    snow_noise: np.ndarray  # (H, W) unit-std field for patchy seasonal snow
    parcel: np.ndarray  # (H, W) int32 parcel id (everywhere; only used on crop pixels)
    parcel_peak: np.ndarray  # (n, 2) float32 day of peak canopy (season-effective doy), NaN = none
    parcel_winter: np.ndarray  # (n,) bool winter cereal (green plateau through winter)
    parcel_vigour: np.ndarray  # (n,) float32 canopy scale
    decid: np.ndarray  # (H, W) float32 deciduous fraction of tree pixels
    tex: np.ndarray  # (2, H, W) float32 unit-std S2 texture: brightness, vigour
    s1_tex: np.ndarray  # (2, H, W) float32 unit-std S1 texture: VV, VH


def _draw_place(seed: int, loc: Location) -> tuple[_Place, dict[str, float]]:
    r = _rng(_ST_PLACE, seed, loc.index)
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
    place = _Place(
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


def _build_world(seed: int, loc: Location, size: int, res: float) -> _World:
    place, s = _draw_place(seed, loc)
    extent = size * res
    rf = _rng(_ST_FIELDS, seed, loc.index)
    large = _smooth_fields(rf, 3, size, extent, (3000.0, 1500.0, 750.0, 375.0), 0.5)
    mid = _smooth_fields(rf, 7, size, extent, (1500.0, 750.0, 375.0, 190.0, 95.0), 0.6)
    fine = _smooth_fields(rf, 1, size, extent, (800.0, 400.0, 200.0, 100.0, 50.0), 0.8)
    f_elev, f_river, f_coast = large
    f_lake, f_wet, f_ag, f_veg, f_shrub, f_decid, snow_noise = mid
    f_built = fine[0]

    elev = (s["elev_base"] + s["relief"] * f_elev).astype(np.float32)
    g_row, g_col = np.gradient(elev, res)
    slope = np.stack([g_col, -g_row]).astype(np.float32)  # rows run south

    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(-coords, coords, indexing="ij")  # yy grows north, xx east, in patch units

    water = np.zeros((size, size), bool)
    if s["lake_u"] < s["lake_p"]:
        water |= _top(f_lake - 0.6 * f_elev, s["lake_frac"])
    if s["river_u"] < 0.22:
        water |= _top(-np.abs(f_river), s["river_frac"])
    if s["coast_u"] < 0.12:
        a = s["coast_angle"]
        water |= _top(3.0 * (xx * math.cos(a) + yy * math.sin(a)) + 0.6 * f_coast, s["coast_frac"])

    flooded = np.zeros_like(water)
    if water.any():
        if s["flood_u"] < 0.45:
            dist = ndimage.distance_transform_edt(~water) * res
            flooded = _top(f_wet, s["flood_frac"], (dist < s["flood_dist_m"]) & ~water)
    elif s["flood_u"] < 0.06:  # a marsh in the lowest ground
        flooded = _top(f_wet - f_elev, 0.05 + 0.1 * s["flood_frac"])

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
        built = _top(f_built + toward_centre, built_frac, land)
    lc[built] = sig.BUILT
    rest = land & ~built
    ag = _top(f_ag, s["ag_share"], rest)
    nat = rest & ~ag

    # agricultural parcels: a rotated irregular rectangular grid (ours)
    rp = _rng(_ST_PARCELS, seed, loc.index)
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
    trees = _top(veg, s["trees_share"], nat) & (above_tree < 0.5)
    bare = _top(-veg, s["bare_share"], nat & ~trees) | (nat & (above_tree >= 1) & (f_veg < 0))
    bare &= ~trees
    middle = nat & ~trees & ~bare
    shrub = _top(f_shrub, s["shrub_frac"], middle)
    lc[trees] = sig.TREES
    lc[bare] = sig.BARE
    lc[shrub] = sig.SHRUB

    decid = np.clip(s["decid_share"] + 0.35 * f_decid, 0, 1).astype(np.float32)

    # texture: between-field (smooth, or per parcel on agricultural land) + within-field (10–20 m grain)
    rt = _rng(_ST_TEXTURE, seed, loc.index)
    coarse = _smooth_fields(rt, 4, size, extent, (600.0, 300.0, 150.0), 0.7)
    half_px = max(4, -(-size // 2))
    grain = _normalise(_zoom_to(rt.standard_normal((4, half_px, half_px), dtype=np.float32), size, order=1))
    grain = _normalise(0.8 * grain + 0.6 * rt.standard_normal((4, size, size), dtype=np.float32))  # 10 m detail
    between = coarse[:2].copy()
    between[:, ag] = parcel_tex[:, parcel[ag]]
    w_between = np.where(lc == sig.BUILT, 0.5, 1.0).astype(np.float32)
    w_fine = np.where(lc == sig.BUILT, 1.0, 0.5).astype(np.float32)
    tex = (w_between * between + w_fine * grain[:2]) / np.float32(math.sqrt(1.25))
    s1_vv = 0.6 * coarse[2] + 0.8 * grain[2]
    s1_vh = 0.8 * s1_vv + 0.6 * (0.6 * coarse[3] + 0.8 * grain[3])
    s1_tex = np.stack([s1_vv, s1_vh]).astype(np.float32)

    arrays = dict(lc=lc, elev=elev, slope=slope, snow_noise=snow_noise, parcel=parcel, decid=decid,
                  tex=tex.astype(np.float32), s1_tex=s1_tex)
    for a in arrays.values():
        a.flags.writeable = False
    return _World(place=place, parcel_peak=peak.astype(np.float32), parcel_winter=winter,
                  parcel_vigour=vigour, **arrays)


# --------------------------------------------------------------------------- seasons
def _season_phase(place: _Place, date: dt.date) -> tuple[float, float]:
    """(season-effective day of year, winterness 0..1) for a date; southern hemisphere mirrored."""
    doy = float(date.timetuple().tm_yday)
    doy_eff = doy if place.lat >= 0 else (doy + 182.0) % 365.0
    greenness = 0.5 - 0.5 * math.cos(2 * math.pi * (doy_eff - 20.0) / 365.25)  # 0 mid-Jan … 1 mid-Jul
    return doy_eff, place.seasonality * (1.0 - greenness)


def _circ_days(a: np.ndarray, b: float | np.ndarray) -> np.ndarray:
    """Signed circular difference a − b in days, in [−182.5, 182.5)."""
    return (a - b + 182.5) % 365.0 - 182.5


def _crop_canopy(world: _World, doy_eff: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-parcel canopy cover c in [0, 1] and whether the parcel is past its peak (stubble)."""
    d = _circ_days(np.float32(doy_eff), world.parcel_peak)  # (n, 2) now − peak: negative before the peak
    bump = np.exp(-0.5 * (np.nan_to_num(d, nan=1e3) / 32.0) ** 2)
    k = np.argmax(bump, axis=1)
    near = d[np.arange(d.shape[0]), k]
    c = bump.max(axis=1)
    plateau = world.parcel_winter & (near > -170) & (near < -50)  # sown in autumn, green through winter
    c = np.where(plateau, np.maximum(c, 0.4), c)
    return (c * world.parcel_vigour).astype(np.float32), np.nan_to_num(near, nan=-1.0) > 0


def _sun_zenith_deg(lat: float, date: dt.date) -> float:
    """Solar zenith at ~10:30 local solar time (S2 overpass)."""
    doy = date.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (doy - 81) / 365.0)
    phi = math.radians(lat)
    h = math.radians(-22.5)
    cosz = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(h)
    return min(math.degrees(math.acos(max(-1.0, min(1.0, cosz)))), 78.0)


# --------------------------------------------------------------------------- ids
def _mgrs_tile(loc: Location) -> str:
    """A plausible MGRS tile name from the UTM zone, latitude band and 100 km square of the patch centre."""
    zone = int((loc.lon + 180.0) // 6.0) % 60 + 1
    band = "CDEFGHJKLMNPQRSTUVWX"[int(np.clip((loc.lat + 80.0) // 8.0, 0, 19))]
    cols = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3]
    col = cols[int(np.clip(loc.x // 100_000 - 1, 0, 7))]
    row = "ABCDEFGHJKLMNPQRSTUV"[(int(loc.y // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone:02d}{band}{col}{row}"


def _local_time(date: dt.date, lon: float, solar_hours: float) -> dt.datetime:
    hours = (solar_hours - lon / 15.0) % 24.0
    return dt.datetime.combine(date, dt.time()) + dt.timedelta(seconds=int(min(hours, 23.99) * 3600))


# --------------------------------------------------------------------------- the source
class SyntheticSource:
    """Deterministic synthetic Sentinel-1/2 + Dynamic World world (see the module docstring)."""

    name = "synthetic"
    synthetic = True

    def __init__(self, options: SyntheticSourceOptions, max_cloudy_pixel_percentage: float = 20.0,
                 resampling: str = "bilinear"):
        if resampling not in _RESAMPLING_ORDER:
            raise ValueError(f"resampling must be one of {sorted(_RESAMPLING_ORDER)}, got {resampling!r}")
        self.options = options
        self.max_cloudy_pixel_percentage = float(max_cloudy_pixel_percentage)
        self.resampling = resampling
        self._order = _RESAMPLING_ORDER[resampling]
        self._lock = threading.Lock()
        self._attempts: dict[tuple[int, int], int] = {}
        self._cache: OrderedDict[tuple, _World] = OrderedDict()

    # pickling (Dask workers): locks and caches are per process
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"], state["_cache"]
        state["_attempts"] = dict(self._attempts)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cache = OrderedDict()

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "synthetic": True,
            "model_version": MODEL_VERSION,
            "options": self.options.model_dump(mode="json"),
            "max_cloudy_pixel_percentage": self.max_cloudy_pixel_percentage,
            "resampling": self.resampling,
            "s2_dn_offset": 0,
            "signatures": "shared specs signatures.md §2b, §2e, §3, §4, §5",
        }

    # ------------------------------------------------------------------ helpers
    def _world(self, loc: Location, grid: PatchGrid) -> _World:
        key = (self.options.seed, loc.index, float(loc.lon), float(loc.lat), float(loc.x), float(loc.y),
               grid.size, grid.resolution)
        with self._lock:
            w = self._cache.get(key)
            if w is not None:
                self._cache.move_to_end(key)
                return w
        w = _build_world(self.options.seed, loc, grid.size, grid.resolution)
        with self._lock:
            self._cache[key] = w
            while len(self._cache) > _WORLD_CACHE_SIZE:
                self._cache.popitem(last=False)
        return w

    def _maybe_fail(self, loc: Location, window: SeasonWindow) -> None:
        if self.options.fail_rate <= 0:
            return
        key = (loc.index, window.season)
        with self._lock:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
        if _rng(_ST_FAIL, self.options.seed, loc.index, window.season, attempt).random() < self.options.fail_rate:
            raise TransientSourceError(
                f"synthetic source: simulated transient failure for location {loc.id} season {window.season} "
                f"(attempt {attempt + 1})")

    def s2_candidates(self, loc: Location, window: SeasonWindow, n_pixels: int) -> list[tuple[dt.date, float]]:
        """Candidate S2 acquisitions in the window as (date, cloud %), oldest first."""
        o = self.options
        phase = int(_rng(_ST_S2_PHASE, o.seed, loc.index).integers(0, o.revisit_days))
        first = _S2_EPOCH + dt.timedelta(days=phase)
        k0 = -(-(window.start - first).days // o.revisit_days)
        out = []
        d = first + dt.timedelta(days=k0 * o.revisit_days)
        while d < window.end:
            r = _rng(_ST_S2_COVER, o.seed, loc.index, d.toordinal())
            cloudy = r.random() < o.cloud_probability
            cover = float(r.beta(0.7, 1.3)) if cloudy else 0.02 * float(r.random())
            k = int(round(cover * n_pixels))
            out.append((d, 100.0 * k / n_pixels))
            d += dt.timedelta(days=o.revisit_days)
        return out

    # ------------------------------------------------------------------ fetch
    def fetch(self, location: Location, window: SeasonWindow, grid: PatchGrid,
              modalities: dict[str, tuple[str, ...]]) -> SeasonSample:
        check_modalities(modalities)
        self._maybe_fail(location, window)

        size = grid.size
        n_pix = size * size
        world = self._world(location, grid)
        place = world.place
        doy_eff, winter = _season_phase(place, window.centre)
        lc = self._seasonal_cover(world, winter)

        want_s2 = "s2_l1c" in modalities or "s2_l2a" in modalities
        cands = self.s2_candidates(location, window, n_pix)
        passing = [c for c in cands if c[1] < self.max_cloudy_pixel_percentage]
        images: dict[str, ModalityImage] = {}
        label = None
        extra: dict[str, str] = {"s2_candidates": str(len(cands)), "dist_to_city_km": f"{place.dist_km:.1f}"}
        if not passing and want_s2:
            lowest = min((c[1] for c in cands), default=float("nan"))
            raise NoImageFound(
                f"synthetic source: no Sentinel-2 acquisition with cloudy pixels < "
                f"{self.max_cloudy_pixel_percentage:g}% for location {location.id} season {window.season} "
                f"({window.start}..{window.end}): {len(cands)} candidates, least cloudy {lowest:.1f}%")
        if passing:
            date, cloud_pct = passing[-1]
            l1c, l2a, cloud_mask, s2_id = self._render_s2(world, location, window, grid, lc, doy_eff, winter,
                                                          date, cloud_pct)
            for name, arr in (("s2_l1c", l1c), ("s2_l2a", l2a)):
                if name in modalities:
                    idx = [MODALITY_BANDS[name].index(b) for b in modalities[name]]
                    images[name] = ModalityImage(data=np.ascontiguousarray(arr[idx]), bands=tuple(modalities[name]),
                                                 acquired=date, image_id=s2_id, cloud_pct=float(cloud_pct))
            label = LabelMap(data=self._labels(world, location, window, lc, cloud_mask), image_id=s2_id,
                             method="matched")
        if "s1_grd" in modalities:
            images["s1_grd"], pass_dir = self._render_s1(world, location, window, grid, lc, doy_eff, winter,
                                                         modalities["s1_grd"])
            extra["s1_pass"] = pass_dir
        return SeasonSample(images=images, label=label, extra=extra)

    def _seasonal_cover(self, world: _World, winter: float) -> np.ndarray:
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

    def _surface(self, world: _World, lc: np.ndarray, doy_eff: float, winter: float,
                 date: dt.date) -> np.ndarray:
        """L2A surface reflectance (12, H, W) float32 at 10 m, before atmosphere, clouds and sensor."""
        place = world.place
        table = sig.S2_L2A_SUMMER.copy()
        table[sig.WATER] += place.turbidity * (sig.TURBID_WATER - table[sig.WATER])
        dry_grass = min(1.0, winter + 0.6 * place.aridity)
        table[sig.GRASS] += dry_grass * (sig.GRASS_WINTER - table[sig.GRASS])
        flooded_winter = 0.6 * sig.GRASS_WINTER + 0.4 * sig.S2_L2A_SUMMER[sig.WATER]
        table[sig.FLOODED] += 0.5 * winter * (flooded_winter - table[sig.FLOODED])
        dry_shrub = min(1.0, 0.6 * place.aridity + 0.4 * winter)
        table[sig.SHRUB] += dry_shrub * (sig.DRY_VEGETATION - table[sig.SHRUB])
        table[sig.BARE] += place.sandiness * (sig.SAND - table[sig.BARE])
        table[sig.SNOW, :10] *= place.snow_brightness

        surf = np.ascontiguousarray(table.T)[:, lc]  # (12, H, W)
        flat = surf.reshape(12, -1)
        lc_flat = lc.ravel()

        trees = np.flatnonzero(lc_flat == sig.TREES)
        if trees.size and winter > 0:
            dec = world.decid.ravel()[trees][None, :]
            summer = sig.S2_L2A_SUMMER[sig.TREES][:, None]
            flat[:, trees] = summer + winter * (dec * (sig.TREES_LEAF_OFF[:, None] - summer)
                                                + (1 - dec) * (sig.TREES_EVERGREEN_WINTER[:, None] - summer))
        crops = np.flatnonzero(lc_flat == sig.CROPS)
        if crops.size:
            c_parcel, stubble = _crop_canopy(world, doy_eff)
            pid = world.parcel.ravel()[crops]
            c = c_parcel[pid][None, :]
            soil = np.where(stubble[pid][None, :], sig.CROPS_STUBBLE[:, None], sig.CROPS_BARE_SOIL[:, None])
            flat[:, crops] = soil + c * (sig.S2_L2A_SUMMER[sig.CROPS][:, None] - soil)

        spread = np.ascontiguousarray(sig.S2_L2A_SPREAD.T)[:, lc]
        sgn = sig.VIGOUR_SIGN[:, None, None]
        a = np.sqrt(1.0 - 0.36 * sgn * sgn).astype(np.float32)
        surf += spread * (a * world.tex[0] + np.float32(0.6) * sgn * world.tex[1])

        # terrain shading (Lambert, sun from the equator side at ~10:30)
        z = math.radians(_sun_zenith_deg(place.lat, date))
        az = math.radians(150.0 if place.lat >= 0 else 30.0)
        gx, gy = world.slope
        tanz = math.tan(z)
        shade = (1.0 - tanz * (gx * math.sin(az) + gy * math.cos(az))) / np.sqrt(1.0 + gx * gx + gy * gy)
        surf *= np.clip(shade, 0.25, 1.8).astype(np.float32)
        np.maximum(surf, 1.0, out=surf)
        return surf

    def _render_s2(self, world: _World, loc: Location, window: SeasonWindow, grid: PatchGrid, lc: np.ndarray,
                   doy_eff: float, winter: float, date: dt.date, cloud_pct: float):
        o = self.options
        size = grid.size
        place = world.place
        surf = self._surface(world, lc, doy_eff, winter, date)

        r = _rng(_ST_S2_SCENE, o.seed, loc.index, date.toordinal())
        haze = float(np.clip(math.exp(0.25 * r.standard_normal()), 0.6, 2.0))
        humidity = (1.0 - place.aridity) * float(np.clip(1.0 - place.abs_lat / 70.0, 0, 1))
        t9 = float(np.clip(0.4 - 0.25 * humidity + 0.03 * r.standard_normal(), 0.12, 0.45))
        b10_mean = float(np.clip(sig.B10_CLEAR_MEAN + 1.0 * r.standard_normal(), 6, 14))
        high = 0.0 if r.random() < 0.75 else float(r.uniform(0.3, 1.0))
        high_b10 = float(r.uniform(500, 3000))
        t_sec = int(r.integers(60, 900))
        extent = size * grid.resolution
        fields = _smooth_fields(r, 3, size, extent, (2500.0, 1200.0, 600.0, 300.0, 150.0), 0.6)

        trans = sig.L1C_TRANSMITTANCE.copy()
        trans[_B9_L1C] = t9
        path = sig.L1C_PATH * np.float32(haze)
        l1c = np.empty((13, size, size), np.float32)
        l1c[_L2A_IN_L1C] = trans[_L2A_IN_L1C, None, None] * surf + path[_L2A_IN_L1C, None, None]
        l1c[_B10_L1C] = b10_mean + 1.5 * fields[2]

        k = int(round(cloud_pct / 100.0 * size * size))
        if k > 0:
            cf = fields[0]
            flat = cf.ravel()
            thr = np.partition(flat, flat.size - k)[flat.size - k]
            cloud_mask = cf >= thr
            # soft edge ~_CLOUD_EDGE_PX wide whatever the field's scale: field units per pixel from its gradient
            gy, gx = np.gradient(cf)
            edge = np.float32(_CLOUD_EDGE_PX * max(float(np.mean(np.hypot(gx, gy))), 1e-4))
            alpha = np.clip(0.5 + (cf - thr) / edge, 0, 1).astype(np.float32)
            spec = (1 - high) * sig.CLOUD_LOW_L1C + high * sig.CLOUD_HIGH_L1C
            spec[_B10_L1C] = (1 - high) * sig.CLOUD_LOW_L1C[_B10_L1C] + high * high_b10
            cloud = spec[:, None, None] * (1 + sig.CLOUD_TEXTURE_REL_STD * fields[1])[None]
            l1c += alpha[None] * (cloud - l1c)
        else:
            cloud_mask = np.zeros((size, size), bool)

        # native resolution: block mean, sensor noise there, resample to the grid
        rn = _rng(_ST_S2_NOISE, o.seed, loc.index, date.toordinal())
        out = np.empty_like(l1c)
        for native in (10, 20, 60):
            idx = [i for i, b in enumerate(S2_L1C_BANDS) if S2_NATIVE_RESOLUTION_M[b] == native]
            f = max(1, int(round(native / grid.resolution)))
            block = l1c[idx]
            if f > 1:
                n = -(-size // f)
                pad = n * f - size
                if pad:
                    block = np.pad(block, ((0, 0), (0, pad), (0, pad)), mode="edge")
                block = block.reshape(len(idx), n, f, n, f).mean(axis=(2, 4))
            block = block + (5.0 + 0.004 * block) * rn.standard_normal(block.shape, dtype=np.float32)
            if f > 1:
                block = _zoom_to(block, n * f, order=self._order)[:, :size, :size]
            out[idx] = block
        l1c = out
        l2a = (l1c[_L2A_IN_L1C] - path[_L2A_IN_L1C, None, None]) / trans[_L2A_IN_L1C, None, None]
        l1c_u16 = np.clip(np.rint(l1c), 1, 65535).astype(np.uint16)
        l2a_u16 = np.clip(np.rint(l2a), 1, 65535).astype(np.uint16)

        t0 = _local_time(date, loc.lon, 10.5)
        t1 = t0 + dt.timedelta(seconds=t_sec)
        s2_id = f"{t0:%Y%m%dT%H%M%S}_{t1:%Y%m%dT%H%M%S}_T{_mgrs_tile(loc)}"
        return l1c_u16, l2a_u16, cloud_mask, s2_id

    def _labels(self, world: _World, loc: Location, window: SeasonWindow, lc: np.ndarray,
                cloud_mask: np.ndarray) -> np.ndarray:
        lab = lc.copy()
        if self.options.label_noise > 0:
            r = _rng(_ST_LABEL, self.options.seed, loc.index, window.season)
            p = np.pad(lc, 1, mode="edge")
            nbrs = np.stack([p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]).reshape(4, -1)
            diff = nbrs != lc.ravel()[None]
            bidx = np.flatnonzero(diff.any(axis=0))
            pick = bidx[r.random(bidx.size) < self.options.label_noise]
            if pick.size:
                order = (r.integers(0, 4, pick.size)[:, None] + np.arange(4)[None]) % 4
                first = np.argmax(diff[order, pick[:, None]], axis=1)
                direction = order[np.arange(pick.size), first]
                lab.ravel()[pick] = nbrs[direction, pick]
        lab[cloud_mask] = LABEL_NODATA
        return lab

    def _render_s1(self, world: _World, loc: Location, window: SeasonWindow, grid: PatchGrid, lc: np.ndarray,
                   doy_eff: float, winter: float, bands: tuple[str, ...]) -> tuple[ModalityImage, str]:
        o = self.options
        size = grid.size
        phase = int(_rng(_ST_S1_PHASE, o.seed, loc.index).integers(0, _S1_REVISIT_DAYS))
        first = _S1_EPOCH + dt.timedelta(days=phase)
        last_k = (window.end - dt.timedelta(days=1) - first).days // _S1_REVISIT_DAYS
        date = first + dt.timedelta(days=last_k * _S1_REVISIT_DAYS)
        if date < window.start:
            raise NoImageFound(f"synthetic source: no Sentinel-1 acquisition for location {loc.id} "
                               f"season {window.season} ({window.start}..{window.end})")
        rm = _rng(_ST_S1_META, o.seed, loc.index, date.toordinal())
        ascending = rm.random() < 0.5
        platform = "S1B" if (date < _S1B_END and rm.random() < 0.5) else "S1A"
        t0 = _local_time(date, loc.lon, 18.0 if ascending else 6.0) + dt.timedelta(seconds=int(rm.integers(0, 600)))
        t1 = t0 + dt.timedelta(seconds=25)
        orbit = int((t0 - _S1_ORBIT_REF[platform]).total_seconds() // (12 * 86400 / 175)) + 1
        s1_id = (f"{platform}_IW_GRDH_1SDV_{t0:%Y%m%dT%H%M%S}_{t1:%Y%m%dT%H%M%S}_{orbit:06d}_"
                 f"{int(rm.integers(0, 1 << 24)):06X}_{int(rm.integers(0, 1 << 16)):04X}")

        r = _rng(_ST_S1_SCENE, o.seed, loc.index, window.season)
        wind = float(r.uniform(2.0, 9.0)) if r.random() < 0.25 else 0.0
        moisture = float(np.clip(r.normal(0.0, 0.8), -2, 2))
        vv_t = sig.S1_VV_DB.copy()
        vh_t = sig.S1_VH_DB.copy()
        vv_t[sig.WATER] += wind
        vh_t[sig.WATER] += 0.5 * wind
        for c in (sig.GRASS, sig.CROPS, sig.BARE, sig.SHRUB):
            vv_t[c] += moisture
            vh_t[c] += 0.7 * moisture
        vv_t[sig.TREES] -= 0.8 * winter
        vh_t[sig.TREES] -= 0.5 * winter
        tex_t = sig.S1_TEXTURE_DB
        db = np.stack([vv_t[lc], vh_t[lc]]) + np.float32(sig.S1_SPECKLE_BIAS_DB)
        db += tex_t[lc][None] * world.s1_tex
        crops = lc == sig.CROPS
        if crops.any():
            c_parcel, _ = _crop_canopy(world, doy_eff)
            c = c_parcel[world.parcel[crops]]
            db[0][crops] += (sig.S1_CROPS_BARE_VV_DB - sig.S1_VV_DB[sig.CROPS]) * (1 - c)
            db[1][crops] += (sig.S1_CROPS_BARE_VH_DB - sig.S1_VH_DB[sig.CROPS]) * (1 - c)
        shape = sig.SPECKLE_GAMMA_SHAPE
        speckle = r.standard_gamma(shape, (2, size, size), dtype=np.float32) / np.float32(shape)
        speckle = ndimage.gaussian_filter(speckle, sigma=(0, sig.SPECKLE_SMOOTH_SIGMA_PX, sig.SPECKLE_SMOOTH_SIGMA_PX))
        speckle /= speckle.mean(axis=(1, 2), keepdims=True)
        lin = np.power(np.float32(10.0), db / np.float32(10.0)) * speckle
        out = (10.0 * np.log10(np.maximum(lin, 1e-6))).astype(np.float32)
        idx = [S1_GRD_BANDS.index(b) for b in bands]
        img = ModalityImage(data=np.ascontiguousarray(out[idx]), bands=tuple(bands), acquired=date,
                            image_id=s1_id, cloud_pct=float("nan"))
        return img, "ASCENDING" if ascending else "DESCENDING"
