"""Downstream task readers on the real samples (BigEarthNet v1/v2, EuroSAT) and on a tiny curated archive."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from torch.utils.data import DataLoader

from pipeline.bands import S1_GRD_BANDS, S2_L1C_BANDS, S2_L2A_BANDS
from train.evaluate.tasks import (
    BEN19_LABELS,
    BEN43_LABELS,
    CLC_TABLE,
    EUROSAT_CLASSES,
    L1C_B10_MEAN_DN,
    TASKS,
    ArchiveTask,
    BigEarthNetV1,
    BigEarthNetV2,
    EuroSAT,
    ben43_to_ben19,
    build_task,
    reference_map_labels,
    subsample,
    subsample_indices,
)

AGRI_NATURAL = "Land principally occupied by agriculture, with significant areas of natural vegetation"
P87 = "S2A_MSIL2A_20170613T101031_87_48"
SNOWY = "S2B_MSIL2A_20180204T94161_57_38"
SNOWY_S1 = "S1A_IW_GRDH_1SDV_20180204T043253_35VPK_57_38"
REBEN_S2 = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
REBEN_S1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48"
REBEN_MAP = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
TILE = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def names_of(vec: torch.Tensor, classes) -> set[str]:
    return {classes[i] for i in torch.nonzero(vec).flatten().tolist()}


def sample_by_id(ds, pid: str) -> dict:
    return ds[ds.ids.index(pid)]


def bilinear(band: np.ndarray, size: int) -> np.ndarray:
    """The documented resampling: bilinear on pixel centres (half-pixel), float32."""
    t = torch.from_numpy(band.astype(np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


@pytest.fixture(scope="module")
def ben(shared_data) -> Path:
    return shared_data / "bigearthnet_v1"


@pytest.fixture(scope="module")
def reben(shared_data) -> Path:
    return shared_data / "bigearthnet_v2_reben"


# ---------------------------------------------------------------------------------------- nomenclature
def test_nomenclature_table():
    codes = [c for c, _, _ in CLC_TABLE]
    assert len(set(codes)) == 43 and len(set(BEN43_LABELS)) == 43 and 335 not in codes
    assert len(BEN19_LABELS) == 19
    dropped = {c for c, _, new in CLC_TABLE if new is None}
    assert dropped == {122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 423}
    groups: dict[str, set[int]] = {}
    for code, _, new in CLC_TABLE:
        if new is not None:
            groups.setdefault(new, set()).add(code)
    assert set(groups) == set(BEN19_LABELS)
    assert groups["Urban fabric"] == {111, 112}
    assert groups["Arable land"] == {211, 212, 213}
    assert groups["Permanent crops"] == {221, 222, 223, 241}
    assert groups["Natural grassland and sparsely vegetated areas"] == {321, 333}
    assert groups["Moors, heathland and sclerophyllous vegetation"] == {322, 323}
    assert groups["Inland wetlands"] == {411, 412}
    assert groups["Coastal wetlands"] == {421, 422}
    assert groups["Inland waters"] == {511, 512}
    assert groups["Marine waters"] == {521, 522, 523}
    assert ben43_to_ben19(["Airports", "Sea and ocean", "Estuaries"]) == ["Marine waters"]
    with pytest.raises(ValueError, match="unknown"):
        ben43_to_ben19(["Not a CORINE class"])


# ---------------------------------------------------------------------------------------- BigEarthNet v1
# JSON CORINE labels → the 19-class labels mapped by hand.
HAND_MAPPED = {
    P87: (["Non-irrigated arable land", AGRI_NATURAL], {"Arable land", AGRI_NATURAL}),
    "S2B_MSIL2A_20170924T93020_69_24": (
        ["Coniferous forest", "Mixed forest", "Transitional woodland/shrub", "Peatbogs", "Water bodies"],
        {"Coniferous forest", "Mixed forest", "Transitional woodland, shrub", "Inland wetlands", "Inland waters"}),
    "S2A_MSIL2A_20171221T112501_56_35": (
        ["Complex cultivation patterns", AGRI_NATURAL, "Broad-leaved forest", "Transitional woodland/shrub"],
        {"Complex cultivation patterns", AGRI_NATURAL, "Broad-leaved forest", "Transitional woodland, shrub"}),
    "S2A_MSIL2A_20180510T94033_19_86": (["Coniferous forest", "Peatbogs"], {"Coniferous forest", "Inland wetlands"}),
}


def test_ben_v1_labels_19_and_43(ben):
    ds19 = BigEarthNetV1(ben, modality="s2_l2a")
    ds43 = BigEarthNetV1(ben, modality="s2_l2a", nomenclature=43)
    assert ds19.num_classes == 19 and ds43.num_classes == 43
    for pid, (corine, expected19) in HAND_MAPPED.items():
        meta = json.loads((ben / "BigEarthNet-v1.0" / pid / f"{pid}_labels_metadata.json").read_text())
        assert meta["labels"] == corine  # the hand mapping above is about these very labels
        s19 = sample_by_id(ds19, pid)
        assert s19["label"].dtype == torch.float32 and s19["label"].shape == (19,)
        assert names_of(s19["label"], BEN19_LABELS) == expected19
        assert names_of(ds43.label(ds43.ids.index(pid)), BEN43_LABELS) == set(corine)


def test_ben_v1_s2_bands_and_resampling(ben):
    folder = ben / "BigEarthNet-v1.0" / P87
    ds = BigEarthNetV1(ben, modality="s2_l2a")
    img = sample_by_id(ds, P87)["image"].numpy()
    assert img.shape == (12, 120, 120) and img.dtype == np.float32 and ds.bands == S2_L2A_BANDS
    for band, fname in (("B2", "B02"), ("B3", "B03"), ("B4", "B04"), ("B8", "B08")):  # 10 m: exact
        np.testing.assert_array_equal(img[S2_L2A_BANDS.index(band)], read(folder / f"{P87}_{fname}.tif"))
    for band, fname in (("B8A", "B8A"), ("B5", "B05"), ("B12", "B12"), ("B1", "B01"), ("B9", "B09")):
        native = read(folder / f"{P87}_{fname}.tif")
        assert native.shape in ((60, 60), (20, 20))
        got = img[S2_L2A_BANDS.index(band)]
        np.testing.assert_allclose(got, bilinear(native, 120), rtol=0, atol=1e-3)
        # GDAL's bilinear (same pixel-centre convention, rounded to uint16) agrees to within rounding.
        with rasterio.open(folder / f"{P87}_{fname}.tif") as src:
            gdal = src.read(1, out_shape=(120, 120), resampling=Resampling.bilinear).astype(np.float32)
        assert np.abs(got - gdal).max() <= 0.5 + 1e-3
    # At the 20 m grid size the B8A channel is the file itself.
    small = BigEarthNetV1(ben, modality="s2_l2a", size=60, split_ids=[P87])[0]["image"].numpy()
    assert small.shape == (12, 60, 60)
    np.testing.assert_array_equal(small[S2_L2A_BANDS.index("B8A")], read(folder / f"{P87}_B8A.tif"))


def test_ben_v1_l1c_layout_inserts_b10(ben):
    l2a = BigEarthNetV1(ben, modality="s2_l2a", split_ids=[P87])[0]["image"]
    l1c = BigEarthNetV1(ben, modality="s2_l1c", split_ids=[P87])[0]["image"]
    assert l1c.shape == (13, 120, 120)
    b10 = S2_L1C_BANDS.index("B10")
    assert b10 == 10 and torch.all(l1c[b10] == np.float32(L1C_B10_MEAN_DN))
    for i, band in enumerate(S2_L1C_BANDS):
        if band != "B10":
            assert torch.equal(l1c[i], l2a[S2_L2A_BANDS.index(band)]), band
    zero = BigEarthNetV1(ben, modality="s2_l1c", split_ids=[P87], missing_fill="zero")[0]["image"]
    assert torch.all(zero[b10] == 0) and torch.equal(zero[:b10], l1c[:b10])
    five = BigEarthNetV1(ben, modality="s2_l1c", split_ids=[P87], missing_fill=5.0)[0]["image"]
    assert torch.all(five[b10] == 5.0)
    with pytest.raises(ValueError, match="missing_fill"):
        BigEarthNetV1(ben, modality="s2_l1c", missing_fill="median")


def test_ben_v1_s1_values_and_labels(ben):
    ds = BigEarthNetV1(ben, modality="s1_grd")
    assert ds.bands == S1_GRD_BANDS
    pid = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_40"
    s = sample_by_id(ds, pid)
    folder = ben / "BigEarthNet-S1-v1.0" / pid
    assert s["image"].shape == (2, 120, 120) and s["image"].dtype == torch.float32
    np.testing.assert_array_equal(s["image"][0].numpy(), read(folder / f"{pid}_VV.tif"))
    np.testing.assert_array_equal(s["image"][1].numpy(), read(folder / f"{pid}_VH.tif"))
    assert -40 < float(s["image"][0].mean()) < 0  # dB, not linear
    meta = json.loads((folder / f"{pid}_labels_metadata.json").read_text())
    assert meta["labels"] == ["Discontinuous urban fabric", "Non-irrigated arable land", AGRI_NATURAL,
                              "Broad-leaved forest", "Inland marshes", "Water courses"]
    assert names_of(s["label"], BEN19_LABELS) == {"Urban fabric", "Arable land", AGRI_NATURAL,
                                                  "Broad-leaved forest", "Inland wetlands", "Inland waters"}


def test_ben_v1_exclusion_lists(ben):
    kept = BigEarthNetV1(ben, modality="s2_l2a", exclude_cloud_snow=True)
    everything = BigEarthNetV1(ben, modality="s2_l2a", exclude_cloud_snow=False)
    assert SNOWY not in kept.ids and SNOWY in everything.ids
    assert len(everything) == 14 and len(kept) == 13 and kept.excluded == [SNOWY]
    s1_kept = BigEarthNetV1(ben, modality="s1_grd")  # excluded through its S2 partner
    s1_all = BigEarthNetV1(ben, modality="s1_grd", exclude_cloud_snow=False)
    assert SNOWY_S1 not in s1_kept.ids and SNOWY_S1 in s1_all.ids and len(s1_all) == 9
    with pytest.raises(FileNotFoundError, match="exclusion"):
        BigEarthNetV1(ben, exclusion_lists=[ben / "lists" / "nope.csv.bz2"])


def test_ben_v1_split_ids_and_fraction(ben, tmp_path):
    pair_csv = tmp_path / "test.csv.bz2"
    with bz2.open(pair_csv, "wt") as fh:
        fh.write(f"{P87},S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48\n{SNOWY},{SNOWY_S1}\nS2X_unknown_1_1,\n")
    s2 = BigEarthNetV1(ben, split_ids=pair_csv)
    assert s2.ids == [P87]  # the snowy one is in the split file but excluded
    s1 = BigEarthNetV1(ben, modality="s1_grd", split_ids=pair_csv, exclude_cloud_snow=False)
    assert s1.ids == ["S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48", SNOWY_S1]
    full = BigEarthNetV1(ben)
    part = BigEarthNetV1(ben, fraction=0.5, fraction_seed=3)
    again = BigEarthNetV1(ben, fraction=0.5, fraction_seed=3)
    assert len(part) == 7 and part.ids == again.ids and set(part.ids) <= set(full.ids)
    assert part.ids == sorted(part.ids)


# ---------------------------------------------------------------------------------------- reBEN (v2)
def test_reben_s2_patch_layout(reben):
    ds = BigEarthNetV2(reben, modality="s2_l2a", require_labels=False)
    assert ds.ids == [REBEN_S2] and ds.n_unlabelled == 1
    s = ds[0]
    folder = reben / "BigEarthNet-S2" / TILE / REBEN_S2
    assert s["image"].shape == (12, 120, 120)
    np.testing.assert_array_equal(s["image"][S2_L2A_BANDS.index("B2")].numpy(), read(folder / f"{REBEN_S2}_B02.tif"))
    np.testing.assert_allclose(s["image"][S2_L2A_BANDS.index("B8A")].numpy(),
                               bilinear(read(folder / f"{REBEN_S2}_B8A.tif"), 120), atol=1e-3, rtol=0)
    assert s["label"].shape == (19,) and not s["label"].any()  # no metadata, no reference map: unlabelled
    l1c = BigEarthNetV2(reben, modality="s2_l1c", require_labels=False)[0]["image"]
    assert l1c.shape == (13, 120, 120) and torch.all(l1c[10] == np.float32(L1C_B10_MEAN_DN))
    with pytest.raises(ValueError, match="no patch has labels"):
        BigEarthNetV2(reben, modality="s2_l2a")
    with pytest.raises(ValueError, match="split"):
        BigEarthNetV2(reben, split="train")


def test_reben_s1_patch_layout(reben):
    ds = BigEarthNetV2(reben, modality="s1_grd", require_labels=False)
    assert ds.ids == [REBEN_S1]
    folder = reben / "BigEarthNet-S1" / "S1A_IW_GRDH_1SDV_20170613T165043" / REBEN_S1
    img = ds[0]["image"].numpy()
    np.testing.assert_array_equal(img[0], read(folder / f"{REBEN_S1}_VV.tif"))
    np.testing.assert_array_equal(img[1], read(folder / f"{REBEN_S1}_VH.tif"))


def test_reben_reference_map_labels(reben):
    path = reben / "Reference_Maps" / TILE / REBEN_MAP / f"{REBEN_MAP}_reference_map.tif"
    codes, counts = np.unique(read(path), return_counts=True)
    assert dict(zip(codes.tolist(), counts.tolist())) == {211: 7075, 231: 1154, 311: 4131, 313: 2040}
    assert names_of(torch.from_numpy(reference_map_labels(path)), BEN19_LABELS) == {
        "Arable land", "Pastures", "Broad-leaved forest", "Mixed forest"}
    assert names_of(torch.from_numpy(reference_map_labels(path, nomenclature=43)), BEN43_LABELS) == {
        "Non-irrigated arable land", "Pastures", "Broad-leaved forest", "Mixed forest"}
    assert names_of(torch.from_numpy(reference_map_labels(path, min_pixels=2000)), BEN19_LABELS) == {
        "Arable land", "Broad-leaved forest", "Mixed forest"}
    codes_with_junk = np.array([[0, 335], [123, 522]], np.uint16)  # nodata, non-BEN code, dropped, marine
    assert names_of(torch.from_numpy(reference_map_labels(codes_with_junk)), BEN19_LABELS) == {"Marine waters"}


def _reben_copy(reben: Path, tmp: Path) -> Path:
    root = tmp / "reben"
    root.mkdir()
    for sub in ("BigEarthNet-S2", "BigEarthNet-S1"):
        (root / sub).symlink_to(reben / sub, target_is_directory=True)
    return root


def test_reben_metadata_parquet(reben, tmp_path):
    root = _reben_copy(reben, tmp_path)
    rows = [
        {"patch_id": REBEN_S2, "labels": ["Arable land", "Pastures"], "split": "train", "country": "Austria",
         "s1_name": REBEN_S1, "s2v1_name": P87, "contains_seasonal_snow": False, "contains_cloud_or_shadow": False},
        {"patch_id": f"{TILE}_99_99", "labels": ["Mixed forest"], "split": "train", "country": "Austria",
         "s1_name": "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_99_99", "s2v1_name": "x",
         "contains_seasonal_snow": True, "contains_cloud_or_shadow": False},
    ]
    pd.DataFrame(rows).to_parquet(root / "metadata.parquet")
    ds = BigEarthNetV2(root, split="train")
    assert ds.ids == [REBEN_S2]  # the flagged row is excluded (and has no folder anyway)
    assert names_of(ds[0]["label"], BEN19_LABELS) == {"Arable land", "Pastures"}
    s1 = BigEarthNetV2(root, modality="s1_grd", split="train")
    assert s1.ids == [REBEN_S1] and names_of(s1[0]["label"], BEN19_LABELS) == {"Arable land", "Pastures"}
    assert len(BigEarthNetV2(root, split="test")) == 0
    rows[0]["contains_cloud_or_shadow"] = True
    pd.DataFrame(rows).to_parquet(root / "flagged.parquet")
    assert len(BigEarthNetV2(root, metadata=root / "flagged.parquet")) == 0
    assert BigEarthNetV2(root, metadata=root / "flagged.parquet", exclude_cloud_snow=False).ids == [REBEN_S2]


def test_reben_reference_map_fallback(reben, tmp_path):
    root = _reben_copy(reben, tmp_path)
    target = root / "Reference_Maps" / TILE / REBEN_S2
    target.mkdir(parents=True)
    (target / f"{REBEN_S2}_reference_map.tif").symlink_to(
        reben / "Reference_Maps" / TILE / REBEN_MAP / f"{REBEN_MAP}_reference_map.tif")
    ds = BigEarthNetV2(root)  # no metadata: labels from the (borrowed) reference map
    assert ds.ids == [REBEN_S2]
    assert names_of(ds[0]["label"], BEN19_LABELS) == {"Arable land", "Pastures", "Broad-leaved forest", "Mixed forest"}
    ds43 = BigEarthNetV2(root, nomenclature=43)
    assert names_of(ds43[0]["label"], BEN43_LABELS) == {"Non-irrigated arable land", "Pastures",
                                                         "Broad-leaved forest", "Mixed forest"}


# ---------------------------------------------------------------------------------------- EuroSAT
def test_eurosat_bands_labels_values(shared_data):
    ds = EuroSAT(shared_data / "eurosat")
    assert ds.ids == ["AnnualCrop_1", "Pasture_300", "SeaLake_3000"]
    assert EUROSAT_CLASSES == tuple(sorted(EUROSAT_CLASSES)) and len(EUROSAT_CLASSES) == 10
    assert [ds[i]["label"] for i in range(3)] == [0, 5, 9]
    file_order = [0, 1, 2, 3, 4, 5, 6, 7, 12, 8, 9, 10, 11]  # canonical band i ← file band file_order[i]
    for i in range(3):
        s = ds[i]
        assert EUROSAT_CLASSES[s["label"]] == s["id"].split("_")[0]
        with rasterio.open(ds.root / EUROSAT_CLASSES[s["label"]] / f"{s['id']}.tif") as src:
            raw = src.read()
        img = s["image"].numpy()
        assert img.shape == (13, 64, 64) and img.dtype == np.float32
        np.testing.assert_array_equal(img[S2_L1C_BANDS.index("B8A")], raw[-1])  # B8A is the file's last band
        np.testing.assert_array_equal(img[S2_L1C_BANDS.index("B9")], raw[8])
        np.testing.assert_array_equal(img, raw[file_order].astype(np.float32))
        assert img[S2_L1C_BANDS.index("B10")].mean() < 30  # cirrus band: a few DN over clear sky
    l2a = EuroSAT(shared_data / "eurosat" / "EuroSAT_MS", modality="s2_l2a")
    assert l2a[0]["image"].shape == (12, 64, 64)
    np.testing.assert_array_equal(l2a[0]["image"].numpy(),
                                  ds[0]["image"].numpy()[[S2_L1C_BANDS.index(b) for b in S2_L2A_BANDS]])
    assert EuroSAT(shared_data / "eurosat", split_ids=["Pasture_300.tif", "SeaLake_3000"]).ids == [
        "Pasture_300", "SeaLake_3000"]
    with pytest.raises(ValueError, match="modality"):
        EuroSAT(shared_data / "eurosat", modality="s1_grd")
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 13, 64, 64) and batch["label"].tolist() == [0, 5, 9]


# ---------------------------------------------------------------------------------------- curated archive
FAILED_PATCH, UNLABELLED = 2, (5, 1)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    from pipeline.curate import prepare, process_shard
    from pipeline.manifest import Manifest
    from pipeline.store import STATUS_FAILED, open_group

    path = str(tmp_path_factory.mktemp("archive") / "a.zarr")
    manifest = Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": 3, "cloud_probability": 0.3}},
        "sampling": {"n_locations": 10, "top_n_cities": 50, "seed": 7},
        "patch": {"size_px": 32},
        "store": {"path": path, "patches_per_shard": 4},
    })
    locations, layout = prepare(manifest)
    for shard in range(layout.n_shards):
        process_shard(manifest, layout, shard, locations[layout.shard_slice(shard)])
    group = open_group(path, "r+")
    assert (group["status"][:] == 1).all() and group["multi_hot"][:].any(-1).all()
    # One failed location and one unlabelled season, both to be left out.
    status = group["status"][:]
    status[FAILED_PATCH] = STATUS_FAILED
    group["status"][:] = status
    group["multi_hot"][UNLABELLED[0], UNLABELLED[1]] = np.zeros(9, np.uint8)
    return path


def test_archive_task_follows_the_archives_split(archive):
    """The archive task's sides are the archive's own split (by location): done, labelled seasons only."""
    from pipeline.split import split_indices

    tasks = {name: ArchiveTask(archive, split=name) for name in ("train", "val", "test")}
    eligible = set(range(10)) - {FAILED_PATCH}
    for name, task in tasks.items():
        assert set(task.locations) == set(split_indices(archive, name).tolist()) & eligible
    sides = [set(t.locations) for t in tasks.values()]
    assert sides[0].isdisjoint(sides[1]) and sides[0].isdisjoint(sides[2]) and sides[1].isdisjoint(sides[2])
    assert set().union(*sides) == eligible
    pairs = [p for t in tasks.values() for p in t._items]
    assert len(pairs) == 9 * 4 - 1 and UNLABELLED not in pairs
    assert all(p != FAILED_PATCH for p, _ in pairs)
    for task in tasks.values():
        for p in task.locations:  # every labelled season of a location sits on its side
            assert {s for q, s in task._items if q == p} == ({0, 1, 2, 3} - ({1} if p == 5 else set()))
    assert ArchiveTask(archive, split="test").ids == tasks["test"].ids  # deterministic


def test_archive_labels_images_and_dominant(archive):
    from pipeline.store import open_group

    g = open_group(archive)
    mh, frac = g["multi_hot"][:], g["label_fraction"][:]
    ids = [str(x) for x in g["patch_id"][:]]
    multi = ArchiveTask(archive, split="train", modality="s2_l1c")
    dom = ArchiveTask(archive, split="train", target="dominant")
    assert multi.multilabel and not dom.multilabel and multi.num_classes == 9
    assert dom.ids == multi.ids
    for i, (p, s) in enumerate(multi._items):
        sample = multi[i]
        assert sample["id"] == f"{ids[p]}_s{s}"
        assert sample["label"].dtype == torch.float32
        np.testing.assert_array_equal(sample["label"].numpy(), mh[p, s])
        assert dom.label(i) == int(np.argmax(frac[p, s])) and mh[p, s, dom.label(i)] == 1
        if i < 3:
            np.testing.assert_array_equal(sample["image"].numpy(), g["s2_l1c"][p, s].astype(np.float32))
    p, s = multi._items[0]
    l2a = ArchiveTask(archive, modality="s2_l2a")[0]["image"]
    s1 = ArchiveTask(archive, modality="s1_grd")[0]["image"]
    assert l2a.shape == (12, 32, 32) and s1.shape == (2, 32, 32)
    np.testing.assert_array_equal(l2a.numpy(), g["s2_l2a"][p, s].astype(np.float32))
    np.testing.assert_array_equal(s1.numpy(), g["s1_grd"][p, s])
    batch = next(iter(DataLoader(dom, batch_size=4)))
    assert batch["label"].dtype == torch.int64 and batch["image"].shape == (4, 13, 32, 32)


def test_fraction_subsampling(archive):
    full = ArchiveTask(archive, split="train")
    part = ArchiveTask(archive, split="train", fraction=0.25, fraction_seed=1)
    assert len(part) == int(np.floor(0.25 * len(full) + 0.5))
    assert part.ids == ArchiveTask(archive, split="train", fraction=0.25, fraction_seed=1).ids
    assert set(part.ids) <= set(full.ids)
    sub = subsample(full, 0.1, seed=4)
    assert len(sub) == max(1, round(0.1 * len(full))) and list(sub.indices) == sorted(sub.indices)
    assert list(sub.indices) == list(subsample(full, 0.1, seed=4).indices)
    assert sub[0]["id"] == full[sub.indices[0]]["id"]
    assert {tuple(subsample_indices(100, 0.1, s)) for s in range(3)}.__len__() == 3
    assert len(subsample_indices(5, 0.01, 0)) == 1 and list(subsample_indices(4, 1.0, 0)) == [0, 1, 2, 3]
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError):
            subsample_indices(10, bad, 0)


def test_registry(archive):
    assert set(TASKS) == {"bigearthnet_v1", "bigearthnet_v2", "eurosat", "archive"}
    full = build_task("archive", store=archive, split="test")
    task = build_task("archive", store=archive, split="test", fraction=0.5)
    assert isinstance(task, ArchiveTask) and len(task) == round(0.5 * len(full))
    with pytest.raises(KeyError, match="registered"):
        build_task("imagenet")


def test_registry_real_data(shared_data):
    assert isinstance(build_task("eurosat", root=shared_data / "eurosat"), EuroSAT)
    assert isinstance(build_task("bigearthnet_v1", root=shared_data / "bigearthnet_v1"), BigEarthNetV1)
