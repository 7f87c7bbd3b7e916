"""The configuration of a pretraining run (:class:`PretrainConfig`, YAML) and its loader.

Every key is documented on its field. Defaults are sized for a 2-core CPU; the optimiser,
temperature and momentum follow the MoCo-v3 recipe of the SSL4EO-S12 code (Wang et al. 2023,
arXiv:2211.07044, github.com/zhu-xlab/SSL4EO-S12) where the SoftCon paper (Wang et al. 2024,
arXiv:2405.20462) does not state its own values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.store_target import is_url

#: Keys of ``augment`` (keyword arguments of :func:`train.augment.ms_view_transforms`).
AUGMENT_KEYS = ("scale", "jitter_p", "gray_p", "blur_p", "hflip_p", "vflip_p")

__all__ = ["LossConfig", "PretrainConfig", "load_config"]


class LossConfig(BaseModel):
    """The loss of a run: a registry name of :mod:`train.losses`, its label vector and options."""

    model_config = ConfigDict(extra="forbid")
    name: str = "softcon"
    labels: Literal["multi_hot", "fraction", "dw_probability"] = "multi_hot"
    """Which label vector feeds label-aware losses (SoftCon's label similarity, SupCon positives …):
    ``multi_hot`` (Dynamic World presence), ``fraction`` (class fractions of the label map) or
    ``dw_probability``, the mean Dynamic World class probability of the season's valid label pixels, a
    soft label (Brown et al. 2022, "Dynamic World, Near real-time global 10 m land use land cover
    mapping", Scientific Data 9, 251). The archive must hold it (curated with the manifest's
    ``labels.dw_probabilities: true``), else the run stops with one line saying so. MACL's per-class
    counts stay multi-hot based whatever is chosen (``multi_hot`` summed over the training patches)."""
    options: dict[str, Any] = {}
    """Keyword arguments of the loss class (e.g. temperature, lam, soft_term, label_similarity)."""


class PretrainConfig(BaseModel):
    """A pretraining run (YAML). Defaults are sized for a 2-core CPU: ResNet-18, 64 px crops."""

    model_config = ConfigDict(extra="forbid")
    archive: str = "output/ssl4eo_s12_ml_mini.zarr"
    storage_options: dict[str, Any] = {}
    splits: list[Literal["train", "val", "test"]] | Literal["all"] = ["train"]
    """The archive's splits to train on (``softcon split STORE`` writes them; an archive without one is
    refused): by default ``[train]``, so val and test patches stay unseen for evaluation; e.g.
    ``[train, val]``, or ``all`` for every done patch, split or not. An empty list or null is refused
    (say ``all``). The patches used are recorded in ``<output_dir>/training_data.json``."""
    output_dir: str = "runs/softcon-mini"
    modality: Literal["s2_l1c", "s2_l2a", "s1_grd"] = "s2_l1c"
    view_mode: Literal["same_season", "seasonal", "cross_modal"] = "same_season"
    modality2: Literal["s2_l1c", "s2_l2a", "s1_grd"] = "s1_grd"
    statistics: str = "published"
    """Per-band normalisation statistics: ``published`` (the SSL4EO-S12 statistics of ``ssl4eo_dataset.py``,
    github.com/zhu-xlab/SSL4EO-S12) or the path of
    a JSON written by ``softcon stats`` (the archive's own statistics). Scaling: clip((x − (μ−2σ)) / 4σ, 0, 1)."""
    crop_size: int = Field(64, ge=8)
    backbone: str = "resnet18"
    backbone2: str | None = None
    """Encoder of the second modality in cross-modal mode (default: same architecture)."""
    weights: str | None = None
    """Local weight file for continual pretraining (safetensors or .pth; DINO/DINOv2/torchvision layouts)."""
    first_layer: Literal["random", "inflate"] = "random"
    stop_grad_patch_embed: bool = False
    """MoCo v3's trick for ViTs: freeze the patch embedding."""
    proj_hidden: int = 512
    proj_out: int = 128
    pred_hidden: int = 512
    loss: LossConfig = LossConfig(options={"temperature": 0.2, "lam": 1.0, "soft_term": "bce"})
    augment: dict[str, Any] = {}
    """Overrides of the multispectral view recipe (:func:`train.augment.ms_view_transforms`: ``scale``,
    ``jitter_p``, ``gray_p``, ``blur_p``, ``hflip_p``, ``vflip_p``); empty = the SSL4EO-S12 / MoCo v3
    recipe. E.g. ``{jitter_p: 0, gray_p: 0, blur_p: 0}`` keeps every view's spectra (crops and flips
    only). S1 views keep :func:`train.augment.sar_view_transforms`."""
    mask_ratio: float = Field(0.5, ge=0, lt=1)
    """Siamese masking ratio on the online branch (our choice; the paper's value is UNVERIFIED)."""
    momentum: float = Field(0.99, ge=0, le=1)
    momentum_final: float = Field(1.0, ge=0, le=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    base_lr: float = Field(5e-3, gt=0)
    """Learning rate for a batch of 256, scaled linearly with the effective batch size. Our CPU default
    (short runs, small batches); the SSL4EO-S12 MoCo-v3 recipe uses 1.5e-4 at batch 1024 on GPUs."""
    weight_decay: float = Field(0.1, ge=0)
    sgd_momentum: float = 0.9
    epochs: int = Field(5, ge=1)
    warmup_epochs: float = Field(1.0, ge=0)
    batch_size: int = Field(32, ge=2)
    """Per-process batch size."""
    accumulate: int = Field(1, ge=1)
    num_workers: int = Field(2, ge=0)
    seed: int = 0
    amp: bool = True
    """bf16 autocast when running on CUDA (ignored on the CPU)."""
    max_steps_per_epoch: int | None = None
    log_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    bn_recalibration_batches: int = Field(20, ge=0)
    """Before export, the BatchNorm running statistics of the exported (ResNet) backbone are recomputed
    over this many unmasked training batches (:func:`recalibrate_batchnorm`): training fills them with
    Siamese-masked inputs, evaluation feeds full images. 0 exports the statistics of training. Our
    choice (default 20); ViTs have no BatchNorm. The export records it (metadata ``bn_statistics``)."""
    cpu_keep_freed_memory: bool = True
    """Keep freed CPU memory for the next step instead of returning it to the OS (glibc ``mallopt``, see
    :mod:`train.cpu_memory`): in the data loader workers, and in the training process when it runs on
    the CPU. Faster steps and reads; resident memory stays at its peak."""

    @field_validator("splits")
    @classmethod
    def _splits_named(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            if not v:
                raise ValueError("empty; name the splits to train on (e.g. [train]) or say 'all' for every done patch")
            if len(set(v)) != len(v):
                raise ValueError(f"{v} names a split twice")
        return v

    @field_validator("augment")
    @classmethod
    def _augment_known(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(AUGMENT_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; known: {list(AUGMENT_KEYS)}")
        for key, value in v.items():
            if key == "scale":
                if not (isinstance(value, list | tuple) and len(value) == 2 and 0 < value[0] <= value[1] <= 1):
                    raise ValueError(f"scale must be [low, high] with 0 < low <= high <= 1, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{key} is a probability in [0, 1], got {value!r}")
        return v


def load_config(path: str | Path, **overrides: Any) -> PretrainConfig:
    """Read a YAML training config; relative paths are resolved against its folder.

    Args:
        path: the YAML file.
        **overrides: keys that replace the file's values (None values are ignored).

    Returns:
        The validated config, with ``archive``, ``output_dir``, ``weights`` and a statistics file
        made absolute.
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    cfg = PretrainConfig.model_validate(data)
    base = path.parent

    def fix(p: str | None) -> str | None:
        if p is None or is_url(p) or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    stats = cfg.statistics if cfg.statistics == "published" else fix(cfg.statistics)
    return cfg.model_copy(update={"archive": fix(cfg.archive), "output_dir": fix(cfg.output_dir),
                                  "weights": fix(cfg.weights), "statistics": stats})
