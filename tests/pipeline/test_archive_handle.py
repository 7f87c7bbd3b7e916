"""pipeline.archive.Archive: one handle that reads what an archive says about itself, local or by URL."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from pipeline.archive import Archive
from pipeline.bands import DW_CLASSES
from pipeline.manifest import Manifest
from pipeline.split import SPLIT_CODES
from pipeline.store import STATUS_DONE, STATUS_FAILED, ArchiveLayout
from pipeline.store_target import ArchiveError
from tests.archive_helpers import synthetic_archive


@pytest.fixture(scope="module")
def store(small_archive) -> str:
    return small_archive(n_locations=12, size_px=16, patches_per_shard=4)


def test_layout_comes_from_the_archive_itself_and_matches_the_manifest(store):
    archive = Archive(store)
    manifest = Manifest.model_validate(archive.attrs["manifest"])
    assert archive.layout == ArchiveLayout.from_manifest(manifest, 12)
    assert archive.layout.n_seasons == 4 and archive.layout.size == 16 and archive.layout.patches_per_shard == 4
    assert archive.bands("s1_grd") == ("VV", "VH")
    assert archive.class_names == DW_CLASSES


def test_done_failed_and_split_patches_read_the_arrays(store):
    archive = Archive(store)
    group = zarr.open_group(store, mode="r")
    status = group["status"][:]
    assert archive.done_patches().tolist() == np.flatnonzero(status == STATUS_DONE).tolist()
    assert archive.failed_patches().tolist() == np.flatnonzero(status == STATUS_FAILED).tolist()
    codes = group["split"][:]
    for name, code in SPLIT_CODES.items():
        assert archive.split_patches(name).tolist() == np.flatnonzero(codes == code).tolist()
    ids = archive.patch_ids()
    assert ids == [str(x) for x in group["patch_id"][:]] and len(ids) == 12


def test_file_url_is_local_and_reads_the_same(store):
    url = Archive("file://" + store)
    assert not url.is_remote and not Archive(store).is_remote and Archive("s3://bucket/a.zarr").is_remote
    assert url.layout == Archive(store).layout
    assert url.done_patches().tolist() == Archive(store).done_patches().tolist()


def test_of_keeps_a_handle_and_wraps_a_path(store):
    handle = Archive(store)
    assert Archive.of(handle) is handle
    assert Archive.of(store) == handle and str(handle) == store


def test_missing_split_and_modality_are_one_line_errors_naming_the_archive(store, tmp_path):
    other = synthetic_archive(tmp_path / "b.zarr", n_locations=4, size_px=16, patches_per_shard=4)
    group = zarr.open_group(other, mode="r+")
    del group.attrs["split"]
    archive = Archive(other)
    assert archive.split() is None
    with pytest.raises(ArchiveError, match=r"b\.zarr: the archive has no train/val/test split; .*softcon split"):
        archive.split_patches("test")
    with pytest.raises(ArchiveError, match=r"b\.zarr: modality 'sar' is not in the archive"):
        archive.bands("sar")


def test_layout_of_a_folder_that_is_not_an_archive_is_an_archive_error(tmp_path):
    zarr.open_group(str(tmp_path / "x.zarr"), mode="w", zarr_format=3)
    with pytest.raises(ArchiveError, match="do not describe its layout"):
        Archive(str(tmp_path / "x.zarr")).layout
