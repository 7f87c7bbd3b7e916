"""The run folder (train/checkpoints.py): resolving a run folder or a file, latest checkpoint, the
exported backbone's metadata, the checkpoint's backbone prefix (one definition, matching the model).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import train.checkpoints as ck
from pipeline.errors import BadInput
from train.evaluate import backbones, features
from train.pretrain_config import PretrainConfig
from train.pretrain_model import Branch, PretrainModel

REPO = Path(__file__).resolve().parents[2]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# ============================================================================ resolving
def test_resolve_run_dir_prefers_the_exported_backbone(tmp_path):
    run = tmp_path / "run"
    old = touch(run / "checkpoints" / "epoch-0001.safetensors")
    assert ck.resolve_run_file(run) == old  # no backbone yet: the latest checkpoint
    backbone = touch(run / "backbone.safetensors")
    assert ck.resolve_run_file(run) == backbone
    assert ck.resolve_run_file(str(run)) == backbone


def test_resolve_a_file_is_the_file(tmp_path):
    f = touch(tmp_path / "weights.pth")
    assert ck.resolve_run_file(f) == f
    assert features.resolve_checkpoint(str(f)) == str(f)
    assert features.resolve_checkpoint("pixels") == "pixels"
    assert features.resolve_checkpoint("random:resnet18") == "random:resnet18"


@pytest.mark.parametrize("what", ["missing file", "empty folder"])
def test_resolve_missing_is_one_line_bad_input(tmp_path, what):
    path = tmp_path / "nope.safetensors"
    if what == "empty folder":
        path = tmp_path / "run"
        (path / "checkpoints").mkdir(parents=True)
    for resolve in (ck.resolve_run_file, features.resolve_checkpoint, features.read_checkpoint_info):
        with pytest.raises(BadInput) as err:
            resolve(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        assert isinstance(err.value, FileNotFoundError)  # callers catching FileNotFoundError still do


# ============================================================================ latest checkpoint
def test_latest_checkpoint_and_rotation(tmp_path):
    run = tmp_path / "run"
    assert ck.latest_checkpoint(run) is None
    for epoch in (9, 10, 2):  # written out of order; 10 sorts after 9 thanks to the zero padding
        touch(ck.checkpoint_path(run, epoch))
    touch(run / "checkpoints" / "epoch-0011.tmp")  # an interrupted write is not a checkpoint
    assert ck.checkpoint_path(run, 10) == run / "checkpoints" / "epoch-0010.safetensors"
    assert ck.latest_checkpoint(run) == ck.checkpoint_path(run, 10)
    ck.rotate_checkpoints(run, keep=2)
    assert sorted(p.name for p in (run / "checkpoints").glob("*.safetensors")) == [
        "epoch-0009.safetensors", "epoch-0010.safetensors"]


def test_check_output_dir_refuses_a_run_unless_resumed(tmp_path):
    run = tmp_path / "run"
    ck.check_output_dir(run, resume=False)  # not there yet
    touch(ck.checkpoint_path(run, 0))
    with pytest.raises(BadInput, match="--resume"):
        ck.check_output_dir(run, resume=False)
    ck.check_output_dir(run, resume=True)


# ============================================================================ exported backbone
def test_export_metadata_round_trip(tmp_path):
    backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    meta = ck.BackboneMetadata(backbone="resnet18", modality="s2_l2a", bands=["B2", "B3", "B4"],
                               bn_statistics="recalibrated on 2 batches",
                               normalizer={"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]},
                               training_data=json.dumps({"patch_ids": ["a", "b"]}))
    path = tmp_path / ck.backbone_file(0, "s2_l2a")
    ck.export_backbone(path, backbone, meta)
    assert ck.read_backbone_metadata(path) == meta
    raw = ck.read_metadata(path)
    assert raw["format"] == ck.BACKBONE_FORMAT == "softcon-backbone"  # the file format is unchanged
    assert json.loads(raw["bands"]) == ["B2", "B3", "B4"] and raw[ck.TRAINING_DATA_KEY] == meta.training_data
    for k, v in backbone.state_dict().items():
        assert torch.equal(load_file(str(path))[k], v)
    info = features.read_checkpoint_info(path)  # evaluation reads what the export wrote
    assert (info["kind"], info["backbone"], info["modality"], info["normalizer"]) == (
        "softcon-backbone", "resnet18", "s2_l2a", meta.normalizer)
    assert features.read_training_record(path) == {"patch_ids": ["a", "b"]}

    no_norm = ck.BackboneMetadata("resnet18", "s1_grd", ["VV", "VH"], "none")
    ck.export_backbone(path, backbone, no_norm)
    assert "normalizer" not in ck.read_metadata(path) and ck.read_backbone_metadata(path) == no_norm
    assert ck.backbone_file(1, "s1_grd") == "backbone-s1_grd.safetensors"


def test_read_backbone_metadata_refuses_another_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": ck.CHECKPOINT_FORMAT})
    with pytest.raises(BadInput, match="not a softcon-backbone file"):
        ck.read_backbone_metadata(path)


# ============================================================================ the backbone prefix
def test_backbone_prefix_matches_the_model_and_is_defined_once(tmp_path):
    assert ck.PRETRAIN_BACKBONE_PREFIX == "model.branches.0.online.backbone."  # the stored file format
    assert backbones.PRETRAIN_BACKBONE_PREFIX is ck.PRETRAIN_BACKBONE_PREFIX  # what evaluation loads with

    cfg = PretrainConfig(proj_hidden=16, proj_out=8, pred_hidden=16, crop_size=32)
    bands = [f"B{i}" for i in range(3)]
    model = PretrainModel([Branch("resnet18", 3, cfg, bands), Branch("resnet18", 3, cfg, bands)], 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "c.safetensors"
    ck.save_checkpoint(path, model, nn.Identity(), opt, {"epoch": 0})
    keys = load_file(str(path)).keys()
    for branch in (0, 1):
        prefix = ck.branch_backbone_prefix(branch)
        stored = {k[len(prefix):] for k in keys if k.startswith(prefix)}
        assert stored == set(model.branches[branch].online.backbone.state_dict())
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == ck.CHECKPOINT_FORMAT == "softcon-pretrain-v1"

    # no other code restates the prefix
    pattern = re.compile(r"branches\.0\.online\.backbone")
    offenders = [str(p.relative_to(REPO)) for d in ("train", "flows", "pipeline", "benchmarks")
                 for p in (REPO / d).rglob("*.py") if pattern.search(p.read_text()) and p.name != "checkpoints.py"]
    assert offenders == []
