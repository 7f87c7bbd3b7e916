"""Pretraining uses the archive's train split only and records what it trained on (training_data.json)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from archive_helpers import split_archive_with_a_failed_train_patch, without_split
from pydantic import ValidationError
from safetensors import safe_open
from typer.testing import CliRunner

import train.data
import train.pretrain
from flows.cli import app
from pipeline.errors import BadInput
from pipeline.split import read_split, split_indices, write_split
from pipeline.store import STATUS_DONE, open_group
from train.pretrain import (
    PretrainConfig,
    _build_data,
    _class_counts,
    load_config,
    run_pretraining,
)

SIZE = 32


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """16 locations of 32 px with the default split (by city); one train patch marked failed."""
    return split_archive_with_a_failed_train_patch(tmp_path_factory.mktemp("split-archive") / "a.zarr", SIZE)


@pytest.fixture(scope="module")
def no_split_archive(tmp_path_factory, archive):
    """The same archive without a split (its record removed, as in an archive curated before splits)."""
    return without_split(archive, tmp_path_factory.mktemp("no-split") / "a.zarr")


def config(archive: str, out, **kw) -> PretrainConfig:
    base = {"archive": archive, "output_dir": str(out), "crop_size": 32, "batch_size": 8, "num_workers": 0,
            "proj_hidden": 32, "proj_out": 16, "pred_hidden": 32, "epochs": 1, "max_steps_per_epoch": 1,
            "warmup_epochs": 0.5, "log_every": 1000}
    base.update(kw)
    return PretrainConfig.model_validate(base)


def train_done(path: str) -> np.ndarray:
    done = np.flatnonzero(open_group(path)["status"][:] == STATUS_DONE)
    return np.intersect1d(split_indices(path, "train"), done)


def test_fixture_has_patches_outside_the_train_split(archive):
    g = open_group(archive)
    done = np.flatnonzero(g["status"][:] == STATUS_DONE)
    train = split_indices(archive, "train")
    assert len(train_done(archive)) >= 4
    assert len(np.setdiff1d(done, train)) >= 2  # val/test patches that a run must not see
    assert len(np.setdiff1d(train, done)) == 1  # the failed train patch


def test_run_trains_only_on_train_split_and_records_it(archive, tmp_path, monkeypatch):
    seen: list[int] = []
    getitem = train.data.ArchiveDataset.__getitem__

    def spy(self, key):
        item = getitem(self, key)
        seen.append(int(item["location"]))
        return item

    monkeypatch.setattr(train.data.ArchiveDataset, "__getitem__", spy)
    out = tmp_path / "run"
    res = run_pretraining(config(archive, out), progress=False)
    assert res["finished"] and res["steps"] == 1

    g = open_group(archive)
    ids = [str(x) for x in g["patch_id"][:]]
    expected = train_done(archive)
    assert seen and set(seen) <= set(expected.tolist())  # every item loaded came from train ∩ done
    text = (out / "training_data.json").read_text()
    record = json.loads(text)
    codes, split_record = read_split(archive)
    assert record["patch_ids"] == [ids[p] for p in expected]
    assert record["n_patches"] == len(expected)
    assert record["splits"] == ["train"]
    assert record["split_record"] == split_record and record["split_record"]["hash"] == split_record["hash"]
    assert record["archive_manifest_hash"] == g.attrs["manifest_hash"]
    assert record["archive"] == archive
    not_train = [ids[p] for p in np.flatnonzero(codes != 0)]
    assert not set(record["patch_ids"]) & set(not_train)

    with safe_open(str(out / "backbone.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["training_data"] == text
    assert meta["format"] == "softcon-backbone" and "normalizer" in meta  # the other keys are kept


def test_train_and_val_splits_and_all(archive, no_split_archive, tmp_path):
    both = _build_data(config(archive, tmp_path / "a", splits=["train", "val"]), 0, 1)[0]
    done = np.flatnonzero(open_group(archive)["status"][:] == STATUS_DONE)
    wanted = np.union1d(split_indices(archive, "train"), split_indices(archive, "val"))
    assert both.patches.tolist() == np.intersect1d(wanted, done).tolist()
    assert both.training_data()["splits"] == ["train", "val"]
    every = _build_data(config(archive, tmp_path / "b", splits="all"), 0, 1)[0]
    assert every.patches.tolist() == done.tolist()
    assert every.training_data()["split_record"]["hash"] == read_split(archive)[1]["hash"]
    # "all" works on an archive without a split and records that there was none
    unsplit = _build_data(config(no_split_archive, tmp_path / "c", splits="all"), 0, 1)[0]
    record = unsplit.training_data()
    assert record["splits"] == "all" and record["split_record"] is None and record["n_patches"] == len(done)


def test_macl_class_counts_come_from_train_split_only(archive, tmp_path, monkeypatch):
    g = open_group(archive)
    multi_hot = g["multi_hot"][:].astype(np.float64)  # (P, S, classes)
    expected = multi_hot[train_done(archive)].sum(axis=(0, 1))
    everything = multi_hot[g["status"][:] == STATUS_DONE].sum(axis=(0, 1))
    assert not np.array_equal(expected, everything)  # the val/test patches carry labels too

    ds = _build_data(config(archive, tmp_path / "m", loss={"name": "macl"}), 0, 1)[0]
    np.testing.assert_array_equal(_class_counts(ds).numpy(), expected)

    captured: dict = {}
    build_loss = train.pretrain.build_loss

    def spy(name, **kwargs):
        captured.update(kwargs)
        return build_loss(name, **kwargs)

    monkeypatch.setattr(train.pretrain, "build_loss", spy)
    run_pretraining(config(archive, tmp_path / "run", loss={"name": "macl"}), progress=False)
    np.testing.assert_array_equal(torch.as_tensor(captured["class_counts"]).numpy(), expected)
    assert captured["num_samples"] == len(train_done(archive)) * int(g.attrs["layout"]["n_seasons"])


def test_default_config_without_split_is_one_line_bad_input(no_split_archive, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(BadInput) as err:
        run_pretraining(config(no_split_archive, out), progress=False)
    message = str(err.value)
    assert "\n" not in message and no_split_archive in message and f"softcon split {no_split_archive}" in message
    assert not out.exists()  # refused before anything was written

    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"archive": no_split_archive, "output_dir": str(out)}))
    res = CliRunner().invoke(app, ["pretrain", str(cfg)])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "softcon split" in lines[0], res.output


@pytest.mark.parametrize("splits", [[], None, ["train", "train"], ["training"], "every"])
def test_splits_must_be_named_explicitly(splits, tmp_path):
    with pytest.raises(ValidationError, match="splits"):
        PretrainConfig.model_validate({"splits": splits})
    if splits is not None:  # the data set refuses them too, as BadInput
        with pytest.raises(BadInput, match="splits"):
            train.data.select_split_patches(str(tmp_path / "never-opened.zarr"), splits)


def test_defaults_train_on_the_train_split():
    assert PretrainConfig().splits == ["train"]
    assert load_config("configs/pretrain_mini.yaml").splits == ["train"]
    assert PretrainConfig.model_validate({"splits": ["val", "train"]}).splits == ["val", "train"]
    assert PretrainConfig.model_validate({"splits": "all"}).splits == "all"


def test_resume_refuses_a_changed_split(archive, tmp_path_factory, tmp_path):
    path = str(tmp_path_factory.mktemp("resplit") / "a.zarr")
    shutil.copytree(archive, path)
    cfg = config(path, tmp_path / "run", epochs=2)
    part = run_pretraining(cfg, progress=False, stop_after_epochs=1)
    assert not part["finished"]
    first = (tmp_path / "run" / "training_data.json").read_text()
    before = set(split_indices(path, "train").tolist())
    for seed in range(1, 50):  # another split that moves some patches in or out of train
        write_split(path, seed=seed)
        if set(split_indices(path, "train").tolist()) != before:
            break
    else:
        pytest.fail("no other seed changed the train split")
    with pytest.raises(BadInput, match="training_data.json"):
        run_pretraining(cfg, progress=False, resume=True)
    assert (tmp_path / "run" / "training_data.json").read_text() == first
