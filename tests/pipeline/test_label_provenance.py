"""One label-provenance record per archive, kept by curation, `softcon labels` and `softcon import-labels`."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from archive_helpers import synthetic_archive

from pipeline.labels import (
    LABEL_PROVENANCE_ATTR,
    label_vectors,
    read_label_provenance,
    relabel_archive,
    update_label_provenance,
)
from pipeline.published_labels import import_published_labels
from pipeline.store import summarize


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("provenance")
    return Path(synthetic_archive(root / "template.zarr", n_locations=4, size_px=16, patches_per_shard=2))


@pytest.fixture
def store(template: Path, tmp_path: Path) -> str:
    dst = tmp_path / "archive.zarr"
    shutil.copytree(template, dst)
    return str(dst)


def record(store: str) -> dict:
    return zarr.open_group(store, mode="r").attrs[LABEL_PROVENANCE_ATTR]


def without_history(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "history"}


def is_recent_utc(text: str) -> bool:
    t = dt.datetime.fromisoformat(text)
    return t.tzinfo is not None and abs((dt.datetime.now(dt.timezone.utc) - t).total_seconds()) < 600


def test_curated_archive_has_the_curation_record(store):
    group = zarr.open_group(store, mode="r")
    rec = record(store)
    assert rec == {"source": "curation", "presence_threshold": 0.01, "min_valid_fraction": 0.1,
                   "updated": group.attrs["created"], "history": []}
    labels = group.attrs["manifest"]["labels"]
    assert (rec["presence_threshold"], rec["min_valid_fraction"]) == (labels["presence_threshold"],
                                                                      labels["min_valid_fraction"])
    assert summarize(store)["label_provenance"] == rec
    assert read_label_provenance(group) == rec


def test_relabel_with_another_threshold_updates_the_record_and_keeps_history(store):
    curation = record(store)
    maps = zarr.open_group(store, mode="r")["dw_label"][:]
    relabel_archive(store, presence_threshold=0.3)
    first = record(store)
    assert first["source"] == "relabel" and is_recent_utc(first["updated"])
    assert (first["presence_threshold"], first["min_valid_fraction"]) == (0.3, 0.1)
    assert first["history"] == [without_history(curation)]
    group = zarr.open_group(store, mode="r")
    _, want = label_vectors(maps, presence_threshold=0.3, min_valid_fraction=0.1)
    np.testing.assert_array_equal(group["multi_hot"][:], want)  # the record describes what is stored
    mh_attrs = group["multi_hot"].attrs
    assert (mh_attrs["presence_threshold"], mh_attrs["min_valid_fraction"]) == (0.3, 0.1)

    relabel_archive(store, min_valid_fraction=0.5)  # the manifest's presence threshold, another min valid
    second = record(store)
    assert (second["source"], second["presence_threshold"], second["min_valid_fraction"]) == ("relabel", 0.01, 0.5)
    assert second["history"] == [without_history(curation), without_history(first)]  # oldest first
    assert summarize(store)["label_provenance"] == second


def test_labels_command_records_provenance(store):
    from typer.testing import CliRunner

    from flows.cli import app

    res = CliRunner().invoke(app, ["labels", store, "--presence-threshold", "0.25"])
    assert res.exit_code == 0, res.output
    rec = record(store)
    assert (rec["source"], rec["presence_threshold"], rec["min_valid_fraction"]) == ("relabel", 0.25, 0.1)
    assert [h["source"] for h in rec["history"]] == ["curation"]


def published_file(store: str, path: Path) -> Path:
    group = zarr.open_group(store, mode="r")
    pid = [str(p) for p in group["patch_id"][:]]
    l1c = group["image_id"][:, :, 0]
    data = {pid[0]: {str(l1c[0, 0]): ["0", "4"], str(l1c[0, 1]): []}, pid[1]: {str(l1c[1, 2]): ["2"]}}
    path.write_text(json.dumps(data))
    return path


def test_import_labels_sets_source_published(store, tmp_path):
    relabel_archive(store, presence_threshold=0.2)
    before = record(store)
    path = published_file(store, tmp_path / "ssl4eo-s12-ml.json")
    report = import_published_labels(path, store)
    rec = record(store)
    assert rec["source"] == "published"
    assert rec["presence_threshold"] is None and rec["min_valid_fraction"] is None  # the published rule is unknown
    assert rec["file"] == "ssl4eo-s12-ml.json" and rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec["matched"] == report.matched == 3 and rec["updated"] == report.imported
    assert rec["history"] == before["history"] + [without_history(before)]
    assert [h["source"] for h in rec["history"]] == ["curation", "relabel"]
    assert summarize(store)["label_provenance"] == rec

    relabel_archive(store)  # recomputing undoes the import, and says so
    again = record(store)
    assert (again["source"], again["presence_threshold"]) == ("relabel", 0.01)
    assert [h["source"] for h in again["history"]] == ["curation", "relabel", "published"]


def test_archive_without_a_record_gets_one_rebuilt(store):
    """An archive written before the record existed: rebuilt from the manifest and `labels_recomputed`."""
    group = zarr.open_group(store, mode="r+")
    del group.attrs[LABEL_PROVENANCE_ATTR]
    group.attrs["labels_recomputed"] = {"presence_threshold": 0.4, "min_valid_fraction": 0.2,
                                        "at": "2030-01-01T00:00:00+00:00"}
    group = zarr.open_group(store, mode="r")
    rec = read_label_provenance(group)
    assert (rec["source"], rec["presence_threshold"], rec["min_valid_fraction"]) == ("relabel", 0.4, 0.2)
    assert rec["reconstructed"] is True and rec["updated"] == "2030-01-01T00:00:00+00:00"
    assert [(h["source"], h["presence_threshold"]) for h in rec["history"]] == [("curation", 0.01)]
    assert summarize(store)["label_provenance"] == rec

    new = update_label_provenance(zarr.open_group(store, mode="r+"), "relabel", 0.05, 0.1)
    assert record(store) == new
    assert [h["source"] for h in new["history"]] == ["curation", "relabel"] and "reconstructed" not in new
    with pytest.raises(ValueError, match="source"):
        update_label_provenance(zarr.open_group(store, mode="r+"), "manual", 0.1, 0.1)


def test_patches_curated_after_a_relabel_follow_the_archives_thresholds(tmp_path):
    """One archive, one threshold: a resumed curation labels its new patches with the thresholds of the
    archive's current record (here a relabel at 0.2), not the manifest's 0.01.
    """
    from pipeline import curate as steps
    from pipeline.manifest import Manifest
    from pipeline.store import STATUS_DONE

    store = str(tmp_path / "a.zarr")
    m = Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": 1}},
        "sampling": {"n_locations": 4, "top_n_cities": 40, "seed": 2},
        "patch": {"size_px": 16}, "store": {"path": store, "patches_per_shard": 2}})
    locations, layout = steps.prepare(m)
    steps.process_shard(m, layout, 0, locations[layout.shard_slice(0)])
    relabel_archive(store, presence_threshold=0.2)
    steps.process_shard(m, layout, 1, locations[layout.shard_slice(1)])  # resumed curation
    g = zarr.open_group(store, mode="r")
    done = g["status"][:] == STATUS_DONE
    assert done[2:].any()
    _, expected = label_vectors(g["dw_label"][:][done], presence_threshold=0.2, min_valid_fraction=0.1)
    np.testing.assert_array_equal(g["multi_hot"][:][done], expected)
    assert record(store)["presence_threshold"] == 0.2


def test_patches_curated_after_an_import_are_recorded(store, tmp_path):
    from pipeline import curate as steps
    from pipeline.manifest import Manifest

    import_published_labels(published_file(store, tmp_path / "p.json"), store)
    manifest = Manifest.model_validate({"store": {"path": store}})
    steps.record_curated_labels(manifest)
    rec = record(store)
    assert rec["source"] == "curation" and "published labels" in rec["note"]
    assert rec["history"][-1]["source"] == "published"
