"""The synthetic world source: protocol, determinism, clouds, failures and the physics of its patches.

Physics checks are computed over the class masks of the returned Dynamic World map (labelled pixels
only, away from cloud rims), pooled over several locations, so they test the rendered data rather than
the tables.
"""

from __future__ import annotations

import datetime as dt
import math
import pickle
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy import ndimage

from pipeline.bands import DW_CLASSES, LABEL_NODATA, MODALITY_BANDS, S1_GRD_BANDS, S2_L1C_BANDS, S2_L2A_BANDS
from pipeline.grid import PatchGrid
from pipeline.locations import Location, utm_epsg
from pipeline.manifest import SyntheticSourceOptions
from pipeline.seasons import season_windows
from pipeline.sources.base import NoImageFound, Source, TransientSourceError
from pipeline.sources.synthetic import SyntheticSource

REFS = [dt.date(2021, 3, 20), dt.date(2021, 6, 21), dt.date(2021, 9, 22), dt.date(2020, 12, 21)]
WINDOWS = season_windows(REFS, 30, 0)
MAR, JUN, SEP, DEC = WINDOWS
C = {name: i for i, name in enumerate(DW_CLASSES)}
ALL = dict(MODALITY_BANDS)


def loc(i: int, lat: float, lon: float) -> Location:
    return Location(index=i, lon=lon, lat=lat, epsg=utm_epsg(lon, lat), x=500000.0 + 1000 * i, y=5000000.0)


def grid(location: Location, size: int = 64) -> PatchGrid:
    return PatchGrid.for_location(location, size, 10.0)


def src(**kw) -> SyntheticSource:
    extra = {k: kw.pop(k) for k in ("max_cloudy_pixel_percentage", "resampling") if k in kw}
    return SyntheticSource(SyntheticSourceOptions(**kw), **extra)


def clean(label: np.ndarray, margin: int = 4) -> np.ndarray:
    """Labelled pixels at least ``margin`` px away from the cloud mask (thin cloud rims excluded)."""
    nodata = label == LABEL_NODATA
    return ~ndimage.binary_dilation(nodata, iterations=margin) if nodata.any() else np.ones(label.shape, bool)


def ndvi(l2a: np.ndarray) -> np.ndarray:
    red, nir = l2a[S2_L2A_BANDS.index("B4")].astype(float), l2a[S2_L2A_BANDS.index("B8")].astype(float)
    return (nir - red) / (nir + red)


def assert_same(a, b) -> None:
    assert a.images.keys() == b.images.keys()
    for k in a.images:
        assert a.images[k].image_id == b.images[k].image_id
        assert a.images[k].acquired == b.images[k].acquired
        assert np.array_equal(a.images[k].data, b.images[k].data, equal_nan=True)
    assert np.array_equal(a.label.data, b.label.data)


# --------------------------------------------------------------------------- protocol and metadata
def test_protocol_shapes_dtypes_and_ids():
    s = src(seed=3)
    assert isinstance(s, Source) and s.name == "synthetic" and s.synthetic is True
    d = s.describe()
    assert d["synthetic"] is True and d["options"]["seed"] == s.options.seed and d["resampling"] == "bilinear"
    location = loc(7, 45.2, 6.1)
    sample = s.fetch(location, JUN, grid(location, 72), ALL)

    assert set(sample.images) == {"s2_l1c", "s2_l2a", "s1_grd"}
    for name, img in sample.images.items():
        assert img.bands == MODALITY_BANDS[name]
        assert img.data.shape == (len(img.bands), 72, 72)
        assert JUN.start <= img.acquired < JUN.end
    l1c, l2a, s1 = sample.images["s2_l1c"], sample.images["s2_l2a"], sample.images["s1_grd"]
    assert l1c.data.dtype == np.uint16 and l2a.data.dtype == np.uint16 and s1.data.dtype == np.float32
    assert np.isfinite(s1.data).all() and -45 < s1.data.min() and s1.data.max() < 20
    assert re.fullmatch(r"\d{8}T\d{6}_\d{8}T\d{6}_T\d{2}[C-X][A-Z]{2}", l1c.image_id)
    assert l1c.image_id.startswith(l1c.acquired.strftime("%Y%m%d"))
    assert l2a.image_id == l1c.image_id and l2a.acquired == l1c.acquired and l2a.cloud_pct == l1c.cloud_pct
    assert 0 <= l1c.cloud_pct < 20
    assert re.fullmatch(r"S1[AB]_IW_GRDH_1SDV_\d{8}T\d{6}_\d{8}T\d{6}_\d{6}_[0-9A-F]{6}_[0-9A-F]{4}", s1.image_id)
    assert s1.image_id[17:25] == s1.acquired.strftime("%Y%m%d")
    assert math.isnan(s1.cloud_pct)

    lab = sample.label
    assert lab.data.dtype == np.uint8 and lab.data.shape == (72, 72)
    assert lab.image_id == l1c.image_id and lab.method == "matched"
    assert set(np.unique(lab.data)) <= set(range(9)) | {LABEL_NODATA}
    # B10 (L1C only) is clear-sky water-vapour absorption: ~10 DN away from clouds
    b10 = l1c.data[S2_L1C_BANDS.index("B10")][clean(lab.data)]
    assert 5 <= np.median(b10) <= 15


def test_band_subsets_are_slices_of_the_full_fetch():
    location = loc(11, 50.0, 8.0)
    g = grid(location)
    full = src(seed=1).fetch(location, SEP, g, ALL)
    sub = src(seed=1).fetch(location, SEP, g, {"s2_l2a": ("B2", "B8", "B12"), "s1_grd": ("VH",)})
    assert set(sub.images) == {"s2_l2a", "s1_grd"}
    assert sub.images["s2_l2a"].bands == ("B2", "B8", "B12")
    idx = [S2_L2A_BANDS.index(b) for b in ("B2", "B8", "B12")]
    assert np.array_equal(sub.images["s2_l2a"].data, full.images["s2_l2a"].data[idx])
    assert np.array_equal(sub.images["s1_grd"].data, full.images["s1_grd"].data[[S1_GRD_BANDS.index("VH")]])
    assert np.array_equal(sub.label.data, full.label.data)
    only_s1 = src(seed=1).fetch(location, SEP, g, {"s1_grd": S1_GRD_BANDS})
    assert set(only_s1.images) == {"s1_grd"}
    with pytest.raises(ValueError):
        src().fetch(location, SEP, g, {"s2_l2a": ("B10",)})
    with pytest.raises(ValueError):
        src().fetch(location, SEP, g, {"landsat": ("B1",)})


# --------------------------------------------------------------------------- determinism
def test_deterministic_across_instances_threads_and_pickling():
    location = loc(123, -23.5, -46.6)
    g = grid(location)
    a = src(seed=9).fetch(location, DEC, g, ALL)
    b = src(seed=9).fetch(location, DEC, g, ALL)
    assert_same(a, b)
    shared = src(seed=9)
    with ThreadPoolExecutor(4) as pool:
        for r in pool.map(lambda _: shared.fetch(location, DEC, g, ALL), range(4)):
            assert_same(a, r)
    assert_same(a, pickle.loads(pickle.dumps(shared)).fetch(location, DEC, g, ALL))
    other = src(seed=10).fetch(location, DEC, g, ALL)
    assert not np.array_equal(a.images["s2_l2a"].data, other.images["s2_l2a"].data)
    assert not np.array_equal(a.label.data, other.label.data)
    # seasons of one location share the land cover but not the acquisitions
    jun = src(seed=9).fetch(location, JUN, g, ALL)
    assert jun.images["s2_l1c"].image_id != a.images["s2_l1c"].image_id
    valid = (jun.label.data != LABEL_NODATA) & (a.label.data != LABEL_NODATA)
    assert (jun.label.data[valid] == a.label.data[valid]).mean() > 0.9


# --------------------------------------------------------------------------- physics
@pytest.fixture(scope="module")
def summer_pool():
    """Northern-hemisphere June patches from deserts to the boreal zone, pooled per DW class."""
    s = src(seed=5)
    rng = np.random.default_rng(0)
    pix: dict[int, list] = {c: [] for c in range(9)}
    blue = []
    for i in range(36):
        lat, lon = float(rng.uniform(22, 58)), float(rng.uniform(-100, 120))
        location = loc(1000 + i, lat, lon)
        sm = s.fetch(location, JUN, grid(location), ALL)
        lab = sm.label.data
        ok = clean(lab)
        l2a, l1c = sm.images["s2_l2a"].data, sm.images["s2_l1c"].data
        v = ndvi(l2a)
        vv, vh = sm.images["s1_grd"].data
        for c in range(9):
            m = ok & (lab == c)
            if m.any():
                pix[c].append(np.stack([v[m], l2a[S2_L2A_BANDS.index("B8")][m], vv[m], vh[m]]))
        blue_l1c, blue_l2a = l1c[S2_L1C_BANDS.index("B2")], l2a[S2_L2A_BANDS.index("B2")]
        blue.append((blue_l1c[ok].astype(float), blue_l2a[ok].astype(float)))
    return {c: np.concatenate(p, axis=1) for c, p in pix.items() if p}, blue


def test_ndvi_order_trees_crops_bare(summer_pool):
    pool, _ = summer_pool
    mean_ndvi = {c: pool[C[c]][0].mean() for c in ("trees", "crops", "bare", "water", "grass")}
    assert mean_ndvi["trees"] > mean_ndvi["crops"] > mean_ndvi["bare"], mean_ndvi
    assert mean_ndvi["trees"] > 0.7 and mean_ndvi["bare"] < 0.35 and mean_ndvi["water"] < 0
    assert mean_ndvi["grass"] > 0.5


def test_water_is_dark_in_nir(summer_pool):
    pool, _ = summer_pool
    b8 = pool[C["water"]][1]
    assert b8.size > 500
    assert b8.mean() < 500 and np.percentile(b8, 90) < 700
    assert b8.mean() < 0.2 * pool[C["trees"]][1].mean()


def test_s1_vh_below_vv_per_class(summer_pool):
    pool, _ = summer_pool
    for c, p in pool.items():
        if p.shape[1] < 200:
            continue
        vv, vh = p[2].mean(), p[3].mean()
        assert vh < vv - 2.0, (DW_CLASSES[c], vv, vh)
    # backscatter ordering: calm water darkest, built brightest in VV
    assert pool[C["water"]][2].mean() < pool[C["crops"]][2].mean() < pool[C["built"]][2].mean()


def test_l1c_brighter_than_l2a_in_blue(summer_pool):
    _, blue = summer_pool
    # L1C − L2A = P + (T − 1)·L2A (linear TOA model): path radiance wins in the blue except over bright snow
    # or sand
    for l1c_b2, l2a_b2 in blue:
        assert l1c_b2.mean() > l2a_b2.mean() + 50
        dark = l2a_b2 < 1000
        assert (l1c_b2[dark] > l2a_b2[dark]).mean() > 0.99
    assert np.mean([a.mean() - b.mean() for a, b in blue]) > 300


def test_phenology_and_hemispheres():
    s = src(seed=2)

    def tree_ndvi(location, window):
        sm = s.fetch(location, window, grid(location, 96), {"s2_l2a": S2_L2A_BANDS})
        lab = sm.label.data
        m = clean(lab) & (lab == C["trees"])
        return ndvi(sm.images["s2_l2a"].data)[m].mean() if m.sum() > 50 else None

    north = south = 0
    for i in range(40):
        n, so = loc(2000 + i, 47.0, 10.0 + i), loc(3000 + i, -40.0, -70.0 + i)
        tn = (tree_ndvi(n, JUN), tree_ndvi(n, DEC))
        ts = (tree_ndvi(so, JUN), tree_ndvi(so, DEC))
        if None not in tn:
            assert tn[0] > tn[1] + 0.05, tn  # leaves in the northern summer
            north += 1
        if None not in ts:
            assert ts[1] > ts[0] + 0.05, ts  # mirrored in the south
            south += 1
        if north >= 3 and south >= 3:
            break
    assert north >= 3 and south >= 3


def test_seasonal_snow_at_high_latitude():
    s = src(seed=4, cloud_probability=0.0)
    winter = summer = 0.0
    for i in range(6):
        location = loc(4000 + i, 63.0, 25.0 + i)
        g = grid(location)
        winter += (s.fetch(location, DEC, g, ALL).label.data == C["snow_and_ice"]).mean()
        summer += (s.fetch(location, JUN, g, ALL).label.data == C["snow_and_ice"]).mean()
    assert winter > summer + 1.0  # summed fractions over 6 patches: winter adds snow cover


def test_native_resolution_of_20m_and_60m_bands():
    location = loc(77, 44.0, 2.0)
    g = grid(location, 264)
    t = time.perf_counter()
    l2a = src(seed=6, resampling="nearest").fetch(location, SEP, g, {"s2_l2a": S2_L2A_BANDS}).images["s2_l2a"]
    assert time.perf_counter() - t < 5.0
    assert l2a.data.shape == (12, 264, 264)

    def constant_blocks(band: str, f: int) -> bool:
        a = l2a.data[S2_L2A_BANDS.index(band)].astype(int).reshape(264 // f, f, 264 // f, f)
        return bool((a == a[:, :1, :, :1]).all())

    assert constant_blocks("B1", 6) and constant_blocks("B9", 6)
    assert constant_blocks("B5", 2) and constant_blocks("B11", 2) and not constant_blocks("B5", 6)
    assert not constant_blocks("B2", 2)
    # bilinear: smooth but not blocky, and the 60 m band is smoother than the 10 m band
    bil = src(seed=6, cloud_probability=0.0).fetch(location, SEP, g, {"s2_l2a": S2_L2A_BANDS}).images["s2_l2a"]
    bil = bil.data.astype(float)

    def roughness(band: str) -> float:
        """Pixel-to-pixel change of the local (high-pass) detail relative to its amplitude."""
        a = bil[S2_L2A_BANDS.index(band)]
        detail = a - ndimage.uniform_filter(a, 13)
        return float(np.abs(np.diff(detail, axis=1)).mean() / detail.std())

    # same NIR plateau at 60 m, 20 m and 10 m: coarser native pixels give smoother detail
    assert roughness("B9") < 0.8 * roughness("B8A") < 0.8 * 0.8 * roughness("B8")


# --------------------------------------------------------------------------- clouds
def test_reported_cloud_pct_matches_rendered_clouds():
    # cloud_probability 1 vs 0 with no cloud filter: both take the most recent candidate, so the same
    # acquisition (date, atmosphere, sensor noise) is rendered with and without its clouds
    cloudy = src(seed=8, cloud_probability=1.0, max_cloudy_pixel_percentage=100.0)
    clear = src(seed=8, cloud_probability=0.0, max_cloudy_pixel_percentage=100.0)
    b2 = S2_L1C_BANDS.index("B2")
    seen = []
    for i in range(8):
        location = loc(5000 + i, 30.0 + 3 * i, 10.0)
        g = grid(location, 96)
        sm, ref = cloudy.fetch(location, SEP, g, ALL), clear.fetch(location, SEP, g, ALL)
        assert sm.images["s2_l1c"].acquired == ref.images["s2_l1c"].acquired
        pct = sm.images["s2_l1c"].cloud_pct
        lab = sm.label.data
        assert abs(100 * (lab == LABEL_NODATA).mean() - pct) < 0.5
        # rendered: per-pixel cloud opacity estimated over all 13 bands as the projection of
        # (image − clear surface) on (cloud top − clear surface); cloud tops = median over the cloud mask
        surface = ref.images["s2_l1c"].data.astype(float)
        image = sm.images["s2_l1c"].data.astype(float)
        if pct > 0:
            top = np.median(image[:, lab == LABEL_NODATA], axis=1)[:, None, None]
            contrast = top - surface
            opacity = ((image - surface) * contrast).sum(0) / (contrast * contrast).sum(0)
            rendered = 100 * (opacity > 0.5).mean()
        else:
            rendered = 100 * (np.abs(image - surface).max(0) > 500).mean()
        assert abs(rendered - pct) < 3.0, (rendered, pct)
        if pct > 5:  # L2A over clouds is the inverted TOA, (L1C − P)/T: about 1.1–1.3 × L1C in blue
            m = lab == LABEL_NODATA
            l2a_b2 = sm.images["s2_l2a"].data[S2_L2A_BANDS.index("B2")]
            ratio = l2a_b2[m].mean() / sm.images["s2_l1c"].data[b2][m].mean()
            assert 0.95 < ratio < 1.3  # below 1 only under a very hazy path term
        seen.append(pct)
    assert max(seen) > 10


def test_cloud_filter_keeps_most_recent_passing_image_or_raises():
    location = loc(42, 48.0, 2.0)
    g = grid(location)
    with pytest.raises(NoImageFound, match=rf"{location.id}.*season {JUN.season}"):
        src(cloud_probability=1.0, max_cloudy_pixel_percentage=0.0).fetch(location, JUN, g, ALL)
    # an always-clear sky never raises
    assert src(cloud_probability=0.0).fetch(location, JUN, g, ALL).images["s2_l1c"].cloud_pct < 2.5

    s = src(seed=1, cloud_probability=1.0, max_cloudy_pixel_percentage=10.0)
    raised = kept = 0
    for i in range(24):
        location = loc(6000 + i, 40.0, float(i))
        g = grid(location, 32)
        cands = s.s2_candidates(location, MAR, 32 * 32)
        passing = [c for c in cands if c[1] < 10.0]
        assert all(MAR.start <= d < MAR.end for d, _ in cands)
        try:
            img = s.fetch(location, MAR, g, ALL).images["s2_l2a"]
        except NoImageFound:
            assert not passing
            raised += 1
            continue
        assert (img.acquired, img.cloud_pct) == passing[-1]  # the most recent one under the threshold
        kept += 1
    assert raised > 0 and kept > 0


# --------------------------------------------------------------------------- labels
def test_multilabel_variety_across_locations():
    s = src(seed=0)
    rng = np.random.default_rng(11)
    sets, counts = set(), []
    for i in range(24):
        lat, lon = float(rng.uniform(-40, 60)), float(rng.uniform(-120, 150))
        location = loc(7000 + i, lat, lon)
        lab = s.fetch(location, JUN, grid(location), ALL).label.data
        v = lab[lab != LABEL_NODATA]
        present = np.bincount(v, minlength=9) / v.size > 0.01
        sets.add(tuple(present))
        counts.append(int(present.sum()))
    assert len(sets) >= 8
    assert 2.0 <= np.mean(counts) <= 6.0
    assert min(counts) >= 1 and max(counts) >= 4


def test_label_noise_flips_only_boundary_pixels_to_a_neighbour():
    location = loc(55, 51.0, 5.0)
    g = grid(location, 96)
    truth = src(seed=2, label_noise=0.0, cloud_probability=0.0).fetch(location, JUN, g, ALL).label.data
    noisy = src(seed=2, label_noise=0.5, cloud_probability=0.0).fetch(location, JUN, g, ALL).label.data
    changed = np.argwhere(noisy != truth)
    assert len(changed) > 0
    p = np.pad(truth, 1, mode="edge")
    for y, x in changed:
        neighbours = {p[y, x + 1], p[y + 2, x + 1], p[y + 1, x], p[y + 1, x + 2]}
        if LABEL_NODATA in neighbours:  # the flip may take the class hidden under an adjacent cloud
            continue
        assert noisy[y, x] in neighbours and noisy[y, x] != truth[y, x]


# --------------------------------------------------------------------------- failures
def test_transient_failure_then_success_on_retry():
    location = loc(88, 35.0, 139.0)
    g = grid(location)
    reference = src(seed=3).fetch(location, SEP, g, ALL)
    flaky = src(seed=3, fail_rate=0.5)
    for _ in range(30):
        try:
            result = flaky.fetch(location, SEP, g, ALL)
            break
        except TransientSourceError as err:
            assert err.retryable and location.id in str(err)
    else:
        pytest.fail("never succeeded")
    assert_same(reference, result)
    # across many (location, season) pairs some first attempts fail, and the pattern is reproducible
    def first_attempts(source):
        out = []
        for i in range(20):
            try:
                here = loc(8000 + i, 10.0, 10.0)
                source.fetch(here, JUN, grid(here, 16), {"s1_grd": ("VV",)})
                out.append(True)
            except TransientSourceError:
                out.append(False)
        return out

    a, b = first_attempts(src(fail_rate=0.5)), first_attempts(src(fail_rate=0.5))
    assert a == b and 0 < sum(a) < 20
    with pytest.raises(TransientSourceError):
        src(fail_rate=1.0).fetch(location, SEP, g, ALL)
