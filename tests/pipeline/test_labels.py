"""Label vectors (numpy, dask, archive), label statistics and plots, land-cover crosswalks, real LULC data."""

from __future__ import annotations

import json
import re
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.bands import DW_CLASSES, LABEL_NODATA
from pipeline.crosswalks import (
    CROSSWALKS,
    UNREACHABLE_CLASSES,
    apply_crosswalk,
    crosswalk_lut,
    crosswalk_rows,
    load_crosswalk,
)
from pipeline.labels import (
    STATUS_DONE,
    compute_archive_labels,
    label_vectors,
    label_vectors_dask,
    plot_class_frequencies,
    plot_cooccurrence,
    summary_statistics,
)

K = len(DW_CLASSES)


# --------------------------------------------------------------------------- references (slow loops)
def slow_label_vectors(maps, n_classes=K, nodata=LABEL_NODATA, thr=0.01, min_valid=0.1):
    """Per-map, per-class reference written with plain Python loops."""
    maps = np.asarray(maps)
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1])
    fracs, hots = [], []
    for row in flat:
        pixels = [int(v) for v in row]
        n_pix = len(pixels)
        n_valid = sum(1 for v in pixels if v != nodata)
        labelled = n_valid > 0 and n_valid / n_pix >= min_valid
        f_row, m_row = [], []
        for k in range(n_classes):
            if labelled:
                f = sum(1 for v in pixels if v == k) / n_valid
            else:
                f = 0.0
            f_row.append(f)
            m_row.append(1 if f > thr else 0)
        fracs.append(f_row)
        hots.append(m_row)
    return (np.array(fracs, dtype=np.float32).reshape(*lead, n_classes),
            np.array(hots, dtype=np.uint8).reshape(*lead, n_classes))


def random_maps(rng, shape, nodata_p=0.3, n_classes=K, blocky=False):
    *lead, h, w = shape
    if blocky:  # a few classes in 4×4 blocks, like real land cover
        out = np.empty(shape, dtype=np.uint8)
        for idx in np.ndindex(*lead):
            classes = rng.choice(n_classes, size=rng.integers(1, 5), replace=False)
            blocks = rng.choice(classes, size=(h // 4, w // 4)).astype(np.uint8)
            out[idx] = np.kron(blocks, np.ones((4, 4), dtype=np.uint8))
    else:
        out = rng.integers(0, n_classes, size=shape, dtype=np.uint8)
    out[rng.random(shape) < nodata_p] = LABEL_NODATA
    return out


# --------------------------------------------------------------------------- label_vectors
@pytest.mark.parametrize("shape", [(12, 10), (5, 12, 10), (3, 4, 8, 8), (2, 1, 1, 16, 16)])
@pytest.mark.parametrize("thr,min_valid", [(0.01, 0.1), (0.0, 0.0), (0.08, 0.5)])
def test_label_vectors_matches_loop(shape, thr, min_valid):
    rng = np.random.default_rng(hash((shape, thr)) % 2**32)
    maps = random_maps(rng, shape, nodata_p=rng.uniform(0, 0.8))
    if len(shape) > 2:  # a few very sparse maps to cross min_valid_fraction
        flat = maps.reshape(-1, shape[-2] * shape[-1])
        flat[0, rng.random(flat.shape[1]) < 0.9] = LABEL_NODATA
    frac, mh = label_vectors(maps, presence_threshold=thr, min_valid_fraction=min_valid)
    ref_f, ref_m = slow_label_vectors(maps, thr=thr, min_valid=min_valid)
    assert frac.dtype == np.float32 and mh.dtype == np.uint8
    assert frac.shape == shape[:-2] + (K,) and mh.shape == frac.shape
    np.testing.assert_array_equal(frac, ref_f)
    np.testing.assert_array_equal(mh, ref_m)


def test_label_vectors_blocky_realistic():
    rng = np.random.default_rng(3)
    maps = random_maps(rng, (6, 4, 32, 32), nodata_p=0.05, blocky=True)
    frac, mh = label_vectors(maps)
    ref_f, ref_m = slow_label_vectors(maps)
    np.testing.assert_array_equal(frac, ref_f)
    np.testing.assert_array_equal(mh, ref_m)
    labelled = mh.any(-1)
    np.testing.assert_allclose(frac[labelled].sum(-1), 1.0, rtol=1e-6)


def test_label_vectors_edge_cases():
    h = w = 10  # 100 pixels
    maps = np.full((6, h, w), LABEL_NODATA, dtype=np.uint8)
    # 0: all nodata → unlabelled
    maps[1] = 4  # single class
    maps[2].flat[:9] = 3  # 9 % valid < 10 % → unlabelled
    maps[3].flat[:10] = 3  # exactly 10 % valid → labelled
    maps[4] = 1  # class 2 at exactly the threshold (1 % of valid) is absent; class 5 at 2 % present
    maps[4].flat[0] = 2
    maps[4].flat[1:3] = 5
    maps[5] = 0  # nodata-free, two classes
    maps[5, :5] = 7
    frac, mh = label_vectors(maps)
    assert not frac[0].any() and not mh[0].any()
    assert frac[1, 4] == 1.0 and mh[1].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert not frac[2].any() and not mh[2].any()
    assert frac[3, 3] == 1.0 and mh[3, 3] == 1
    assert frac[4, 2] == np.float32(0.01) and mh[4, 2] == 0
    assert frac[4, 5] == np.float32(0.02) and mh[4, 5] == 1
    assert mh[4].tolist() == [0, 1, 0, 0, 0, 1, 0, 0, 0]
    assert frac[5, 0] == 0.5 and frac[5, 7] == 0.5 and mh[5].sum() == 2
    ref_f, ref_m = slow_label_vectors(maps)
    np.testing.assert_array_equal(frac, ref_f)
    np.testing.assert_array_equal(mh, ref_m)


def test_label_vectors_empty_batch_and_other_dtypes():
    frac, mh = label_vectors(np.zeros((0, 4, 8, 8), dtype=np.uint8))
    assert frac.shape == (0, 4, K) and mh.shape == (0, 4, K)
    maps16 = np.array([[0, 1], [LABEL_NODATA, 1]], dtype=np.uint16)
    frac, mh = label_vectors(maps16, min_valid_fraction=0.5)
    assert frac[0] == pytest.approx(1 / 3) and frac[1] == pytest.approx(2 / 3)


@pytest.mark.parametrize("bad", [9, 17, 254])
def test_label_vectors_bad_value(bad):
    maps = np.zeros((2, 8, 8), dtype=np.uint8)
    maps[1, 3, 3] = bad
    maps[0, 0, 0] = LABEL_NODATA
    with pytest.raises(ValueError, match=rf"\b{bad}\b"):
        label_vectors(maps)


def test_label_vectors_rejects_bad_input():
    with pytest.raises(ValueError, match="-1"):
        label_vectors(np.array([[0, -1]], dtype=np.int16))
    with pytest.raises(TypeError):
        label_vectors(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="collides"):
        label_vectors(np.zeros((4, 4), dtype=np.uint8), nodata=3)
    with pytest.raises(ValueError):
        label_vectors(np.zeros(4, dtype=np.uint8))


def test_comparison_and_bincount_counting_agree():
    """The two counting paths (comparisons for few classes, one bincount otherwise) give the same counts
    and name the same bad values.
    """
    from pipeline.labels.vectors import _few_class_counts, _general_class_counts

    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.int16, np.int64):
        maps = random_maps(rng, (7, 4, 16, 16), nodata_p=0.3).astype(dtype).reshape(28, -1)
        np.testing.assert_array_equal(_few_class_counts(maps, K, LABEL_NODATA),
                                      _general_class_counts(maps, K, LABEL_NODATA))
        maps[5, 3] = 12
        for count in (_few_class_counts, _general_class_counts):
            with pytest.raises(ValueError, match="label value.*12"):
                count(maps, K, LABEL_NODATA)


# --------------------------------------------------------------------------- dask
@pytest.mark.parametrize("chunks", [(1, 1, 24, 20), (2, 4, 24, 20), (3, 2, 12, 7)])
def test_label_vectors_dask_equals_numpy(chunks):
    rng = np.random.default_rng(7)
    maps = random_maps(rng, (5, 4, 24, 20), nodata_p=0.4)
    x = da.from_array(maps, chunks=chunks)
    frac_d, mh_d = label_vectors_dask(x, presence_threshold=0.02, min_valid_fraction=0.3)
    assert frac_d.dtype == np.float32 and mh_d.dtype == np.uint8
    assert frac_d.chunks[:2] == x.chunks[:2] and frac_d.chunks[2] == (K,)
    assert mh_d.chunks == frac_d.chunks
    ref_f, ref_m = label_vectors(maps, presence_threshold=0.02, min_valid_fraction=0.3)
    np.testing.assert_array_equal(frac_d.compute(), ref_f)
    np.testing.assert_array_equal(mh_d.compute(), ref_m)


def test_label_vectors_dask_bad_value_raises_on_compute():
    maps = np.zeros((2, 2, 8, 8), dtype=np.uint8)
    maps[1, 1, 2, 2] = 12
    frac_d, _ = label_vectors_dask(da.from_array(maps, chunks=(1, 1, 8, 8)))
    with pytest.raises(ValueError, match="12"):
        frac_d.compute()


# --------------------------------------------------------------------------- archive
def make_store(path, maps, status, *, sharded=False, fill_fraction=0.0, fill_hot=0):
    """A miniature archive with the lead's layout: one (patch, season) per dw_label chunk."""
    n_patch, n_season, h, w = maps.shape
    dask_chunks = (3, n_season, h, w) if sharded else (1, 1, h, w)  # whole shards per write task
    ds = xr.Dataset(
        {
            "dw_label": (("patch", "season", "y", "x"), da.from_array(maps, chunks=dask_chunks)),
            "status": (("patch",), np.asarray(status, dtype=np.int8)),
            "label_fraction": (("patch", "season", "class"),
                               np.full((n_patch, n_season, K), fill_fraction, dtype=np.float32)),
            "multi_hot": (("patch", "season", "class"),
                          np.full((n_patch, n_season, K), fill_hot, dtype=np.uint8)),
        },
        coords={"class": np.array(DW_CLASSES, dtype=object)},
    )
    if sharded:
        encoding = {
            "dw_label": {"chunks": (1, 1, h, w), "shards": (3, n_season, h, w),
                         "_FillValue": LABEL_NODATA},  # CF fill must not turn labels into floats
            "label_fraction": {"chunks": (1, n_season, K), "shards": (3, n_season, K)},
            "multi_hot": {"chunks": (1, n_season, K), "shards": (3, n_season, K)},
        }
    else:
        encoding = {
            "label_fraction": {"chunks": (2, n_season, K)},
            "multi_hot": {"chunks": (2, n_season, K)},
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's "consolidated metadata is not in the v3 spec" notice
        ds.to_zarr(str(path), zarr_format=3, mode="w", encoding=encoding)
    return str(path)


def read_store(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with xr.open_zarr(path) as ds:
            return (ds["label_fraction"].values, ds["multi_hot"].values, ds["status"].values)


STATUS = [1, 0, 1, 1, 2, 1, 0, 1, 1, 2, 1]


# Write units along patch: 2-patch chunks, or 3-patch shards. Batches are rounded up to whole units,
# and only units holding a done patch are written (all of them for this STATUS).
@pytest.mark.parametrize("sharded,batch,regions", [(False, 1, 6), (False, 256, 1), (True, 1, 4), (True, 4, 2)])
def test_compute_archive_labels(tmp_path, sharded, batch, regions):
    rng = np.random.default_rng(11)
    maps = random_maps(rng, (len(STATUS), 4, 16, 16), nodata_p=0.2, blocky=True)
    maps[0, 1] = LABEL_NODATA  # a fully masked season of a done patch
    maps[2, 3, :15] = LABEL_NODATA  # 6 % valid → unlabelled
    store = make_store(tmp_path / "a.zarr", maps, STATUS, sharded=sharded, fill_fraction=0.5, fill_hot=7)
    counts = compute_archive_labels(store, batch_patches=batch)

    frac, mh, status = read_store(store)
    done = status == STATUS_DONE
    ref_f, ref_m = label_vectors(maps)
    np.testing.assert_array_equal(frac[done], ref_f[done])
    np.testing.assert_array_equal(mh[done], ref_m[done])
    # patches that are not done keep what was stored
    assert (frac[~done] == 0.5).all() and (mh[~done] == 7).all()

    n_lab = int(ref_m[done].any(-1).sum())
    assert counts["patches"] == len(STATUS)
    assert counts["patches_done"] == int(done.sum()) == 7
    assert counts["patches_skipped"] == 4
    assert counts["patch_seasons_labelled"] == n_lab
    assert counts["patch_seasons_unlabelled"] == 7 * 4 - n_lab == 2
    assert counts["regions_written"] == regions


def test_compute_archive_labels_streams(tmp_path):
    """No Dask task handles more than one batch worth of dw_label (the map stack is never loaded whole)."""
    from dask.callbacks import Callback

    rng = np.random.default_rng(2)
    maps = random_maps(rng, (len(STATUS), 4, 16, 16))
    store = make_store(tmp_path / "s.zarr", maps, STATUS)
    sizes = []

    class Sizes(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            sizes.append(getattr(result, "nbytes", 0))

    progress = []
    with Sizes():
        compute_archive_labels(store, batch_patches=1,  # batches of one 2-patch chunk
                               on_region=lambda done, total: progress.append((done, total)))
    assert sizes and max(sizes) <= 2 * 4 * 16 * 16 < maps.nbytes
    n = len(STATUS)
    assert progress == [(min(p + 2, n), n) for p in range(0, n, 2)]  # every region, in order


def test_compute_archive_labels_no_done_patches(tmp_path):
    maps = np.zeros((3, 2, 8, 8), dtype=np.uint8)
    store = make_store(tmp_path / "b.zarr", maps, [0, 2, 0], fill_hot=3)
    counts = compute_archive_labels(store)
    assert counts["regions_written"] == 0 and counts["patches_done"] == 0
    assert (read_store(store)[1] == 3).all()


def test_compute_archive_labels_rejects_wrong_layout(tmp_path):
    ds = xr.Dataset({"status": (("patch",), np.ones(2, dtype=np.int8))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(str(tmp_path / "c.zarr"), zarr_format=3, mode="w")
    with pytest.raises(ValueError, match="dw_label"):
        compute_archive_labels(str(tmp_path / "c.zarr"))


def test_compute_archive_labels_on_pipeline_store(tmp_path):
    """The archive as pipeline.store writes it (sharded, no consolidated metadata), also via file://."""
    from pipeline.locations import Location, utm_epsg
    from pipeline.manifest import Manifest
    from pipeline.store import PatchResult, create_archive, open_group, write_patches

    status = [STATUS_DONE, 0, STATUS_DONE, 2, STATUS_DONE, STATUS_DONE, 0]
    url = f"file://{tmp_path}/p.zarr"
    manifest = Manifest.model_validate({
        "sampling": {"n_locations": len(status)}, "patch": {"size_px": 16},
        "store": {"path": url, "patches_per_shard": 3},
        "modalities": {"s2_l2a": {"enabled": False}, "s1_grd": {"enabled": False}},
    })
    locations = [Location(index=i, lon=10.0 + i, lat=45.0, epsg=utm_epsg(10.0 + i, 45.0),
                          x=500000.0, y=5.0e6, city=f"c{i}") for i in range(len(status))]
    layout = create_archive(manifest, locations, {"name": "test", "synthetic": True})
    S, H = layout.n_seasons, layout.size
    rng = np.random.default_rng(21)
    maps = random_maps(rng, (len(status), S, H, H), nodata_p=0.15, blocky=True)
    group = open_group(url, "r+")
    for shard in range(layout.n_shards):
        sl = layout.shard_slice(shard)
        results = []
        for i in range(sl.start, sl.stop):
            results.append(PatchResult(
                index=i, status=status[i],
                images={"s2_l1c": np.zeros((S, 13, H, H), np.uint16)},
                dw_label=maps[i], label_fraction=np.full((S, K), 0.5, np.float32),
                multi_hot=np.full((S, K), 9, np.uint8), acquired=np.zeros((S, 3), np.int32),
                image_id=np.full((S, 3), "x", dtype=object), cloud_pct=np.zeros((S, 3), np.float32),
                label_method=np.full((S,), "m", dtype=object)))
        write_patches(group, layout, results)

    counts = compute_archive_labels(url, batch_patches=1)
    # 3-patch chunks; the last holds no done patch
    assert counts["patches_done"] == 4 and counts["regions_written"] == 2
    g = open_group(url, "r")
    done = np.array(status) == STATUS_DONE
    ref_f, ref_m = label_vectors(maps)
    np.testing.assert_array_equal(g["label_fraction"][:][done], ref_f[done])
    np.testing.assert_array_equal(g["multi_hot"][:][done], ref_m[done])
    assert (g["multi_hot"][:][~done] == 0).all()  # write_patches stores zeros for patches not done
    st = summary_statistics(url)
    assert st["n_patches_done"] == 4 and st["class_counts"].tolist() == ref_m[done].sum((0, 1)).tolist()


# --------------------------------------------------------------------------- statistics and plots
@pytest.fixture(scope="module")
def labelled_store(tmp_path_factory):
    rng = np.random.default_rng(5)
    maps = random_maps(rng, (len(STATUS), 4, 16, 16), nodata_p=0.1, blocky=True)
    maps[1, 0] = LABEL_NODATA
    maps[3, 2] = LABEL_NODATA
    store = make_store(tmp_path_factory.mktemp("stats") / "s.zarr", maps, STATUS, fill_hot=1, fill_fraction=0.25)
    compute_archive_labels(store)
    return store


def test_summary_statistics_matches_loop(labelled_store):
    frac, mh, status = read_store(labelled_store)
    rows_f = [frac[p, s] for p in range(len(status)) if status[p] == STATUS_DONE for s in range(frac.shape[1])]
    rows_m = [mh[p, s] for p in range(len(status)) if status[p] == STATUS_DONE for s in range(mh.shape[1])]
    labelled = [i for i, m in enumerate(rows_m) if m.sum() > 0]
    n_lab = len(labelled)
    counts = [sum(int(rows_m[i][k]) for i in labelled) for k in range(K)]
    mean_frac = [sum(float(rows_f[i][k]) for i in labelled) / n_lab for k in range(K)]
    cooc = [[sum(int(rows_m[r][i]) * int(rows_m[r][j]) for r in labelled) for j in range(K)] for i in range(K)]
    per_k = [sum(1 for m in rows_m if int(m.sum()) == k) for k in range(K + 1)]

    st = summary_statistics(labelled_store)
    assert st["classes"] == list(DW_CLASSES)
    assert st["n_patches_done"] == 7 and st["n_patch_seasons"] == len(rows_m) == 28
    assert st["n_labelled"] == n_lab == 28 - 1  # patch 3 (done) has one all-nodata season; patch 1 is not done
    assert st["class_counts"].tolist() == counts
    np.testing.assert_allclose(st["class_frequency"], np.array(counts) / n_lab)
    np.testing.assert_allclose(st["mean_class_fraction"], mean_frac, rtol=1e-6)
    assert st["cooccurrence"].tolist() == cooc
    for i in range(K):
        for j in range(K):
            want = cooc[i][j] / cooc[i][i] if cooc[i][i] else np.nan
            np.testing.assert_allclose(st["cooccurrence_normalized"][i, j], want)
    assert st["labels_per_image"].tolist() == per_k
    assert st["mean_labels_per_labelled_image"] == pytest.approx(
        sum(k * c for k, c in enumerate(per_k)) / n_lab)


def test_summary_statistics_without_labels(tmp_path):
    store = make_store(tmp_path / "e.zarr", np.zeros((2, 2, 8, 8), dtype=np.uint8), [0, 0])
    st = summary_statistics(store)
    assert st["n_labelled"] == 0 and st["n_patch_seasons"] == 0
    assert np.isnan(st["class_frequency"]).all()
    assert st["labels_per_image"].sum() == 0


def test_plots_write_png(labelled_store, tmp_path):
    st = summary_statistics(labelled_store)
    for plot, name in ((plot_class_frequencies, "freq.png"), (plot_cooccurrence, "cooc.png")):
        out = plot(st, str(tmp_path / name))
        data = (tmp_path / name).read_bytes()
        assert out == str(tmp_path / name)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


# --------------------------------------------------------------------------- crosswalks
EOLEARN_LEGEND = {0: "no data", 1: "cultivated land", 2: "forest", 3: "grassland", 4: "shrubland",
                  5: "water", 6: "wetlands", 7: "tundra", 8: "artificial surface", 9: "bareland",
                  10: "snow and ice"}
WORLDCOVER_CODES = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
IO_LULC_V02_LEGEND = {0: "no data", 1: "water", 2: "trees", 4: "flooded vegetation", 5: "crops", 7: "built area",
                      8: "bare ground", 9: "snow/ice", 10: "clouds", 11: "rangeland"}


def dw(name: str) -> int:
    return DW_CLASSES.index(name)


def test_crosswalk_tables_complete():
    eo = {r.source_code: r for r in crosswalk_rows("eolearn_lulc")}
    assert {c: r.source_name for c, r in eo.items()} == EOLEARN_LEGEND
    wc = {r.source_code: r for r in crosswalk_rows("esa_worldcover")}
    assert sorted(wc) == WORLDCOVER_CODES
    io = {r.source_code: r for r in crosswalk_rows("io_lulc_annual_v02")}
    assert {c: r.source_name for c, r in io.items()} == IO_LULC_V02_LEGEND
    assert set(UNREACHABLE_CLASSES) <= set(CROSSWALKS)
    for name in CROSSWALKS:
        rows = crosswalk_rows(name)
        for r in rows:
            assert r.dw_class == ("nodata" if r.dw_index == LABEL_NODATA else DW_CLASSES[r.dw_index])
        assert [r.dw_class for r in rows if r.source_code == 0] == ["nodata"]  # 0 is every legend's no data
        # every DW class is reachable, except those the legend has no class for (declared once, per crosswalk)
        missing = {DW_CLASSES[k] for k in set(range(K)) - {r.dw_index for r in rows}}
        assert missing == set(UNREACHABLE_CLASSES.get(name, ())), name
    # the documented choices
    assert eo[7].dw_class == "grass" and "choice" in eo[7].note
    assert wc[100].dw_class == "grass" and "choice" in wc[100].note
    assert wc[95].dw_class == "flooded_vegetation" and wc[95].note
    assert io[11].dw_class == "grass" and "choice" in io[11].note and "shrub_and_scrub" in io[11].note
    assert io[10].dw_class == "nodata" and io[10].note  # clouds: no label
    assert load_crosswalk("eolearn_lulc") == {1: dw("crops"), 2: dw("trees"), 3: dw("grass"),
                                              4: dw("shrub_and_scrub"), 5: dw("water"),
                                              6: dw("flooded_vegetation"), 7: dw("grass"), 8: dw("built"),
                                              9: dw("bare"), 10: dw("snow_and_ice")}
    assert load_crosswalk("esa_worldcover") == {10: dw("trees"), 20: dw("shrub_and_scrub"), 30: dw("grass"),
                                                40: dw("crops"), 50: dw("built"), 60: dw("bare"),
                                                70: dw("snow_and_ice"), 80: dw("water"),
                                                90: dw("flooded_vegetation"), 95: dw("flooded_vegetation"),
                                                100: dw("grass")}
    assert load_crosswalk("io_lulc_annual_v02") == {1: dw("water"), 2: dw("trees"), 4: dw("flooded_vegetation"),
                                                    5: dw("crops"), 7: dw("built"), 8: dw("bare"),
                                                    9: dw("snow_and_ice"), 11: dw("grass")}


@pytest.mark.parametrize("name", CROSSWALKS)
def test_crosswalk_lut(name):
    lut = crosswalk_lut(name)
    mapping = load_crosswalk(name)
    assert lut.shape == (256,) and lut.dtype == np.uint8
    for code in range(256):
        assert lut[code] == mapping.get(code, LABEL_NODATA)
    assert lut[0] == LABEL_NODATA
    codes8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(apply_crosswalk(codes8, name), lut.reshape(16, 16))
    codes16 = np.array([[0, 10, 300], [65535, 7, 100]], dtype=np.uint16)
    expect = np.array([[255, mapping.get(10, 255), 255], [255, mapping.get(7, 255), mapping.get(100, 255)]])
    np.testing.assert_array_equal(apply_crosswalk(codes16, name), expect)
    assert apply_crosswalk(np.array([-1, 10]), name).tolist() == [255, mapping.get(10, 255)]


def test_crosswalk_errors():
    with pytest.raises(KeyError, match="corine"):
        load_crosswalk("corine")
    with pytest.raises(TypeError):
        apply_crosswalk(np.zeros(3, dtype=np.float32), "eolearn_lulc")


# --------------------------------------------------------------------------- real data
def test_crosswalks_match_real_legends(shared_data):
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(shared_data / "eolearn_testpatch_slovenia" / "lulc.tif") as src:
        tag = src.tags()["LEGEND"]
    legend = {int(c): n for c, n in (item.split(" ", 1) for item in tag.split(";"))}
    assert legend == {r.source_code: r.source_name for r in crosswalk_rows("eolearn_lulc")}
    tif = shared_data / "esa_worldcover" / "worldcover_2021_v200_saotome.tif"
    if tif.exists():
        with rasterio.open(tif) as src:
            wc_tag = src.tags()["legend"]
        wc = {int(m.group(1)): m.group(2).strip() for m in re.finditer(r"(\d+)\s+(.+)", wc_tag)}
        rows = {r.source_code: r.source_name for r in crosswalk_rows("esa_worldcover") if r.source_code}
        assert wc == rows


def test_real_eolearn_lulc_labels(shared_data):
    rasterio = pytest.importorskip("rasterio")
    root = shared_data / "eolearn_testpatch_slovenia"
    meta = json.loads((root / "metadata.json").read_text())
    with rasterio.open(root / "lulc.tif") as src:
        lulc = src.read(1)
        assert src.nodata == 0
    legend = {name: int(code) for code, name in meta["lulc_legend"].items()}
    recorded = {legend[name]: n for name, n in meta["lulc_pixel_counts"].items()}

    # raw pixel counts per legend code equal the ones recorded with the data
    codes, n = np.unique(lulc, return_counts=True)
    assert dict(zip(codes.tolist(), n.tolist())) == recorded
    assert sum(recorded.values()) == lulc.size == meta["width"] * meta["height"]
    original = root / "original" / "TestEOPatch" / "mask_timeless" / "LULC.npy"
    if original.exists():  # the uint16 eo-learn array crosswalks identically
        np.testing.assert_array_equal(apply_crosswalk(np.load(original)[..., 0], "eolearn_lulc"),
                                      apply_crosswalk(lulc, "eolearn_lulc"))

    dw_map = apply_crosswalk(lulc, "eolearn_lulc")
    frac, mh = label_vectors(dw_map)
    mapping = load_crosswalk("eolearn_lulc")
    n_valid = sum(c for code, c in recorded.items() if code in mapping)
    assert n_valid == lulc.size - recorded[legend["no data"]]
    expect = np.zeros(K)
    for code, c in recorded.items():
        if code in mapping:
            expect[mapping[code]] += c
    expect /= n_valid
    np.testing.assert_allclose(frac, expect, rtol=1e-6)
    np.testing.assert_array_equal(mh, (expect > 0.01).astype(np.uint8))
    # forest, grassland, shrubland (3.6 %) and artificial surface (2.0 %) pass the 1 % threshold;
    # cultivated land (11 of 9945 valid pixels, 0.11 %) does not.
    assert [DW_CLASSES[k] for k in np.flatnonzero(mh)] == ["trees", "grass", "shrub_and_scrub", "built"]
    assert frac[dw("crops")] > 0 and mh[dw("crops")] == 0


def test_uint8_fast_path_equals_general_path_over_many_maps():
    """More than 256 maps (several bincount groups) and a wide dtype give identical vectors."""
    maps = random_maps(np.random.default_rng(11), (300, 2, 9, 7))
    fast = label_vectors(maps, presence_threshold=0.05)
    general = label_vectors(maps.astype(np.int32), presence_threshold=0.05)
    np.testing.assert_array_equal(fast[0], general[0])
    np.testing.assert_array_equal(fast[1], general[1])
    bad = maps.copy()
    bad[299, 1, 0, 0] = 42
    with pytest.raises(ValueError, match="42"):
        label_vectors(bad)
    with pytest.raises(ValueError, match="42"):
        label_vectors(bad.astype(np.int32))


def test_labels_command_recomputes_with_another_threshold(tmp_path):
    """`softcon labels STORE --presence-threshold T` rewrites multi_hot from the stored maps with T,
    records what it used, and by default goes back to the archive manifest's thresholds.
    """
    from archive_helpers import synthetic_archive
    from typer.testing import CliRunner

    from flows.cli import app

    store = synthetic_archive(tmp_path / "a.zarr", n_locations=6, size_px=32, patches_per_shard=4)
    maps = zarr.open_group(store, mode="r")["dw_label"][:]
    runner = CliRunner()
    res = runner.invoke(app, ["labels", store, "--presence-threshold", "0.3"])
    assert res.exit_code == 0, res.output
    group = zarr.open_group(store, mode="r")
    _, want = label_vectors(maps, presence_threshold=0.3, min_valid_fraction=0.1)
    np.testing.assert_array_equal(group["multi_hot"][:], want)
    assert group.attrs["labels_recomputed"]["presence_threshold"] == 0.3
    assert "labelled" in res.output

    assert runner.invoke(app, ["labels", store]).exit_code == 0  # the manifest's 0.01 again
    _, default = label_vectors(maps, presence_threshold=0.01, min_valid_fraction=0.1)
    np.testing.assert_array_equal(zarr.open_group(store, mode="r")["multi_hot"][:], default)
    assert not np.array_equal(want, default)

    bad = runner.invoke(app, ["labels", store, "--presence-threshold", "1.5"])
    assert bad.exit_code == 2 and "presence_threshold" in bad.output
