"""Archive statistics (pipeline.statistics): torch-free, computed on the train split by default, and the
statistics file records the splits (and split hash) they were computed on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from archive_helpers import split_archive_with_a_failed_train_patch, without_split
from typer.testing import CliRunner

import pipeline.statistics
from flows.cli import app
from pipeline.errors import BadInput
from pipeline.split import read_split, split_indices
from pipeline.statistics import archive_statistics, compute_archive_statistics
from pipeline.store import STATUS_DONE, open_group

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "timm")
SIZE = 16


def test_pipeline_statistics_imports_without_torch():
    code = ("import sys, pipeline.statistics; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"pipeline.statistics imported {done.stdout.strip()}"


def test_train_data_reexports_the_same_function():
    import train.data

    assert train.data.compute_archive_statistics is pipeline.statistics.compute_archive_statistics


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """16 locations with the default split (by city); one train patch marked failed; NaN S1 pixels."""
    path = split_archive_with_a_failed_train_patch(tmp_path_factory.mktemp("stats-split") / "a.zarr", SIZE)
    g = open_group(path, "r+")
    sar = g["s1_grd"][:]
    sar[int(split_indices(path, "train")[1]), 0, 1, :3] = np.nan
    g["s1_grd"][:] = sar
    return path


@pytest.fixture(scope="module")
def no_split_archive(tmp_path_factory, archive):
    return without_split(archive, tmp_path_factory.mktemp("stats-no-split") / "a.zarr")


def selected(path: str, splits) -> np.ndarray:
    """Done patches of ``splits`` (``"all"``: every done patch), from the archive's arrays."""
    done = np.flatnonzero(open_group(path)["status"][:] == STATUS_DONE)
    if splits == "all":
        return done
    return np.intersect1d(done, np.concatenate([split_indices(path, s) for s in splits]))


def numpy_statistics(path: str, modality: str, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean/std over the valid pixels of ``patches``, straight from the zarr array."""
    data = open_group(path)[modality][:][patches].astype(np.float64)  # (P, S, C, H, W)
    per_band = np.moveaxis(data, 2, 0).reshape(data.shape[2], -1)
    valid = np.isfinite(per_band) if modality == "s1_grd" else per_band != 0
    return (np.array([row[v].mean() for row, v in zip(per_band, valid)]),
            np.array([row[v].std() for row, v in zip(per_band, valid)]))


def test_fixture_has_done_patches_outside_the_train_split(archive):
    done = selected(archive, "all")
    train = selected(archive, ["train"])
    assert len(train) >= 4 and len(np.setdiff1d(done, train)) >= 2
    assert len(np.intersect1d(done, split_indices(archive, "test"))) >= 1


@pytest.mark.parametrize("modality", ["s2_l1c", "s1_grd"])
def test_default_is_the_train_split_and_equals_numpy_over_train_patches(archive, modality):
    ref_mean, ref_std = numpy_statistics(archive, modality, selected(archive, ["train"]))
    mean, std = compute_archive_statistics(archive, modality)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-10)
    np.testing.assert_allclose(std, ref_std, rtol=1e-8)
    all_mean, _ = compute_archive_statistics(archive, modality, splits="all")
    np.testing.assert_allclose(all_mean, numpy_statistics(archive, modality, selected(archive, "all"))[0], rtol=1e-10)
    assert not np.allclose(mean, all_mean, rtol=1e-6)  # the other splits' patches really are left out


@pytest.mark.parametrize("splits", [["val"], ["val", "test"], "test"])
def test_other_split_selections(archive, splits):
    names = [splits] if isinstance(splits, str) else splits
    ref_mean, ref_std = numpy_statistics(archive, "s2_l1c", selected(archive, names))
    st = archive_statistics(archive, "s2_l1c", splits=splits)
    np.testing.assert_allclose(st.mean, ref_mean, rtol=1e-10)
    np.testing.assert_allclose(st.std, ref_std, rtol=1e-8)
    assert st.splits == names and st.n_patches == len(selected(archive, names))


def test_only_train_patches_are_read(archive, monkeypatch):
    """A spy on the modality array: every patch read is a done train patch, and each is read."""
    read: list[int] = []

    class SpyArray:
        def __init__(self, arr):
            self.arr = arr

        def __getitem__(self, key):
            read.append(int(key))
            return self.arr[key]

        def __getattr__(self, name):
            return getattr(self.arr, name)

    class SpyGroup:
        def __init__(self, group):
            self.group = group

        def __getitem__(self, name):
            return SpyArray(self.group[name]) if name == "s2_l1c" else self.group[name]

        def __contains__(self, name):
            return name in self.group

        def __getattr__(self, name):
            return getattr(self.group, name)

    real_open = pipeline.statistics.Archive.open
    monkeypatch.setattr(pipeline.statistics.Archive, "open", lambda *a, **k: SpyGroup(real_open(*a, **k)))
    compute_archive_statistics(archive, "s2_l1c")
    assert sorted(read) == selected(archive, ["train"]).tolist()
    assert not set(read) & set(split_indices(archive, "test").tolist())


def test_archive_without_split_is_bad_input(no_split_archive):
    with pytest.raises(BadInput) as err:
        compute_archive_statistics(no_split_archive, "s2_l1c")
    message = str(err.value)
    assert "\n" not in message and f"softcon split {no_split_archive}" in message and "'all'" in message
    mean, _ = compute_archive_statistics(no_split_archive, "s2_l1c", splits="all")
    np.testing.assert_allclose(mean, numpy_statistics(no_split_archive, "s2_l1c",
                                                      selected(no_split_archive, "all"))[0], rtol=1e-10)
    with pytest.raises(BadInput, match="unknown split"):
        compute_archive_statistics(no_split_archive, "s2_l1c", splits=["training"])


def test_cli_records_the_splits_in_the_statistics_file(archive, no_split_archive, tmp_path):
    runner = CliRunner()
    out = tmp_path / "stats.json"
    res = runner.invoke(app, ["stats", archive, "--modality", "s2_l1c", "--out", str(out)])
    assert res.exit_code == 0, res.output
    entry = json.loads(out.read_text())["modalities"]["s2_l1c"]
    record = read_split(archive)[1]
    assert entry["splits"] == ["train"] and entry["split_hash"] == record["hash"]
    assert entry["split_record"] == json.loads(json.dumps(record))
    assert entry["n_patches"] == len(selected(archive, ["train"]))
    np.testing.assert_allclose(entry["mean"], numpy_statistics(archive, "s2_l1c", selected(archive, ["train"]))[0],
                               rtol=1e-10)

    res = runner.invoke(app, ["stats", archive, "--modality", "s1_grd", "--out", str(out),
                              "--split", "val", "--split", "test"])
    assert res.exit_code == 0, res.output
    entry = json.loads(out.read_text())["modalities"]["s1_grd"]
    assert entry["splits"] == ["val", "test"] and entry["split_hash"] == record["hash"]

    res = runner.invoke(app, ["stats", no_split_archive, "--out", str(tmp_path / "none.json")])
    assert res.exit_code == 2 and "softcon split" in res.output and not (tmp_path / "none.json").exists()
    res = runner.invoke(app, ["stats", no_split_archive, "--out", str(tmp_path / "all.json"), "--split", "all"])
    assert res.exit_code == 0, res.output
    entry = json.loads((tmp_path / "all.json").read_text())["modalities"]["s2_l1c"]
    assert entry["splits"] == "all" and entry["split_hash"] is None and entry["split_record"] is None
