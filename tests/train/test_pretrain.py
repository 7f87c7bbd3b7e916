"""Pretraining engine on a small synthetic archive: loss falls, exact resume, every loss runs, checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from train.pretrain import (
    CHECKPOINT_FORMAT,
    PretrainConfig,
    latest_checkpoint,
    lr_at,
    momentum_at,
    run_pretraining,
)


@pytest.fixture(scope="module")
def archive(small_archive):
    return small_archive(n_locations=16, size_px=48, patches_per_shard=4, cloud_probability=0.2)


def config(archive: str, out, **kw) -> PretrainConfig:
    # The loop's tests train on every done patch; the train split is tested in test_train_split.py.
    base = dict(archive=archive, output_dir=str(out), crop_size=32, batch_size=16, num_workers=0,
                proj_hidden=64, proj_out=32, pred_hidden=64, epochs=2, max_steps_per_epoch=3,
                warmup_epochs=0.5, log_every=1000, splits="all")
    base.update(kw)
    return PretrainConfig.model_validate(base)


def test_softcon_loss_falls_over_30_steps(archive, tmp_path):
    cfg = config(archive, tmp_path / "run", epochs=10, max_steps_per_epoch=3, base_lr=0.02, mask_ratio=0.25)
    res = run_pretraining(cfg, progress=False)
    losses = np.array(res["losses"])
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert losses[-6:].mean() < losses[:6].mean() - 0.05, losses.round(3)
    assert (tmp_path / "run" / "backbone.safetensors").exists()
    rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,step,loss") and len(rows) == 31
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_resume_reproduces_uninterrupted_losses(archive, tmp_path):
    full = run_pretraining(config(archive, tmp_path / "full", epochs=3), progress=False)
    part = run_pretraining(config(archive, tmp_path / "part", epochs=3), progress=False, stop_after_epochs=1)
    assert not part["finished"] and len(part["losses"]) == 3
    rest = run_pretraining(config(archive, tmp_path / "part", epochs=3), progress=False, resume=True)
    assert rest["finished"]
    assert part["losses"] + rest["losses"] == full["losses"]
    a = latest_checkpoint(tmp_path / "full")
    b = latest_checkpoint(tmp_path / "part")
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        for key in fa.keys():
            assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), key


def test_checkpoint_holds_models_optimizer_and_rng(archive, tmp_path):
    run_pretraining(config(archive, tmp_path / "ck", epochs=1, max_steps_per_epoch=1), progress=False)
    path = latest_checkpoint(tmp_path / "ck")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == CHECKPOINT_FORMAT and json.loads(meta["meta"])["epoch"] == 0
    assert any(k.startswith("model.branches.0.online.backbone.") for k in keys)
    assert any(k.startswith("model.branches.0.target.") for k in keys)
    assert any(k.startswith("optim.") and k.endswith("exp_avg") for k in keys)
    assert "rng.torch" in keys


@pytest.mark.parametrize("name, options", [
    ("infonce", {}), ("ntxent", {}), ("moco_v2", {"queue_size": 64}), ("moco_v3", {}), ("supcon", {}),
    ("mulsupcon", {}), ("macl", {}), ("triplet", {}), ("byol", {}),
    ("softcon", {"soft_term": "soft_ce", "label_similarity": "jaccard"}),
])
def test_every_loss_trains_on_the_engine(archive, tmp_path, name, options):
    cfg = config(archive, tmp_path / name, epochs=1, max_steps_per_epoch=2,
                 loss={"name": name, "options": options})
    res = run_pretraining(cfg, progress=False)
    assert len(res["losses"]) == 2 and np.isfinite(res["losses"]).all()


def test_archive_statistics_file(archive, tmp_path):
    from train.data import compute_archive_statistics, save_statistics

    mean, std = compute_archive_statistics(archive, "s2_l2a", splits="all")  # the fixture has no split
    from pipeline.bands import S2_L2A_BANDS

    save_statistics(tmp_path / "stats.json", "s2_l2a", list(S2_L2A_BANDS), mean, std)
    res = run_pretraining(config(archive, tmp_path / "st", modality="s2_l2a", epochs=1, max_steps_per_epoch=1,
                                 statistics=str(tmp_path / "stats.json")), progress=False)
    assert np.isfinite(res["losses"]).all()


def test_cross_modal_and_seasonal_views(archive, tmp_path):
    res = run_pretraining(config(archive, tmp_path / "xm", view_mode="cross_modal", epochs=1,
                                 max_steps_per_epoch=2), progress=False)
    assert np.isfinite(res["losses"]).all()
    assert (tmp_path / "xm" / "backbone-s1_grd.safetensors").exists()
    res = run_pretraining(config(archive, tmp_path / "se", view_mode="seasonal", modality="s2_l2a", epochs=1,
                                 max_steps_per_epoch=2), progress=False)
    assert np.isfinite(res["losses"]).all()


def test_vit_with_siamese_masking(archive, tmp_path):
    cfg = config(archive, tmp_path / "vit", backbone="vit_small_patch14_dinov2", crop_size=28, batch_size=4,
                 epochs=1, max_steps_per_epoch=1, mask_ratio=0.5, stop_grad_patch_embed=True)
    res = run_pretraining(cfg, progress=False)
    assert np.isfinite(res["losses"]).all()


def test_schedules():
    cfg = PretrainConfig(epochs=10, warmup_epochs=2, batch_size=256, base_lr=1.0, momentum=0.99)
    assert lr_at(cfg, 0, 10, 1) == pytest.approx(1 / 20)
    assert lr_at(cfg, 19, 10, 1) == pytest.approx(1.0)
    assert lr_at(cfg, 99, 10, 1) < 0.01
    assert momentum_at(cfg, 0, 100) == pytest.approx(0.99)
    assert momentum_at(cfg, 100, 100) == pytest.approx(1.0)


def test_torchrun_ddp_on_cpu(archive, tmp_path):
    """Two processes under torchrun (Gloo, DDP): the run completes, rank 0 alone reports and writes outputs."""
    import os
    import subprocess
    import sys

    import yaml

    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(config(archive, tmp_path / "ddp", epochs=1, max_steps_per_epoch=2,
                                         batch_size=8).model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "-m", "flows.cli", "pretrain", str(cfg), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("2 steps on cpu") == 1  # only rank 0 reports
    rows = (tmp_path / "ddp" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    assert (tmp_path / "ddp" / "backbone.safetensors").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_is_accepted_by_glibc():
    """The CPU allocator setting that `softcon pretrain` applies (in a fresh process: it is process-wide)."""
    code = ("from train.cpu_memory import keep_freed_memory; "
            "print(keep_freed_memory(), keep_freed_memory(trim_mib=64))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["True", "True"]


def test_fresh_run_never_overwrites_a_run_or_a_users_folder(archive, tmp_path):
    """Issue 10.1 (audit): a fresh run refuses a folder holding a run or other files; nothing changes."""
    from pipeline.errors import BadInput

    cfg = config(archive, tmp_path / "done", epochs=1, max_steps_per_epoch=1)
    run_pretraining(cfg, progress=False)
    before = {p: p.read_bytes() for p in (tmp_path / "done").rglob("*") if p.is_file()}
    with pytest.raises(BadInput, match="already holds a run; continue it with --resume"):
        run_pretraining(cfg, progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "done").rglob("*") if p.is_file()} == before
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep me")
    with pytest.raises(BadInput, match="not a run folder"):
        run_pretraining(config(archive, users, epochs=1, max_steps_per_epoch=1), progress=False)
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]
    started = tmp_path / "started"  # an earlier start of ours that died before its first checkpoint
    started.mkdir()
    (started / "config.yaml").write_text("seed: 0\n")
    assert run_pretraining(config(archive, started, epochs=1, max_steps_per_epoch=1), progress=False)["finished"]
