"""Training data: augmentations, normalisation, archive statistics, ArchiveDataset and its loader."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.bands import S1_GRD_BANDS, S2_L1C_BANDS
from pipeline.curate import prepare, process_shard
from pipeline.manifest import Manifest
from pipeline.store import STATUS_DONE, STATUS_FAILED, open_group
from train.augment import (
    Compose,
    RandomBrightnessContrast,
    RandomGaussianBlur,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomVerticalFlip,
    SarIntensityJitter,
    gaussian_blur,
    gaussian_kernel1d,
    ms_view_transforms,
    sar_view_transforms,
)
from train.data import (
    PUBLISHED_STATISTICS,
    ArchiveDataset,
    EpochSampler,
    Normalizer,
    build_dataloader,
    compute_archive_statistics,
    item_seed,
    load_statistics,
    save_statistics,
)

SIZE = 32


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny curated archive (synthetic source, 8 locations, 32 px); patch 5 forced to failed; a few
    nodata pixels injected into a done patch (0 DN in S2, NaN in S1).
    """
    tmp = tmp_path_factory.mktemp("train_data")
    path = str(tmp / "tiny.zarr")
    m = Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": 1, "cloud_probability": 0.1}},
        "sampling": {"n_locations": 8, "top_n_cities": 50, "seed": 3},
        "patch": {"size_px": SIZE},
        "store": {"path": path, "patches_per_shard": 4},
    })
    locations, layout = prepare(m)
    for shard in range(layout.n_shards):
        process_shard(m, layout, shard, locations[layout.shard_slice(shard)])
    g = open_group(path, "r+")
    status = g["status"][:]
    status[5] = STATUS_FAILED
    g["status"][:] = status
    done = np.flatnonzero(status == STATUS_DONE)
    assert len(done) >= 4
    p = int(done[0])
    block = g["s2_l1c"][p, 1]
    block[:, :3, :5] = 0
    g["s2_l1c"][p, 1] = block
    sar = g["s1_grd"][p, 2]
    sar[0, 4:6, :] = np.nan
    g["s1_grd"][p, 2] = sar
    return path


def expected_norm(raw: np.ndarray, modality: str) -> np.ndarray:
    mean, std = (np.array(v) for v in zip(*(PUBLISHED_STATISTICS["A"][modality][b]
                                               for b in {"s2_l1c": S2_L1C_BANDS, "s1_grd": S1_GRD_BANDS}[modality])))
    lo = mean - 2 * std
    out = np.clip((raw.astype(np.float64) - lo[:, None, None]) / (4 * std[:, None, None]), 0, 1)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


# --------------------------------------------------------------------------- augmentations
def test_transforms_deterministic_for_a_generator_and_in_range():
    x = torch.rand(13, 40, 40, generator=gen(1))
    for view in (1, 2):
        t = ms_view_transforms(24, view)
        a, b = t(x, gen(7)), t(x, gen(7))
        assert torch.equal(a, b) and a.shape == (13, 24, 24) and a.dtype == torch.float32
        assert a.min() >= 0 and a.max() <= 1
        assert not torch.equal(a, t(x, gen(8)))
    s = torch.rand(2, 40, 40, generator=gen(2))
    t = sar_view_transforms(16)
    assert torch.equal(t(s, gen(3)), t(s, gen(3))) and t(s, gen(3)).shape == (2, 16, 16)
    # the MoCo v3 asymmetry: blur always on view 1, rarely on view 2
    assert ms_view_transforms(8, 1).transforms[3].p == 1.0 and ms_view_transforms(8, 2).transforms[3].p == 0.1


def test_grayscale_flips_and_crop_on_hand_made_tensors():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[3.0, 0.0], [1.0, 2.0]], [[2.0, 1.0], [2.0, 0.0]]])
    gray = RandomGrayscale(p=1.0)(x, gen())
    assert torch.allclose(gray, torch.tensor([[2.0, 1.0], [2.0, 2.0]]).expand(3, 2, 2))
    assert torch.equal(RandomGrayscale(p=0.0)(x, gen()), x)
    assert torch.equal(RandomHorizontalFlip(1.0)(x, gen()), x[:, :, [1, 0]])
    assert torch.equal(RandomVerticalFlip(1.0)(x, gen()), x[:, [1, 0], :])
    assert torch.equal(RandomHorizontalFlip(0.0)(x, gen()), x)

    img = torch.arange(3 * 20 * 30, dtype=torch.float32).reshape(3, 20, 30)
    # full scale, aspect of the image itself → the whole image, unchanged
    whole = RandomResizedCrop((20, 30), scale=(1.0, 1.0), ratio=(1.5, 1.5))
    assert torch.equal(whole(img, gen()), img)
    crop = RandomResizedCrop(12)
    for seed in range(50):
        top, left, h, w = crop.get_params(20, 30, gen(seed))
        assert 0 <= top and top + h <= 20 and 0 <= left and left + w <= 30
        assert 0.2 * 600 * 0.8 <= h * w <= 600 and 0.6 <= w / h <= 1.6
        out = crop(img, gen(seed))
        ref = F.interpolate(img[None, :, top:top + h, left:left + w], size=(12, 12), mode="bilinear",
                            align_corners=False, antialias=False)[0]
        assert torch.equal(out, ref)


def test_brightness_contrast_blur():
    x = torch.rand(4, 10, 10, generator=gen(3)) * 0.5
    bright = RandomBrightnessContrast(p=1.0, brightness=(1.5, 1.5), contrast=(1.0, 1.0))(x, gen())
    assert torch.allclose(bright, (x * 1.5).clamp(0, 1))
    con = RandomBrightnessContrast(p=1.0, brightness=(1.0, 1.0), contrast=(0.5, 0.5))(x, gen())
    mean = x.mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(con, (x - mean) * 0.5 + mean, atol=1e-6)
    assert torch.allclose(con.mean(dim=(1, 2)), x.mean(dim=(1, 2)), atol=1e-6)  # per-channel mean kept
    assert torch.equal(RandomBrightnessContrast(p=0.0)(x, gen()), x)
    const = torch.full((3, 12, 12), 0.3)
    assert torch.allclose(gaussian_blur(const, 2.0), const, atol=1e-6)
    spike = torch.zeros(1, 21, 21)
    spike[0, 10, 10] = 1.0
    blurred = gaussian_blur(spike, 1.0)
    assert math.isclose(float(blurred.sum()), 1.0, rel_tol=1e-5)
    assert torch.allclose(blurred[0], blurred[0].T, atol=1e-7) and blurred[0, 10, 10] == blurred.max()
    assert torch.equal(RandomGaussianBlur(p=0.0)(x, gen()), x)


def test_sar_jitter_preserves_cross_pol_difference():
    db = torch.stack([torch.full((8, 8), -11.0), torch.full((8, 8), -19.0)]) + torch.rand(2, 8, 8, generator=gen(4))
    jit = SarIntensityJitter(p=1.0, offset_db=(1.0, 3.0))
    out = jit(db, gen(5))
    assert torch.allclose(out[0] - out[1], db[0] - db[1], atol=1e-5)
    delta = (out - db).flatten()
    assert torch.allclose(delta, delta[0].expand_as(delta), atol=1e-5) and 1.0 <= float(delta[0]) <= 3.0
    # in normalised units, with the normaliser's scale: same as an identical dB shift before scaling
    norm = Normalizer.published("s1_grd")
    jn = SarIntensityJitter(p=1.0, offset_db=(1.0, 3.0), db_scale=norm.scale())
    back = norm.inverse(jn(norm(db), gen(5)))
    assert torch.allclose(back, out, atol=1e-4)
    assert torch.allclose(back[0] - back[1], db[0] - db[1], atol=1e-4)


# --------------------------------------------------------------------------- normaliser and statistics
def test_normalizer_formula_modes_and_band_subsets():
    bands = ["B4", "B3", "B2"]
    norm = Normalizer.published("s2_l1c", bands)
    assert norm.mean.tolist() == [1363.524, 1314.873, 1390.782] and norm.std.tolist() == [1138.850, 875.065, 850.348]
    x = torch.tensor([0.0, 500.0, 1400.0, 3000.0, 6000.0]).view(1, 1, 5).expand(3, 4, 5)
    mu, sd = norm.mean[:, None, None], norm.std[:, None, None]
    ref = np.clip((x.numpy() - (mu - 2 * sd)) / (4 * sd), 0, 1)
    np.testing.assert_allclose(norm(x).numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(Normalizer.published("s2_l1c", bands, mode="zscore")(x).numpy(),
                               (x.numpy() - mu) / sd, rtol=1e-5, atol=1e-5)
    full = Normalizer.published("s2_l1c")
    assert full.subset(bands).mean.tolist() == norm.mean.tolist() and len(full) == 13
    assert Normalizer.published("s2_l2a", ["B9"]).mean.tolist() == [2645.519]  # L2A has its own table
    assert Normalizer.published("s1_grd", table="B").mean.tolist() == [-12.59, -20.26]
    s1 = Normalizer.published("s1_grd")
    y = s1(torch.tensor([[[np.nan, -12.548]], [[-20.192, 100.0]]]))
    assert torch.allclose(y, torch.tensor([[[0.0, 0.5]], [[0.5, 1.0]]]), atol=1e-6)
    with pytest.raises(KeyError):
        Normalizer.published("s2_l2a", ["B10"])
    with pytest.raises(ValueError):
        norm(torch.zeros(13, 2, 2))


def test_compute_archive_statistics_matches_numpy(archive, tmp_path):
    g = open_group(archive)
    done = g["status"][:] == STATUS_DONE
    for modality in ("s2_l1c", "s1_grd"):
        data = g[modality][:][done].astype(np.float64)  # (P, S, C, H, W)
        data = np.moveaxis(data, 2, 0).reshape(data.shape[2], -1)
        valid = np.isfinite(data) if modality == "s1_grd" else data != 0
        ref_mean = np.array([row[v].mean() for row, v in zip(data, valid)])
        ref_std = np.array([row[v].std() for row, v in zip(data, valid)])
        mean, std, counts = compute_archive_statistics(archive, modality, splits="all", return_counts=True)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-10)
        np.testing.assert_allclose(std, ref_std, rtol=1e-8)
        assert counts.tolist() == valid.sum(axis=1).tolist() and (counts < data.shape[1]).any()
    sub_mean, sub_std = compute_archive_statistics(archive, "s2_l1c", splits="all", bands=["B8", "B2"])
    full_mean, full_std = compute_archive_statistics(archive, "s2_l1c", splits="all")
    np.testing.assert_allclose(sub_mean, full_mean[[7, 1]])
    np.testing.assert_allclose(sub_std, full_std[[7, 1]])
    # max_patches: the same as the statistics of that many evenly spread done patches
    m2, _ = compute_archive_statistics(archive, "s2_l1c", splits="all", max_patches=2)
    assert not np.allclose(m2, full_mean)
    # JSON round trip, merged per modality, and a normaliser selected by band names
    f = tmp_path / "stats.json"
    save_statistics(f, "s2_l1c", list(S2_L1C_BANDS), full_mean, full_std, store=archive, n_pixels=counts)
    save_statistics(f, "s1_grd", list(S1_GRD_BANDS), *compute_archive_statistics(archive, "s1_grd", splits="all"))
    lm, ls = load_statistics(f, "s2_l1c", ["B8", "B2"])
    np.testing.assert_allclose(lm, sub_mean)
    np.testing.assert_allclose(ls, sub_std)
    n = Normalizer.from_file(f, "s1_grd", mode="zscore")
    assert n.bands == S1_GRD_BANDS and n.mode == "zscore"


# --------------------------------------------------------------------------- data set
def test_dataset_single_only_done_and_exact_values(archive):
    g = open_group(archive)
    status = g["status"][:]
    done = np.flatnonzero(status == STATUS_DONE)
    ds = ArchiveDataset(archive, view_mode="single")
    assert 5 not in ds.patches and ds.patches.tolist() == done.tolist() and len(ds) == 4 * len(done)
    assert ds.band_names == list(S2_L1C_BANDS)
    for i in (0, 5, len(ds) - 1):
        item = ds[i]
        p, s = int(ds.items[i][0]), int(ds.items[i][1])
        assert (item["location"], item["season"], item["index"]) == (p, s, i)
        assert item["image"].shape == (13, SIZE, SIZE) and item["image"].dtype == torch.float32
        np.testing.assert_allclose(item["image"].numpy(), expected_norm(g["s2_l1c"][p, s], "s2_l1c"), atol=1e-6)
        np.testing.assert_array_equal(item["label_fraction"].numpy(), g["label_fraction"][p, s])
        np.testing.assert_array_equal(item["multi_hot"].numpy(), g["multi_hot"][p, s].astype(np.float32))
        assert item["label_fraction"].shape == (9,) and item["multi_hot"].dtype == torch.float32
    raw = ArchiveDataset(archive, view_mode="single", normalizer=False, bands=["B4", "B3", "B2"], indices=[done[1]])
    assert len(raw) == 4 and raw[2]["location"] == done[1]
    np.testing.assert_array_equal(raw[2]["image"].numpy(), g["s2_l1c"][int(done[1]), 2][[3, 2, 1]].astype(np.float32))
    assert raw.band_names == ["B4", "B3", "B2"]


def test_seasonal_and_cross_modal_views(archive):
    g = open_group(archive)
    ds = ArchiveDataset(archive, view_mode="seasonal", seed=3)
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        p = item["location"]
        assert item["season"] != item["season2"] and 0 <= item["season2"] < 4
        seen.add(item["season2"])
        if i < 3:
            np.testing.assert_allclose(item["view2"].numpy(),
                                       expected_norm(g["s2_l1c"][p, item["season2"]], "s2_l1c"), atol=1e-6)
            np.testing.assert_array_equal(item["multi_hot"].numpy(), g["multi_hot"][p, item["season"]])
    assert seen == {0, 1, 2, 3}
    cm = ArchiveDataset(archive, view_mode="cross_modal", transforms2=sar_view_transforms(16))
    assert cm.band_names2 == list(S1_GRD_BANDS)
    item = cm[6]
    p, s = item["location"], item["season"]
    assert item["view1"].shape == (13, SIZE, SIZE) and item["view2"].shape == (2, 16, 16)
    np.testing.assert_allclose(item["view1"].numpy(), expected_norm(g["s2_l1c"][p, s], "s2_l1c"), atol=1e-6)
    assert item["bands"] == tuple(S2_L1C_BANDS) and item["bands2"] == tuple(S1_GRD_BANDS)
    batch = next(iter(build_dataloader(cm, 4, shuffle=False)))
    assert batch["bands"] == list(S2_L1C_BANDS) and batch["bands2"] == list(S1_GRD_BANDS)
    assert batch["view1"].shape == (4, 13, SIZE, SIZE) and batch["location"].shape == (4,)
    plain = ArchiveDataset(archive, view_mode="cross_modal")[6]["view2"]
    np.testing.assert_allclose(plain.numpy(), expected_norm(g["s1_grd"][p, s], "s1_grd"), atol=1e-6)
    assert torch.isfinite(ArchiveDataset(archive, view_mode="cross_modal")[
        int(np.flatnonzero((cm.items[:, 0] == cm.patches[0]) & (cm.items[:, 1] == 2))[0])]["view2"]).all()


def two_view(archive, **kw):
    return ArchiveDataset(archive, view_mode="same_season",
                          transforms=(ms_view_transforms(16, 1), ms_view_transforms(16, 2)), **kw)


def test_dataloader_workers_match_and_epochs_reproducible(archive):
    ds = two_view(archive, seed=11)
    batches = {}
    for workers in (0, 2):
        loader = build_dataloader(ds, batch_size=4, num_workers=workers, shuffle=True, seed=5)
        loader.set_epoch(1)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(ds) // 4
    for a, b in zip(batches[0], batches[2]):
        assert a["index"].tolist() == b["index"].tolist()
        for key in ("view1", "view2", "label_fraction", "multi_hot"):
            assert torch.equal(a[key], b[key])
    first = batches[0][0]
    assert first["view1"].shape == (4, 13, 16, 16) and not torch.equal(first["view1"], first["view2"])
    # set_epoch: another epoch gives other augmentations, the same epoch again the same ones
    ds.set_epoch(0)
    e0 = ds[3]["view1"]
    ds.set_epoch(1)
    e1 = ds[3]["view1"]
    ds.set_epoch(0)
    assert torch.equal(ds[3]["view1"], e0) and not torch.equal(e0, e1)
    assert torch.equal(ds[(3, 1)]["view1"], e1)  # the epoch stamped by the sampler wins
    assert item_seed(0, 1, 3) != item_seed(0, 3, 1)
    # persistent workers keep an old copy of the data set: the epoch travels with the sampled index
    persistent = build_dataloader(ds, batch_size=4, num_workers=2, seed=5, persistent_workers=True)
    reference = build_dataloader(ds, batch_size=4, num_workers=0, seed=5)
    for epoch in (2, 3):
        persistent.set_epoch(epoch)
        reference.set_epoch(epoch)
        got, want = next(iter(persistent)), next(iter(reference))
        assert torch.equal(got["view2"], want["view2"]) and got["index"].tolist() == want["index"].tolist()
    # resume mid-epoch: skip_batches gives the tail of the same epoch
    loader = build_dataloader(ds, batch_size=4, num_workers=0, seed=5)
    loader.set_epoch(1, skip_batches=2)
    tail = list(loader)
    assert [b["index"].tolist() for b in tail] == [b["index"].tolist() for b in batches[0][2:]]
    assert torch.equal(tail[0]["view2"], batches[0][2]["view2"])
    # the data set pickles without open handles, after use
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays is None and torch.equal(clone[(3, 1)]["view1"], e1)


def test_distributed_sampler_partitions(archive):
    ds = ArchiveDataset(archive, view_mode="single")
    parts = []
    for rank in range(2):
        s = EpochSampler(ds, shuffle=True, seed=1, distributed=True, num_replicas=2, rank=rank)
        s.set_epoch(2)
        parts.append([i for i, e in s])
        assert all(e == 2 for _, e in s)
    assert sorted(parts[0] + parts[1]) == list(range(len(ds)))
    loader = build_dataloader(ds, batch_size=2, distributed=True, num_replicas=2, rank=1, seed=1)
    loader.set_epoch(2)
    assert [int(i) for b in loader for i in b["index"]] == parts[1][:len(parts[1]) // 2 * 2]


def test_fsspec_file_url(archive):
    url = "file://" + archive
    ds = two_view(archive, seed=2)
    du = two_view(url, seed=2)
    assert len(du) == len(ds)
    a, b = ds[4], du[4]
    assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["multi_hot"], b["multi_hot"])
    mean, _ = compute_archive_statistics(url, "s1_grd", splits="all", max_patches=2)
    np.testing.assert_allclose(mean, compute_archive_statistics(archive, "s1_grd", splits="all", max_patches=2)[0])


def test_compose_and_bad_arguments(archive):
    t = Compose([RandomHorizontalFlip(1.0), RandomVerticalFlip(1.0)])
    x = torch.arange(4.0).view(1, 2, 2)
    assert torch.equal(t(x, gen()), x.flip(-1).flip(-2))
    with pytest.raises(ValueError):
        ArchiveDataset(archive, view_mode="both")
    with pytest.raises(KeyError):
        ArchiveDataset(archive, bands=["B99"])


def test_gaussian_blur_matches_a_plain_loop():
    """The separable blur against a direct 2-D loop with reflect indexing (numpy's 'reflect' = edge not repeated)."""
    g = torch.Generator().manual_seed(5)
    for sigma, (h, w) in ((0.4, (9, 7)), (1.3, (12, 16)), (2.0, (5, 6))):
        x = torch.rand(2, h, w, generator=g, dtype=torch.float64)
        got = gaussian_blur(x, sigma)
        k = gaussian_kernel1d(sigma, torch.float64)
        r = (k.numel() - 1) // 2
        if r >= min(h, w):
            r = min(h, w) - 1
            k = k[(k.numel() - 1) // 2 - r:(k.numel() - 1) // 2 + r + 1]
            k = k / k.sum()

        def reflect(i: int, n: int) -> int:
            return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

        want = torch.zeros_like(x)
        for c in range(2):
            for i in range(h):
                for j in range(w):
                    want[c, i, j] = sum(k[a] * k[b] * x[c, reflect(i + a - r, h), reflect(j + b - r, w)]
                                        for a in range(2 * r + 1) for b in range(2 * r + 1))
        torch.testing.assert_close(got, want)



def test_save_statistics_never_overwrites_a_foreign_file(tmp_path):
    """Issue 10.1 (audit): `softcon stats --out notes.json` on a file of the user's refuses and leaves it."""
    from pipeline.errors import BadInput

    for content in ("my notes, not JSON", '{"format": "something else"}'):
        f = tmp_path / "stats.json"
        f.write_text(content)
        with pytest.raises(BadInput, match="not a statistics file of this project"):
            save_statistics(f, "s1_grd", list(S1_GRD_BANDS), [0.0, 0.0], [1.0, 1.0])
        assert f.read_text() == content
