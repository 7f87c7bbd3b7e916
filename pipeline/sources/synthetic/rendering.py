"""Rendering of the synthetic world into what Earth Engine would return: S2 L1C/L2A, S1 GRD, Dynamic World.

The per-class tables come from :mod:`pipeline.sources.signatures`; every other number is ours.

* **S2 surface reflectance (L2A)**: class means and per-band spreads applied through two spatially
  correlated texture fields (brightness, and a vegetation-vigour component that moves visible/SWIR
  against red-edge/NIR), between-field variation per crop parcel, terrain shading from the elevation
  field. Seasonal states: deciduous trees leaf-off, evergreen winter, grass and shrub dry/winter states,
  crops per parcel (summer crops, winter cereals, or double cropping in the tropics) between bare soil /
  stubble and peak canopy, seasonal snow cover at high latitude or elevation.
* **S2 L1C** = T·L2A + P per band (a linear top-of-atmosphere model: two-way transmittance T and path
  radiance P in DN) with a per-scene haze factor on P and a per-scene B9 transmittance (0.12–0.45,
  humid air lower); B10 (cirrus) = 10 ± 2 DN over clear sky. L2A is derived back from the noisy L1C with
  the inverse model, so over clouds L2A = (L1C − P)/T. 20 m and 60 m bands are block-averaged to their
  native pixel, get their sensor noise there (σ = 5 DN + 0.4 %), and are resampled to the grid with the
  requested interpolation (nearest / bilinear / cubic).
* **Clouds**: the chosen cover is rendered exactly (quantile threshold of a smooth field): pixels with
  cloud opacity ≥ 0.5 are the cloud mask, their fraction is the reported ``cloud_pct``; a ~4 px
  semi-transparent rim (still labelled) blends into the surface. Cloud spectra are a thick low cloud,
  sometimes mixed with a thick high cloud (B10 500–3000), with 7 % texture. Not modelled: cloud
  shadows, cirrus-only scenes.
* **S1 GRD**: per-class mean dB + 0.5 dB speckle bias + texture, seasonal crops VH rise, leaf-off
  trees, per-scene soil moisture and wind roughening of water, then Gamma speckle in linear units,
  spatially correlated (Gamma shape 0.35, Gaussian σ = 1 px, renormalised to mean 1). The acquisition is
  the most recent 6-day-revisit date in the window.
* **Dynamic World labels**: the land-cover truth of the season, with ``label_noise`` of the
  class-boundary pixels flipped to a neighbouring class, and ``LABEL_NODATA`` under the cloud mask.
  Their class probabilities (when asked for) follow the same noise model:
  :mod:`pipeline.sources.synthetic.probability`.

Image ids follow the ``system:index`` patterns of the Earth Engine catalog collections
COPERNICUS/S2_HARMONIZED and COPERNICUS/S1_GRD. DN are pre-2022 (no +1000 offset), clipped to
[1, 65535].
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
from scipy import ndimage

from pipeline.bands import LABEL_NODATA, S1_GRD_BANDS, S2_L1C_BANDS, S2_L2A_BANDS, S2_NATIVE_RESOLUTION_M
from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.seasons import SeasonWindow
from pipeline.sources import signatures as sig
from pipeline.sources.base import ModalityImage, NoImageFound
from pipeline.sources.synthetic.fields import (
    ST_LABEL,
    ST_S1_META,
    ST_S1_PHASE,
    ST_S1_SCENE,
    ST_S2_NOISE,
    ST_S2_SCENE,
    seeded_rng,
    smooth_fields,
    zoom_to,
)
from pipeline.sources.synthetic.world import World, crop_canopy

_S1_EPOCH = dt.date(2014, 10, 3)
_S1_REVISIT_DAYS = 6
_S1_ORBIT_REF = {"S1A": dt.datetime(2014, 4, 7), "S1B": dt.datetime(2016, 4, 25)}
_S1B_END = dt.date(2021, 12, 23)
_L2A_IN_L1C = np.array([S2_L1C_BANDS.index(b) for b in S2_L2A_BANDS])
_B9_L1C, _B10_L1C = S2_L1C_BANDS.index("B9"), S2_L1C_BANDS.index("B10")
_CLOUD_EDGE_PX = 4.0  # width of the semi-transparent cloud rim (ours)


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


def surface(world: World, lc: np.ndarray, doy_eff: float, winter: float, date: dt.date) -> np.ndarray:
    """L2A surface reflectance (12, H, W) float32 at 10 m, before atmosphere, clouds and sensor.

    Args:
        world: The static world.
        lc: The land cover of the season (:func:`~pipeline.sources.synthetic.world.seasonal_cover`).
        doy_eff: Season-effective day of year (southern hemisphere mirrored).
        winter: Winterness 0..1.
        date: The acquisition date (sets the sun zenith for terrain shading).

    Returns:
        Surface reflectance in DN, at least 1.
    """
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
        c_parcel, stubble = crop_canopy(world, doy_eff)
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

def render_s2(world: World, seed: int, order: int, loc: Location, grid: PatchGrid, lc: np.ndarray,
              doy_eff: float, winter: float, date: dt.date,
              cloud_pct: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Render one Sentinel-2 acquisition: L1C and L2A DN on the grid, its cloud mask and its image id.

    Args:
        world: The static world.
        seed: The world seed.
        order: Interpolation order of the 20 m / 60 m bands back onto the grid (0, 1 or 3).
        loc: The location.
        grid: The patch grid.
        lc: The land cover of the season.
        doy_eff: Season-effective day of year.
        winter: Winterness 0..1.
        date: The acquisition date.
        cloud_pct: The scene cloud cover to render exactly (percent of grid pixels).

    Returns:
        ``(l1c, l2a, cloud_mask, image_id)``: uint16 (13, H, W) and (12, H, W), bool (H, W), and an
        id shaped like a COPERNICUS/S2_HARMONIZED ``system:index``.
    """
    size = grid.size
    place = world.place
    surf = surface(world, lc, doy_eff, winter, date)

    r = seeded_rng(ST_S2_SCENE, seed, loc.index, date.toordinal())
    haze = float(np.clip(math.exp(0.25 * r.standard_normal()), 0.6, 2.0))
    humidity = (1.0 - place.aridity) * float(np.clip(1.0 - place.abs_lat / 70.0, 0, 1))
    t9 = float(np.clip(0.4 - 0.25 * humidity + 0.03 * r.standard_normal(), 0.12, 0.45))
    b10_mean = float(np.clip(sig.B10_CLEAR_MEAN + 1.0 * r.standard_normal(), 6, 14))
    high = 0.0 if r.random() < 0.75 else float(r.uniform(0.3, 1.0))
    high_b10 = float(r.uniform(500, 3000))
    t_sec = int(r.integers(60, 900))
    extent = size * grid.resolution
    fields = smooth_fields(r, 3, size, extent, (2500.0, 1200.0, 600.0, 300.0, 150.0), 0.6)

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
    rn = seeded_rng(ST_S2_NOISE, seed, loc.index, date.toordinal())
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
            block = zoom_to(block, n * f, order=order)[:, :size, :size]
        out[idx] = block
    l1c = out
    l2a = (l1c[_L2A_IN_L1C] - path[_L2A_IN_L1C, None, None]) / trans[_L2A_IN_L1C, None, None]
    l1c_u16 = np.clip(np.rint(l1c), 1, 65535).astype(np.uint16)
    l2a_u16 = np.clip(np.rint(l2a), 1, 65535).astype(np.uint16)

    t0 = _local_time(date, loc.lon, 10.5)
    t1 = t0 + dt.timedelta(seconds=t_sec)
    s2_id = f"{t0:%Y%m%dT%H%M%S}_{t1:%Y%m%dT%H%M%S}_T{_mgrs_tile(loc)}"
    return l1c_u16, l2a_u16, cloud_mask, s2_id

def label_neighbours(lc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 4-neighbours of every pixel as the label noise sees them, and which of them differ from it.

    Args:
        lc: The (H, W) land cover.

    Returns:
        ``(nbrs, diff)``, both (4, H·W): the classes above, below, left and right of each pixel (a pixel
        on the patch's edge is its own neighbour outside it), and ``nbrs != lc``.
    """
    p = np.pad(lc, 1, mode="edge")
    nbrs = np.stack([p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]).reshape(4, -1)
    return nbrs, nbrs != lc.ravel()[None]


def dw_labels(seed: int, label_noise: float, loc: Location, window: SeasonWindow, lc: np.ndarray,
              cloud_mask: np.ndarray) -> np.ndarray:
    """The Dynamic World ``label`` map of the season: true cover with boundary noise, no label under clouds.

    Args:
        seed: The world seed.
        label_noise: Fraction of class-boundary pixels flipped to a neighbouring class.
        loc: The location.
        window: The seasonal window (keys the noise stream).
        lc: The land cover of the season.
        cloud_mask: Pixels hidden by clouds, set to ``LABEL_NODATA``.

    Returns:
        The (H, W) uint8 label map.
    """
    lab = lc.copy()
    if label_noise > 0:
        r = seeded_rng(ST_LABEL, seed, loc.index, window.season)
        nbrs, diff = label_neighbours(lc)
        bidx = np.flatnonzero(diff.any(axis=0))
        pick = bidx[r.random(bidx.size) < label_noise]
        if pick.size:
            order = (r.integers(0, 4, pick.size)[:, None] + np.arange(4)[None]) % 4
            first = np.argmax(diff[order, pick[:, None]], axis=1)
            direction = order[np.arange(pick.size), first]
            lab.ravel()[pick] = nbrs[direction, pick]
    lab[cloud_mask] = LABEL_NODATA
    return lab

def render_s1(world: World, seed: int, loc: Location, window: SeasonWindow, grid: PatchGrid, lc: np.ndarray,
              doy_eff: float, winter: float, bands: tuple[str, ...]) -> tuple[ModalityImage, str]:
    """Render the most recent Sentinel-1 GRD acquisition of the window (sigma0 in dB, Gamma speckle).

    Args:
        world: The static world.
        seed: The world seed.
        loc: The location.
        window: The seasonal window; the acquisition is the last 6-day-revisit date in it.
        grid: The patch grid.
        lc: The land cover of the season.
        doy_eff: Season-effective day of year.
        winter: Winterness 0..1.
        bands: The requested polarisations, a subset of ``S1_GRD_BANDS``.

    Returns:
        The image (float32 dB, id shaped like a COPERNICUS/S1_GRD ``system:index``) and the orbit pass
        ("ASCENDING" or "DESCENDING").

    Raises:
        NoImageFound: No acquisition date falls in the window.
    """
    size = grid.size
    phase = int(seeded_rng(ST_S1_PHASE, seed, loc.index).integers(0, _S1_REVISIT_DAYS))
    first = _S1_EPOCH + dt.timedelta(days=phase)
    last_k = (window.end - dt.timedelta(days=1) - first).days // _S1_REVISIT_DAYS
    date = first + dt.timedelta(days=last_k * _S1_REVISIT_DAYS)
    if date < window.start:
        raise NoImageFound(f"synthetic source: no Sentinel-1 acquisition for location {loc.id} "
                           f"season {window.season} ({window.start}..{window.end})")
    rm = seeded_rng(ST_S1_META, seed, loc.index, date.toordinal())
    ascending = rm.random() < 0.5
    platform = "S1B" if (date < _S1B_END and rm.random() < 0.5) else "S1A"
    t0 = _local_time(date, loc.lon, 18.0 if ascending else 6.0) + dt.timedelta(seconds=int(rm.integers(0, 600)))
    t1 = t0 + dt.timedelta(seconds=25)
    orbit = int((t0 - _S1_ORBIT_REF[platform]).total_seconds() // (12 * 86400 / 175)) + 1
    s1_id = (f"{platform}_IW_GRDH_1SDV_{t0:%Y%m%dT%H%M%S}_{t1:%Y%m%dT%H%M%S}_{orbit:06d}_"
             f"{int(rm.integers(0, 1 << 24)):06X}_{int(rm.integers(0, 1 << 16)):04X}")

    r = seeded_rng(ST_S1_SCENE, seed, loc.index, window.season)
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
        c_parcel, _ = crop_canopy(world, doy_eff)
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
