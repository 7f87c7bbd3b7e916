"""A tiny pretraining run for tests that read run folders (figures, notebooks, inspect)."""

from __future__ import annotations

from pathlib import Path


def tiny_run(archive: str, out: Path, **overrides) -> Path:
    """The fastest complete run we can make: ResNet-18, 16 px crops, one epoch of two steps of four
    images, on the archive's train split; returns the run folder (with backbone.safetensors).
    """
    from train.pretrain import PretrainConfig, run_pretraining

    cfg = dict(archive=archive, output_dir=str(out), backbone="resnet18", crop_size=16, batch_size=4, num_workers=0,
               proj_hidden=32, proj_out=16, pred_hidden=32, epochs=1, max_steps_per_epoch=2, warmup_epochs=0.5,
               log_every=1000, bn_recalibration_batches=1, splits=["train"], keep_checkpoints=1)
    cfg.update(overrides)
    run_pretraining(PretrainConfig.model_validate(cfg), progress=False)
    return Path(out)
