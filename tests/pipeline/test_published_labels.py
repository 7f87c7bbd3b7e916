"""Importing the published SSL4EO-S12-ML multi-labels (JSON) into a tiny synthetic archive."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline import curate as steps
from pipeline.bands import DW_CLASSES
from pipeline.manifest import Manifest
from pipeline.published_labels import (
    ImportReport,
    PublishedLabelsError,
    format_report,
    import_published_labels,
)
from pipeline.store import STATUS_DONE, STATUS_TODO

N_SEASONS = 4
UNKNOWN_IMAGE = "20200101T000000_20200101T000001_T00AAA"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """6 locations × 4 seasons, 16 px, shards of 2 patches; shards 0 and 1 done, shard 2 (patches 4, 5) todo."""
    root = tmp_path_factory.mktemp("published")
    m = Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": 11}},
        "sampling": {"n_locations": 6, "top_n_cities": 20, "seed": 4},
        "patch": {"size_px": 16},
        "store": {"path": str(root / "template.zarr"), "patches_per_shard": 2},
    })
    locations, layout = steps.prepare(m)
    for shard in (0, 1):
        steps.process_shard(m, layout, shard, locations[layout.shard_slice(shard)])
    status = zarr.open_group(m.store.path, mode="r")["status"][:]
    assert (status[:4] == STATUS_DONE).all() and (status[4:] == STATUS_TODO).all()
    return Path(m.store.path)


@pytest.fixture
def store(template: Path, tmp_path: Path) -> str:
    dst = tmp_path / "archive.zarr"
    shutil.copytree(template, dst)
    return str(dst)


def archive_ids(store: str) -> tuple[list[str], np.ndarray]:
    g = zarr.open_group(store, mode="r")
    return [str(p) for p in g["patch_id"][:]], g["image_id"][:, :, 0]


def published_json(store: str) -> dict:
    """Published-format labels: real (location, L1C image) pairs of the archive and entries that match nothing."""
    pid, l1c = archive_ids(store)
    return {
        pid[0]: {l1c[0, 0]: ["0", "4"], l1c[0, 1]: [], l1c[0, 2]: ["8", "1", "1"], UNKNOWN_IMAGE: ["3"]},
        pid[1]: {l1c[1, 3]: ["2", "6"]},
        pid[3]: {l1c[2, 0]: ["5"]},  # an image of patch 2 under patch 3's id: no match
        pid[4]: {UNKNOWN_IMAGE: ["7"]},  # a todo patch: never matched
        "9999999": {UNKNOWN_IMAGE: ["1"]},  # a location that is not in the archive
    }


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def expected_after(store_before: dict[str, np.ndarray], labels: dict) -> np.ndarray:
    """Plain-loop reference: the published vector wherever (patch id, L1C id) of a done patch-season is listed."""
    mh = store_before["multi_hot"].copy()
    for p, pid in enumerate(store_before["patch_id"]):
        if store_before["status"][p] != STATUS_DONE or pid not in labels:
            continue
        for s in range(mh.shape[1]):
            image = store_before["l1c"][p, s]
            if image in labels[pid]:
                vec = np.zeros(len(DW_CLASSES), np.uint8)
                for c in labels[pid][image]:
                    vec[int(c)] = 1
                mh[p, s] = vec
    return mh


def snapshot(store: str) -> dict[str, np.ndarray]:
    g = zarr.open_group(store, mode="r")
    return {"multi_hot": g["multi_hot"][:], "label_fraction": g["label_fraction"][:], "status": g["status"][:],
            "patch_id": [str(p) for p in g["patch_id"][:]], "l1c": g["image_id"][:, :, 0],
            "label_method": g["label_method"][:]}


@pytest.mark.parametrize("block_patches", [1, 1024])
def test_import_writes_published_vectors_and_counts(store, tmp_path, block_patches):
    labels = published_json(store)
    path = write_json(tmp_path / "ssl4eo-s12-ml.json", labels)
    before = snapshot(store)
    report = import_published_labels(path, store, block_patches=block_patches)
    after = snapshot(store)

    np.testing.assert_array_equal(after["multi_hot"], expected_after(before, labels))
    # patch 0: seasons 0..2 replaced (season 1 with an empty list → all zero), season 3 untouched
    assert after["multi_hot"][0, 0].tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 0]
    assert not after["multi_hot"][0, 1].any() and before["multi_hot"][0, 1].any()
    assert after["multi_hot"][0, 2].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 1]
    np.testing.assert_array_equal(after["multi_hot"][0, 3], before["multi_hot"][0, 3])
    # not matched: patches 2, 3 (done), 4, 5 (todo) keep every value; fractions and methods never change
    np.testing.assert_array_equal(after["multi_hot"][2:], before["multi_hot"][2:])
    np.testing.assert_array_equal(after["label_fraction"], before["label_fraction"])
    np.testing.assert_array_equal(after["label_method"], before["label_method"])

    assert isinstance(report, ImportReport)
    assert (report.json_locations, report.json_images, report.json_unlabelled) == (5, 8, 1)
    assert (report.matched_labelled, report.matched_unlabelled, report.matched) == (3, 1, 4)
    assert report.missing == 4  # UNKNOWN_IMAGE at patch 0 and 4, patch 2's image under 3, location 9999999
    assert report.missing_locations == 3
    assert set(report.missing_examples) == {f"{before['patch_id'][0]}/{UNKNOWN_IMAGE}",
                                            f"{before['patch_id'][3]}/{before['l1c'][2, 0]}",
                                            f"{before['patch_id'][4]}/{UNKNOWN_IMAGE}", f"9999999/{UNKNOWN_IMAGE}"}
    assert (report.done_patches, report.n_seasons) == (4, N_SEASONS)
    assert report.not_covered == 4 * N_SEASONS - 4
    expected_counts = dict.fromkeys(DW_CLASSES, 0)
    for c in ("0", "4", "8", "1", "2", "6"):  # the matched lists; duplicates inside a list count once
        expected_counts[DW_CLASSES[int(c)]] += 1
    assert report.class_counts == expected_counts

    entry = zarr.open_group(store, mode="r").attrs["published_labels"]
    assert entry["file"] == "ssl4eo-s12-ml.json"
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == report.sha256
    assert entry["counts"]["matched_labelled"] == 3 and entry["counts"]["not_covered"] == 12
    assert entry["counts"]["class_counts"] == expected_counts and entry["imported"] == report.imported

    text = format_report(report)
    for needle in ("ssl4eo-s12-ml.json", "3 labelled", "1 unlabelled", "missing: 4", "not covered: 12", "snow_and_ice"):
        assert needle in text


def test_import_is_idempotent(store, tmp_path):
    path = write_json(tmp_path / "labels.json", published_json(store))
    first = import_published_labels(path, store)
    once = snapshot(store)
    second = import_published_labels(path, store, block_patches=1)
    twice = snapshot(store)
    for name in ("multi_hot", "label_fraction", "status"):
        np.testing.assert_array_equal(once[name], twice[name], err_msg=name)
    assert first.regions_written >= 1 and second.regions_written == 0  # nothing changed, nothing written
    assert first.counts() == second.counts()


def test_gzipped_file_and_overwrite_false(store, tmp_path):
    labels = published_json(store)
    path = tmp_path / "labels.json.gz"
    path.write_bytes(gzip.compress(json.dumps(labels).encode()))
    before = snapshot(store)
    report = import_published_labels(str(path), store)
    assert report.matched == 4 and report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    np.testing.assert_array_equal(snapshot(store)["multi_hot"], expected_after(before, labels))
    with pytest.raises(PublishedLabelsError, match="already imported"):
        import_published_labels(path, store, overwrite=False)


MALFORMED = [
    ("int class id", lambda pid, img: {pid: {img: ["1", 4]}}, ['"0000000"', "IMG", "class id 4 is not a string"]),
    ("class out of range", lambda pid, img: {pid: {img: ["9"]}}, ['"0000000"', "IMG", 'class id "9" is outside 0..8']),
    ("negative class", lambda pid, img: {pid: {img: ["-1"]}}, ["IMG", '"-1" is outside 0..8']),
    ("six-digit key", lambda pid, img: {"000001": {img: ["1"]}}, ['"000001"', "not a 7-digit location id"]),
    ("id with letters", lambda pid, img: {"00000a1": {img: ["1"]}}, ['"00000a1"', "not a 7-digit"]),
    ("list instead of object", lambda pid, img: {pid: ["1"]}, ['"0000000"', "expected an object"]),
    ("string instead of list", lambda pid, img: {pid: {img: "1"}},
     ["IMG", "expected a list of class ids, got a string"]),
    ("null instead of list", lambda pid, img: {pid: {img: None}}, ["IMG", "got null"]),
    ("top-level list", lambda pid, img: [pid], ["top level must be an object"]),
]


@pytest.mark.parametrize("name,make,needles", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_name_the_offending_key(store, tmp_path, name, make, needles):
    pid, l1c = archive_ids(store)
    assert pid[0] == "0000000"
    good = {pid[1]: {l1c[1, 0]: ["2"]}}  # a valid entry before the bad one: nothing may be written
    bad = make(pid[0], l1c[0, 0])
    data = {**good, **bad} if isinstance(bad, dict) else bad
    path = write_json(tmp_path / "bad.json", data)
    before = snapshot(store)
    with pytest.raises(PublishedLabelsError) as exc:
        import_published_labels(path, store)
    message = str(exc.value)
    assert "bad.json" in message
    for needle in needles:
        assert needle.replace("IMG", json.dumps(str(l1c[0, 0]))) in message, message
    np.testing.assert_array_equal(snapshot(store)["multi_hot"], before["multi_hot"])
    assert "published_labels" not in zarr.open_group(store, mode="r").attrs


def test_duplicate_keys_and_broken_json(store, tmp_path):
    pid, l1c = archive_ids(store)
    img = json.dumps(str(l1c[0, 0]))
    cases = {
        f'{{"{pid[0]}": {{{img}: ["1"], {img}: ["2"]}}}}':
            f'location "{pid[0]}": image id {img} appears more than once',
        f'{{"{pid[0]}": {{}}, "{pid[0]}": {{}}}}': f'location id "{pid[0]}" appears more than once',
        f'{{"{pid[0]}": {{{img}: ["1"]}}': "not valid JSON",
    }
    for k, (text, needle) in enumerate(cases.items()):
        path = tmp_path / f"dup{k}.json"
        path.write_text(text)
        with pytest.raises(PublishedLabelsError, match="appears more than once|not valid JSON") as exc:
            import_published_labels(path, store)
        assert needle in str(exc.value)
    with pytest.raises(PublishedLabelsError, match="not found"):
        import_published_labels(tmp_path / "absent.json", store)
