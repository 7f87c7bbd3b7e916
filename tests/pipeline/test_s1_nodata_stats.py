"""Sentinel-1 no-data (NaN in the archive): statistics over valid pixels only, no NaN into the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from archive_helpers import synthetic_archive

from pipeline.bands import S1_GRD_BANDS
from pipeline.store import STATUS_DONE, STATUS_FAILED, open_group
from train.augment import sar_view_transforms
from train.data import ArchiveDataset, Normalizer, compute_archive_statistics

SIZE = 16


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """6 locations of 16 px; NaN S1 pixels in several done patches (one season's VH band entirely),
    and a failed patch whose S1 pixels must not count.
    """
    path = synthetic_archive(tmp_path_factory.mktemp("s1-nodata") / "a.zarr", n_locations=6, size_px=SIZE,
                             patches_per_shard=3)
    g = open_group(path, "r+")
    sar = g["s1_grd"][:]
    sar[0, 1, 0, 2:5, :] = np.nan           # a stripe of VV
    sar[0, 3, :, :, 10:] = np.nan           # both bands, right border of one season
    sar[2, 0, 1] = np.nan                   # a whole VH image of one season
    sar[4, 2, 0, 7, 7] = np.nan             # one pixel
    sar[5] = 1e6                            # patch 5 is marked failed below: its values must not count
    g["s1_grd"][:] = sar
    status = g["status"][:]
    status[5] = STATUS_FAILED
    g["status"][:] = status
    return path


def _done_sar(path: str) -> np.ndarray:
    g = open_group(path)
    done = g["status"][:] == STATUS_DONE
    return g["s1_grd"][:][done].astype(np.float64)  # (P, S, C, H, W)


def test_s1_statistics_ignore_nan_like_numpy(archive):
    data = _done_sar(archive)
    assert np.isnan(data).any()
    per_band = np.moveaxis(data, 2, 0).reshape(len(S1_GRD_BANDS), -1)
    ref_mean, ref_std = np.nanmean(per_band, axis=1), np.nanstd(per_band, axis=1)
    mean, std, counts = compute_archive_statistics(archive, "s1_grd", splits="all", return_counts=True)
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-10)
    np.testing.assert_allclose(std, ref_std, rtol=1e-8)
    assert counts.tolist() == np.isfinite(per_band).sum(axis=1).tolist()
    assert (counts < per_band.shape[1]).all()


def test_s1_items_have_no_nan_and_nodata_is_zero(archive):
    g = open_group(archive)
    mean, std = compute_archive_statistics(archive, "s1_grd", splits="all")
    for mode in ("softcon", "zscore"):  # 0 is the clip floor (softcon) and the band mean (zscore)
        norm = Normalizer(mean, std, mode=mode, bands=S1_GRD_BANDS)
        ds = ArchiveDataset(archive, modality="s1_grd", view_mode="single", normalizer=norm)
        assert 5 not in ds.patches.tolist()
        n_nodata = 0
        for i in range(len(ds)):
            item = ds[i]
            image = item["image"].numpy()
            raw = g["s1_grd"][item["location"], item["season"]]
            nodata = np.isnan(raw)
            n_nodata += int(nodata.sum())
            assert not np.isnan(image).any(), (mode, i)
            assert (image[nodata] == 0).all()
            lo = mean - 2 * std if mode == "softcon" else mean
            scale = 4 * std if mode == "softcon" else std
            ref = (raw.astype(np.float64) - lo[:, None, None]) / scale[:, None, None]
            if mode == "softcon":
                ref = np.clip(ref, 0, 1)
            np.testing.assert_allclose(image[~nodata], ref[~nodata], rtol=1e-5, atol=1e-5)
        assert n_nodata == int(np.isnan(_done_sar(archive)).sum()) > 0


def test_s1_training_views_have_no_nan(archive):
    """The SAR augmentations run after normalisation: views of a NaN image hold no NaN either, also as the
    second modality of cross-modal views.
    """
    two = ArchiveDataset(archive, modality="s1_grd", view_mode="same_season",
                         transforms=sar_view_transforms(12))
    cross = ArchiveDataset(archive, modality="s2_l1c", view_mode="cross_modal", modality2="s1_grd",
                           transforms2=sar_view_transforms(12))
    for ds in (two, cross):
        for i in range(len(ds)):
            item = ds[i]
            for key in ("view1", "view2"):
                assert torch.isfinite(item[key]).all(), (ds, i, key)


def test_any_float_modality_nodata_becomes_zero():
    norm = Normalizer([10.0, -5.0], [2.0, 1.0], mode="zscore")
    x = torch.tensor([[[np.nan, 12.0]], [[-np.inf, -5.0]]], dtype=torch.float32)
    assert torch.equal(norm(x), torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]]))
    raw = torch.tensor([[[np.nan]], [[np.inf]]], dtype=torch.float64)
    assert torch.equal(Normalizer([0.0, 0.0], [1.0, 1.0])(raw), torch.zeros(2, 1, 1))
