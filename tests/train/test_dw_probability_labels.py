"""Pretraining on Dynamic World probabilities as soft labels (``loss.labels: dw_probability``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from pydantic import ValidationError

from pipeline.errors import BadInput
from pipeline.manifest import Manifest
from pipeline.reference import DW_PROBABILITY
from tests.archive_helpers import curate_all
from train.data.dataset import LABEL_KEYS, ArchiveDataset
from train.pretrain_config import LossConfig


@pytest.fixture(scope="module")
def probability_archive(tmp_path_factory) -> str:
    """A curated synthetic archive with ``dw_probability`` (label noise high enough to differ from fractions)."""
    path = tmp_path_factory.mktemp("dwprob") / "a.zarr"
    curate_all(Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": 4, "label_noise": 0.3}},
        "sampling": {"n_locations": 8, "top_n_cities": 20, "seed": 5}, "patch": {"size_px": 24},
        "labels": {"dw_probabilities": True}, "store": {"path": str(path), "patches_per_shard": 4}}))
    return str(path)


def test_config_names_the_label_vector():
    assert LossConfig().labels == "multi_hot"
    assert LossConfig(labels="dw_probability").labels == "dw_probability"
    with pytest.raises(ValidationError):
        LossConfig(labels="probabilities")
    assert set(LABEL_KEYS) == {"multi_hot", "fraction", "dw_probability"}


def test_items_carry_the_stored_probability_vector(probability_archive):
    ds = ArchiveDataset(probability_archive, view_mode="single", labels="dw_probability")
    assert ds.label_key == DW_PROBABILITY
    stored = zarr.open_group(probability_archive, mode="r")[DW_PROBABILITY][:]
    for i in (0, len(ds) - 1):
        item = ds[i]
        assert torch.equal(item[DW_PROBABILITY], torch.from_numpy(stored[item["location"], item["season"]]))
    assert DW_PROBABILITY not in ArchiveDataset(probability_archive, view_mode="single")[0]  # only when asked


def test_an_archive_without_the_product_is_bad_input(small_archive, tmp_path):
    from run_helpers import tiny_run

    with pytest.raises(BadInput, match="no dw_probability.*labels.dw_probabilities: true"):
        ArchiveDataset(small_archive(), labels="dw_probability")
    with pytest.raises(BadInput, match="no dw_probability"):
        tiny_run(small_archive(), tmp_path / "run", loss={"name": "softcon", "labels": "dw_probability"})
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the run folder was made


def test_the_loss_receives_the_stored_probabilities_of_each_batch(probability_archive, tmp_path, monkeypatch):
    """Spies: the batches' (location, season) from the loader's collate, the labels given to the loss."""
    from run_helpers import tiny_run

    import train.data.loader as loader_module
    import train.pretrain as pretrain

    batches: list[tuple[np.ndarray, np.ndarray]] = []
    given: list[torch.Tensor] = []
    collate, call_loss = loader_module.collate_items, pretrain.call_loss

    def spy_collate(items):
        batch = collate(items)
        batches.append((batch["location"].numpy(), batch["season"].numpy()))
        return batch

    def spy_loss(contract, loss_fn, z, q, k, labels):
        given.append(labels.detach().cpu().clone())
        return call_loss(contract, loss_fn, z, q, k, labels)

    monkeypatch.setattr(loader_module, "collate_items", spy_collate)
    monkeypatch.setattr(pretrain, "call_loss", spy_loss)
    tiny_run(probability_archive, tmp_path / "run", loss={"name": "softcon", "labels": "dw_probability",
                                                          "options": {"temperature": 0.2, "lam": 1.0}})
    stored = zarr.open_group(probability_archive, mode="r")
    prob, mh = stored[DW_PROBABILITY][:], stored["multi_hot"][:]
    assert len(given) == 2  # two steps, one micro-batch each; the batches after them recalibrate BatchNorm
    for (locations, seasons), labels in zip(batches, given):
        expected = torch.from_numpy(prob[locations, seasons])
        assert labels.dtype == torch.float32 and torch.equal(labels, expected)
        assert not torch.equal(labels, torch.from_numpy(mh[locations, seasons].astype(np.float32)))
